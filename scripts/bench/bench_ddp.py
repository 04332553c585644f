"""Multi-GPU check and throughput of train.py: 1 GPU vs N GPUs (torchrun), synthetic data.

Runs the real ``train.py`` (deraining network and recipe, progressive stage 1: 128 px patches)
on generated paired images:

1. ``throughput-1``: 1 GPU, batch B per GPU;
2. ``throughput-N`` for each N of ``--gpus``: ``torchrun --nproc_per_node=N``, batch B per GPU
   (global N*B);
3. ``agreement-1`` / ``agreement-N`` (largest N; ``--agree-steps 0`` skips them): 1 GPU with batch
   N*b against N GPUs with batch b each (the same global batch, the same samples and crops),
   compared iteration by iteration.

and writes the record ``benchmarks/data/ddp_scaling.json`` (``--out`` also Markdown): it/s and images/s of 1 and N GPUs (speed-up, scaling efficiency), and the
per-iteration losses of the same-global-batch pair with their relative difference (on GPU, bf16
and non-deterministic kernels make them agree to ~1e-3, not bit-exactly).

Usage (GPU machine)::

    python scripts/bench/bench_ddp.py --gpus 2 --steps 100
    python scripts/bench/bench_ddp.py --gpus 2 4 --agree-steps 0 --compile --cuda-graph   # as the recipes train
    python scripts/bench/bench_ddp.py --tiny --cpu --steps 6      # smoke test on CPU (gloo)
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import bench_record  # noqa: E402  (scripts/bench)

ROOT = Path(__file__).resolve().parents[2]  # the repository (this file is scripts/bench/)


def recipe_network() -> dict:
    """network_g of the deraining recipe, read from options/derain.yml (so the benchmark trains the
    network the recipe trains, activation_checkpointing included)."""
    import yaml
    with open(ROOT / "options" / "derain.yml") as f:
        return yaml.safe_load(f)["network_g"]


TRAIN_EXTRA: dict = {}  # train options from --compile / --cuda-graph, for every run


def make_data(folder: Path, count: int, size: int) -> None:
    """Paired PNGs: smooth random target, input = target + bright streaks."""
    import cv2
    rng = np.random.default_rng(0)
    for sub in ("input", "target"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        small = rng.integers(0, 256, (size // 16, size // 16, 3)).astype(np.uint8)
        target = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        streaks = (rng.random((size, size)) < 0.02).astype(np.float32)
        streaks = cv2.filter2D(streaks, -1, np.eye(9, dtype=np.float32) / 3)[..., None] * 120
        lq = np.clip(target.astype(np.float32) + streaks, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "target" / f"{i}.png"), target)
        cv2.imwrite(str(folder / "input" / f"{i}.png"), lq)


PROFILE: dict = {}  # logger.profile_iters from --profile, for the throughput runs


def write_options(work: Path, name: str, net: dict, patch: int, batch: int, steps: int, print_freq: int,
                  workers: int, num_gpu, profile: bool = False) -> Path:
    import yaml
    opt = {
        "name": name, "model_type": "ImageRestorationModel", "scale": 1, "num_gpu": num_gpu, "manual_seed": 100,
        "datasets": {"train": {"name": "synthetic", "type": "PairedImageFolderDataset",
                               "dataroot_gt": str(work / "data" / "target"), "dataroot_lq": str(work / "data" / "input"),
                               "gt_size": patch, "batch_size_per_gpu": batch, "num_worker_per_gpu": workers,
                               "dataset_enlarge_ratio": 100}},
        "network_g": net,
        "path": {"root": str(work)},
        "train": {"total_iter": steps, "optim_g": {"type": "AdamW", "lr": 3e-4, "weight_decay": 1e-4,
                                                  "betas": [0.9, 0.999]},
                  "scheduler": {"type": "CosineAnnealingRestartCyclicLR", "periods": [92000, 208000],
                                "restart_weights": [1, 1], "eta_mins": [3e-4, 1e-6]},
                  "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0}, "clip_grad_norm": 0.01, "bf16": True},
        "logger": {"print_freq": print_freq, "save_checkpoint_freq": 10 ** 9, "use_tb_logger": False},
    }
    opt["train"].update(TRAIN_EXTRA)
    if profile:
        opt["logger"].update(PROFILE)
    path = work / f"{name}.yml"
    path.write_text(yaml.safe_dump(opt))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(work: Path, name: str, procs: int, opt: Path, cpu: bool) -> list:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if not cpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(procs))
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
    if procs == 1:
        cmd = [sys.executable, str(ROOT / "train.py"), "-opt", str(opt), "--no-resume"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--nnodes=1",
               f"--master_port={_free_port()}", str(ROOT / "train.py"), "-opt", str(opt), "--no-resume"]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"[{name}] failed with exit code {proc.returncode}")
    print(f"[{name}] done in {time.time() - start:.0f} s", flush=True)
    log = work / "experiments" / name / "train_log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, nargs="+", default=[2],
                   help="GPU counts (processes) of the multi-GPU runs, e.g. 2 4 (one 1-GPU baseline for all).")
    p.add_argument("--steps", type=int, default=100, help="Iterations per throughput run.")
    p.add_argument("--batch", type=int, default=8, help="Per-GPU batch of the throughput runs (recipe stage 1: 8).")
    p.add_argument("--agree-batch", type=int, default=4, help="Per-GPU batch of the N-GPU agreement run.")
    p.add_argument("--agree-steps", type=int, default=20,
                   help="Iterations of the agreement runs (largest GPU count only); 0 skips them.")
    p.add_argument("--patch", type=int, default=128, help="GT patch size (recipe stage 1: 128).")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers per GPU.")
    p.add_argument("--agree-only", action="store_true", help="Skip the throughput runs.")
    p.add_argument("--tiny", action="store_true", help="Tiny network (smoke test).")
    p.add_argument("--cpu", action="store_true", help="Run on CPU with gloo (smoke test).")
    bench_record.add_output_args(p, "ddp_scaling")
    p.add_argument("--workdir", default=None, help="Scratch folder (default: a temporary one).")
    p.add_argument("--compile", action="store_true", help="Every run with train.compile: true.")
    p.add_argument("--cuda-graph", action="store_true", help="Every run with train.cuda_graph: true.")
    p.add_argument("--profile", action="store_true",
                   help="Profile 4 iterations of each throughput run's first (untimed) print window on rank 0 and "
                        "append the GPU-time summaries (logger.profile_iters).")
    a = p.parse_args()
    TRAIN_EXTRA.update({k: True for k, on in (("compile", a.compile), ("cuda_graph", a.cuda_graph)) if on})
    counts = sorted(set(a.gpus))
    if counts[0] < 2:
        raise SystemExit(f"bench_ddp.py: --gpus {a.gpus}: every count must be at least 2 (1 GPU is always run as "
                         "the baseline)")
    if a.agree_only and a.agree_steps <= 0:
        raise SystemExit("bench_ddp.py: --agree-only with --agree-steps 0 would run nothing")

    import torch
    if not a.cpu and torch.cuda.device_count() < counts[-1]:
        raise SystemExit(f"bench_ddp.py: --gpus {counts[-1]} but this machine has {torch.cuda.device_count()} "
                         "GPU(s); pass smaller counts")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="vmambair_bench_ddp_"))
    make_data(work / "data", 64, max(256, a.patch))
    net = recipe_network()
    if a.tiny:
        net = dict(net, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    num_gpu = 0 if a.cpu else "auto"
    pf = max(1, min(10, a.steps // 5))
    if a.profile:
        if pf < 6:
            raise SystemExit("bench_ddp.py: --profile needs --steps 30 or more (it profiles iterations inside the "
                             "first, untimed print window)")
        PROFILE["profile_iters"] = [pf - 4, pf - 1]
    profiles = []

    def throughput_run(n):
        name = f"throughput-{n}"
        records = run(work, name, n, write_options(work, name, net, a.patch, a.batch, a.steps, pf, a.workers,
                                                   num_gpu, profile=a.profile), a.cpu)
        prof = work / "experiments" / name / "profile_iters.md"
        if a.profile and prof.is_file():
            profiles.append(prof.read_text())
            print(profiles[-1], flush=True)
        print(f"[{name}] {rate(records):.2f} it/s, data wait {data_wait(records):.1f} ms/it", flush=True)
        return records

    def data_wait(records):
        waits = [r["data_ms"] for r in records if "data_ms" in r][1:] or [0.0]
        return statistics.median(waits)

    def rate(records):
        # Skip the first window (CUDA init, compilation, graph recording, first workers).
        rates = [r["it_per_s"] for r in records if "it_per_s" in r][1:] or [r["it_per_s"] for r in records]
        return statistics.median(rates)

    tp_rows, eff_N = [], None
    if not a.agree_only:
        rec1 = throughput_run(1)
        r1 = rate(rec1)
        img1 = r1 * a.batch
        tp_rows = [f"| 1 | {a.batch} | {a.batch} | {r1:.2f} | {1000 / r1:.1f} | {data_wait(rec1):.1f} | {img1:.1f} "
                   f"| 1.00x | 1.00 |"]
        for n in counts:
            recN = throughput_run(n)
            rN = rate(recN)
            imgN = rN * a.batch * n
            tp_rows.append(f"| {n} | {a.batch} | {a.batch * n} | {rN:.2f} | {1000 / rN:.1f} | {data_wait(recN):.1f} "
                           f"| {imgN:.1f} | {imgN / img1:.2f}x | {imgN / (n * img1):.2f} |")
            eff_N = imgN / (n * img1)  # of the largest count, last

    N = counts[-1]
    device = "CPU (gloo)" if a.cpu else (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "?")
    title = " / ".join(str(n) for n in counts)
    lines = [
        f"# Multi-GPU training: 1 vs {title} GPUs", "",
        f"Generated by `python scripts/bench/bench_ddp.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')}, "
        f"device: {N} x {device}, torch {torch.__version__}.", "",
        f"Network: {'tiny test net' if a.tiny else 'deraining VmambaIR, network_g of options/derain.yml'}; "
        f"recipe stage 1: {a.patch} px GT patches, AdamW, L1, grad clip 0.01, bf16 autocast where supported"
        f"{''.join(', train.' + k for k in TRAIN_EXTRA)}; "
        f"synthetic paired PNGs, {a.workers} loader workers per GPU; median over print windows after the first.", "",
        "## Throughput", "",
        "| GPUs | batch / GPU | global batch | it/s | ms / it | data wait ms / it (rank 0) | images/s | speed-up "
        "| scaling efficiency |",
        "|---|---|---|---|---|---|---|---|---|",
    ] + (tp_rows or ["| (skipped: --agree-only) | | | | | | | | |"]) + [""]
    if profiles:
        lines += ["## Where the time goes (rank 0, iterations %d-%d of each throughput run, torch.profiler)" %
                  tuple(PROFILE["profile_iters"]), ""] + profiles

    if a.agree_steps > 0:
        ag1 = run(work, "agreement-1", 1, write_options(work, "agreement-1", net, a.patch, a.agree_batch * N,
                                                         a.agree_steps, 1, a.workers, num_gpu), a.cpu)
        # Control: the same 1-GPU run again. On a GPU, bf16 and atomics make runs differ in the last
        # bits, and Adam's first steps (update ~ lr * sign(g)) magnify that; the N-GPU run can only be
        # expected to agree with 1 GPU as closely as 1 GPU agrees with itself.
        ag1b = run(work, "agreement-1-repeat", 1, write_options(work, "agreement-1-repeat", net, a.patch,
                                                                a.agree_batch * N, a.agree_steps, 1, a.workers,
                                                                num_gpu), a.cpu)
        agN = run(work, f"agreement-{N}", N, write_options(work, f"agreement-{N}", net, a.patch, a.agree_batch,
                                                            a.agree_steps, 1, a.workers, num_gpu), a.cpu)
        loss1 = [r["l_pix"] for r in ag1 if "l_pix" in r]
        lossN = [r["l_pix"] for r in agN if "l_pix" in r]
        loss1b = [r["l_pix"] for r in ag1b if "l_pix" in r]
        lines += [
            "## Loss agreement at the same global batch", "",
            f"1 GPU with batch {a.agree_batch * N} vs {N} GPUs with batch {a.agree_batch} each (same samples, same "
            f"crops: the sampler gives rank r positions r, r+{N}, ... of one epoch order).", "",
            "| iter | loss, 1 GPU | loss, %d GPUs | rel. diff, %d vs 1 GPU | loss, 1 GPU again | rel. diff, 1 vs 1 GPU |"
            % (N, N), "|---|---|---|---|---|---|",
        ]
        worst = worst_ctrl = 0.0
        for i, (x, y, z) in enumerate(zip(loss1, lossN, loss1b), 1):
            rel, ctrl = abs(x - y) / max(abs(x), 1e-12), abs(x - z) / max(abs(x), 1e-12)
            worst, worst_ctrl = max(worst, rel), max(worst_ctrl, ctrl)
            lines.append(f"| {i} | {x:.6f} | {y:.6f} | {rel:.2e} | {z:.6f} | {ctrl:.2e} |")
        lines += ["", f"Largest relative difference: {N} vs 1 GPU {worst:.2e}; 1 GPU vs itself {worst_ctrl:.2e}.", ""]
    print("\n".join(lines))
    figures = {"gpus": N, "scaling_efficiency": round(eff_N, 3)} if eff_N is not None else None
    bench_record.write_outputs(a, "\n".join(lines), "Multi-GPU training", figures=figures)


if __name__ == "__main__":
    main()
