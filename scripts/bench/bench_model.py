#!/usr/bin/env python
"""Time VmambaIR training steps and inference on the GPU: the authors' own code against our paths.

    python scripts/bench/bench_model.py -opt options/derain.yml --original .authors/VmambaIR \
        --paths authors graphed --checkpointing ffn --train-batch 8 --train-size 128 \
        --infer-sizes 256 1024 2048 --stages

All paths run in this one process on the same GPU. Speed-ups and memory ratios are stated only
against the authors' code (--original): without it the tables give times and memory alone.
  authors:   the authors' network (their arch file, e.g. Mamber33 / MambaRealSR11, imported from
             their checkout by scripts/bench/authors_code.py) with their compiled
             selective_scan_cuda_core kernel (scripts/bench/build_authors_kernel.sh), fp32 as they
             train, unfused Adam; never recomputes activations.
  fast:      bf16 autocast with the scan state in fp32, projections as 1x1 convolutions, the
             fused omni-scan op for small batches (see vmambair.ops.omni_scan).
  compiled:  the fast path under torch.compile (the blocks, with dynamic sizes, as train.compile
             and restore.py --compile run it; --compile-static: sizes of the first call).
  graphed:   the compiled path with CUDA graphs (vmambair.engine.cuda_graph), as train.cuda_graph
             and restore.py --cuda-graphs run it: forward + loss + backward replayed as one graph,
             then the fused Adam step; inference as one graph per input size.
A training step is forward + L1 loss + backward + Adam step. Peak memory is
torch.cuda.max_memory_allocated with cudnn.benchmark off (no workspace trials); with
--cudnn-benchmark every path lets cuDNN pick its convolution algorithms by timing them, and the
peaks leave out those trials.
--stages also times one training step per progressive stage of the recipe (patch size and batch
of each stage of datasets.train) on the --stage-paths, for scripts/bench/time_to_train.py.
Writes a JSON record under benchmarks/data/ (scripts/bench/bench_record.py) and, with --out, the
old Markdown table.

(An fp32 "reference" path of our own, the original implementation's execution strategy, was
dropped on 2026-12-07: timed beside the authors' code it was 1.34-1.43x slower than theirs, so
ratios against it overstated our gains. Their code is the baseline.)
"""
import argparse
import contextlib
import datetime
import functools
import os
import platform
import re
import sys
import time


import torch  # noqa: E402
import authors_code  # noqa: E402  (scripts/bench, this script's folder)
import bench_record  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

import vmambair  # noqa: E402,F401
from vmambair import runtime  # noqa: E402
from vmambair.archs import build_network  # noqa: E402
from vmambair.archs.vmambair_arch import CHECKPOINTING_MODES  # noqa: E402
from vmambair.engine.compiling import compile_network  # noqa: E402
from vmambair.engine.cuda_graph import GraphedForward, make_loss_and_grad  # noqa: E402
from vmambair.engine.profiling import peak_allocations, stack_profiler_options, summarize  # noqa: E402
from vmambair.utils.fileio import atomic_write_bytes  # noqa: E402


@contextlib.contextmanager
def execution_path(name: str):
    """The precision of one path; yields its autocast context factory."""
    if name == "authors":  # fp32, as the authors train; their scan is bound in their module
        yield contextlib.nullcontext
    else:  # fast and compiled
        yield lambda: torch.autocast("cuda", dtype=torch.bfloat16)


PATH_TITLES = {"authors": "authors' code (fp32, their kernel)", "fast": "fast (bf16, fused)",
               "compiled": "compiled (fast + torch.compile)", "graphed": "graphed (compiled + CUDA graphs)"}
COMPILE_KWARGS: dict = {}  # --compile-mode
AUTHORS: dict = {}  # --original / --authors-family: {"original": path, "family": name}
# network_g keys that the authors' constructors take under the same names
AUTHORS_KEYS = ("dim", "num_blocks", "num_refinement_blocks", "ffn_expansion_factor")


def authors_family(net_opt: dict) -> str:
    """The authors' network matching ``net_opt``: MambaRealSR11 for x4, else the deraining
    Mamber33 (or Mamber32 when our channel_scan says so)."""
    if net_opt.get("scale", 1) != 1:
        return "realsr"
    return "derain32" if net_opt.get("channel_scan") == "mamber32" else "derain"


def build_for_path(net_opt: dict, path: str):
    """The network a path runs, on the GPU: the authors' class for "authors", ours otherwise."""
    if path == "authors":
        kwargs = {k: net_opt[k] for k in AUTHORS_KEYS if k in net_opt}
        return authors_code.load_authors_network(AUTHORS["original"], AUTHORS["family"], scan="kernel",
                                                 kernel_dir=AUTHORS.get("kernel_dir"), **kwargs).cuda()
    return build_network(net_opt).cuda()


STATIC_COMPILE: list = []  # --compile-static


def for_path(net, path: str):
    """The network as the path runs it: "compiled" and "graphed" compile its blocks in place, as
    train.compile does (vmambair.engine.compiling: dynamic sizes; --compile-static: sizes fixed at
    the first call, as before that policy)."""
    if path in ("compiled", "graphed"):
        if STATIC_COMPILE:
            net.compile_blocks(**COMPILE_KWARGS)
        else:
            compile_network(net, **COMPILE_KWARGS)
    return net


def make_optimizer(net, path: str):
    """Adam; the fast paths use its fused CUDA kernel (one launch), as the trainer does on CUDA."""
    return torch.optim.Adam(net.parameters(), lr=1e-4, fused=path != "authors")


def timed(fn, warmup: int, iters: int):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t) * 1000 / iters
    return ms, (torch.cuda.max_memory_allocated() - base) / 2**30, torch.cuda.max_memory_allocated() / 2**30


def make_train_step(net_opt, scale, batch, size, path, amp):
    """A closure running one training step (fwd + L1 + bwd + Adam) of a freshly seeded network."""
    torch.manual_seed(0)
    net = for_path(build_for_path(net_opt, path).train(), path)
    opt = make_optimizer(net, path)
    x = torch.rand(batch, 3, size, size, device="cuda")
    y = torch.rand(batch, 3, size * scale, size * scale, device="cuda")

    def loss_of(x, y):
        with amp():
            return F.l1_loss(net(x).float(), y)

    loss_and_grad = make_loss_and_grad(loss_of, net.parameters(), graphed=path == "graphed")

    def step():
        loss_and_grad(x, y)  # leaves the gradients in p.grad
        opt.step()
    return step


def make_inference(net_opt, size, path, amp):
    """A closure restoring one random size x size image with a freshly seeded network."""
    torch.manual_seed(0)
    net = for_path(build_for_path(net_opt, path).eval(), path)
    if path == "graphed":
        net = GraphedForward(net)
    x = torch.rand(1, 3, size, size, device="cuda")

    def run():
        with torch.no_grad(), amp():
            net(x)
    return run


def bench(make, path, warmup, iters):
    """Time the closure ``make(amp, path)`` builds on ``path``; None when it runs out of GPU memory."""
    if path == "graphed" and torch.backends.cudnn.benchmark:
        # With --cudnn-benchmark, cuDNN tries its algorithms (with their workspaces) at each new
        # convolution; the graphed path's peak is taken while recording, so the trials would count
        # in it. One compiled step at the same sizes runs them first (cuDNN caches the choices).
        with execution_path("compiled") as amp:
            try:
                make(amp, "compiled")()
            except torch.OutOfMemoryError:
                return None
            finally:
                torch.cuda.empty_cache()
    with execution_path(path) as amp:
        try:
            torch.cuda.reset_peak_memory_stats()
            fn = make(amp, path)
            fn()  # the graphed path records its graph here
            # A replay allocates nothing: the graph's memory was taken while recording it.
            recording_peak = torch.cuda.max_memory_allocated() / 2**30
            ms, extra, peak = timed(fn, warmup, iters)
            return ms, extra, max(peak, recording_peak) if path == "graphed" else peak
        except torch.OutOfMemoryError:
            return None
        finally:
            torch.cuda.empty_cache()


def profile_table(fn, label: str, top: int) -> str:
    """Run ``fn`` under torch.profiler (after warm-up); return a Markdown summary of GPU time.

    Kernels are grouped by a coarse category (scan, conv/gemm, norm, elementwise, copy, other);
    "GPU busy" is the summed kernel time over the wall time: well under 1 means launch-bound.
    """
    from torch.profiler import ProfilerActivity, profile
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    iters = 3
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], **stack_profiler_options()) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t) * 1000 / iters
    return summarize(prof, iters, wall_ms, label, top)


def provenance() -> list:
    """The GPU, date and command lines every output file of this script starts with."""
    return [f"- GPU: {torch.cuda.get_device_name()} ; torch {torch.__version__} ; {platform.node()}",
            f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
            f"- command: `python {' '.join(sys.argv)}`"]


def train_runs(args) -> dict:
    """The training rows to measure, {row name: activation_checkpointing mode of our paths}:
    "train" (no recomputation) and "train, recompute <mode>" per --checkpointing mode; empty with
    --train-batch 0. The authors' code never recomputes."""
    if not args.train_batch:
        return {}
    return {train_row_name(m): m for m in args.checkpointing or ["none"]}


def train_row_name(mode: str) -> str:
    """The name of the training row timed with activation_checkpointing ``mode`` (a CHECKPOINTING_MODES value)."""
    return "train" if mode == "none" else f"train, recompute {mode}"


def train_net_opt(net_opt: dict, mode: str, path: str) -> dict:
    """network_g's options for a training row: activation_checkpointing ``mode``, except for the
    authors' code, which has no such option."""
    return dict(net_opt, activation_checkpointing="none" if path == "authors" else mode)


def memory_table(make_fn, graphed: bool, label: str, pickle_path: str, top: int) -> str:
    """Record the CUDA caching allocator's history over one call of the closure ``make_fn()`` builds
    (after two warm-up calls; for the graphed path over building it and recording its graph, since
    replays allocate nothing), save the snapshot (for ``python -m torch.cuda._memory_viz
    trace_plot``) and return a Markdown table of the allocations alive at the peak."""
    import pickle
    from torch.cuda import memory as cm
    fn = None
    if not graphed:
        fn = make_fn()
        for _ in range(2):
            fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    cm._record_memory_history(max_entries=500000, stacks="python")
    try:
        if fn is None:
            fn = make_fn()
        fn()
        torch.cuda.synchronize()
        snap = cm._snapshot()
    finally:
        cm._record_memory_history(enabled=None)
    atomic_write_bytes(pickle.dumps(snap), pickle_path)
    dev = torch.cuda.current_device()
    peak, rows = peak_allocations(snap["device_traces"][dev], top)
    lines = [f"### {label}", "", f"allocated before: {base / 2**30:.2f} GB; peak above it: {peak / 2**30:.2f} GB "
             f"(total {(base + peak) / 2**30:.2f} GB); snapshot `{os.path.basename(pickle_path)}`", "",
             "| allocated at | GB alive at the peak | allocations |", "|---|---|---|"]
    lines += [f"| `{where}` | {b / 2**30:.3f} | {n} |" for b, n, where in rows]
    return "\n".join(lines) + "\n"


def diagnosed_calls(args, net_opt, scale):
    """For --profile and --memory-snapshot: (path, what, make_fn) for each path's training step(s)
    and first inference size; make_fn() builds the closure. The path's autocast is in force while
    the caller handles the item."""
    runs = train_runs(args)
    for path in args.paths:
        for what in list(runs) + [f"infer {s}" for s in args.infer_sizes[:1]]:
            with execution_path(path) as amp:
                if what in runs:
                    yield path, what, functools.partial(make_train_step, train_net_opt(net_opt, runs[what], path),
                                                        scale, args.train_batch, args.train_size, path, amp)
                else:
                    yield path, what, functools.partial(make_inference, net_opt, args.infer_sizes[0], path, amp)
            torch.cuda.empty_cache()


def write_memory(args, net_opt, scale) -> int:
    """The --memory-snapshot mode: per path, the allocations alive at the peak of a training step
    and of the first inference size, as Markdown (DIR/memory.md) and allocator snapshots."""
    os.makedirs(args.memory_snapshot, exist_ok=True)
    parts = [f"# Memory at the peak: {args.opt}", ""] + provenance() + [""]
    for path, what, make_fn in diagnosed_calls(args, net_opt, scale):
        name = re.sub(r"[^a-z0-9]+", "_", f"{path} {what}").strip("_")
        parts.append(memory_table(make_fn, path == "graphed", f"{path}: {what}",
                                  os.path.join(args.memory_snapshot, f"{name}.pickle"), args.profile_top))
        print(parts[-1], flush=True)
    out = os.path.join(args.memory_snapshot, "memory.md")
    atomic_write_bytes("\n".join(parts).encode(), out)
    print(f"wrote {out}")
    return 0


def write_profile(args, net_opt, scale) -> int:
    """The --profile mode: one Markdown file of kernel-time tables, per path, train and inference."""
    parts = [f"# Profile: {args.opt}", ""] + provenance() + [""]
    for path, what, make_fn in diagnosed_calls(args, net_opt, scale):
        parts.append(profile_table(make_fn(), f"{path}: {what}", args.profile_top))
        print(parts[-1], flush=True)
    atomic_write_bytes("\n".join(parts).encode(), args.profile)  # makes the folder too
    print(f"wrote {args.profile}")
    return 0


def fmt(r):
    return "OOM" if r is None else f"{r[0]:.1f} ms, {r[2]:.2f} GB"


def recipe_stages(opt: dict) -> list:
    """The training stages of a recipe: [(batch, gt_size, iterations)], one per progressive stage
    (datasets.train mini_batch_sizes / mini_gt_sizes / iters), else one stage of
    batch_size_per_gpu x gt_size for train.total_iter."""
    tr = opt.get("datasets", {}).get("train", {})
    if tr.get("mini_batch_sizes"):
        return list(zip(tr["mini_batch_sizes"], tr["mini_gt_sizes"], tr["iters"]))
    return [(tr["batch_size_per_gpu"], tr["gt_size"], opt["train"]["total_iter"])]


def result_dict(r):
    return None if r is None else {"ms": round(r[0], 3), "peak_gb": round(r[2], 3), "extra_gb": round(r[1], 3)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-opt", required=True)
    p.add_argument("--original", default=None, metavar="PATH",
                   help="the authors' checkout (github AlphacatPlus/VmambaIR, e.g. .authors/VmambaIR): adds the "
                        "'authors' path, timed first; every ratio is then against it")
    p.add_argument("--authors-family", default=None, choices=sorted(authors_code.FAMILIES),
                   help="the authors' network to time (default: realsr for x4, derain (Mamber33) for x1)")
    p.add_argument("--authors-kernel-dir", default=None,
                   help="folder of their built selective_scan_cuda_core*.so (default .authors/kernel_build)")
    p.add_argument("--train-batch", type=int, default=8, help="training-step batch (0: no training step)")
    p.add_argument("--train-size", type=int, default=128)
    p.add_argument("--infer-sizes", type=int, nargs="*", default=[256, 512, 1024])
    p.add_argument("--paths", nargs="+", default=None, choices=list(PATH_TITLES),
                   help="authors: their code (needs --original); fast: bf16 + fused; compiled: fast under "
                        "torch.compile; graphed: compiled + CUDA graphs (default: authors graphed with "
                        "--original, else graphed)")
    p.add_argument("--checkpointing", nargs="*", default=[], choices=list(CHECKPOINTING_MODES),
                   help="time the training step of our paths once per activation_checkpointing "
                        "mode given (none, block: recompute whole OSS blocks, ffn: recompute their EFFNs), one table "
                        "row each; default: none")
    p.add_argument("--stages", action="store_true",
                   help="also time one training step per stage of the recipe (progressive patch sizes and batches) "
                        "on --stage-paths, with the first --checkpointing mode, for time_to_train.py")
    p.add_argument("--stage-paths", nargs="+", default=["graphed"], choices=list(PATH_TITLES))
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode of the compiled and graphed paths (default: torch's default)")
    p.add_argument("--compile-static", action="store_true",
                   help="compile the blocks for the sizes of their first call (compile_blocks() as it was before "
                        "vmambair.engine.compiling's dynamic sizes), to compare the two")
    p.add_argument("--runtime", nargs="*", default=[], metavar="SWITCH=VALUE",
                   help="performance switches of vmambair.runtime for our paths, e.g. effn_align=0 "
                        "fused_max_pixels=0 (values are YAML: true, 8, mixed)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN time its convolution algorithms (torch.backends.cudnn.benchmark) on every path, "
                        "as the authors' BasicSR training pipeline does; default off (cuDNN's heuristics)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--json", default=None,
                   help="JSON record to write, or a folder for <folder>/<id>.json (default: "
                        "benchmarks/data/model_<opt name>_<gpu>.json)")
    p.add_argument("--id", default=None, help="record id (default model_<opt name>_<gpu>)")
    p.add_argument("--out", default=None, help="also write the table as Markdown to this file")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="instead of timing, profile each path's training step and the first inference size "
                        "with torch.profiler and write a kernel-time summary (by category and top kernels) to FILE")
    p.add_argument("--profile-top", type=int, default=25, help="kernels listed per profile (and allocation "
                   "sites per --memory-snapshot table)")
    p.add_argument("--memory-snapshot", default=None, metavar="DIR",
                   help="instead of timing, record the CUDA allocator over one training step and the first "
                        "inference size of each path: DIR/memory.md lists the allocations alive at the peak by "
                        "where they were made; DIR/*.pickle are the snapshots (torch.cuda._memory_viz)")
    args = p.parse_args(argv)
    if args.paths is None:
        args.paths = ["authors", "graphed"] if args.original else ["graphed"]
    try:
        bad = [item for item in args.runtime if "=" not in item]
        if bad:
            raise ValueError(f"{bad[0]!r} has no '='")
        switches = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.runtime)}
        runtime.configure(**switches)
    except ValueError as e:
        print(f"error: --runtime {' '.join(args.runtime)}: {e} (write SWITCH=VALUE, e.g. effn_align=0)",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: bench_model.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    if args.compile_mode:
        COMPILE_KWARGS["mode"] = args.compile_mode
    if args.compile_static:
        STATIC_COMPILE.append(True)
    try:
        with open(args.opt) as f:
            opt = yaml.safe_load(f)
        net_opt = opt["network_g"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        print(f"error: -opt {args.opt}: cannot read network_g from it ({e}); pass a training option file "
              f"such as options/derain.yml", file=sys.stderr)
        return 2
    scale = net_opt.get("scale", 1)
    if "authors" in args.paths or args.original:
        if not args.original:
            print("error: --paths authors needs --original PATH (the authors' checkout)", file=sys.stderr)
            return 2
        if "authors" not in args.paths:
            args.paths = ["authors"] + args.paths
        args.paths = ["authors"] + [q for q in args.paths if q != "authors"]  # the baseline first
        try:
            authors_code.checkout_root(args.original)
            authors_code.load_authors_kernel(args.authors_kernel_dir)
        except authors_code.AuthorsCodeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        AUTHORS.update(original=args.original, family=args.authors_family or authors_family(net_opt),
                       kernel_dir=args.authors_kernel_dir)
    if args.profile:
        return write_profile(args, net_opt, scale)
    if args.memory_snapshot:
        return write_memory(args, net_opt, scale)
    results = {}
    runs = train_runs(args)
    ref_train = {}  # the authors' code never recomputes: measured once, repeated in every row
    for key, mode in runs.items():
        for path in args.paths:
            if path in ref_train:
                results[(key, path)] = ref_train[path]
                continue
            train_net = train_net_opt(net_opt, mode, path)
            r = bench(lambda amp, p: make_train_step(train_net, scale, args.train_batch, args.train_size, p, amp),
                      path, args.warmup, args.iters)
            results[(key, path)] = r
            if path == "authors":
                ref_train[path] = r
            print(f"{key}  {path:9s} batch {args.train_batch} x {args.train_size}^2: {fmt(r)}", flush=True)
    for s in args.infer_sizes:
        for path in args.paths:
            r = bench(lambda amp, p: make_inference(net_opt, s, p, amp), path,
                      max(1, args.warmup // 2), max(2, args.iters // 2))
            results[(f"infer {s}", path)] = r
            print(f"infer  {path:9s} {s}x{s}: {fmt(r)}", flush=True)
    stages = []
    if args.stages:
        mode = (args.checkpointing or ["none"])[0]
        for batch, gt, iters in recipe_stages(opt):
            size = gt // scale
            row = {"batch": batch, "gt_size": gt, "input_size": size, "iters": iters, "paths": {}}
            for path in args.stage_paths:
                first = next(iter(runs), None)  # the train row of the same activation_checkpointing mode
                if first and (batch, size) == (args.train_batch, args.train_size) and results.get((first, path)):
                    r = results[(first, path)]  # the same step was just measured
                else:
                    train_net = train_net_opt(net_opt, mode, path)
                    t0 = time.perf_counter()
                    r = bench(lambda amp, p: make_train_step(train_net, scale, batch, size, p, amp),
                              path, args.warmup, args.iters)
                    row.setdefault("setup_s", {})[path] = round(time.perf_counter() - t0, 1)
                row["paths"][path] = result_dict(r)
                print(f"stage  {path:9s} batch {batch} x {size}^2 ({iters} iters): {fmt(r)}", flush=True)
            stages.append(row)

    base = "authors" if AUTHORS else None  # ratios only against the authors' code
    others = [q for q in args.paths if base and q != base]
    columns = ["what"] + [PATH_TITLES[q] for q in args.paths] + [f"{q} vs {base} (speed-up, memory ratio)"
                                                                  for q in others]
    rows = []
    keys = list(runs) + [f"infer {s}" for s in args.infer_sizes]
    for key in keys:
        ref = results.get((key, base))
        cells = [fmt(results.get((key, q))) for q in args.paths]
        for q in others:
            r = results.get((key, q))
            cells.append(f"{ref[0] / r[0]:.2f}x, mem {r[2] / ref[2]:.2f}" if ref and r else "-")
        label = (f"{key}, batch {args.train_batch} x {args.train_size}" if key in runs
                 else f"{key}x{key.split()[-1]}" + (f" -> {int(key.split()[-1]) * scale}" if scale != 1 else ""))
        rows.append([label] + cells)
    name = os.path.splitext(os.path.basename(args.opt))[0]
    gpu = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_")
    gpu_short = next((g for g in ("h200", "h100", "a100", "l40s", "l4", "v100") if g in gpu), gpu[:16])
    notes = [(f"train step: batch {args.train_batch}, input {args.train_size}x{args.train_size}, fwd + L1 + bwd + Adam"
              + ("; rows \"recompute <mode>\": activation_checkpointing <mode> on our paths (the authors' "
                 "code never recomputes; its one measurement is repeated)"
                 if set(runs) - {"train"} else "")) if runs else "train step: not measured",
             f"inference: batch 1; cudnn.benchmark {'on' if args.cudnn_benchmark else 'off'}; "
             "peak memory is torch.cuda.max_memory_allocated",
             ]
    if AUTHORS:
        notes.append(f"authors' network: {authors_code.FAMILIES[AUTHORS['family']][1]} from their checkout, "
                     f"with {', '.join(f'{k}={net_opt[k]}' for k in AUTHORS_KEYS if k in net_opt)}")
    tables = [{"title": f"{name}: time and peak memory per step / restore", "columns": columns, "rows": rows,
               "notes": notes}]
    times = [r[0] for r in results.values() if r]
    charts = [{"title": f"{name}: time per step / restore (ms)", "kind": "bar", "ylabel": "ms",
               "logy": bool(times) and max(times) / min(times) > 10,
               "x": [r[0] for r in rows],
               "series": {q: [results[(k, q)][0] if results.get((k, q)) else None for k in keys]
                          for q in args.paths}}] if rows else []  # (no training row or restore timed)
    if stages:
        tables.append({"title": f"{name}: one training step per recipe stage",
                       "columns": ["stage", "batch x input", "iterations"] + [PATH_TITLES[q] for q in args.stage_paths],
                       "rows": [[str(i + 1), f"{st['batch']} x {st['input_size']}", st["iters"]]
                                + [fmt(None if st["paths"][q] is None else
                                       (st["paths"][q]["ms"], 0, st["paths"][q]["peak_gb"])) for q in args.stage_paths]
                                for i, st in enumerate(stages)],
                       "notes": [f"activation_checkpointing: {(args.checkpointing or ['none'])[0]}"]})
    figures = {"recipe": args.opt, "scale": scale, "paths": args.paths, "baseline": base,
               "train": {"batch": args.train_batch, "size": args.train_size,
                         "rows": {k: {q: result_dict(results.get((k, q))) for q in args.paths} for k in runs}},
               "infer": {str(s): {q: result_dict(results.get((f"infer {s}", q))) for q in args.paths}
                         for s in args.infer_sizes},
               "stages": stages, "authors": dict(AUTHORS)}
    rec = bench_record.make_record(args.id or f"model_{name}_{gpu_short}", f"Whole network, {name}: authors' code vs ours"
                                   if AUTHORS else f"Whole network, {name}", tables, section="Whole network",
                                   charts=charts, figures=figures)
    out_json = bench_record.write_record(rec, args.json)
    for t in tables:
        print("\n| " + " | ".join(t["columns"]) + " |")
        for r in t["rows"]:
            print("| " + " | ".join(str(c) for c in r) + " |")
    print(f"wrote {out_json}")
    if args.out:
        md = [f"# Model benchmark: {name}", "", *provenance(), ""]
        for t in tables:
            md += ["| " + " | ".join(t["columns"]) + " |", "|---" * len(t["columns"]) + "|"]
            md += ["| " + " | ".join(str(c) for c in r) + " |" for r in t["rows"]] + [""]
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write("\n".join(md))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
