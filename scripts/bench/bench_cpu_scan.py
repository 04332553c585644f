#!/usr/bin/env python
"""Time the selective scan on CPU: the automatic backend against a plain per-step PyTorch loop.

    python scripts/bench/bench_cpu_scan.py [--groups 4] [--shapes 1,192,4096,16 1,96,65536,16]
                                     [--repeats 5] [--out cpu_scan.md]

For each shape (batch, dim, L, N) and group count G it times, in this one process, forward and
backward (fp32, softplus, with D and delta_bias, as in VmambaIR) of:

* ``auto``: what ``vmambair.ops.selective_scan`` picks for CPU tensors (the compiled "cpu"
  backend when a C compiler is available, else "torch");
* ``torch``: the pure-PyTorch chunked backend;
* ``reference``: the plain per-step PyTorch loop differentiated by autograd (the baseline).

Each row is the median of ``--repeats`` runs after one warm-up run (which also compiles the C
backend on first use); the reference loop gets ``--reference-repeats`` runs (default 3) and, for
L above ``--long`` (default 16384), a single run without warm-up, as it takes tens of seconds
there. Forward is timed with inputs that require grad (so the backend saves what backward
needs); backward is ``y.backward(dy)`` for a fixed random dy.

Prints a table and writes it, with the machine, date, torch version and this exact command, as
the record benchmarks/data/cpu_scan.json (scripts/bench/bench_record.py; --out also writes Markdown).
"""
import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time


import torch  # noqa: E402
import bench_record  # noqa: E402  (scripts/bench)

from vmambair import ops  # noqa: E402


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_inputs(b, d, L, N, G, seed=0):
    """VmambaIR-like inputs: u, delta (b, d, L); A (d, N) < 0; B, C (b, G, N, L); D, bias (d,)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, L, generator=g)
    delta = torch.randn(b, d, L, generator=g) * 0.5 - 1.0
    A = -(torch.rand(d, N, generator=g) * 2 + 0.1)
    B = torch.randn(b, G, N, L, generator=g)
    C = torch.randn(b, G, N, L, generator=g)
    D = torch.randn(d, generator=g)
    bias = torch.randn(d, generator=g) * 0.3
    dy = torch.randn(b, d, L, generator=g)
    return [u, delta, A, B, C, D, bias], dy


def run_once(backend, inputs, dy):
    """(forward seconds, backward seconds, y) of one forward + backward pass."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    t0 = time.perf_counter()
    y = ops.selective_scan(*leaves, delta_softplus=True, backend=backend)
    t1 = time.perf_counter()
    y.backward(dy)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, y.detach()


def bench(backend, inputs, dy, repeats, warmup):
    if warmup:
        run_once(backend, inputs, dy)
    runs = [run_once(backend, inputs, dy) for _ in range(repeats)]
    fwd = statistics.median(r[0] for r in runs)
    bwd = statistics.median(r[1] for r in runs)
    tot = statistics.median(r[0] + r[1] for r in runs)
    return fwd, bwd, tot, runs[-1][2]


def fmt_s(x):
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["1,192,4096,16", "1,96,65536,16"],
                   help="batch,dim,L,N per shape")
    p.add_argument("--groups", nargs="+", type=int, default=[4], help="B/C groups G (VmambaIR: 4)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reference-repeats", type=int, default=3)
    p.add_argument("--long", type=int, default=16384,
                   help="from this L on the reference loop runs once, without warm-up")
    p.add_argument("--reference-max-len", type=int, default=16384,
                   help="above this L the reference loop is timed on the first this-many positions and its "
                        "time scaled by L / this (the loop's cost is linear in L; marked 'extrapolated')")
    p.add_argument("--backends", nargs="+", default=["auto", "torch", "reference"])
    bench_record.add_output_args(p, "cpu_scan")
    args = p.parse_args()

    auto_name = ops.resolve_backend(torch.device("cpu")).name
    status = ops.backend_status()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu_model()} "
          f"({os.cpu_count()} logical CPUs); auto backend on CPU = {auto_name!r}")
    if status.get("cpu") != "available":
        print(f"note: the compiled 'cpu' backend is unavailable: {status.get('cpu')}")

    rows = []
    header = ["shape (b, d, L, N)", "G", "backend", "forward", "backward", "fwd+bwd", "speed-up vs loop",
              "runs"]
    for shape in args.shapes:
        b, d, L, N = (int(v) for v in shape.split(","))
        for G in args.groups:
            inputs, dy = make_inputs(b, d, L, N, G)
            results, extrapolated = {}, {}
            for name in args.backends:
                backend = None if name == "auto" else name
                if name == "reference":
                    long = L >= args.long
                    reps, warm = (1, False) if long else (args.reference_repeats, True)
                else:
                    reps, warm = args.repeats, True
                print(f"  ({b}, {d}, {L}, {N}) G={G} {name}: {reps} run(s){' + warm-up' if warm else ''} ...",
                      flush=True)
                if name == "reference" and L > args.reference_max_len:
                    Lr = args.reference_max_len
                    short = [t[..., :Lr].contiguous() if t.dim() >= 3 else t for t in inputs]
                    fwd, bwd, tot, _ = bench(backend, short, dy[..., :Lr].contiguous(), reps, warm)
                    k = L / Lr
                    results[name] = (fwd * k, bwd * k, tot * k, None, reps)
                    extrapolated[name] = Lr
                else:
                    results[name] = bench(backend, inputs, dy, reps, warm) + (reps,)
                r = results[name]
                print(f"    forward {fmt_s(r[0])}, backward {fmt_s(r[1])}", flush=True)
            ref_tot = results["reference"][2] if "reference" in results else None
            y_ref = results["reference"][3] if "reference" in results else None
            for name, (fwd, bwd, tot, y, reps) in results.items():
                label = f"auto ({auto_name})" if name == "auto" else name
                if name in extrapolated:
                    label += f" (timed at L={extrapolated[name]}, x{L / extrapolated[name]:g}: extrapolated)"
                speed = f"{ref_tot / tot:.1f}x" if ref_tot else "-"
                if y_ref is not None and name != "reference":
                    err = ((y - y_ref).abs().max() / y_ref.abs().max()).item()
                    speed += f" (y rel. diff {err:.0e})"
                rows.append([f"({b}, {d}, {L}, {N})", str(G), label, fmt_s(fwd), fmt_s(bwd), fmt_s(tot), speed,
                             str(reps)])
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    table = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
    print("\n" + "\n".join(table))

    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    lib = sys.modules["vmambair.ops.scan_cpu"].library_info()
    md = [
        "# CPU selective scan: compiled backend vs a per-step PyTorch loop",
        "",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}",
        f"- torch {torch.__version__}, `torch.get_num_threads()` = {torch.get_num_threads()}",
        f"- Automatic CPU backend: `{auto_name}`"
        + (f" (compiled with `{lib.get('compiler')} {lib.get('flags')}`, OpenMP: {lib.get('openmp')})" if lib else ""),
        f"- Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{', '.join(f'{x:.2f}' for x in load_after)}" if load_before else "- Load average: n/a",
        f"- Command: `{cmd}`",
        "",
        "fp32, `delta_softplus=True`, with D and delta_bias. Forward with inputs that require grad; "
        "backward = `y.backward(dy)`. Median of `runs` runs after one warm-up run, except the reference "
        f"loop at L >= {args.long}: one run, no warm-up. `reference` is the plain per-step PyTorch loop "
        "(`vmambair.ops.scan_reference`, autograd); speed-up = its fwd+bwd time / the row's. "
        "`y rel. diff` = max |y - y_reference| / max |y_reference| (not shown where the reference was "
        f"extrapolated: above L = {args.reference_max_len} the loop is timed on the first "
        f"{args.reference_max_len} positions and scaled by L / {args.reference_max_len}, its cost being linear in L).",
        "",
    ] + table + [""]
    bench_record.write_outputs(args, "\n".join(md), "Selective scan, CPU")


if __name__ == "__main__":
    main()
