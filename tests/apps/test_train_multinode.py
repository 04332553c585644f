"""Multi-node launches on one CPU machine (gloo):

* two torchrun launchers with ``--nnodes=2`` (two "nodes" of two processes each, static
  rendezvous on localhost) train with the losses of one process with the same global batch;
* two processes started as ``srun`` would start them (SLURM_PROCID / SLURM_NTASKS /
  SLURM_LOCALID / SLURM_JOB_NODELIST, no torchrun variables) join one process group; a SIGTERM
  that reaches only rank 1 stops both ranks at the same iteration after one save, each exiting 143.
"""
import os
import subprocess
import sys

import pytest

from vmambair.apps.train import train_main
from vmambair.engine.dist import first_slurm_host, slurm_dist_env

from tests.apps.test_train_robustness import SIGNAL_MID_STEP_DRIVER
from tests.helpers import ROOT, free_port, losses_of, one_thread, tiny_options  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

SINGLE_STAGE = ["--set", "datasets.train.mini_gt_sizes=[16,16]", "--set", "val.val_freq=100"]



def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                    "MASTER_"))}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _wait(procs, timeout=300):
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def test_two_nodes_of_two_processes_match_one_process(tmp_path):
    one, four = tmp_path / "one", tmp_path / "four"
    one.mkdir(), four.mkdir()
    common = ["--set", "train.total_iter=2", *SINGLE_STAGE]
    assert train_main(["-opt", str(tiny_options(one)), *common, "--set", "datasets.train.mini_batch_sizes=[4,4]"]) == 0

    opt, port = tiny_options(four), free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
                               "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
                               str(ROOT / "train.py"), "-opt", str(opt), *common,
                               "--set", "datasets.train.mini_batch_sizes=[1,1]"],
                              cwd=four, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    results = _wait(procs)
    for code, stdout, stderr in results:
        assert code == 0, (stdout[-2000:], stderr[-3000:])
    assert "4 process(es) on cpu" in results[0][1]
    a, b = losses_of(one), losses_of(four)
    assert len(a) == len(b) == 2
    assert b == pytest.approx(a, rel=1e-4), (a, b)


def test_srun_variables_join_and_a_signal_to_one_rank_stops_both_at_one_iteration(tmp_path):
    opt, port = tiny_options(tmp_path), free_port()
    procs = []
    for rank in (0, 1):
        env = _env(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_JOB_NODELIST="localhost",
                   MASTER_PORT=str(port))
        if rank == 1:  # only rank 1 is signalled, in the middle of iteration 2
            env.update(SIGNAL_AT_ITER="2", SIGNAL_NAME="SIGTERM")
        else:
            env.update(SIGNAL_AT_ITER="-1", SIGNAL_NAME="SIGTERM")
        procs.append(subprocess.Popen([sys.executable, "-c", SIGNAL_MID_STEP_DRIVER, "-opt", str(opt),
                                       "--set", "train.total_iter=4", "--set", "logger.save_checkpoint_freq=10",
                                       *SINGLE_STAGE], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = _wait(procs)
    for code, stdout, stderr in results:
        assert code == 143, (code, stdout[-2000:], stderr[-3000:])
    assert "2 process(es) on cpu" in results[0][1]
    # The ranks vote each iteration and read the previous vote: both stop at iteration 3.
    for code, stdout, stderr in results:
        assert "stopped by SIGTERM at iteration 3" in stdout + stderr
    states = tmp_path / "experiments" / "tiny" / "training_states"
    assert sorted(p.name for p in states.glob("*.state")) == ["3.state"]


def test_slurm_variables():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    assert slurm_dist_env(env, 29501) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                          "MASTER_ADDR": "gpu07", "MASTER_PORT": "29501"}
    assert slurm_dist_env({**env, "MASTER_ADDR": "head", "MASTER_PORT": "4000"})["MASTER_ADDR"] == "head"
    assert slurm_dist_env({**env, "SLURM_NTASKS": "1"}) is None            # one task: a plain run
    assert slurm_dist_env({**env, "RANK": "0", "WORLD_SIZE": "2"}) is None  # torchrun inside SLURM wins
    assert first_slurm_host("node1,node2") == "node1" and first_slurm_host("a[3,5-6]b,c") == "a3b"
