"""test.py memory and time on real photos with the real-world x4 network (issue 23's figure).

    python scripts/bench/eval_memory.py --device cpu --max-memory 5.5      # the CPU figure
    python scripts/bench/eval_memory.py --device cuda                     # the GPU counterpart

Prepares (under ``--work``) three photos from scikit-image's samples: chelsea (300x451),
astronaut (512x512) and a 1024x1024 mosaic of astronaut, coffee, chelsea and rocket (each resized
to 512x512, 2x2); the network of ``options/test_realsr_x4.yml`` (``network_g``) with random
weights (seed 0; memory and time do not depend on the weights); and a test options file with one
``SingleImageFolderDataset`` set scored with NIQE. Then runs ``test.py`` on it as a child process
under ``/usr/bin/time -v`` (peak RSS of the whole process, wall time, exit status; without
/usr/bin/time the peak RSS comes from ``resource.getrusage(RUSAGE_CHILDREN)``) and writes
``benchmarks/data/eval_memory_<device>.json`` (schema 1, see bench_record.py) and
``benchmarks/eval_memory_<device>.md`` with the per-image rows of test.py's ``per_image.csv``
(time, whole or tiled, estimated need, budget, peak).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import REPO_ROOT, command_line, make_record, machine_info, write_record  # noqa: E402


def prepare_photos(folder: Path, shrink: int = 1) -> list:
    """Write the three test photos (BGR PNG), ``shrink`` times smaller for a smoke test; returns
    [(name, width, height)]."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rgb = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket()}
    quad = [cv2.resize(rgb[k], (512, 512), interpolation=cv2.INTER_AREA) for k in ("astronaut", "coffee", "chelsea",
                                                                                   "rocket")]
    mosaic = np.concatenate([np.concatenate(quad[:2], 1), np.concatenate(quad[2:], 1)], 0)
    photos = {"chelsea_451x300": rgb["chelsea"], "astronaut_512x512": rgb["astronaut"], "mosaic_1024x1024": mosaic}
    out = []
    for name, img in photos.items():
        if shrink > 1:
            img = cv2.resize(img, (img.shape[1] // shrink, img.shape[0] // shrink), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{name}.png"), np.ascontiguousarray(img[:, :, ::-1]))
        out.append((name, img.shape[1], img.shape[0]))
    return out


def prepare_network(work: Path, smoke: bool = False) -> tuple:
    """Random-weight real-world x4 network of options/test_realsr_x4.yml (a tiny one for a smoke
    test); returns (weights, network_g)."""
    import torch
    import vmambair  # noqa: F401
    from vmambair.config import build_from_spec
    from vmambair.engine.checkpoint import save_network

    spec = yaml.safe_load((REPO_ROOT / "options" / "test_realsr_x4.yml").read_text())["network_g"]
    if smoke:
        spec.update(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
    torch.manual_seed(0)
    net = build_from_spec("arch", dict(spec))
    save_network(net, work / "net_g.pth", safetensors=True)
    return work / "net_g.safetensors", spec


def write_options(work: Path, photos: Path, weights: Path, spec: dict) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "options" / "test_realsr_x4.yml").read_text())
    raw["name"] = "eval_memory"
    raw["datasets"] = {"test_1": {"name": "Photos", "type": "SingleImageFolderDataset", "dataroot_lq": str(photos)}}
    raw["network_g"] = spec
    raw["path"] = {"root": str(work), "data_root": str(work), "pretrain_network_g": str(weights),
                   "strict_load_g": True}
    raw["val"]["metrics"] = {"niqe": {"type": "calculate_niqe_score", "crop_border": 4}}
    path = work / "eval_memory.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--max-memory", type=float, default=None, help="test.py --max-memory (GB)")
    p.add_argument("--work", default="/tmp/vmambair_eval_memory", help="Folder for photos, weights and results.")
    p.add_argument("--nice", type=int, default=10, help="CPU: run test.py under nice -n N (0: not).")
    p.add_argument("--id", default=None, help="Record id (default eval_memory_<device>).")
    p.add_argument("--smoke", action="store_true", help="Tiny network, photos 4x smaller, record id "
                   "eval_memory_smoke: checks the script, measures nothing worth keeping.")
    args = p.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.id = args.id or "eval_memory_smoke"
    photos = prepare_photos(work / "photos", 4 if args.smoke else 1)
    weights, spec = prepare_network(work, args.smoke)
    opt = write_options(work, work / "photos", weights, spec)
    cmd = [sys.executable, str(REPO_ROOT / "test.py"), "-opt", str(opt), "--set",
           f"num_gpu={0 if args.device == 'cpu' else 1}"]
    if args.max_memory:
        cmd += ["--max-memory", str(args.max_memory)]
    # Peak RSS: /usr/bin/time -v where installed; resource.getrusage of the waited-for children otherwise.
    timed = (["/usr/bin/time", "-v"] if os.path.exists("/usr/bin/time") else []) + cmd
    if args.device == "cpu" and args.nice:
        timed = ["nice", "-n", str(args.nice)] + timed
    print("running:", " ".join(timed), flush=True)
    start = time.time()
    # Streamed to files (progress bar and notes can be followed while it runs), read back after.
    with open(work / "test_stdout.txt", "w") as out, open(work / "test_stderr.txt", "w") as err:
        returncode = subprocess.run(timed, cwd=REPO_ROOT, stdout=out, stderr=err).returncode
    wall = time.time() - start
    proc = subprocess.CompletedProcess(timed, returncode, (work / "test_stdout.txt").read_text(),
                                       (work / "test_stderr.txt").read_text())
    print(proc.stdout)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss_kb = int(rss.group(1)) if rss else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KB on Linux
    peak_rss_gb = rss_kb / 2**20 if rss_kb else None
    notes = [line for line in re.split(r"[\r\n]", proc.stderr) if line.startswith(("note:", "error:"))]
    per_image_path = work / "results" / "eval_memory" / "per_image.csv"
    per_image = list(csv.DictReader(per_image_path.open())) if per_image_path.is_file() else []
    table_md = proc.stdout[proc.stdout.find("| set"):].split("\n\nTables written")[0].strip() if "| set" in proc.stdout \
        else "(no table printed)"

    rows = [[r["image"], f"{r['width']}x{r['height']}", f"{float(r['seconds']):.1f}",
             "whole" if not r["tile"] else f"{r['tiles']} tiles of {r['tile']}px", r["needed_gb"], r["budget_gb"],
             r["peak_gb"]] for r in per_image]
    device_name = machine_info().get("gpu") if args.device == "cuda" else (machine_info().get("cpu") or "cpu")
    peak_word = "peak RSS so far (GB)" if args.device == "cpu" else "GPU peak allocated (GB)"
    rss_text = f"{peak_rss_gb:.2f} GB" if peak_rss_gb is not None else "not reported"
    summary = (f"test.py (exit {proc.returncode}) with the real-world x4 network (dim {spec['dim']}, num_blocks "
               f"{spec['num_blocks']}, random weights) on {len(photos)} photos up to "
               f"{max(w for _, w, _ in photos)}x{max(h for _, _, h in photos)} input, on {args.device} "
               f"({device_name}): whole-process peak RSS {rss_text}, wall {wall:.0f} s (including imports, the "
               f"network's memory probe and NIQE on the 4x outputs).")
    command = command_line()
    rec = make_record(args.id or f"eval_memory_{args.device}", f"test.py memory and time per photo, real-world x4, "
                      f"{args.device}", section="Evaluation memory", command=command, summary=summary, tables=[
                          {"title": "per image (test.py's per_image.csv)",
                           "columns": ["image", "input", "seconds", "ran as", "estimated need whole (GB)",
                                       "budget (GB)", peak_word], "rows": rows,
                           "notes": ["estimated need: the network's per-pixel cost from a 64x64 probe forward, "
                                     "x1.25 + 0.25 GB on the CPU (x1.15 + 0.125 GB on CUDA)",
                                     "budget: 3/4 of the free memory, capped by --max-memory minus what the "
                                     "process already holds"]},
                          {"title": "whole process (/usr/bin/time -v)",
                           "columns": ["exit status", "peak RSS (GB)", "wall (s)", "max-memory (GB)"],
                           "rows": [[proc.returncode, round(peak_rss_gb, 3) if peak_rss_gb else None, round(wall, 1),
                                     args.max_memory]]}],
                      figures={"exit_status": proc.returncode, "peak_rss_gb": peak_rss_gb, "wall_s": wall,
                               "per_image": per_image, "notes": notes, "table": table_md,
                               "photos": [{"name": n, "width": w, "height": h} for n, w, h in photos]})
    write_record(rec)
    md = [f"# {rec['title']}", "", f"- machine: {json.dumps(rec['machine'])}", f"- date: {rec['date']}",
          f"- command: `{command}`", f"- test.py command: `{' '.join(cmd)}`", "", summary, "",
          "| " + " | ".join(rec["tables"][0]["columns"]) + " |", "|" + "---|" * len(rec["tables"][0]["columns"])]
    md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    md += ["", "Notes test.py printed:", ""] + [f"- {n}" for n in notes] + ["", "Table test.py printed:", "",
                                                                           table_md, ""]
    from vmambair.utils.fileio import atomic_write_bytes
    atomic_write_bytes("\n".join(md).encode(), REPO_ROOT / "benchmarks" / f"{rec['id']}.md")
    print("\n".join(md))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
