"""onnxruntime (CPU) against PyTorch (CPU) on the same exported network, in one process.

    python scripts/bench/bench_onnx.py [--size 256] [--repeats 3] [--threads N] [--networks quickstart,derain]

For each network (the network_g of options/quickstart.yml, options/derain.yml, ...; fresh random
weights, which do not change the time): write self-describing safetensors, export them with
``scripts/export.py --onnx``'s engine, open the file in onnxruntime's CPU provider with the same
number of threads as torch, then time one (1, 3, size, size) forward pass of each, alternating
PyTorch and onnxruntime ``--repeats`` times after one warm-up each, and report the medians, their
ratio and the max abs difference of the outputs. PyTorch runs as ``scripts/restore.py`` would on
the CPU (automatic scan backend: the compiled C scan). Writes benchmarks/data/<id>.json (schema 1,
see bench_record.py) and benchmarks/<id>.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import REPO_ROOT, command_line, make_record, write_record  # noqa: E402

OPTIONS = {"quickstart": "quickstart.yml", "derain": "derain.yml", "realsr_x4": "realsr_x4_gan.yml",
           "sr_x4": "sr_x4_psnr.yml"}


def bench_network(name: str, size: int, repeats: int, threads: int, work: Path) -> dict:
    import onnxruntime as ort

    import vmambair
    from vmambair.apps.export import export_onnx
    from vmambair.archs import VmambaIR
    from vmambair.engine.portable import save_weights, weights_metadata

    network_g = yaml.safe_load((REPO_ROOT / "options" / OPTIONS[name]).read_text())["network_g"]
    spec = {k: v for k, v in network_g.items() if k not in ("type", "identity_init", "activation_checkpointing")}
    torch.manual_seed(0)
    net = VmambaIR(**spec).eval()
    weights = save_weights(net.state_dict(), work / f"{name}.safetensors",
                           weights_metadata(network_g, scale=network_g.get("scale", 1), task=name, source="bench"))
    t0 = time.perf_counter()
    report = export_onnx(weights, work / f"{name}.onnx", check=False)
    export_s = time.perf_counter() - t0
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(report["path"]), options, providers=["CPUExecutionProvider"])
    session_s = time.perf_counter() - t0

    model = vmambair.load_model(weights)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    feed = {"input": x.numpy()}

    def run_torch():
        with torch.no_grad():
            return model(x).numpy()

    def run_ort():
        return session.run(None, feed)[0]

    diff = float(np.abs(run_torch() - run_ort()).max())  # also the warm-up of both
    times = {"torch": [], "ort": []}
    for _ in range(repeats):
        for key, fn in (("torch", run_torch), ("ort", run_ort)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"network": name, "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "export_s": export_s, "session_s": session_s, "onnx_mb": report["path"].stat().st_size / 2**20,
            "torch_s": med["torch"], "ort_s": med["ort"], "ratio": med["ort"] / med["torch"],
            "max_abs_diff": diff, "times": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    p.add_argument("--networks", default="quickstart,derain", help=f"comma-separated, of {sorted(OPTIONS)}")
    p.add_argument("--id", default="onnx_cpu")
    args = p.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    import onnxruntime

    import os
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.networks.split(","):
            r = bench_network(name.strip(), args.size, args.repeats, threads, Path(tmp))
            print(json.dumps({k: v for k, v in r.items() if k != "times"}), flush=True)
            results.append(r)

    load_after = os.getloadavg()
    rows = [[r["network"], f"{r['params_m']:.2f}", f"{r['torch_s'] * 1000:.0f}", f"{r['ort_s'] * 1000:.0f}",
             f"{r['ratio']:.2f}x", f"{r['max_abs_diff']:.1e}", f"{r['export_s']:.0f}", f"{r['session_s']:.1f}",
             f"{r['onnx_mb']:.1f}"] for r in results]
    columns = ["network", "params (M)", f"PyTorch {args.size}x{args.size} (ms)", "onnxruntime (ms)",
               "onnxruntime / PyTorch", "max abs diff", "export (s)", "ORT session (s)", "file (MB)"]
    summary = (f"One (1, 3, {args.size}, {args.size}) forward pass on the CPU, {threads} thread(s) for both, "
               f"median of {args.repeats} alternating runs after a warm-up, in one process; onnxruntime "
               f"{onnxruntime.__version__} runs the file scripts/export.py --onnx writes (its scans in "
               f"standard operators: a chunked scan with ONNX Loop nodes), PyTorch the same weights with the "
               f"automatic scan backend (the compiled C scan). Time ratio > 1: onnxruntime is slower. The "
               f"machine was shared with other work (1-minute load average {load_before[0]:.1f} at the start, "
               f"{load_after[0]:.1f} at the end, {os.cpu_count()} CPUs), so single runs vary: see every run "
               f"below; the medians and their ratio are indicative, not precise.")
    rec = make_record(args.id, f"onnxruntime vs PyTorch on the CPU, {args.size}x{args.size}", [
        {"title": "median forward time", "columns": columns, "rows": rows,
         "notes": ["export: scripts/export.py --onnx's engine (tracing, ONNX conversion, onnx.checker), once",
                   "ORT session: opening the file (graph optimisation), once"]}],
        section="ONNX", summary=summary,
        figures={"size": args.size, "threads": threads, "onnxruntime": onnxruntime.__version__,
                 "load_average_1min": [load_before[0], load_after[0]],
                 "results": results})
    write_record(rec)
    md = [f"# {rec['title']}", "", f"- machine: {json.dumps(rec['machine'])}", f"- date: {rec['date']}",
          f"- command: `{command_line()}`", "", summary, "",
          "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    md += ["", "Every run (seconds): " + "; ".join(
        f"{r['network']}: PyTorch {[round(t, 3) for t in r['times']['torch']]}, onnxruntime "
        f"{[round(t, 3) for t in r['times']['ort']]}" for r in results), ""]
    from vmambair.utils.fileio import atomic_write_bytes
    atomic_write_bytes("\n".join(md).encode(), REPO_ROOT / "benchmarks" / f"{rec['id']}.md")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
