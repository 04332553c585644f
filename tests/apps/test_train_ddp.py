"""torchrun --nproc_per_node=2 on CPU (gloo): runs, and its losses agree with a one-process run
of the same global batch (2 x 1 per rank vs 1 x 2), across a progressive stage change."""

import pytest

from vmambair.apps.train import train_main

from tests.helpers import ROOT, free_port, losses_of, one_thread, run_script, tiny_options  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")



def test_torchrun_two_processes_match_one_process(tmp_path):
    common = ["--set", "train.total_iter=4", "--set", "datasets.train.iters=[2,2]",
              "--set", "datasets.train.mini_gt_sizes=[16,24]", "--set", "val.val_freq=100"]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    assert train_main(["-opt", str(tiny_options(one)), *common, "--set", "datasets.train.mini_batch_sizes=[4,2]"]) == 0

    run = run_script(["-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                      f"--master_port={free_port()}", str(ROOT / "train.py"), "-opt", str(tiny_options(two)),
                      *common, "--set", "datasets.train.mini_batch_sizes=[2,1]"], cwd=two)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    assert "2 process(es) on cpu" in run.stdout
    assert run.stdout.count("Training tiny finished") == 1  # rank-0-only logging
    a, b = losses_of(one), losses_of(two)
    assert len(a) == len(b) == 4
    assert b == pytest.approx(a, rel=1e-4), (a, b)


def _dist_helpers_worker(rank, port, out):
    import torch
    import torch.distributed as tdist

    from vmambair.engine.dist import DistContext
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ctx = DistContext(rank=rank, world_size=2)
    grads = [torch.full((2, 3), float(rank + 1)), None, torch.arange(4.0) * (rank + 1)]
    ctx.all_reduce_mean_(grads)
    flat = torch.arange(5.0) * (rank + 1)  # one flat fp32 buffer: reduced in place
    ctx.all_reduce_mean_([flat])
    grads.append(flat)
    weights = [torch.full((3,), float(rank)), torch.tensor([rank * 10.0])]
    ctx.broadcast_(weights)
    out[rank] = [grads[0].tolist(), grads[2].tolist(), [w.tolist() for w in weights], grads[3].tolist()]
    tdist.destroy_process_group()


def test_dist_context_gradient_mean_and_broadcast():
    """The helpers train.cuda_graph uses in place of DDP: a mean over ranks, and rank 0's weights."""
    import torch.multiprocessing as mp
    out = mp.Manager().dict()
    mp.spawn(_dist_helpers_worker, args=(free_port(), out), nprocs=2)
    for rank in range(2):
        g0, g2, weights, flat = out[rank]
        assert g0 == [[1.5] * 3] * 2 and g2 == [0.0, 1.5, 3.0, 4.5]
        assert flat == [0.0, 1.5, 3.0, 4.5, 6.0]
        assert weights == [[0.0] * 3, [0.0]]


def test_torchrun_with_accumulation_matches_one_process(tmp_path):
    """2 processes x batch 1 x accumulate 2 (DDP's no_sync for the first micro-batch, one
    all-reduce after the second) see the samples of one process's batch of 4 and give its losses
    (this checks the result; an extra all-reduce would give the same numbers, only slower)."""
    common = ["--set", "train.total_iter=3", "--set", "datasets.train.mini_gt_sizes=[16,16]",
              "--set", "val.val_freq=100"]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    assert train_main(["-opt", str(tiny_options(one)), *common, "--set", "datasets.train.mini_batch_sizes=[4,4]"]) == 0
    run = run_script(["-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                      f"--master_port={free_port()}", str(ROOT / "train.py"), "-opt", str(tiny_options(two)),
                      *common, "--set", "datasets.train.mini_batch_sizes=[1,1]", "--set", "train.accumulate=2"],
                     cwd=two)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    assert "batch 1x2x2" in run.stdout
    a, b = losses_of(one), losses_of(two)
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=1e-4), (a, b)
