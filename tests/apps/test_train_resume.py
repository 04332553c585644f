"""A run SIGKILLed while writing a checkpoint, then resumed with the same command, ends with
exactly the weights of an uninterrupted run (CPU, deterministic)."""
import signal

import pytest
import torch

from vmambair.apps.train import train_main

from tests.helpers import KILL_DURING_SAVE_DRIVER, ROOT, one_thread, run_script, tiny_options  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# 5 iterations crossing a progressive stage change (after 3), a checkpoint every iteration.
OVERRIDES = ["--set", "train.total_iter=5", "--set", "logger.save_checkpoint_freq=1", "--set", "val.val_freq=100"]


def test_sigkill_mid_write_then_resume_matches_uninterrupted(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir(), run_dir.mkdir()
    # The uninterrupted reference runs in this process (one thread, like the subprocesses).
    assert train_main(["-opt", str(tiny_options(ref_dir)), *OVERRIDES]) == 0

    opt = tiny_options(run_dir)
    cmd = [str(ROOT / "train.py"), "-opt", str(opt), *OVERRIDES]
    # The process SIGKILLs itself half-way through writing the training state of iteration 4
    # (a write hook installed by the driver, not a branch of the production writer).
    killed = run_script(["-c", KILL_DURING_SAVE_DRIVER, "-opt", str(opt), *OVERRIDES], cwd=run_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    states = run_dir / "experiments" / "tiny" / "training_states"
    assert sorted(p.name for p in states.glob("*.state")) == ["1.state", "2.state", "3.state"]
    assert list(states.glob(".4.state.*.tmp")), "the kill should have left a half-written temp file"

    resumed = run_script(cmd, cwd=run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stdout and "at iteration 3" in resumed.stdout
    assert not list(states.glob("*.tmp"))

    for key in ("params", "params_ema"):
        a = torch.load(ref_dir / "experiments/tiny/models/net_g_5.pth", weights_only=True)[key]
        b = torch.load(run_dir / "experiments/tiny/models/net_g_5.pth", weights_only=True)[key]
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{key}.{name} differs after resume"
    sa = torch.load(ref_dir / "experiments/tiny/training_states/5.state", weights_only=True)
    sb = torch.load(states / "5.state", weights_only=True)
    for name, value in sa["model"]["optimizers"]["optim_g"]["state"].items():
        assert torch.equal(value["exp_avg_sq"], sb["model"]["optimizers"]["optim_g"]["state"][name]["exp_avg_sq"])
