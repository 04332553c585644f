"""Training that survives what clusters and long runs do to it, on CPU with the tiny network:

* SIGTERM mid-step: the step finishes, a training state is saved at that iteration, the process
  exits 143, and re-running the same command ends with exactly the weights of an uninterrupted
  run; Ctrl+C to the whole process group (DataLoader workers too) saves and exits 130;
* a non-finite loss skips the optimizer step (weights, optimizer and EMA untouched) and is
  logged; ``train.max_nonfinite_steps`` of them in a row stop the run with an error, the newest
  training state being one written before them;
* gradient accumulation: batch 4 x 2 micro-batches gives the weights of batch 8 x 1;
* the options: precision / bf16 alias, accumulate, wandb keys, the missing-wandb error.
"""
import json
import re
import signal

import pytest
import torch
import torch.nn.functional as F

import vmambair  # noqa: F401
from basicsr.utils.registry import LOSS_REGISTRY
from vmambair.apps.train import train_main
from vmambair.config import OptionsError, load_options

from tests.helpers import ROOT, one_thread, run_script, tiny_options  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# `python -c` driver: train.py that sends itself a signal in the middle of iteration N's step
# (before the model's optimize_parameters runs), as a scheduler's SIGTERM or a Ctrl+C would.
SIGNAL_MID_STEP_DRIVER = """
import os, signal, sys
from vmambair.models.restoration_model import ImageRestorationModel
at, name = os.environ["SIGNAL_AT_ITER"], os.environ["SIGNAL_NAME"]
original = ImageRestorationModel.optimize_parameters
def optimize_parameters(self, iteration, *args, **kwargs):
    if iteration == int(at):
        os.kill(os.getpid(), getattr(signal, name))
    return original(self, iteration, *args, **kwargs)
ImageRestorationModel.optimize_parameters = optimize_parameters
from vmambair.apps.train import train_main
sys.exit(train_main(sys.argv[1:]))
"""

OVERRIDES = ["--set", "train.total_iter=5", "--set", "logger.save_checkpoint_freq=2", "--set", "val.val_freq=100"]


def _weights(root, iteration):
    return torch.load(root / f"experiments/tiny/models/net_g_{iteration}.pth", weights_only=True)


def _assert_same_weights(a, b):
    for key in ("params", "params_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"


def test_sigterm_saves_exits_143_and_resume_is_bit_identical(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir(), run_dir.mkdir()
    assert train_main(["-opt", str(tiny_options(ref_dir)), *OVERRIDES]) == 0

    opt = tiny_options(run_dir)
    args = ["-c", SIGNAL_MID_STEP_DRIVER, "-opt", str(opt), *OVERRIDES]
    states = run_dir / "experiments" / "tiny" / "training_states"
    # SIGTERM during iteration 3 (not a checkpoint iteration): state 3 is written, exit 143.
    term = run_script(args, cwd=run_dir, env={"SIGNAL_AT_ITER": "3", "SIGNAL_NAME": "SIGTERM"})
    assert term.returncode == 143, (term.stdout[-2000:], term.stderr[-3000:])
    assert "Received SIGTERM" in term.stdout and "re-run the same command" in term.stdout
    assert sorted(p.name for p in states.glob("*.state")) == ["2.state", "3.state"]
    assert torch.load(states / "3.state", weights_only=True)["iter"] == 3
    assert not list(states.glob("*.tmp"))
    # The same command again (no signal) resumes at 3 and finishes the run.
    done = run_script([str(ROOT / "train.py"), "-opt", str(opt), *OVERRIDES], cwd=run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "at iteration 3" in done.stdout
    _assert_same_weights(_weights(ref_dir, 5), _weights(run_dir, 5))


def test_ctrl_c_to_the_process_group_with_dataloader_workers(tmp_path):
    """A terminal's Ctrl+C (and SLURM's scancel, with SIGTERM) signals every process of the job,
    DataLoader workers included: the run still saves and exits 130, and leaves no process behind."""
    import os
    import subprocess
    import sys
    import time
    opt = tiny_options(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-opt", str(opt), "--set", "train.total_iter=100000",
                             "--set", "datasets.train.num_worker_per_gpu=2", "--set", "val.val_freq=100000"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    log = tmp_path / "experiments" / "tiny" / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (out[-2000:], err[-3000:])
    assert out.count("Received SIGINT") == 1
    stopped = int(re.search(r"stopped by SIGINT at iteration (\d+);", out).group(1))
    assert (tmp_path / "experiments" / "tiny" / "training_states" / f"{stopped}.state").is_file()
    with pytest.raises(ProcessLookupError):  # the whole group is gone
        os.killpg(proc.pid, 0)


# ----------------------------------------------------------------------------- NaN guard
if "NaNAtCallsL1Loss" not in LOSS_REGISTRY:
    @LOSS_REGISTRY.register()
    class NaNAtCallsL1Loss(torch.nn.Module):
        """Test-only: L1 loss that returns NaN on the given (1-based) calls."""

        def __init__(self, nan_calls=(), loss_weight=1.0):
            super().__init__()
            self.nan_calls, self.calls = set(nan_calls), 0

        def forward(self, pred, target):
            self.calls += 1
            loss = F.l1_loss(pred, target)
            return loss * float("nan") if self.calls in self.nan_calls else loss


def _records(root):
    lines = (root / "experiments" / "tiny" / "train_log.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_nonfinite_loss_skips_the_step_and_is_logged(tmp_path, capsys):
    opt = tiny_options(tmp_path)
    over = ["--set", "train.pixel_opt={type: NaNAtCallsL1Loss, nan_calls: [3]}", "--set", "train.total_iter=4",
            "--set", "logger.save_checkpoint_freq=1", "--set", "val.val_freq=100"]
    assert train_main(["-opt", str(opt), *over]) == 0
    out = capsys.readouterr().out
    assert "Iteration 3: non-finite loss or gradient (l_pix nan); optimizer step skipped (1 in a row of at most 10" in out
    assert "Not saving at iteration 3" in out and not (tmp_path / "experiments/tiny/models/net_g_3.pth").exists()
    w2, w4 = _weights(tmp_path, 2)["params"], _weights(tmp_path, 4)["params"]
    assert any(not torch.equal(w2[k], w4[k]) for k in w2)  # iteration 4 trained on
    assert all(torch.isfinite(v).all() for v in w4.values())
    assert {"iter": 3, "nonfinite_step": True, "streak": 1} in _records(tmp_path)
    state = torch.load(tmp_path / "experiments/tiny/training_states/4.state", weights_only=True)
    assert state["nonfinite_steps"] == 1


@pytest.mark.parametrize("fused", [False, True])
def test_nonfinite_step_leaves_weights_ema_and_optimizer_untouched(tmp_path, fused):
    """Plain AdamW skips on the host; fused AdamW (the CUDA default) skips on the device through
    its found_inf flag, with the EMA's weight zeroed there too."""
    from basicsr.utils.registry import MODEL_REGISTRY
    from vmambair.engine.dist import DistContext

    opt = load_options(tiny_options(tmp_path), ["train.pixel_opt={type: NaNAtCallsL1Loss, nan_calls: [2]}",
                                                f"train.optim_g.fused={str(fused).lower()}"])
    model = MODEL_REGISTRY.get(opt.model_type)(opt, DistContext())
    batch = {"lq": torch.rand(2, 3, 16, 16), "gt": torch.rand(2, 3, 16, 16)}
    model.feed_data(batch)
    model.optimize_parameters(1)  # a good step: optimizer moments exist
    assert not model.step_skipped
    before = {k: v.clone() for k, v in model.state_dict()["networks"]["net_g"].items()}
    ema = {k: v.clone() for k, v in model.ema["net_g"].state_dict().items()}
    moments = {k: v["exp_avg"].clone() for k, v in model.optimizers["optim_g"].state_dict()["state"].items()}
    losses = model.optimize_parameters(2)  # NaN loss
    assert model.step_skipped and torch.isnan(losses["l_pix"])
    for k, v in model.networks["net_g"].state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in model.ema["net_g"].state_dict().items():
        assert torch.equal(v, ema[k]), k
    for k, v in model.optimizers["optim_g"].state_dict()["state"].items():
        assert torch.equal(v["exp_avg"], moments[k]) and float(v["step"]) == 1.0
    model.optimize_parameters(3)
    assert not model.step_skipped
    assert any(not torch.equal(v, before[k]) for k, v in model.networks["net_g"].state_dict().items())


def test_too_many_nonfinite_steps_stop_with_the_last_good_state(tmp_path, capsys):
    opt = tiny_options(tmp_path)
    over = ["--set", "train.pixel_opt={type: NaNAtCallsL1Loss, nan_calls: [3, 4, 5, 6]}",
            "--set", "train.max_nonfinite_steps=3", "--set", "train.total_iter=6",
            "--set", "logger.save_checkpoint_freq=1", "--set", "val.val_freq=100"]
    assert train_main(["-opt", str(opt), *over]) == 1
    captured = capsys.readouterr()
    assert "Training stopped at iteration 5: 3 optimizer steps in a row had a non-finite loss" in captured.err
    assert "2.state" in captured.err and "train.max_nonfinite_steps = 3" in captured.err
    states = tmp_path / "experiments/tiny/training_states"
    assert sorted(p.name for p in states.glob("*.state")) == ["1.state", "2.state"]
    _assert_same_weights(_weights(tmp_path, 2), torch.load(tmp_path / "experiments/tiny/models/net_g_latest.pth",
                                                           weights_only=True))


# ----------------------------------------------------------------------------- accumulation
def test_accumulation_matches_the_larger_batch(tmp_path):
    """Batch 4 x 2 micro-batches and batch 8 x 1, from the same seed, see the same 8 samples
    with the same crops per iteration and end with the same weights (float noise apart)."""
    runs = {}
    for name, batch, k in (("big", 8, 1), ("acc", 4, 2)):
        root = tmp_path / name
        root.mkdir()
        over = ["--set", "train.total_iter=3", "--set", f"train.accumulate={k}", "--set", "val.val_freq=100",
                "--set", f"datasets.train.mini_batch_sizes=[{batch},{batch}]", "--set", "train.ema_decay=0",
                # Plain SGD without clipping: a wrong gradient scale (e.g. a sum instead of a mean
                # over micro-batches) would change the update; Adam and clipping would hide it.
                "--set", "train.optim_g={type: SGD, lr: 0.5}", "--set", "train.clip_grad_norm=null"]
        assert train_main(["-opt", str(tiny_options(root)), *over]) == 0
        runs[name] = (_weights(root, 3)["params"], [r["l_pix"] for r in _records(root) if "l_pix" in r])
    (wa, la), (wb, lb) = runs["big"], runs["acc"]
    assert lb == pytest.approx(la, rel=1e-5)
    moved = 0
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-6)
    # The check can fail: the weights moved from their initial values.
    init = _weights(tmp_path / "big", 2)["params"]
    moved = sum(not torch.equal(init[k], wa[k]) for k in wa)
    assert moved > 0


def test_gan_step_accumulates_both_networks(tmp_path):
    """The GAN step over 2 micro-batches updates G and D once each, with finite losses averaged
    over the micro-batches; NaN targets skip the step, D's weights untouched."""
    from basicsr.utils.registry import MODEL_REGISTRY
    from vmambair.engine.dist import DistContext
    from tests.models.test_sr import _paired_gan_options
    model = MODEL_REGISTRY.get("SRGANRestorationModel")(load_options(_paired_gan_options(tmp_path),
                                                                     ["train.accumulate=2"]), DistContext())
    torch.manual_seed(0)
    micro = [{"lq": torch.rand(2, 3, 8, 8), "gt": torch.rand(2, 3, 32, 32)} for _ in range(2)]
    g0 = [p.detach().clone() for p in model.networks["net_g"].parameters()]
    d0 = [p.detach().clone() for p in model.networks["net_d"].parameters()]
    losses = model.optimize_parameters(1, micro)
    assert not model.step_skipped and all(torch.isfinite(v) for v in losses.values())
    assert {"l_g_pix", "l_g_gan", "l_d_real", "l_d_fake"} <= set(losses)
    assert any(not torch.equal(a, b) for a, b in zip(g0, model.networks["net_g"].parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, model.networks["net_d"].parameters()))
    g1 = [p.detach().clone() for p in model.networks["net_g"].parameters()]
    d1 = [p.detach().clone() for p in model.networks["net_d"].parameters()]
    bad = [dict(micro[0], gt=micro[0]["gt"].clone().fill_(float("nan"))), micro[1]]  # NaN real images reach D
    model.optimize_parameters(2, bad)
    assert model.step_skipped
    assert all(torch.equal(a, b) for a, b in zip(d1, model.networks["net_d"].parameters()))


# ----------------------------------------------------------------------------- options
def test_precision_options_and_bf16_alias(tmp_path):
    opt = tiny_options(tmp_path)
    assert load_options(opt).train.precision == "bf16" and load_options(opt).train.bf16 is True
    assert load_options(opt, ["train.bf16=false"]).train.precision == "fp32"
    t = load_options(opt, ["train.precision=fp16"]).train
    assert (t.precision, t.bf16) == ("fp16", False)
    with pytest.raises(OptionsError, match="'train.precision: fp16' and 'train.bf16: true' disagree"):
        load_options(opt, ["train.precision=fp16", "train.bf16=true"])
    with pytest.raises(OptionsError, match="'train.precision' is 'fp8'; use one of bf16, fp16, fp32"):
        load_options(opt, ["train.precision=fp8"])
    with pytest.raises(OptionsError, match="'train.accumulate' must be >= 1"):
        load_options(opt, ["train.accumulate=0"])
    with pytest.raises(OptionsError, match="Unknown option 'logger.wandb.projcet'. Did you mean 'project'"):
        load_options(opt, ["logger.wandb={projcet: x}"])


def test_missing_wandb_package_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, installed or not
    opt = tiny_options(tmp_path)
    assert train_main(["-opt", str(opt), "--set", "logger.wandb={project: vmambair-test}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert 'needs the wandb package: pip install -e ".[wandb]"' in err
    assert not (tmp_path / "experiments" / "tiny" / "models" / "net_g_2.pth").exists()


def test_wandb_offline_logs_and_a_resumed_run_keeps_its_id(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")  # optional extra: pip install -e ".[wandb]"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    opt = tiny_options(tmp_path)
    over = ["--set", "logger.wandb={project: vmambair-test}", "--set", "val.val_freq=2", "--set", "val.num_tb_images=1"]
    assert train_main(["-opt", str(opt), *over, "--set", "train.total_iter=2"]) == 0
    exp = tmp_path / "experiments" / "tiny"
    run_id = torch.load(exp / "training_states" / "2.state", weights_only=True)["wandb_run_id"]
    runs = list((exp / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert train_main(["-opt", str(opt), *over, "--set", "train.total_iter=4"]) == 0
    assert torch.load(exp / "training_states" / "4.state", weights_only=True)["wandb_run_id"] == run_id
    assert len(list((exp / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # the same run id, resumed
    del wandb
