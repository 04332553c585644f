"""Evaluate a network on a paired dataset: restore every image, compute metrics, save images.

Used for periodic validation during training and by ``test.py``. Images run through
:func:`vmambair.engine.inference.run_inference` (inference mode, memory-planned tiling,
out-of-memory retries); an image that cannot run at all is reported on one line and left out,
and the others still count.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.utils import imwrite, tensor2img
from basicsr.utils.registry import METRIC_REGISTRY

from .compiling import validation_stance
from .inference import ImageTooLargeError, evaluation_mode, proc_kib_field, run_inference, unwrap_network
from ..config import ValOptions


def build_eval_loader(dataset) -> DataLoader:
    """One whole image per batch (sizes differ), dataset order."""
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)


def _peak_memory(device: torch.device) -> int:
    """CUDA: the allocator's peak since it was last reset; CPU: the process's peak RSS so far (VmHWM)."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return proc_kib_field("/proc/self/status", "VmHWM") or 0


def val_tile(val: ValOptions):
    """The tile setting of ``val`` for :func:`run_inference`: ``val.tile`` null -> 'auto' (whole
    image where it fits in memory, else tiles that fit), 0 -> whole image, N -> N-pixel tiles."""
    return "auto" if val.tile is None else int(val.tile)


@torch.no_grad()
def metric_value(spec: Dict, img, ref) -> float:
    """One basicsr metric: ``spec`` = ``{'type': registry name, **kwargs}``; ``img`` and ``ref`` are
    HxWx3 BGR uint8 (``ref`` None for no-reference metrics such as NIQE)."""
    return float(METRIC_REGISTRY.get(spec["type"])(img, ref, **{k: v for k, v in spec.items() if k != "type"}))


def evaluate_dataset(net: torch.nn.Module, loader: DataLoader, val: ValOptions, scale: int, device: torch.device,
                     bf16: bool = True, save_dir: Optional[str | Path] = None, suffix: Optional[str] = None,
                     num_samples: int = 0, progress: Optional[Callable[[int, int], None]] = None, *,
                     precision: Optional[str] = None, max_memory: Optional[float] = None,
                     budget: Optional[int] = None, failures: Optional[List[str]] = None,
                     records: Optional[List[Dict]] = None, show_progress: bool = True, desc: Optional[str] = None,
                     log: Optional[Callable[[str], None]] = None,
                     ) -> Tuple[Dict[str, float], int, List[np.ndarray]]:
    """Restore each image of ``loader`` with ``net`` and average ``val.metrics`` over images.

    Runs under inference mode, with a tqdm progress bar (on stderr; the last image's time in its
    postfix) unless ``show_progress`` is false.

    Args:
        net: restoration network ((1,3,H,W) -> (1,3,H*scale,W*scale)); put in eval mode here.
        loader: batches ``{'lq': (1,3,h,w), 'gt': (1,3,h*s,w*s), 'lq_path': [str]}``.
        val: pad multiple, tiling (``val.tile`` null: whole image where it fits in memory, see
            :func:`val_tile`), self-ensemble and metric specs
            ({name: {type: calculate_psnr, crop_border: 0, test_y_channel: true}}).
        bf16: bf16 autocast on CUDA (ignored when ``precision`` is given).
        save_dir: if given, restored images are written there as ``<stem>[_suffix].png``.
        num_samples: also return this many ``[lq | output | gt]`` RGB uint8 strips (TensorBoard).
        progress: called as ``progress(images done, total)``.
        precision: 'fp32' / 'bf16' / 'fp16' autocast on CUDA.
        max_memory, budget: memory limits of :func:`run_inference`.
        failures: if given, one line per image that could not run (out of memory even in the
            smallest tiles) is appended; such images are skipped.
        records: if given, one dict per restored image is appended: ``{'image', 'width',
            'height', 'seconds', 'tile', 'tiles', 'retries', 'needed_gb', 'budget_gb', 'peak_gb'}`` (peak:
            CUDA allocator peak during the image; CPU: the process's peak RSS so far).
        log: receives notes and error lines (default: ``tqdm.write`` to stderr).

    Returns:
        (``{metric name: mean}``, number of images restored, sample strips HxWx3 RGB uint8).
        Images without ground truth get only no-reference metrics (``fn.no_reference``, e.g.
        NIQE); a metric computed on no image is left out of the dict.
    """
    log = log or (lambda text: tqdm.write(text, file=sys.stderr))
    precision = precision or ("bf16" if bf16 else "fp32")
    was_training = net.training
    net.eval()
    sums = {name: 0.0 for name in val.metrics}
    counts = {name: 0 for name in val.metrics}
    count, samples, seen = 0, [], 0
    total = len(loader)
    bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, disable=not show_progress,
               desc=desc, leave=False)
    try:
        module = unwrap_network(net)  # a wrapper (CUDA graphs) holds the module; a plain function has none
        stance = validation_stance(module) if isinstance(module, torch.nn.Module) else contextlib.nullcontext()
        with evaluation_mode(), stance:  # eager compiled blocks: no compile per image size
            for batch in loader:
                seen += 1
                path = batch["lq_path"][0] if "lq_path" in batch else f"image {seen}"
                name = os.path.basename(str(path))
                lq = batch["lq"]
                if torch.device(device).type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    result = run_inference(net, lq, scale=scale, tile=val_tile(val), overlap=val.tile_overlap,
                                           multiple=val.pad_multiple, self_ensemble=val.self_ensemble,
                                           device=device, precision=precision, max_memory=max_memory,
                                           budget=budget, name=name, log=log)
                except ImageTooLargeError as err:
                    log(f"error: {err}; skipped")
                    if failures is not None:
                        failures.append(str(err))
                    bar.update(1)
                    continue
                out = result.output.float().clamp_(0, 1).cpu()
                out_img = tensor2img(out, rgb2bgr=True)  # HxWx3 BGR uint8, the layout basicsr's metrics expect
                gt_img = tensor2img(batch["gt"], rgb2bgr=True) if "gt" in batch else None
                for metric, spec in val.metrics.items():
                    if gt_img is None and not getattr(METRIC_REGISTRY.get(spec["type"]), "no_reference", False):
                        continue  # full-reference metric on a set without ground truth
                    sums[metric] += metric_value(spec, out_img, gt_img)
                    counts[metric] += 1
                if save_dir is not None:
                    stem = Path(str(path)).stem
                    imwrite(out_img, str(Path(save_dir) / (f"{stem}_{suffix}.png" if suffix else f"{stem}.png")))
                if len(samples) < num_samples:
                    strip = [tensor2img(batch["lq"], rgb2bgr=False), tensor2img(out, rgb2bgr=False)]
                    if "gt" in batch:
                        strip.append(tensor2img(batch["gt"], rgb2bgr=False))
                    h = max(s.shape[0] for s in strip)
                    strip = [np.pad(s, ((0, h - s.shape[0]), (0, 0), (0, 0))) for s in strip]
                    samples.append(np.concatenate(strip, axis=1))
                count += 1
                h, w = lq.shape[-2:]
                if records is not None:
                    records.append({"image": name, "width": int(w), "height": int(h),
                                    "seconds": round(result.seconds, 3), "tile": result.tile, "tiles": result.tiles,
                                    "retries": result.retries, "needed_gb": round(result.needed / 2**30, 3),
                                    "budget_gb": round(result.budget / 2**30, 3), "peak_gb": round(_peak_memory(device) / 2**30, 3)})
                bar.set_postfix_str(f"{name[-30:]} {w}x{h} {result.seconds:.1f} s"
                                    + (f" ({result.tiles} tiles)" if result.tile else ""))
                bar.update(1)
                if progress:
                    progress(seen, total)
    finally:
        bar.close()
        if was_training:
            net.train()
    means = {name: s / counts[name] for name, s in sums.items() if counts[name]}
    return means, count, samples


def format_table(rows: List[Tuple[str, int, Dict[str, float]]], metric_names: List[str]) -> Tuple[str, str]:
    """Markdown and CSV tables of ``(set name, images, {metric: value})`` rows (with a mean row);
    a metric a set lacks (no ground truth) shows as ``-``.

    Returns:
        (markdown text, csv text).
    """
    header = ["set", "images"] + metric_names
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    csv = [",".join(header)]
    for name, n, values in rows:
        cells = [name, str(n)] + [f"{values[m]:.4f}" if m in values else "-" for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
        csv.append(",".join(cells))
    if len(rows) > 1:
        # A metric missing on a set (e.g. PSNR without ground truth) is averaged over the others.
        have = {m: [v[m] for _, _, v in rows if m in v] for m in metric_names}
        cells = ["mean (of sets)", str(sum(n for _, n, _ in rows))] + [
            f"{float(np.mean(have[m])):.4f}" if have[m] else "-" for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", "\n".join(csv) + "\n"
