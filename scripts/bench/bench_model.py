#!/usr/bin/env python
"""Time VmambaIR training steps and inference on the GPU: our fast path against our reference path.

    python scripts/bench/bench_model.py -opt options/realsr_x4_gan.yml --train-batch 9 --train-size 64 \
        --infer-sizes 256 512 1024 --out benchmarks/model_realsr_x4.md

Both paths run in this one process on the same GPU, so their ratio is meaningful.
  reference: fp32 everywhere, the projections as rank-R einsums per direction, the four scan
             directions as materialised permuted copies -> the plain selective scan -> merge
             (the original implementation's execution strategy).
  fast:      bf16 autocast with the scan state in fp32, projections as 1x1 convolutions, the
             fused omni-scan op for small batches (see vmambair.ops.omni_scan).
  compiled:  the fast path under torch.compile.
  graphed:   the compiled path with CUDA graphs (vmambair.engine.cuda_graph), as train.cuda_graph
             and restore.py --cuda-graphs run it: forward + loss + backward replayed as one graph,
             then the fused Adam step; inference as one graph per input size.
A training step is forward + L1 loss + backward + Adam step. Peak memory is
torch.cuda.max_memory_allocated with cudnn.benchmark off (no workspace trials).
"""
import argparse
import contextlib
import datetime
import os
import platform
import sys
import time


import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

import vmambair  # noqa: E402,F401
from vmambair import ops  # noqa: E402
from vmambair.archs import build_network  # noqa: E402
from vmambair.archs.vmambair_arch import CHECKPOINTING_MODES, original_projections  # noqa: E402
from vmambair.engine.cuda_graph import GraphedForward, make_loss_and_grad  # noqa: E402
from vmambair.engine.profiling import summarize  # noqa: E402


@contextlib.contextmanager
def execution_path(name: str, plain_backend: str):
    """Configure the scan and precision for one path; yields the autocast context factory."""
    if name == "reference":
        with ops.fused_omni_scan(False), ops.use_backend(plain_backend), original_projections():
            yield contextlib.nullcontext
    else:  # fast and compiled
        yield lambda: torch.autocast("cuda", dtype=torch.bfloat16)


PATH_TITLES = {"reference": "reference (fp32, unfused)", "fast": "fast (bf16, fused)",
               "compiled": "compiled (fast + torch.compile)", "graphed": "graphed (compiled + CUDA graphs)"}
COMPILE_KWARGS: dict = {}  # --compile-mode


def for_path(net, path: str):
    """The network as the path runs it: "compiled" and "graphed" compile its blocks in place, as
    train.compile does."""
    if path in ("compiled", "graphed"):
        net.compile_blocks(**COMPILE_KWARGS)
    return net


def make_optimizer(net, path: str):
    """Adam; the fast paths use its fused CUDA kernel (one launch), as the trainer does on CUDA."""
    return torch.optim.Adam(net.parameters(), lr=1e-4, fused=path != "reference")


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
    net = for_path(build_network(net_opt).cuda().train(), path)
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
    net = for_path(build_network(net_opt).cuda().eval(), path)
    if path == "graphed":
        net = GraphedForward(net)
    x = torch.rand(1, 3, size, size, device="cuda")

    def run():
        with torch.no_grad(), amp():
            net(x)
    return run


def bench(make, path, plain_backend, warmup, iters):
    """Time the closure ``make(amp)`` builds on ``path``; None when it runs out of GPU memory."""
    with execution_path(path, plain_backend) as amp:
        try:
            torch.cuda.reset_peak_memory_stats()
            fn = make(amp)
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
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
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
    """The training rows to measure, {row name: activation_checkpointing mode of the non-reference
    paths}: "train" (no recomputation) and "train, recompute <mode>" per --checkpointing mode;
    empty with --train-batch 0. The reference path never recomputes."""
    if not args.train_batch:
        return {}
    return {("train" if m == "none" else f"train, recompute {m}"): m for m in args.checkpointing or ["none"]}


def train_net_opt(net_opt: dict, mode: str, path: str) -> dict:
    """network_g's options for a training row: activation_checkpointing ``mode``, except on the
    reference path, which never recomputes."""
    return dict(net_opt, activation_checkpointing="none" if path == "reference" else mode)


def write_profile(args, net_opt, scale, plain) -> int:
    """The --profile mode: one Markdown file of kernel-time tables, per path, train and inference."""
    parts = [f"# Profile: {args.opt}", ""] + provenance() + [""]
    runs = train_runs(args)
    for path in args.paths:
        for what in list(runs) + [f"infer {s}" for s in args.infer_sizes[:1]]:
            with execution_path(path, plain) as amp:
                if what in runs:
                    fn = make_train_step(train_net_opt(net_opt, runs[what], path), scale, args.train_batch,
                                         args.train_size, path, amp)
                else:
                    fn = make_inference(net_opt, args.infer_sizes[0], path, amp)
                parts.append(profile_table(fn, f"{path}: {what}", args.profile_top))
                del fn
            print(parts[-1], flush=True)
            torch.cuda.empty_cache()
    os.makedirs(os.path.dirname(args.profile) or ".", exist_ok=True)
    with open(args.profile, "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {args.profile}")
    return 0


def fmt(r):
    return "OOM" if r is None else f"{r[0]:.1f} ms, {r[2]:.2f} GB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-opt", required=True)
    p.add_argument("--train-batch", type=int, default=8, help="training-step batch (0: no training step)")
    p.add_argument("--train-size", type=int, default=128)
    p.add_argument("--infer-sizes", type=int, nargs="*", default=[256, 512, 1024])
    p.add_argument("--paths", nargs="+", default=["reference", "fast"], choices=list(PATH_TITLES),
                   help="reference: fp32 + unfused scan; fast: bf16 + fused; compiled: fast under torch.compile; "
                        "graphed: compiled + CUDA graphs")
    p.add_argument("--checkpointing", nargs="*", default=[], choices=list(CHECKPOINTING_MODES),
                   help="time the training step of the paths other than reference once per activation_checkpointing "
                        "mode given (none, block: recompute whole OSS blocks, ffn: recompute their EFFNs), one table "
                        "row each; default: none")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode of the compiled and graphed paths (default: torch's default)")
    p.add_argument("--plain-backend", default=None,
                   help="scan backend of the reference path (default: mamba_ssm if available, else cuda)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", default=None, help="Markdown file to write (default: benchmarks/model_<name>.md)")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="instead of timing, profile each path's training step and the first inference size "
                        "with torch.profiler and write a kernel-time summary (by category and top kernels) to FILE")
    p.add_argument("--profile-top", type=int, default=25, help="kernels listed per profile")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench_model.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = False
    if args.compile_mode:
        COMPILE_KWARGS["mode"] = args.compile_mode
    with open(args.opt) as f:
        opt = yaml.safe_load(f)
    net_opt = opt["network_g"]
    scale = net_opt.get("scale", 1)
    avail = ops.available_backends("cuda")
    plain = args.plain_backend or ("mamba_ssm" if "mamba_ssm" in avail else avail[0])
    if args.profile:
        return write_profile(args, net_opt, scale, plain)
    rows = []
    results = {}
    runs = train_runs(args)
    ref_train = None  # the reference path's step (it never recomputes): measured once, in every row
    for key, mode in runs.items():
        for path in args.paths:
            if path == "reference" and ref_train is not None:
                results[(key, path)] = ref_train
                continue
            train_net = train_net_opt(net_opt, mode, path)
            r = bench(lambda amp: make_train_step(train_net, scale, args.train_batch, args.train_size, path, amp),
                      path, plain, args.warmup, args.iters)
            results[(key, path)] = r
            ref_train = r if path == "reference" else ref_train
            print(f"{key}  {path:9s} batch {args.train_batch} x {args.train_size}^2: {fmt(r)}", flush=True)
    for s in args.infer_sizes:
        for path in args.paths:
            r = bench(lambda amp: make_inference(net_opt, s, path, amp), path, plain,
                      max(1, args.warmup // 2), max(2, args.iters // 2))
            results[(f"infer {s}", path)] = r
            print(f"infer  {path:9s} {s}x{s}: {fmt(r)}", flush=True)
    others = [p for p in args.paths if p != "reference"]
    for key in list(runs) + [f"infer {s}" for s in args.infer_sizes]:
        ref = results.get((key, "reference"))
        cells = [fmt(results.get((key, p))) for p in args.paths]
        for p in others:
            r = results.get((key, p))
            cells.append(f"{ref[0] / r[0]:.2f}x, mem {r[2] / ref[2]:.2f}" if ref and r else "-")
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    name = os.path.splitext(os.path.basename(args.opt))[0]
    out = args.out or os.path.join("benchmarks", f"model_{name}.md")
    head = [f"# Model benchmark: {name}", "",
            *provenance(),
            (f"- train step: batch {args.train_batch}, input {args.train_size}x{args.train_size}, fwd + L1 + bwd + Adam"
             + ("; rows \"recompute <mode>\": activation_checkpointing <mode> on every path but reference (whose "
                "one measurement is repeated in each train row)" if set(runs) - {"train"} else "")
             if runs else "- train step: not measured (--train-batch 0)"),
            f"- inference: batch 1, input size as given; reference scan backend: {plain}; "
            f"fused op available: {'cuda' in avail}", "",
            "| what | " + " | ".join(PATH_TITLES[p] for p in args.paths)
            + "".join(f" | {p} vs reference (speed-up, memory ratio)" for p in others) + " |",
            "|---" * (1 + len(args.paths) + len(others)) + "|"]
    if len(args.infer_sizes) > 1:  # linear complexity: time per pixel should not grow with the size
        rows += ["", "Inference time per megapixel of input (ms/MP):", "",
                 "| path | " + " | ".join(f"{s}x{s}" for s in args.infer_sizes) + " | largest / smallest |",
                 "|---" * (len(args.infer_sizes) + 2) + "|"]
        for p in args.paths:
            per = [results.get((f"infer {s}", p)) for s in args.infer_sizes]
            per = [r[0] / (s * s / 1e6) if r else None for r, s in zip(per, args.infer_sizes)]
            ratio = f"{per[-1] / per[0]:.2f}" if per[0] and per[-1] else "-"
            rows.append(f"| {p} | " + " | ".join(f"{v:.0f}" if v else "-" for v in per) + f" | {ratio} |")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(head + rows) + "\n")
    print("\n".join(head + rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
