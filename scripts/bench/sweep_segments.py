"""How many sequence segments should a scan use? GPU time of each scan pass against forced counts.

    python scripts/bench/sweep_segments.py          # writes benchmarks/data/scan_segments.json

For batch-1 shapes (what inference runs) and a training shape, times our CUDA scan with the
automatic segment count and with forced counts, by kernel (torch.profiler GPU time, means over
--reps calls): the main pass, the summary pass and the combine kernel, forward (no autograd, as
in inference) and backward. The automatic choice (``pick_nseg`` in
kernels/selective_scan/csrc/ops.cpp) is good when its row is close to the best forced row.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import bench_record  # noqa: E402  (scripts/bench)


from bench_scan import omni_inputs, plain_inputs, profiled  # noqa: E402

PLAIN = [(1, 192, 65536), (1, 384, 65536), (1, 384, 262144), (1, 192, 1 << 20), (8, 384, 4096)]
OMNI = [(1, 48, 256, 256), (1, 96, 256, 256), (1, 96, 128, 128), (1, 192, 64, 64),
        # training: level 1 of the real-world x4 net; levels 1 and 2 of the deraining net (stage 1)
        (9, 96, 64, 64), (8, 48, 128, 128), (8, 96, 64, 64)]
COUNTS = [0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128]


def kinds(prof) -> dict:
    """GPU ms by pass: fwd / fwd summary / bwd / bwd summary / combine / other."""
    out: dict = {}
    for e in prof.key_averages():
        n, t = e.key, e.self_device_time_total / 1000.0
        if t <= 0:
            continue
        if "fwd_kernel<" in n or "bwd_kernel<" in n:
            # template arguments <T, kOmni, kSummary, kN>
            targs = [a.strip() for a in n.split("<", 1)[1].split(">", 1)[0].split(",")]
            k = ("fwd" if "fwd_kernel<" in n else "bwd") + (" summary" if targs[2] == "true" else "")
        elif "combine" in n:
            k = "combine"
        else:
            k = "other"
        out[k] = out.get(k, 0.0) + t
    return out


def init_like_network(inputs) -> None:
    """Overwrite (in place) delta, A and the dt bias of scan inputs (u, delta, A, B, C, D, bias) with
    values like an untrained VmambaIR's: per channel softplus(bias) log-uniform in [0.001, 0.1]
    (vmambair.archs.vmambair_arch.init_dt_bias), delta small, A = -1 .. -16 (S4D-real)."""
    from vmambair.archs.vmambair_arch import init_dt_bias
    _, delta, A, _, _, _, bias = inputs
    g = torch.Generator(device="cuda").manual_seed(1)
    with torch.no_grad():
        delta.copy_(torch.randn(delta.shape, device="cuda", generator=g) * 0.1)
        A.copy_(-torch.arange(1, A.shape[1] + 1, device="cuda", dtype=A.dtype).expand_as(A))
        bias.copy_(init_dt_bias(bias.shape[0]).to(bias))


def profile_ms(fn, warmup: int, reps: int) -> dict:
    """GPU ms per call of fn(), by pass (kinds)."""
    return {k: v / reps for k, v in kinds(profiled(fn, warmup, reps)).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_record.add_output_args(ap, "scan_segments")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)), help="segment counts (0 = automatic)")
    ap.add_argument("--no-backward", action="store_true", help="forward (inference) only")
    ap.add_argument("--only", choices=["plain", "omni"], default=None, help="time only this op")
    ap.add_argument("--omni-shapes", default="", help="fused-op shapes BxDxHxW,... instead of the built-in list")
    ap.add_argument("--plain-shapes", default="", help="plain-op shapes BxDxL,... instead of the built-in list")
    ap.add_argument("--early-stop", choices=["on", "off", "both"], default="on",
                    help="the forward summary pass's early stop (set_summary_early_stop; on is the extension's "
                         "default); both: every row twice, off then on")
    ap.add_argument("--dt", choices=["random", "init"], default="random",
                    help="random: bench_scan's inputs (dt about 0.3); init: dt and A as an untrained VmambaIR has "
                         "them (softplus(bias) log-uniform in [0.001, 0.1] per channel, delta ~ 0.1 N(0, 1), "
                         "A = -1 .. -16)")
    args = ap.parse_args()
    omni_shapes = [tuple(int(v) for v in s.split("x")) for s in args.omni_shapes.split(",") if s] or OMNI
    plain_shapes = [tuple(int(v) for v in s.split("x")) for s in args.plain_shapes.split(",") if s] or PLAIN
    import vmambair_scan_cuda as ext
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    counts = [int(c) for c in args.counts.split(",") if c]
    lines = []
    log = lambda s: (print(s, flush=True), lines.append(s))  # noqa: E731
    stops = {"on": [True], "off": [False], "both": [False, True]}[args.early_stop]
    log("| op, shape | nseg | fwd main | fwd summary | combine | fwd total | bwd main | bwd summary | bwd total | "
        "fwd + bwd |")
    log("|---|---|---|---|---|---|---|---|---|---|")
    cases = [("plain", s) for s in plain_shapes if args.only in (None, "plain")] + \
            [("omni", s) for s in omni_shapes if args.only in (None, "omni")]
    for kind, shape in cases:
        if kind == "plain":
            b, d, L = shape
            inputs = plain_inputs(b, d, L, 16, 4, dtype)
            op = lambda ns, *t: ext.selective_scan(*t, True, nseg=ns)  # noqa: E731
            label = f"plain ({b}, {d}, {L})"
        else:
            b, d, H, W = shape
            inputs = omni_inputs(b, d, H, W, 16, dtype)
            op = lambda ns, *t: ext.planar_omni_scan(*t, nseg=ns)  # noqa: E731
            label = f"omni ({b}, {d}, {H}x{W})"
        if args.dt == "init":
            init_like_network(inputs)
        for ns, stop in ((ns, stop) for ns in counts for stop in stops):
            ext._C.set_summary_early_stop(stop)
            with torch.no_grad():
                f = profile_ms(lambda: op(ns, *inputs), args.warmup, args.reps)
            bw = {}
            if not args.no_backward:
                y = op(ns, *inputs)
                dy = torch.randn_like(y)
                bw = profile_ms(lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True), args.warmup, args.reps)
                del y
            ft = f.get("fwd", 0) + f.get("fwd summary", 0) + f.get("combine", 0)
            bt = bw.get("bwd", 0) + bw.get("bwd summary", 0) + bw.get("combine", 0)
            log(f"| {label}{'' if stop else ', early stop off'} | {ns or 'auto'} | {f.get('fwd', 0):.3f} | {f.get('fwd summary', 0):.3f} | "
                f"{f.get('combine', 0):.3f} | {ft:.3f} | {bw.get('bwd', 0):.3f} | {bw.get('bwd summary', 0):.3f} | "
                f"{bt:.3f} | {ft + bt:.3f} |")
        ext._C.set_summary_early_stop(True)
        inputs = None  # free before the next shape
        torch.cuda.empty_cache()
    header = [
        "# Segment counts of the CUDA scan: GPU time by pass\n",
        f"- GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs)",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{' '.join(['python'] + sys.argv)}`",
        f"- torch {torch.__version__}; {args.dtype} inputs, N = 16, B/C in 4 groups (omni: one per direction); "
        f"ms of GPU time (torch.profiler), means over {args.reps} calls after {args.warmup} warm-ups; "
        + ("dt and A as an untrained network has them" if args.dt == "init" else "random dt (about 0.3) and A"),
        "- forward without autograd (as in inference); backward = torch.autograd.grad of a recorded forward; "
        "'auto' is the count the extension picks itself",
        "",
    ]
    bench_record.write_outputs(args, "\n".join(header + lines) + "\n", "Selective scan, GPU")


if __name__ == "__main__":
    main()
