"""train.py end to end on CPU with a tiny VmambaIR: train -> checkpoint -> resume -> validate,
and the progressive schedule switching patch and batch size."""
import json

import pytest
import torch

import vmambair  # noqa: F401
from vmambair.engine.checkpoint import load_network_weights, safe_torch_load
from vmambair.apps.train import train_main

from tests.helpers import one_thread, tiny_options  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _records(exp):
    return [json.loads(line) for line in (exp / "train_log.jsonl").read_text().splitlines()]


def test_train_checkpoint_resume_validate(tmp_path, capsys):
    opt = tiny_options(tmp_path)  # stages: patch 16 x batch 2 for 3 iters, then patch 24 x batch 1
    assert train_main(["-opt", str(opt), "--set", "train.total_iter=4"]) == 0
    out = capsys.readouterr().out
    exp = tmp_path / "experiments" / "tiny"
    assert "stage 1/2 patch 16 batch 2x1" in out and "stage 2/2 patch 24 batch 1x1" in out
    assert "Progressive training: stage 2/2, GT patch 24, batch 1 per process, from iteration 4" in out
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["2.state", "4.state"]
    state = safe_torch_load(exp / "training_states" / "4.state")
    assert state["iter"] == 4 and state["stage"] == 1 and state["epoch_offset"] == 7  # 3x2 + 1x1 samples
    assert "Validation Rain100L (2 images) at iteration 3: psnr" in out

    # The same command with a longer schedule continues from iteration 4.
    assert train_main(["-opt", str(opt)]) == 0
    out = capsys.readouterr().out
    assert "at iteration 4 (epoch 0, stage 2)" in out and "iter 5/6" in out and "iter 1/6" not in out
    weights = torch.load(exp / "models" / "net_g_latest.pth", weights_only=True)
    assert set(weights) == {"params", "params_ema"}
    assert load_network_weights(exp / "models" / "net_g_6.pth", key="params_ema").keys() == weights["params"].keys()
    records = _records(exp)
    assert [r["iter"] for r in records if "l_pix" in r] == [1, 2, 3, 4, 5, 6]
    assert {r["iter"] for r in records if r.get("val") == "Rain100L"} == {3, 4, 6}
    assert all(r["psnr"] > 5 and 0 < r["ssim"] <= 1 for r in records if "val" in r)
    assert any((tmp_path / "tb_logger" / "tiny").iterdir())

    # Nothing left to do: a third run resumes at 6 and exits at once.
    assert train_main(["-opt", str(opt)]) == 0
    assert "finished at iteration 6" in capsys.readouterr().out


def test_no_resume_archives_and_restarts(tmp_path, capsys):
    opt = tiny_options(tmp_path, total_iter=1)
    assert train_main(["-opt", str(opt), "--set", "val=null"]) == 0
    assert train_main(["-opt", str(opt), "--set", "val=null", "--no-resume"]) == 0
    assert "iter 1/1" in capsys.readouterr().out
    assert len(list((tmp_path / "experiments").glob("tiny_archived_*"))) == 1


def test_profile_iters_and_data_wait(tmp_path, capsys):
    """logger.profile_iters writes a kernel/op-time summary of those iterations; every progress
    record says how long the loop waited for data; a bad span is an options error."""
    opt = tiny_options(tmp_path, total_iter=3)
    assert train_main(["-opt", str(opt), "--set", "val=null", "--set", "logger.profile_iters=[2,3]"]) == 0
    exp = tmp_path / "experiments" / "tiny"
    text = (exp / "profile_iters.md").read_text()
    assert "iterations 2-3" in text and "ms per iteration" in text
    assert "Ops behind the copy and fill kernels" in text and "`aten::" in text
    records = [r for r in _records(exp) if "l_pix" in r]
    assert records and all(r["data_ms"] >= 0 for r in records)
    assert "data wait" in capsys.readouterr().out
    assert train_main(["-opt", str(opt), "--set", "val=null", "--no-resume",
                       "--set", "logger.profile_iters=[3,2]"]) == 2
    assert "logger.profile_iters" in capsys.readouterr().err


def test_corrupt_training_image_stops_with_its_name(tmp_path, capsys):
    opt = tiny_options(tmp_path, total_iter=2)
    bad = tmp_path / "Datasets" / "train" / "Rain13K" / "input" / "3.png"
    bad.write_bytes(b"not a png")
    # 4 iterations of batch 2 draw all 8 images, so the bad one is hit.
    assert train_main(["-opt", str(opt), "--set", "train.total_iter=4", "--set", "val=null",
                       "--set", "datasets.train.mini_batch_sizes=[2,2]"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "corrupt" in err


def test_pickled_checkpoint_is_refused(tmp_path):
    import argparse

    import pytest

    from vmambair.engine.checkpoint import CheckpointError, load_network_weights
    path = tmp_path / "unsafe.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "args": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_network_weights(path)


@pytest.mark.cuda
def test_cuda_graph_training_through_progressive_stages_and_resume(tmp_path, capsys):
    """train.cuda_graph on a GPU: records a graph per stage (patch 16 x 2, then 24 x 1), trains,
    checkpoints and resumes; the losses are finite and match an eager run of the same seed."""
    opt = tiny_options(tmp_path)
    common = ["-opt", str(opt), "--set", "num_gpu=1", "--set", "val=null", "--set", "train.deterministic=false"]
    assert train_main(common + ["--set", "train.total_iter=4", "--set", "train.cuda_graph=true"]) == 0
    assert train_main(common + ["--set", "train.cuda_graph=true"]) == 0  # resumes at 4, runs 5 and 6
    graphed = [r["l_pix"] for r in _records(tmp_path / "experiments" / "tiny") if "l_pix" in r]
    assert "at iteration 4" in capsys.readouterr().out
    assert train_main(common + ["--set", "name=eager"]) == 0
    eager = [r["l_pix"] for r in _records(tmp_path / "experiments" / "eager") if "l_pix" in r]
    assert len(graphed) == len(eager) == 6
    assert graphed == pytest.approx(eager, rel=2e-2)  # bf16 autocast, non-deterministic atomics


def test_batch_of_one_stage_is_compiled_at_the_start(tmp_path, monkeypatch):
    """A schedule whose later stage has a batch of 1 asks the model to compile that stage's input
    size before the first step (on CPU nothing is compiled, so the model reports False and the
    trainer logs nothing); a schedule without one does not ask."""
    from vmambair.models.base_model import BaseModel
    calls = []
    monkeypatch.setattr(BaseModel, "compile_ahead", lambda self, shape: calls.append(tuple(shape)) or False)
    opt = tiny_options(tmp_path, total_iter=4)  # stages: batch 2 at 16 px, then batch 1 at 24 px
    assert train_main(["-opt", str(opt), "--set", "val=null"]) == 0
    assert calls == [(1, 3, 24, 24)]
    calls.clear()
    assert train_main(["-opt", str(opt), "--set", "val=null", "--no-resume",
                       "--set", "datasets.train.mini_batch_sizes=[2,2]"]) == 0
    assert calls == []
