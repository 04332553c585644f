#!/usr/bin/env python
"""Does skipping the first optimizer steps change where a short run ends? (CPU or GPU, fp32)

    python scripts/bench/skipped_start.py                    # CPU: deraining network, batch 8 x 32x32
    python scripts/bench/skipped_start.py --device cuda --size 64

An fp16 run starts with the gradient scaler's scale at 65536, so its first steps usually overflow
and are skipped (no update, no Adam step counted) while the scale halves: in
``benchmarks/precision_h100.md`` fp16 skipped 3 (deraining) and 2 (real-world x4) of 300 steps and
ended 9-19 % below fp32. This trains the full deraining network of options/derain.yml in fp32,
through the trainer's own step (``ImageRestorationModel.optimize_parameters``, Adam 2e-4, the
settings of ``bench_precision.py``), twice from the same weights on the same batches: once as is,
once with the first --skip iterations not stepping (their loss is still computed and logged), and
compares window means. Writes benchmarks/data/skipped_start_<device>.json (or --json).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import bench_record  # noqa: E402  (same folder)
from bench_precision import build_model, make_batches, recipe_network, release, train_curve, window_rows  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--size", type=int, default=32, help="patch size (batch 8)")
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--skip", type=int, default=3, help="first iterations without an update")
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    net = recipe_network("derain")
    batches = make_batches(args.iters, 8, args.size, 1, device, seed=1)
    start = time.perf_counter()
    curves = {}
    model = build_model(net, "fp32", device)
    curves["fp32"], _ = train_curve(model, batches)
    print(f"[{time.perf_counter() - start:6.0f} s] fp32: last window {statistics.mean(curves['fp32'][-args.window:]):.5f}",
          flush=True)
    del model
    release(device)
    model = build_model(net, "fp32", device)
    label = f"fp32, first {args.skip} steps skipped"
    curves[label], _ = train_curve(model, batches, no_update=set(range(1, args.skip + 1)))
    print(f"[{time.perf_counter() - start:6.0f} s] {label}: last window "
          f"{statistics.mean(curves[label][-args.window:]):.5f}", flush=True)
    table = {"title": f"Deraining network, fp32, batch 8 x {args.size}x{args.size}, {args.iters} iterations from the "
                      f"same weights on the same batches ({device.type}, eager), window means",
             "columns": ["iterations", "fp32", label, "skipped - fp32", "noise of a window mean"],
             "rows": window_rows(curves, args.window, "fp32")}
    rel = [(b - a) / a for a, b in zip(curves["fp32"][-args.window:], curves[label][-args.window:])]
    summary = (f"Last {args.window} iterations: the run whose first {args.skip} steps were skipped is "
               f"{100 * statistics.mean(rel):+.1f} % against fp32 (mean per-iteration relative difference). "
               f"Whole run {time.perf_counter() - start:.0f} s.")
    rec = bench_record.make_record(Path(args.json).stem if args.json else f"skipped_start_{device.type}",
                                   "Skipping the first optimizer steps (what the fp16 scaler does)", [table],
                                   section="Training", figures={"curves": curves, "skip": args.skip}, summary=summary)
    print(summary)
    print(f"wrote {bench_record.write_record(rec, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
