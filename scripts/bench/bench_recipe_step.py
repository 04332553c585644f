#!/usr/bin/env python
"""Each recipe's training step as ``train.py`` runs it, stage by stage, for time_to_train.py.

    python scripts/bench/bench_recipe_step.py options/sr_x4_psnr.yml options/sr_x4_gan.yml \
        options/realsr_x4_gan.yml --json $OUT/recipe_steps_h100.json

For each recipe, ``train.py -opt <recipe>`` runs in a child process, unchanged but for:
  * data: a synthetic training set written into --work (smooth random images with noise, each
    --image-size pixels square; for paired recipes the LQ is the bicubic downscale), so the data
    loader, the on-GPU Real-ESRGAN degradation and its pool run as they would on real data;
  * a short schedule: every progressive stage of the recipe shortened to --stage-iters
    iterations (the recipe's batch and patch of each stage kept), no validation, checkpoints
    only at the end;
  * GAN recipes: no pretrained generator (path.pretrain_network_g) and a VGG19 with random
    weights in the perceptual loss (perceptual_opt.pretrained=false: the same network and cost,
    without the ImageNet file, which the GPU machines cannot download).
Everything else (compile, CUDA graphs, precision, EMA, discriminator, losses) is the recipe's.
The step time of a stage is read from the trainer's own log (``train_log.jsonl``, its it/s every
--print-freq iterations), over the stage's windows after the first --skip-windows (compiling,
graph recording, the degradation pool filling); it includes data loading, as training does.
Each stage's first window is recorded too, in seconds (first_window_s: compiling and graph
recording for the stage's sizes, plus --print-freq steps).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

import bench_record  # noqa: E402  (scripts/bench)

ROOT = bench_record.REPO_ROOT


def synthetic_images(count: int, size: int, seed: int = 0) -> list:
    """``count`` (size, size, 3) uint8 images: bench_precision's smooth random images with noise."""
    import torch
    from bench_precision import smooth_random_images
    g = torch.Generator().manual_seed(seed)
    imgs = smooth_random_images(count, size, g)
    imgs = (imgs + 0.05 * torch.randn(imgs.shape, generator=g)).clamp(0, 1)
    return [np.ascontiguousarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in imgs]


def write_training_set(ds: dict, data_root: Path, scale: int, count: int, size: int) -> None:
    """The recipe's training folders under ``data_root`` with synthetic images (GT, and the
    bicubic LQ when the dataset is paired) and its meta_info file listing them."""
    import cv2
    names = [f"img{i:03d}.png" for i in range(count)]
    gt_dir = data_root / ds["dataroot_gt"]
    gt_dir.mkdir(parents=True, exist_ok=True)
    lq_dir = data_root / ds["dataroot_lq"] if ds.get("dataroot_lq") else None
    if lq_dir is not None:
        lq_dir.mkdir(parents=True, exist_ok=True)
    for name, img in zip(names, synthetic_images(count, size)):
        cv2.imwrite(str(gt_dir / name), img)
        if lq_dir is not None:
            lq = img if scale == 1 else cv2.resize(img, (size // scale, size // scale), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(lq_dir / name), lq)
    if ds.get("meta_info_file"):
        meta = data_root / ds["meta_info_file"]
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text("".join(f"{n} ({size},{size},3)\n" for n in names))


def short_recipe(recipe: Path, work: Path, stage_iters: int, print_freq: int, count: int, size: int) -> tuple:
    """Write ``recipe`` shortened as the module docstring says into ``work``; returns (path of the
    new options file, [(batch, gt_size, recipe iterations)] per stage, the recipe's scale)."""
    from bench_model import recipe_stages
    raw = yaml.safe_load(recipe.read_text())
    ds = raw["datasets"]["train"]
    stages = recipe_stages(raw)
    scale = int(raw.get("scale", 1))
    data_root = work / "Datasets"
    write_training_set(ds, data_root, scale, count, size)
    raw["name"] = f"bench_{recipe.stem}"
    raw["datasets"] = {"train": ds}
    if len(stages) > 1:
        ds["iters"] = [stage_iters] * len(stages)
    if ds.get("degradation"):  # the queue must fill from few images: keep its size, it is what trains
        ds["dataset_enlarge_ratio"] = max(1, -(-ds["degradation"].get("queue_size", 0) // count))
    raw["val"] = None
    raw["path"].update(root=str(work), data_root=str(data_root), pretrain_network_g=None, resume_state=None)
    raw["train"]["total_iter"] = stage_iters * len(stages)
    if raw["train"].get("perceptual_opt"):
        raw["train"]["perceptual_opt"]["pretrained"] = False
    raw["logger"] = {**raw.get("logger", {}), "print_freq": print_freq, "save_checkpoint_freq": 10 ** 9,
                     "use_tb_logger": False}
    path = work / f"{recipe.stem}.yml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, stages, scale


def stage_times(log: list, stage_iters: int, nstages: int, print_freq: int, skip: int) -> list:
    """Per stage: (mean step ms over its log windows after the first ``skip``, seconds of its first
    window, mean ms per step that the loop waited for data in those same windows); None where
    the log has no such window."""
    out = []
    for s in range(nstages):
        lo, hi = s * stage_iters, (s + 1) * stage_iters
        stage_windows = [r for r in log if lo < r["iter"] <= hi and "it_per_s" in r]
        windows = stage_windows[skip:]
        # means over the windows, weighted by their iterations
        weights = [min(print_freq, r["iter"] - lo) for r in windows]
        n = sum(weights)
        ms = sum(1000 / r["it_per_s"] * w for r, w in zip(windows, weights)) / n if n else None
        data = sum(r.get("data_ms", 0.0) * w for r, w in zip(windows, weights)) / n if n else None
        first = stage_windows[0] if stage_windows else None
        first_s = min(print_freq, first["iter"] - lo) / first["it_per_s"] if first else None
        out.append((round(ms, 2) if ms else None, round(first_s, 1) if first_s else None,
                    None if data is None else round(data, 1)))
    return out


def run_recipe(recipe: Path, work: Path, args) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    opt_path, stages, scale = short_recipe(recipe, work, args.stage_iters, args.print_freq, args.images, args.image_size)
    t0 = time.perf_counter()
    timed_out = False
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "-opt", str(opt_path)], cwd=work,
                              capture_output=True, text=True, timeout=args.recipe_timeout)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        # Keep what the trainer logged before the limit: the stages it reached still count.
        output = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        code, timed_out = None, True
    wall = time.perf_counter() - t0
    (work / "train_stdout.log").write_text(output)
    if code not in (0, None):
        raise RuntimeError(f"train.py -opt {opt_path} exited with {code}:\n{output[-3000:]}")
    log_path = next((work / "experiments").glob("*/train_log.jsonl"), None)
    if log_path is None:
        raise RuntimeError(f"train.py -opt {opt_path} was stopped after --recipe-timeout {args.recipe_timeout} s "
                           f"before it logged anything:\n{output[-3000:]}")
    log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    ms = stage_times(log, args.stage_iters, len(stages), args.print_freq, args.skip_windows)
    rows = [{"batch": batch, "gt_size": gt, "input_size": gt // scale, "iters": iters, "first_window_s": first,
             "data_wait_ms": data, "paths": {"train.py": None if step is None else {"ms": step}}}
            for (batch, gt, iters), (step, first, data) in zip(stages, ms)]
    per_stage = ", ".join(f"{b} x {g}: {step} ms, of which {data} ms waiting for data (first window {first} s)"
                          for (b, g, _), (step, first, data) in zip(stages, ms))
    cut = f", stopped by --recipe-timeout {args.recipe_timeout} s" if timed_out else ""
    print(f"{recipe.name}: {per_stage} (whole run {wall:.0f} s{cut})", flush=True)
    return {"recipe": str(recipe.relative_to(ROOT)) if recipe.is_relative_to(ROOT) else str(recipe),
            "stages": rows, "wall_s": round(wall, 1), "timed_out": timed_out, "log": log}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+", help="training option files, e.g. options/sr_x4_gan.yml")
    p.add_argument("--stage-iters", type=int, default=120, help="iterations run per progressive stage")
    p.add_argument("--print-freq", type=int, default=20, help="iterations per log window")
    p.add_argument("--skip-windows", type=int, default=2, help="log windows left out at the start of each stage")
    p.add_argument("--images", type=int, default=48, help="synthetic training images")
    p.add_argument("--image-size", type=int, default=480, help="their side in pixels")
    p.add_argument("--work", default="/tmp/bench_recipe_step", help="scratch folder (data, experiments)")
    p.add_argument("--recipe-timeout", type=float, default=None,
                   help="seconds after which a recipe's train.py is stopped; the stages it logged are kept")
    p.add_argument("--json", default=None, help="record to write (a folder: <folder>/<id>.json)")
    p.add_argument("--id", default="recipe_steps", help="record id")
    args = p.parse_args(argv)
    recipes = [Path(r).resolve() for r in args.recipes]
    missing = [r for r, path in zip(args.recipes, recipes) if not path.is_file()]
    if missing:
        print(f"error: recipe {', '.join(missing)} does not exist; pass training option files such as "
              f"options/sr_x4_gan.yml", file=sys.stderr)
        return 2
    results, failures = [], []
    for recipe in recipes:
        try:
            results.append(run_recipe(recipe, Path(args.work) / recipe.stem, args))
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            failures.append(str(recipe))
            continue
        # after every recipe, so that a run cut short keeps the recipes it finished
        print(f"wrote {write_results(results, args)}", flush=True)
    return 1 if failures or not results else 0


def write_results(results: list, args) -> str:
    """The record of the recipes timed so far (bench_record schema); returns its path."""
    rows = [[res["recipe"], i + 1, f"{st['batch']} x {st['gt_size']}", st["iters"],
             None if st["paths"]["train.py"] is None else st["paths"]["train.py"]["ms"], st.get("data_wait_ms"),
             st["first_window_s"]]
            for res in results for i, st in enumerate(res["stages"])]
    notes = [f"train.py on a synthetic training set ({args.images} images of {args.image_size}x{args.image_size}); "
             f"each stage run for {args.stage_iters} iterations, its step time read from the trainer's log after "
             f"the first {args.skip_windows} windows of {args.print_freq} iterations; includes data loading",
             "GAN recipes: random VGG19 weights in the perceptual loss (same cost), no pretrained generator"]
    rec = bench_record.make_record(
        args.id, "Training step of each recipe as train.py runs it", [
            {"title": "Step time per recipe stage (train.py, recipe's batch and patch)",
             "columns": ["recipe", "stage", "batch x GT patch", "recipe iterations", "step (ms)",
                         "of which data wait (ms)", f"first {args.print_freq} iterations (s)"],
             "rows": rows, "notes": notes}],
        section="Time to train",
        figures={"recipes": [{k: v for k, v in res.items() if k != "log"} for res in results],
                 "logs": {res["recipe"]: res["log"] for res in results}})
    return str(bench_record.write_record(rec, args.json))


if __name__ == "__main__":
    sys.exit(main())
