#!/usr/bin/env python
"""Estimated wall time of each recipe's full training schedule on 1 and on 8 GPUs, summed from
measured per-stage step times (the JSON records of ``bench_model.py --stages``).

    python scripts/bench/time_to_train.py benchmarks/data/recompile_h100.json \
        benchmarks/data/model_realsr_x4_vs_authors.json

A record is one of ``bench_model.py --stages`` (paths such as authors and graphed, per
stage), one of ``bench_recompile.py`` (our compiled and CUDA-graphed step after each
progressive stage's first iteration, path "graphed"; the iterations per stage come from the
recipe named by the record's command, ``-opt``), or one of ``bench_recipe_step.py`` (the step
of train.py itself for each recipe it ran, path "train.py").

For each record and each path timed per stage (e.g. authors, graphed):
  1 GPU, options as written   sum over stages of (step time x iterations): the per-GPU batch of
                              the options, so one GPU sees 1/8 of the paper's images per iteration
  8 GPUs (the paper's setup)  the same iterations, 8x the images each (global batch 8 x per-GPU
                              batch), each iteration the 1-GPU step time / the DDP scaling
                              efficiency measured at the most GPUs in benchmarks/data (a
                              bench_ddp.py record, or --ddp-efficiency), assumed to hold at 8
  1 GPU, the paper's batch    8 accumulated micro-batches per iteration: 8x the first figure
Where several records time the same recipe and path, the later one on the command line counts
(unless it has no time for it). Validation and checkpointing are excluded; data loading is in the
"train.py" path's step times only (measured at < 1 ms per iteration in the DDP runs). Prints a table and writes a record (default benchmarks/data/time_to_train.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

import bench_record  # noqa: E402  (scripts/bench)

def ddp_efficiency(override=None) -> tuple[float, str]:
    """The data-parallel scaling efficiency to assume at 8 GPUs, and where it comes from: the
    benchmarks/data record (bench_ddp.py) with figures.scaling_efficiency at the most GPUs."""
    if override is not None:
        return override, "--ddp-efficiency"
    best = None
    for path in sorted(bench_record.DATA_DIR.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            fig = rec["figures"]
            cand = (int(fig["gpus"]), float(fig["scaling_efficiency"]), path.name, rec["machine"], rec["date"])
        except (OSError, KeyError, ValueError, TypeError):
            continue
        if best is None or cand[0] > best[0]:
            best = cand
    if best is None:
        return 1.0, "no DDP record in benchmarks/data: perfect scaling assumed"
    gpus, eff, name, machine, date = best
    m = machine if isinstance(machine, str) else machine.get("gpu", str(machine))
    return eff, f"measured on {gpus} GPUs: {name} ({m}, {date[:10]})"


def schedule_hours(stages: list, path: str) -> tuple[float | None, list]:
    """Hours of one GPU for the stages' iterations at the measured step time of ``path``."""
    total_s, parts = 0.0, []
    for st in stages:
        r = st["paths"].get(path)
        if r is None:
            return None, parts
        s = r["ms"] / 1000 * st["iters"]
        parts.append({"batch": st["batch"], "input_size": st["input_size"], "iters": st["iters"],
                      "step_ms": r["ms"], "hours": round(s / 3600, 2)})
        total_s += s
    return total_s / 3600, parts


def recipes_of(rec: dict) -> list[tuple[str, list]]:
    """[(recipe, stages)] of a bench_model.py --stages, bench_recompile.py or bench_recipe_step.py
    record; each stage is {batch, gt_size, input_size, iters, paths: {path: {ms}}}."""
    fig = rec["figures"]
    if isinstance(fig.get("recipes"), list):  # bench_recipe_step.py: several recipes, path "train.py"
        return [(r["recipe"], r["stages"]) for r in fig["recipes"]]
    return [stages_of(rec)]


def stages_of(rec: dict) -> tuple[str, list]:
    """(recipe, stages) of a bench_model.py --stages record or a bench_recompile.py record."""
    fig = rec["figures"]
    if isinstance(fig.get("stages"), list):
        return fig["recipe"], fig["stages"] or train_row_as_stage(fig)
    timed = fig["stages"]["new"]  # bench_recompile.py: no recipe or iterations in the record itself
    words = rec["command"].split()
    recipe = words[words.index("-opt") + 1] if "-opt" in words else "options/derain.yml"
    iters = yaml.safe_load((bench_record.REPO_ROOT / recipe).read_text())["datasets"]["train"].get("iters") or []
    if len(iters) != len(timed):
        raise KeyError(f"{recipe} has {len(iters)} progressive stages (datasets.train.iters), the record {len(timed)}")
    return recipe, [{"batch": st["batch"], "gt_size": st["gt_size"], "input_size": st["input_size"], "iters": n,
                     "paths": {"graphed": {"ms": st["step_ms"]}}} for st, n in zip(timed, iters)]


def train_row_as_stage(fig: dict) -> list:
    """A bench_model.py record run without --stages: its training row of the recipe's own
    activation_checkpointing mode as the one stage of a single-stage recipe, when that row was
    timed at the stage's batch and input size (the step bench_model.py --stages would have
    reused). [] otherwise."""
    # (imported here: they load torch, which the records with stage times do not need)
    from bench_model import recipe_stages, train_row_name
    from vmambair.archs.vmambair_arch import checkpointing_mode
    opt = yaml.safe_load((bench_record.REPO_ROOT / fig["recipe"]).read_text())
    stages = recipe_stages(opt)
    mode = checkpointing_mode(opt.get("network_g", {}).get("activation_checkpointing") or "none")
    row = fig.get("train", {}).get("rows", {}).get(train_row_name(mode))
    if len(stages) != 1 or not row:
        return []
    (batch, gt_size, iters), = stages
    input_size = gt_size // opt.get("scale", 1)
    if (fig["train"]["batch"], fig["train"]["size"]) != (batch, input_size):
        return []
    return [{"batch": batch, "gt_size": gt_size, "input_size": input_size, "iters": iters,
             "paths": {path: r for path, r in row.items() if r is not None}}]


def fmt_h(h):
    return "-" if h is None else (f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} days ({h:.0f} h)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+",
                   help="JSON records of bench_model.py --stages, bench_recompile.py or bench_recipe_step.py")
    p.add_argument("--ddp-efficiency", type=float, default=None,
                   help="scaling efficiency at 8 GPUs (default: the 4-GPU figure in benchmarks/data)")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--json", default=None, help="record to write (default benchmarks/data/time_to_train.json)")
    args = p.parse_args(argv)
    eff, eff_src = ddp_efficiency(args.ddp_efficiency)
    rows, figures, machines = [], {}, set()
    for path in args.records:
        try:
            rec = json.loads(Path(path).read_text())
            timed = recipes_of(rec)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: {path}: not a bench_model.py --stages, bench_recompile.py or bench_recipe_step.py "
                  f"record ({e})", file=sys.stderr)
            return 2
        if not timed or not all(stages for _, stages in timed):
            print(f"error: {path}: no per-stage timings; run bench_model.py with --stages", file=sys.stderr)
            return 2
        m = rec["machine"]
        machines.add(m.get("gpu", str(m)) if isinstance(m, dict) else m)
        for recipe, stages in timed:
            for tpath in stages[0]["paths"]:
                h1, parts = schedule_hours(stages, tpath)
                h8 = None if h1 is None else h1 / eff
                key = f"{recipe}:{tpath}"
                if h1 is None and key in figures:
                    continue  # an earlier record timed it; this one did not (e.g. a run cut short)
                # a later record of the same recipe and path replaces the earlier one's row
                rows = [r for r in rows if f"{r[0]}:{r[1]}" != key]
                figures[key] = {"one_gpu_hours": h1, f"{args.gpus}_gpu_hours": h8,
                                "one_gpu_paper_batch_hours": None if h1 is None else args.gpus * h1,
                                "stages": parts, "source": path}
                iters = sum(st["iters"] for st in stages)
                rows.append([recipe, tpath, f"{len(stages)} stage(s), {iters} iterations", fmt_h(h1), fmt_h(h8),
                             fmt_h(None if h1 is None else args.gpus * h1)])
    columns = ["recipe", "path", "schedule", "1 GPU (options' per-GPU batch)",
               f"{args.gpus} GPUs (paper's global batch)", "1 GPU with the paper's global batch"]
    notes = [f"per-stage step times from {', '.join(args.records)}; GPUs: {', '.join(sorted(machines))}",
             f"{args.gpus}-GPU figure: 1-GPU step time / scaling efficiency {eff:.2f} ({eff_src})",
             "validation and checkpoint writing excluded; path 'train.py' (bench_recipe_step.py): the trainer's "
             "whole step, data loading and the GAN recipes' discriminator and perceptual loss included; other paths: "
             "bench_model.py / bench_recompile.py's fwd + L1 + bwd + Adam on batches already on the GPU"]
    print("| " + " | ".join(columns) + " |")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    for n in notes:
        print(f"- {n}")
    rec = bench_record.make_record("time_to_train", "Time to train each recipe's full schedule",
                                   [{"columns": columns, "rows": rows, "notes": notes}], section="Time to train",
                                   figures={"ddp_efficiency": eff, "ddp_efficiency_source": eff_src, "recipes": figures},
                                   machine=", ".join(sorted(machines)) or "unknown")
    print(f"wrote {bench_record.write_record(rec, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
