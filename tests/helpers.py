"""Shared helpers of the training / data / test.py tests: tiny generated paired data and a tiny
options file (VmambaIR dim 8, blocks [1,1,1,1], one refinement block)."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]  # the repository root

TINY_NET = {"type": "VmambaIR", "in_channels": 3, "out_channels": 3, "dim": 8, "num_blocks": [1, 1, 1, 1],
            "num_refinement_blocks": 1, "scale": 1, "ffn_expansion_factor": 2.66}


def make_pairs(folder: Path, n: int, size=(24, 24), seed: int = 0) -> Path:
    """Write ``n`` paired PNGs (target = smooth image, input = target + streaks) under
    ``folder/{input,target}``; returns ``folder``."""
    rng = np.random.default_rng(seed)
    (folder / "input").mkdir(parents=True, exist_ok=True)
    (folder / "target").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([128 + 100 * np.sin(xx / (3 + i) + c) * np.cos(yy / 5) for c in range(3)], -1)
        target = np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8)
        rain = (rng.random((h, w)) < 0.05)[..., None] * 80
        lq = np.clip(target.astype(int) + rain, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "target" / f"{i}.png"), target)
        cv2.imwrite(str(folder / "input" / f"{i}.png"), lq)
    return folder


def tiny_options(tmp: Path, name: str = "tiny", total_iter: int = 6, **over) -> Path:
    """A tiny deraining options file under ``tmp`` (data in tmp/Datasets); returns its path."""
    data = tmp / "Datasets"
    if not (data / "train").exists():
        make_pairs(data / "train" / "Rain13K", 8, seed=1)
        make_pairs(data / "test" / "Rain100L", 2, size=(20, 28), seed=2)
    opt = {
        "name": name, "model_type": "ImageRestorationModel", "scale": 1, "num_gpu": 0, "manual_seed": 7,
        "datasets": {
            "train": {"name": "Rain13K", "type": "PairedImageFolderDataset", "dataroot_gt": "train/Rain13K/target",
                      "dataroot_lq": "train/Rain13K/input", "mini_gt_sizes": [16, 24], "mini_batch_sizes": [2, 1],
                      "iters": [3, 3], "gt_size": 24, "num_worker_per_gpu": 0},
            "val": {"name": "Rain100L", "type": "PairedImageFolderDataset", "dataroot_gt": "test/Rain100L/target",
                    "dataroot_lq": "test/Rain100L/input"}},
        "network_g": dict(TINY_NET),
        "path": {"root": str(tmp), "data_root": str(data)},
        "train": {"total_iter": total_iter, "optim_g": {"type": "AdamW", "lr": 3e-4, "weight_decay": 1e-4,
                                                        "betas": [0.9, 0.999]},
                  "scheduler": {"type": "CosineAnnealingRestartCyclicLR", "periods": [3, 3],
                                "restart_weights": [1, 1], "eta_mins": [3e-4, 1e-6]},
                  "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0}, "clip_grad_norm": 0.01,
                  "ema_decay": 0.9, "deterministic": True},
        "val": {"val_freq": 3, "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 0, "test_y_channel": True},
                                           "ssim": {"type": "calculate_ssim", "crop_border": 0, "test_y_channel": True}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": True, "keep_training_states": None},
    }
    for key, value in over.items():
        set_nested(opt, key.split("__"), value)
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(opt))
    return path


def set_nested(options: dict, keys, value) -> None:
    """``options[k0][k1]...[kn] = value`` for the key path ``keys`` (the sections must exist)."""
    node = options
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value


# `python -c` driver: train.py whose write of training state 4 stops half-way and SIGKILLs the
# process, exactly as a kill mid-write would.
KILL_DURING_SAVE_DRIVER = """
import os, signal, sys
import vmambair.utils.fileio as fileio
def kill_half_way(path, f, data):
    if path.name == "4.state":
        f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
fileio.set_write_hook(kill_half_way)
from vmambair.apps.train import train_main
sys.exit(train_main(sys.argv[1:]))
"""


def losses_of(root: Path, name: str = "tiny", key: str = "l_pix") -> list:
    """The training losses ``key`` logged in ``root/experiments/<name>/train_log.jsonl``, in order."""
    import json
    lines = (root / "experiments" / name / "train_log.jsonl").read_text().splitlines()
    return [json.loads(x)[key] for x in lines if key in json.loads(x)]


def free_port() -> int:
    """A TCP port on localhost that is free now (for torchrun's rendezvous)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(args, cwd, env=None, timeout=300):
    """Run ``python <args>`` (or torchrun) from the repo root as a subprocess; returns CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny networks on a busy 2-core machine run ~10x faster on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
