#!/usr/bin/env python
"""How far each freshly initialised deraining network's output is from its input (CPU).

    python scripts/bench/initial_output.py                                  # ours: VmambaIR, V1-V4
    python scripts/bench/initial_output.py --original .authors/VmambaIR     # + the authors' Mamber33 / Mamber32

A deraining network starts as ``input + body(input)``; its first L1 loss against a clean image
is about the mean |body(input)| when that is large. This measures, for several seeds of the
initial weights, the mean and standard deviation of ``output - input`` on smooth random images in
[0, 1] (batch 2 x 64x64), for our configuration of options/derain.yml, its ablations V1-V4, our
code built as the authors' two deraining networks, and
(with ``--original``, a checkout of AlphacatPlus/VmambaIR) the authors' own deraining networks
with their own initialisation. It explains the short-budget deraining study's ranking
(benchmarks/study/README.md). Writes benchmarks/data/initial_output.json (or --json).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

import bench_record  # noqa: E402  (same folder)
from bench_precision import smooth_random_images  # noqa: E402

import vmambair  # noqa: E402,F401
from vmambair.config.registry import ARCH_REGISTRY  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def smooth_images(batch: int, size: int, seed: int) -> torch.Tensor:
    """(batch, 3, size, size) smooth random images in [0, 1] (``size`` >= 16)."""
    return smooth_random_images(batch, size, torch.Generator().manual_seed(seed)).clamp(0, 1)


def residual_stats(build, x: torch.Tensor, seeds) -> dict:
    """Mean |out - in| and std of (out - in) over ``seeds`` initialisations of ``build()``."""
    l1, std = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        net = build().eval()
        with torch.no_grad():
            r = net(x) - x
        l1.append(r.abs().mean().item())
        std.append(r.std().item())
    return {"l1_mean": statistics.mean(l1), "l1_min": min(l1), "l1_max": max(l1), "std_mean": statistics.mean(std)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", default=None, help="checkout of the authors' repository (adds their networks)")
    p.add_argument("--seeds", type=int, default=3, help="initialisations per network")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "data" / "initial_output.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x = smooth_images(2, args.size, seed=123)
    net = yaml.safe_load(open(ROOT / "options" / "derain.yml"))["network_g"]
    net = {k: v for k, v in net.items() if k not in ("type", "activation_checkpointing")}
    cfgs = {"VmambaIR (options/derain.yml)": {}, "V1": {"ablation": "V1"}, "V2": {"ablation": "V2"},
            "V3": {"ablation": "V3"}, "V4": {"ablation": "V4"},
            # Our code built as the authors' deraining networks (options/derain_authors.yml is Mamber32):
            "ours as Mamber33 ([3,5,7,9], channel_scan mamber33)": {"num_blocks": [3, 5, 7, 9], "channel_scan": "mamber33"},
            "ours as Mamber32 ([3,5,7,9], channel_scan mamber32)": {"num_blocks": [3, 5, 7, 9], "channel_scan": "mamber32"}}
    builders = {name: (lambda extra=extra: ARCH_REGISTRY.get("VmambaIR")(**{**net, **extra})) for name, extra in cfgs.items()}
    if args.original:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from authors_code import load_authors_network
        for family, label in (("derain", "authors' Mamber33 (their init)"), ("derain32", "authors' Mamber32 (their init)")):
            builders[label] = (lambda family=family: load_authors_network(
                args.original, family, scan="reference", dim=48, num_blocks=[3, 5, 7, 9], num_refinement_blocks=2))
    rows, figures = [], {}
    start = time.perf_counter()
    for name, build in builders.items():
        params = sum(q.numel() for q in build().parameters())
        s = residual_stats(build, x, range(args.seeds))
        figures[name] = {**s, "params": params}
        rows.append([name, f"{params / 1e6:.2f}", f"{s['l1_mean']:.3f}", f"{s['l1_min']:.3f} - {s['l1_max']:.3f}",
                     f"{s['std_mean']:.3f}"])
        print(f"[{time.perf_counter() - start:5.0f} s] {name}: mean |out - in| {s['l1_mean']:.3f} "
              f"({s['l1_min']:.3f} - {s['l1_max']:.3f}), std {s['std_mean']:.3f}", flush=True)
    table = {"title": f"Freshly initialised deraining networks: output minus input on smooth random images "
                      f"(batch 2 x {args.size}x{args.size}, {args.seeds} initialisations each, CPU, fp32)",
             "columns": ["network", "params (M)", "mean |out - in|", "range over seeds", "std of out - in"],
             "rows": rows}
    rec = bench_record.make_record(Path(args.json).stem, "Initial output error of the deraining networks", [table],
                                   section="Training", figures=figures,
                                   summary="How far each network's output starts from its input; a deraining "
                                           "network's first L1 losses are about this large. See "
                                           "benchmarks/study/README.md.")
    print(f"wrote {bench_record.write_record(rec, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
