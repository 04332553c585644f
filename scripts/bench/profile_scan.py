"""Run our CUDA selective scan (plain or fused four-direction) forward + backward a few times,
for a kernel profiler to attach to; prints nothing but the shapes.

    ncu --clock-control none --kernel-name regex:fwd_kernel --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        python scripts/bench/profile_scan.py plain --shape 8 384 4096 16

Plain shapes are (batch, dim, L, N); omni shapes (batch, dim, H, W) with N = 16. Inputs are built
as in scripts/bench/bench_scan.py (same seeds), so a profile and a benchmark see the same data.
"""
import argparse
import sys

import torch

from bench_scan import omni_inputs, plain_inputs  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("op", choices=["plain", "omni"])
    ap.add_argument("--shape", type=int, nargs="+", required=True,
                    help="plain: b d L N; omni: b d H W")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--groups", type=int, default=4, help="plain: B/C groups (bench_scan.py uses 4)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--torch-profile", action="store_true",
                    help="after the runs, print torch.profiler's GPU-kernel table of one more forward + backward")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("profile_scan.py needs a CUDA GPU")
    import vmambair_scan_cuda as ext

    import vmambair.ops as vops
    dtype = DTYPES[args.dtype]
    if args.op == "plain":
        if len(args.shape) != 4:
            sys.exit(f"plain --shape takes b d L N, got {args.shape}")
        b, d, L, N = args.shape
        inputs = plain_inputs(b, d, L, N, args.groups, dtype)
        op = lambda *t: vops.selective_scan(*t, True, backend="cuda")  # noqa: E731
    else:
        if len(args.shape) != 4:
            sys.exit(f"omni --shape takes b d H W, got {args.shape}")
        b, d, H, W = args.shape
        inputs = omni_inputs(b, d, H, W, 16, dtype)
        op = ext.planar_omni_scan
    for _ in range(args.iters):
        y = op(*inputs)
        torch.autograd.grad(y, inputs, torch.ones_like(y))
    torch.cuda.synchronize()
    if args.torch_profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            y = op(*inputs)
            torch.autograd.grad(y, inputs, torch.ones_like(y))
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
    print(f"{args.op} {args.shape} {args.dtype}: {args.iters} forward + backward passes done")


if __name__ == "__main__":
    main()
