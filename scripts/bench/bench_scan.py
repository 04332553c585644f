"""Time the selective-scan backends side by side, in one process, on the GPU.

    python scripts/bench/bench_scan.py                       # writes benchmarks/data/gpu_scan.json
    python scripts/bench/bench_scan.py --quick --out -       # fewer repetitions, print only

Backends: ours ("cuda", kernels/selective_scan), mamba-ssm's kernel ("mamba_ssm") when
`selective_scan_cuda` is importable, and the pure-PyTorch backend ("torch"). Shapes: those of the
network's scans (b, d, L, N=16, G=4 groups) in fp32 and bf16, and the fused four-direction planar scan
at level 1 of the real-world SR network (batch 9, dim 96, 64x64) against permute-copies + scan +
merge. Forward is timed with autograd recording (as in training); backward is
torch.autograd.grad of the recorded graph. Times are medians over CUDA-event-timed repetitions.
Effective GB/s counts the fewest bytes each pass must move (every input read once, every output
written once), so it is comparable across backends.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys

import torch
import bench_record  # noqa: E402  (scripts/bench)


import vmambair.ops as vops  # noqa: E402
from vmambair.ops.omni_scan import planar_omni_scan_unfused  # noqa: E402

PLAIN_SHAPES = [  # (b, d, L, N, G)
    (8, 384, 4096, 16, 4),
    (8, 192, 16384, 16, 4),
    (1, 384, 65536, 16, 4),
]
OMNI_SHAPE = (9, 96, 64, 64, 16)  # b, d, H, W, N: level 1 of the real-world x4 SR network
ESIZE = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
DNAME = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def time_ms(fn, warmup: int, reps: int) -> float:
    """Median of `reps` CUDA-event timings of fn() after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def plain_inputs(b, d, L, N, G, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    u = r(b, d, L).to(dtype)
    delta = (r(b, d, L) * 0.5 - 1.0).to(dtype)
    A = -torch.exp(r(d, N) * 0.5)
    B = r(b, G, N, L).to(dtype)
    C = r(b, G, N, L).to(dtype)
    D = r(d)
    bias = r(d) * 0.3
    return [t.requires_grad_(True) for t in (u, delta, A, B, C, D, bias)]


def omni_inputs(b, d, H, W, N, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x = r(b, d, H, W).to(dtype)
    delta = (r(b, 4, d, H, W) * 0.5 - 1.0).to(dtype)
    A = -torch.exp(r(4 * d, N) * 0.5)
    B = r(b, 4, N, H, W).to(dtype)
    C = r(b, 4, N, H, W).to(dtype)
    return [t.requires_grad_(True) for t in (x, delta, A, B, C, r(4 * d), r(4 * d) * 0.3)]


def profiled(fn, warmup: int, reps: int):
    """The finished torch.profiler (CUDA activity only) of `reps` calls of fn() after `warmup`."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return prof


def kernel_ms(fn, warmup: int, reps: int) -> float:
    """Mean GPU time of everything fn() runs on the GPU (kernels, fills, copies), read by
    torch.profiler (CUPTI) over `reps` calls after `warmup`: the op's device time, without the
    host's Python, dispatch and launch time that eager CUDA-event timings include."""
    prof = profiled(fn, warmup, reps)
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1000.0 / reps


def fwd_bwd_ms(op, inputs, warmup, reps, kernel_time=False):
    """(forward ms, backward ms, y) of y = op(*inputs); kernel_time: GPU time only (kernel_ms)."""
    timer = kernel_ms if kernel_time else time_ms
    fwd = timer(lambda: op(*inputs), warmup, reps)
    y = op(*inputs)
    dy = torch.randn_like(y)
    bwd = timer(lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True), warmup, reps)
    return fwd, bwd, y.detach()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_record.add_output_args(ap, "gpu_scan")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="5 repetitions, 2 warm-ups")
    ap.add_argument("--no-torch", action="store_true", help="skip the (slow) pure-PyTorch backend")
    ap.add_argument("--kernel-time", action="store_true",
                    help="report the GPU time of each op's kernels (torch.profiler, mean over the repetitions) "
                    "instead of eager CUDA-event timings, which also count the GPU waiting for the host")
    ap.add_argument("--sweep-nseg", default="", help="also time ours with these forced segment counts, e.g. 1,2,4")
    ap.add_argument("--extra-long", action="store_true", help="also time (1, 96, 1048576, 16): a 1024x1024 map")
    ap.add_argument("--sweep-only", action="store_true", help="run only the --omni-sweep section")
    ap.add_argument("--fused-only", action="store_true",
                    help="skip the plain shapes: the fused four-direction section (and --omni-sweep) only")
    ap.add_argument("--omni-sweep", default="", help="also time fused vs unfused inference (no grad) at these "
                    "square sizes, batch 1, dim 48, e.g. 64,256,1024 (where the fused op stops paying off)")
    ap.add_argument("--omni-train", default="", help="also time fused vs unfused forward + backward (bf16) at these "
                    "BxDxS shapes (batch, dim, square size), e.g. 8x48x128,8x96x64: where training should fuse")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_scan.py needs a CUDA GPU")
    if args.quick:
        args.reps, args.warmup = 5, 2
    torch.backends.cudnn.benchmark = False
    status = vops.backend_status()
    if status["cuda"] != "available":
        sys.exit(f"our CUDA backend is not available: {status['cuda']}")
    have_mamba = status["mamba_ssm"] == "available"
    import vmambair_scan_cuda as ext

    def scan(backend):
        return lambda u, dl, A, B, C, D, bias: vops.selective_scan(u, dl, A, B, C, D, bias, True, backend=backend)

    backends = ["cuda"] + (["mamba_ssm"] if have_mamba else []) + ([] if args.no_torch else ["torch"])
    lines = []
    log = lambda s: (print(s, flush=True), lines.append(s))  # noqa: E731

    shapes = list(PLAIN_SHAPES) + ([(1, 96, 1 << 20, 16, 4)] if args.extra_long else [])
    if args.sweep_only or args.fused_only:
        shapes = []
    log("## Plain selective scan (softplus, D, delta_bias; B/C in 4 groups)\n")
    log("| shape (b, d, L, N) | dtype | backend | fwd ms | bwd ms | fwd+bwd ms | fwd GB/s | bwd GB/s "
        "| vs mamba-ssm (fwd+bwd) | rel. diff of y |")
    log("|---|---|---|---|---|---|---|---|---|---|")
    for (b, d, L, N, G) in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            inputs = plain_inputs(b, d, L, N, G, dtype)
            es = ESIZE[dtype]
            fwd_bytes = es * (3 * b * d * L + 2 * b * G * N * L)
            bwd_bytes = es * (5 * b * d * L + 4 * b * G * N * L)
            runs = {}
            for bk in backends:
                if bk == "torch" and L * b * d > 8 * 192 * 16384:
                    continue
                reps, warm = (max(2, args.reps // 10), 1) if bk == "torch" else (args.reps, args.warmup)
                runs[bk] = fwd_bwd_ms(scan(bk), inputs, warm, reps, args.kernel_time)
            for bk, (f, bw, y) in runs.items():
                diff = "-" if bk == "cuda" else f"{rel(y, runs['cuda'][2]):.1e}"
                vs = "-"
                if bk == "cuda" and "mamba_ssm" in runs:
                    vs = f"{(f + bw) / sum(runs['mamba_ssm'][:2]):.2f}x its time"
                log(f"| ({b}, {d}, {L}, {N}) | {DNAME[dtype]} | {bk} | {f:.3f} | {bw:.3f} | {f + bw:.3f} | "
                    f"{fwd_bytes / f / 1e6:.0f} | {bwd_bytes / bw / 1e6:.0f} | {vs} | {diff} |")
            del runs
            if args.sweep_nseg:
                for ns in [int(s) for s in args.sweep_nseg.split(",") if s]:
                    op = (lambda ns_: lambda u, dl, A, B, C, D, bias: ext.selective_scan(
                        u, dl, A, B, C, D, bias, True, nseg=ns_))(ns)
                    f, bw, _ = fwd_bwd_ms(op, inputs, args.warmup, args.reps, args.kernel_time)
                    log(f"| ({b}, {d}, {L}, {N}) | {DNAME[dtype]} | cuda nseg={ns} | {f:.3f} | {bw:.3f} | "
                        f"{f + bw:.3f} | {fwd_bytes / f / 1e6:.0f} | {bwd_bytes / bw / 1e6:.0f} | - | - |")
            del inputs
            torch.cuda.empty_cache()

    log("\n## Fused four-direction planar scan, level 1 of the real-world SR net (b=9, d=96, 64x64, N=16)\n")
    log("| dtype | path | fwd ms | bwd ms | fwd+bwd ms | fused speed-up (fwd+bwd) | rel. diff of y |")
    log("|---|---|---|---|---|---|---|")
    b, d, H, W, N = OMNI_SHAPE
    for dtype in () if args.sweep_only else (torch.float32, torch.bfloat16):
        inputs = omni_inputs(b, d, H, W, N, dtype)
        paths = [("fused (ours)", lambda *t: ext.planar_omni_scan(*t))]
        for bk in backends:
            if bk == "torch" and args.no_torch:
                continue
            paths.append((f"permute + {bk} + merge", (lambda bk_: lambda *t: planar_omni_scan_unfused(
                *t, backend=bk_))(bk)))
        fused_total, y_f = None, None
        for name, op in paths:
            reps, warm = (max(2, args.reps // 10), 1) if "torch" in name else (args.reps, args.warmup)
            f, bw, y = fwd_bwd_ms(op, inputs, warm, reps, args.kernel_time)
            if fused_total is None:
                fused_total, y_f = f + bw, y
            sp = "-" if name.startswith("fused") else f"{(f + bw) / fused_total:.2f}x"
            diff = "-" if name.startswith("fused") else f"{rel(y, y_f):.1e}"
            log(f"| {DNAME[dtype]} | {name} | {f:.3f} | {bw:.3f} | {f + bw:.3f} | {sp} | {diff} |")
        del inputs
        torch.cuda.empty_cache()

    if args.omni_sweep:
        log("\n## Fused vs unfused planar scan, inference (no autograd), batch 1, dim 48, N=16\n")
        log("| size | dtype | fused ms | permute + cuda + merge ms | fused speed-up |")
        log("|---|---|---|---|---|")
        for hw in [int(v) for v in args.omni_sweep.split(",") if v]:
            for dtype in (torch.float32, torch.bfloat16):
                with torch.no_grad():
                    inputs = [t.detach() for t in omni_inputs(1, 48, hw, hw, 16, dtype)]
                    timer = kernel_ms if args.kernel_time else time_ms
                    f = timer(lambda: ext.planar_omni_scan(*inputs), args.warmup, args.reps)
                    u = timer(lambda: planar_omni_scan_unfused(*inputs, backend="cuda"), args.warmup, args.reps)
                log(f"| {hw}x{hw} | {DNAME[dtype]} | {f:.3f} | {u:.3f} | {u / f:.2f}x |")
                del inputs
                torch.cuda.empty_cache()

    if args.omni_train:
        log("\n## Fused vs unfused planar scan, training (forward + backward), bf16, N=16\n")
        log("| (batch, dim, H, W) | pixels in the batch | fused ms | permute + cuda + merge ms | fused speed-up |")
        log("|---|---|---|---|---|")
        for spec in [v for v in args.omni_train.split(",") if v]:
            b, d, hw = (int(v) for v in spec.lower().split("x"))
            inputs = omni_inputs(b, d, hw, hw, 16, torch.bfloat16)
            f = sum(fwd_bwd_ms(lambda *t: ext.planar_omni_scan(*t), inputs, args.warmup, args.reps,
                               args.kernel_time)[:2])
            u = sum(fwd_bwd_ms(lambda *t: planar_omni_scan_unfused(*t, backend="cuda"), inputs, args.warmup,
                               args.reps, args.kernel_time)[:2])
            log(f"| ({b}, {d}, {hw}, {hw}) | {b * hw * hw} | {f:.3f} | {u:.3f} | {u / f:.2f}x |")
            del inputs
            torch.cuda.empty_cache()

    notes = []
    if not have_mamba:
        notes.append(f"mamba-ssm was not importable in this run ({status['mamba_ssm']}), so there is no "
                     "mamba-ssm column (build it with kernels/selective_scan/tools/build_mamba_reference.py).")
    header = [
        "# Selective-scan benchmark (GPU)\n",
        f"- GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs)",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{' '.join(['python'] + sys.argv)}`",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}, "
        f"extension built with CUDA runtime {ext.ops._C.cuda_version()}; fused op's column directions: "
        f"{os.environ.get('VMAMBAIR_SCAN_COLUMNS') or 'mixed (default)'} (VMAMBAIR_SCAN_COLUMNS)",
        (f"- GPU time of the kernels each op runs (torch.profiler), means over {args.reps} calls after "
         f"{args.warmup} warm-ups; the host's time is not counted" if args.kernel_time else
         f"- medians of {args.reps} CUDA-event timings after {args.warmup} warm-ups (pure-PyTorch backend: "
         f"{max(2, args.reps // 10)} after 1)") + "; forward timed with autograd recording; backward = "
        "torch.autograd.grad of the recorded graph",
        "- GB/s: fewest bytes a pass must move / time (fwd: u, delta, B, C read, y written; bwd: u, delta, "
        "B, C, dy read, du, ddelta, dB, dC written)",
        "- rel. diff of y: ||y - y_ours|| / ||y_ours|| (same inputs)",
    ] + [f"- note: {n}" for n in notes] + [""]
    text = "\n".join(header + lines) + "\n"
    bench_record.write_outputs(args, text, "Selective scan, GPU")


if __name__ == "__main__":
    main()
