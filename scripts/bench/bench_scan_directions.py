#!/usr/bin/env python
"""Peak memory and time of one restore as the runtime switch inference_scan_directions varies.

    python scripts/bench/bench_scan_directions.py -opt options/derain.yml --size 512 \
        --settings 4 2 1 --device cpu --json benchmarks/data/ --id scan_directions_cpu

Planar scans without gradients that take the unfused path (every scan on the CPU; on CUDA the
maps above fused_max_pixels) can scan their four directions all at once (4; the default on GPUs)
or in groups of 2 or 1 (1: the default on the CPU), each group's projections, sequence copies and
outputs freed before the next's.
Each setting runs in its own child process: the network of the options file (random weights,
seed 0, eval mode), one warm-up forward at 32x32, then one forward of a (1, 3, size, size) input
without gradients (on CUDA in bf16 autocast, as restore.py runs it). Peak memory is the growth of
the process's peak resident set over that forward (CPU; ru_maxrss) or
torch.cuda.max_memory_allocated (CUDA). The outputs of every setting are compared with the
first setting's (largest absolute difference).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import bench_record  # noqa: E402  (scripts/bench)


def child(args) -> None:
    """One setting: print a JSON line {"ms", "peak_gb"} and save the output to args.save."""
    import torch
    import yaml
    from vmambair import runtime
    from vmambair.archs import build_network
    from vmambair.engine.inference import process_rss

    runtime.set_inference_scan_directions(args.child)
    with open(args.opt) as f:
        net_opt = dict(yaml.safe_load(f)["network_g"])
    torch.manual_seed(0)
    dev = torch.device(args.device)
    net = build_network(net_opt).to(dev).eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.no_grad(), amp:
        net(x[..., :32, :32])  # loads the scan library / kernels; its peak is far below the big one's
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = process_rss()
        t = time.perf_counter()
        out = net(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    ms = (time.perf_counter() - t) * 1000
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    torch.save(out.float().cpu(), args.save)
    print(json.dumps({"ms": ms, "peak_gb": peak / 2**30}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-opt", required=True, help="options file whose network_g is built")
    p.add_argument("--size", type=int, default=512, help="input height and width")
    p.add_argument("--settings", type=int, nargs="+", default=[4, 2, 1], choices=[1, 2, 4],
                   help="values of inference_scan_directions, one child process each")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    bench_record.add_output_args(p, "scan_directions")
    args = p.parse_args()
    if args.child is not None:
        child(args)
        return 0

    import torch
    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.settings:
            save = os.path.join(tmp, f"out{n}.pt")
            cmd = [sys.executable, __file__, "-opt", args.opt, "--size", str(args.size), "--device", args.device,
                   "--child", str(n), "--save", save]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"error: the child process for inference_scan_directions={n} failed:\n{res.stderr[-3000:]}",
                      file=sys.stderr)
                return 1
            m = json.loads(res.stdout.strip().splitlines()[-1])
            out = torch.load(save, weights_only=True)
            first = out if first is None else first
            diff = (out - first).abs().max().item()
            rows.append([str(n), f"{m['ms']:.0f}", f"{m['peak_gb']:.3f}", f"{diff:.2e}"])
            print(f"inference_scan_directions={n}: {m['ms']:.0f} ms, peak +{m['peak_gb']:.3f} GB, "
                  f"max |out - out(first setting)| {diff:.2e}", flush=True)
    what = "peak RSS growth (GB)" if args.device == "cpu" else "peak allocated above what the forward found (GB)"
    table = {"title": f"{os.path.basename(args.opt)} network, one {args.size}x{args.size} restore, {args.device}",
             "columns": ["inference_scan_directions", "ms", what, "max abs difference to the first setting"],
             "rows": rows}
    rec = bench_record.make_record(args.id, f"Peak memory of a restore by inference_scan_directions ({args.device})",
                                   [table], section="Memory")
    if args.out != "-":
        print(f"wrote {bench_record.write_record(rec, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
