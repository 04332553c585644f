#!/usr/bin/env python
"""What compiling costs when sizes change (GPU): validation of images of many sizes, and the time
to the first iteration of each progressive training stage, under each compile policy.

    python scripts/bench/bench_recompile.py -opt options/derain.yml --json $OUT/recompile.json

Validation (batch 1, bf16 autocast, --images images in --sizes distinct sizes, each size twice):
  eager             the blocks not compiled
  compiled-static   compile_blocks() as before this policy: each new size compiles again
  compiled-dynamic  engine.compiling.compile_network(): dynamic sizes
  validation-stance compiled, but run under engine.compiling.validation_stance (eager), as the
                    trainer's validation and test.py now do
Progressive stages (the recipe's datasets.train stages; fwd + L1 + bwd + Adam, compiled blocks,
CUDA-graphed as train.cuda_graph; activation_checkpointing as in the recipe): for each stage, the
seconds from the stage's first call to the end of its first step (compile + graph recording +
step) and the mean time of the next steps, under
  new, batch of 1 compiled ahead
        compile_network() (dynamic sizes) and, in the first stage, compile_ahead for the first
        later stage with a batch of 1, as the trainer does (--size-one ahead, the default)
  new   the same without compile_ahead (--size-one specialise): torch compiles again at the
        switch to the first batch of 1
  new, size 1 reused
        compile_network(size_one=True) (only with --size-one reuse): graphs traced for larger
        batches should serve a batch of 1 too
  old   compile_blocks() (only with --old: each stage may compile for minutes)
and checks each stage's first loss against the same loss computed eagerly.
Each policy starts from an empty compile cache (torch._dynamo.reset()).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch
import torch.nn.functional as F
import yaml

import bench_record  # noqa: E402  (scripts/bench)
from vmambair.archs import build_network
from vmambair.engine import compiling
from vmambair.engine.cuda_graph import make_loss_and_grad
from vmambair.engine.inference import restore_image

DEFAULT_SIZES = [(256, 256), (321, 481), (481, 321), (384, 512), (512, 384), (480, 640), (640, 480),
                 (512, 768), (768, 512), (1024, 1024)]


def sync():
    torch.cuda.synchronize()


def validation_run(net_opt: dict, policy: str, sizes: list, per_size: int) -> dict:
    """Restore per_size images of each size with one network under ``policy``: total seconds,
    the first image's seconds and the median of the others."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = build_network(net_opt).cuda().eval()
    if policy == "compiled-static" or policy == "validation-stance":
        net.compile_blocks()
    elif policy == "compiled-dynamic":
        compiling.compile_network(net)
    times = []
    sync()
    t_all = time.perf_counter()
    for h, w in sizes:
        for _ in range(per_size):
            x = torch.rand(1, 3, h, w, device="cuda")
            t = time.perf_counter()
            ctx = compiling.validation_stance(net) if policy == "validation-stance" else contextlib.nullcontext()
            with ctx, torch.autocast("cuda", dtype=torch.bfloat16):
                restore_image(net, x, scale=net_opt.get("scale", 1))
            sync()
            times.append(time.perf_counter() - t)
    total = time.perf_counter() - t_all
    rest = sorted(times[1:])
    return {"total_s": round(total, 2), "first_s": round(times[0], 2),
            "median_later_ms": round(1000 * rest[len(rest) // 2], 1) if rest else None,
            "max_later_s": round(max(rest), 2) if rest else None}


def stage_runs(net_opt: dict, stages: list, scale: int, policy: str, steps: int, size_one: bool = False,
               ahead: bool = False) -> list:
    """Train through the stages with one network and optimizer: per stage, seconds to the end of
    its first step, the mean ms of the next ``steps`` steps, and how far the first step's loss is
    from the same loss computed eagerly (same weights and batch: a compiled graph reused for
    sizes it was not traced for must still compute the same thing). ``ahead``: as the trainer
    does, the first stage also compiles the first later batch-of-1 stage's size
    (compiling.compile_ahead), inside its own time to the first iteration."""
    torch._dynamo.reset()
    torch.fx.experimental._config.backed_size_oblivious = False  # each run sets its own
    torch.manual_seed(0)
    net = build_network(net_opt).cuda().train()
    if policy == "new":
        compiling.compile_network(net, size_one=size_one)
    else:
        net.compile_blocks()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    out = []
    for index, (batch, gt, iters) in enumerate(stages):
        size = gt // scale
        ones = [g for b, g, _ in stages[index + 1:] if b == 1]
        if ahead and index == 0 and batch > 1 and ones:
            sync()
            t = time.perf_counter()
            compiling.compile_ahead(net, (1, 3, ones[0] // scale, ones[0] // scale),
                                    lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            sync()
            ahead_s = time.perf_counter() - t
            print(f"compiled ahead for a batch of 1 x {ones[0] // scale} in {ahead_s:.1f} s", flush=True)
        else:
            ahead_s = 0.0
        x = torch.rand(batch, 3, size, size, device="cuda")
        y = torch.rand(batch, 3, size * scale, size * scale, device="cuda")

        def loss_of(x, y):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return F.l1_loss(net(x).float(), y)

        step_fn = make_loss_and_grad(loss_of, net.parameters(), graphed=True)
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            eager_loss = loss_of(x, y).item()
        sync()
        t = time.perf_counter()
        loss = step_fn(x, y).item()
        opt.step()
        sync()
        first = time.perf_counter() - t + ahead_s
        t = time.perf_counter()
        for _ in range(steps):
            step_fn(x, y)
            opt.step()
        sync()
        ms = (time.perf_counter() - t) * 1000 / max(steps, 1)
        rel = abs(loss - eager_loss) / max(abs(eager_loss), 1e-12)
        row = {"batch": batch, "gt_size": gt, "input_size": size, "first_iteration_s": round(first, 1),
               "step_ms": round(ms, 2), "loss": loss, "eager_loss": eager_loss, "loss_rel_diff": rel}
        print(f"stage {policy}: batch {batch} x {size}: first iteration after {first:.1f} s, then {ms:.1f} ms/step; "
              f"loss {loss:.6f} (eager {eager_loss:.6f}, relative difference {rel:.1e})", flush=True)
        out.append(row)
        del step_fn
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-opt", default="options/derain.yml")
    p.add_argument("--images", type=int, default=20, help="validation images (spread evenly over the sizes)")
    p.add_argument("--sizes", type=int, default=10, help="distinct validation sizes (the first N of a fixed list)")
    p.add_argument("--policies", nargs="*", default=["eager", "compiled-static", "compiled-dynamic", "validation-stance"],
                   choices=["eager", "compiled-static", "compiled-dynamic", "validation-stance"])
    p.add_argument("--no-stages", action="store_true", help="skip the progressive-stage measurement")
    p.add_argument("--old", action="store_true", help="also time the stages under the old policy (slow)")
    p.add_argument("--steps", type=int, default=5, help="steps timed per stage after the first")
    p.add_argument("--stage-list", type=int, nargs="+", default=None,
                   help="only these progressive stages (1-based, in order; default: all), e.g. 4 5 to see the "
                        "switch to the first batch of 1 without compiling stages 1-3 first")
    p.add_argument("--size-one", nargs="+", default=["ahead"], choices=["specialise", "ahead", "reuse"],
                   help="stages under compile_network() as the trainer runs it (ahead: the first stage also "
                        "compiles the first batch-of-1 stage's size, compiling.compile_ahead), without that "
                        "(specialise: torch compiles again at the switch to a batch of 1) and/or with "
                        "compile_network(size_one=True) (reuse: graphs should serve a batch of 1), each from an "
                        "empty cache, in the order given")
    p.add_argument("--json", default=None, help="record to write (default benchmarks/data/recompile_<gpu>.json)")
    p.add_argument("--id", default=None, help="record id (default recompile_<opt name>_<gpu>)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench_recompile.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    if not 1 <= args.sizes <= len(DEFAULT_SIZES) or args.images < args.sizes:
        print(f"error: --sizes must be 1..{len(DEFAULT_SIZES)} and --images at least --sizes", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = False
    try:
        with open(args.opt) as f:
            opt = yaml.safe_load(f)
        net_opt = opt["network_g"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        print(f"error: -opt {args.opt}: cannot read network_g ({e})", file=sys.stderr)
        return 2
    sizes = DEFAULT_SIZES[:args.sizes]
    per_size = args.images // args.sizes
    val = {}
    for policy in args.policies:
        val[policy] = validation_run(net_opt, policy, sizes, per_size)
        print(f"validation {policy}: {val[policy]}", flush=True)
    stages = {}
    if not args.no_stages:
        from bench_model import recipe_stages
        st = recipe_stages(opt)
        if args.stage_list:
            st = [st[i - 1] for i in args.stage_list]
        train_opt = dict(net_opt)
        keys = {"ahead": "new, batch of 1 compiled ahead", "specialise": "new", "reuse": "new, size 1 reused"}
        for mode in args.size_one:
            stages[keys[mode]] = stage_runs(train_opt, st, net_opt.get("scale", 1), "new", args.steps,
                                            size_one=mode == "reuse", ahead=mode == "ahead")
        if args.old:
            stages["old"] = stage_runs(train_opt, st, net_opt.get("scale", 1), "old", args.steps)
    name = os.path.splitext(os.path.basename(args.opt))[0]
    tables = [{"title": f"Validation of {per_size * len(sizes)} images in {len(sizes)} sizes ({name} network, bf16)",
               "columns": ["policy", "total (s)", "first image (s)", "median later image (ms)", "slowest later image (s)"],
               "rows": [[k, v["total_s"], v["first_s"], v["median_later_ms"], v["max_later_s"]] for k, v in val.items()],
               "notes": ["sizes: " + ", ".join(f"{h}x{w}" for h, w in sizes)]}] if val else []
    for policy, rows in stages.items():
        tables.append({"title": f"Progressive stages, policy '{policy}': time to the first iteration",
                       "columns": ["stage", "batch x input", "first iteration (s)", "later steps (ms)",
                                   "first loss vs eager (relative)"],
                       "rows": [[n, f"{r['batch']} x {r['input_size']}", r["first_iteration_s"], r["step_ms"],
                                 f"{r['loss_rel_diff']:.1e}"]
                                for n, r in zip(args.stage_list or range(1, len(rows) + 1), rows)]})
    gpu = torch.cuda.get_device_name().lower()
    gpu_short = next((g for g in ("h200", "h100", "a100") if g in gpu), "gpu")
    rec = bench_record.make_record(args.id or f"recompile_{name}_{gpu_short}", f"Compiling with changing sizes ({name})",
                                   tables, section="Compiling", figures={"validation": val, "stages": stages},
                                   charts=[{"title": "validation of images of many sizes: total seconds", "kind": "bar",
                                            "x": list(val), "ylabel": "s",
                                            "series": {"total": [v["total_s"] for v in val.values()]}}] if val else [])
    print(f"wrote {bench_record.write_record(rec, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
