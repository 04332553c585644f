#!/usr/bin/env python
"""Time VmambaIR training steps and inference on the GPU: our fast path against our reference path.

    python scripts/bench_model.py -opt options/realsr_x4_gan.yml --train-batch 9 --train-size 64 \
        --infer-sizes 256 512 1024 --out benchmarks/model_realsr_x4.md

Both paths run in this one process on the same GPU, so their ratio is meaningful.
  reference: fp32 everywhere, the four scan directions as materialised permuted copies -> the
             plain selective scan -> merge (the original implementation's execution strategy).
  fast:      bf16 autocast with the scan state in fp32, the fused omni-scan op when available.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

import vmambair  # noqa: E402,F401
from vmambair import ops  # noqa: E402
from vmambair.archs import build_network  # noqa: E402


@contextlib.contextmanager
def execution_path(name: str, plain_backend: str):
    """Configure the scan and precision for one path; yields the autocast context factory."""
    if name == "reference":
        with ops.fused_omni_scan(False), ops.use_backend(plain_backend):
            yield contextlib.nullcontext
    else:
        yield lambda: torch.autocast("cuda", dtype=torch.bfloat16)


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


def bench_train(net_opt, scale, batch, size, path, plain_backend, warmup, iters):
    torch.manual_seed(0)
    net = build_network(net_opt).cuda().train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size, device="cuda")
    y = torch.rand(batch, 3, size * scale, size * scale, device="cuda")
    with execution_path(path, plain_backend) as amp:
        def step():
            with amp():
                loss = F.l1_loss(net(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        try:
            return timed(step, warmup, iters)
        except torch.OutOfMemoryError:
            return None
        finally:
            del net, opt
            torch.cuda.empty_cache()


@torch.no_grad()
def bench_infer(net_opt, size, path, plain_backend, warmup, iters):
    torch.manual_seed(0)
    net = build_network(net_opt).cuda().eval()
    x = torch.rand(1, 3, size, size, device="cuda")
    with execution_path(path, plain_backend) as amp:
        def run():
            with amp():
                net(x)
        try:
            return timed(run, warmup, iters)
        except torch.OutOfMemoryError:
            return None
        finally:
            del net
            torch.cuda.empty_cache()


def fmt(r):
    return "OOM" if r is None else f"{r[0]:.1f} ms, {r[2]:.2f} GB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-opt", required=True)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-size", type=int, default=128)
    p.add_argument("--infer-sizes", type=int, nargs="*", default=[256, 512, 1024])
    p.add_argument("--paths", nargs="+", default=["reference", "fast"], choices=["reference", "fast"])
    p.add_argument("--plain-backend", default=None,
                   help="scan backend of the reference path (default: mamba_ssm if available, else cuda)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", default=None, help="Markdown file to write (default: benchmarks/model_<name>.md)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench_model.py needs a CUDA GPU.", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = False
    with open(args.opt) as f:
        opt = yaml.safe_load(f)
    net_opt = opt["network_g"]
    scale = net_opt.get("scale", 1)
    avail = ops.available_backends("cuda")
    plain = args.plain_backend or ("mamba_ssm" if "mamba_ssm" in avail else avail[0])
    rows = []
    results = {}
    for path in args.paths:
        r = bench_train(net_opt, scale, args.train_batch, args.train_size, path, plain, args.warmup, args.iters)
        results[("train", path)] = r
        print(f"train  {path:9s} batch {args.train_batch} x {args.train_size}^2: {fmt(r)}", flush=True)
    for s in args.infer_sizes:
        for path in args.paths:
            r = bench_infer(net_opt, s, path, plain, max(1, args.warmup // 2), max(2, args.iters // 2))
            results[(f"infer {s}", path)] = r
            print(f"infer  {path:9s} {s}x{s}: {fmt(r)}", flush=True)
    for what in [("train", None)] + [(f"infer {s}", None) for s in args.infer_sizes]:
        key = what[0]
        ref, fast = results.get((key, "reference")), results.get((key, "fast"))
        ratio = f"{ref[0] / fast[0]:.2f}x" if ref and fast else "-"
        mem = f"{fast[2] / ref[2]:.2f}" if ref and fast else "-"
        rows.append(f"| {key} | {fmt(ref)} | {fmt(fast)} | {ratio} | {mem} |")
    name = os.path.splitext(os.path.basename(args.opt))[0]
    out = args.out or os.path.join("benchmarks", f"model_{name}.md")
    head = [f"# Model benchmark: {name}", "",
            f"- GPU: {torch.cuda.get_device_name()} ; torch {torch.__version__} ; {platform.node()}",
            f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
            f"- command: `python {' '.join(sys.argv)}`",
            f"- train step: batch {args.train_batch}, input {args.train_size}x{args.train_size}, fwd + L1 + bwd + Adam",
            f"- inference: batch 1, input size as given; reference scan backend: {plain}; "
            f"fused op available: {'cuda' in avail}", "",
            "| what | reference (fp32, unfused) | fast (bf16, fused) | speed-up | memory fast/ref |",
            "|---|---|---|---|---|"]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(head + rows) + "\n")
    print("\n".join(head + rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
