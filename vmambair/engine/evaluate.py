"""Evaluate a network on a paired dataset: restore every image, compute metrics, save images.

Used for periodic validation during training and by ``test.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.utils import imwrite, tensor2img
from basicsr.utils.registry import METRIC_REGISTRY

from .compiling import validation_stance
from .inference import autocast_context, restore_image
from ..config import ValOptions


def build_eval_loader(dataset) -> DataLoader:
    """One whole image per batch (sizes differ), dataset order."""
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)


def _restore_with_oom_fallback(net, lq: torch.Tensor, val: ValOptions, scale: int, device: torch.device,
                               bf16: bool) -> torch.Tensor:
    """``restore_image`` with ``val``'s settings; on CUDA out-of-memory, retry in halving tiles."""
    tile = val.tile
    while True:
        try:
            with autocast_context(device, bf16), validation_stance(net):  # eager: no compile per image size
                return restore_image(net, lq, scale=scale, tile=tile, overlap=val.tile_overlap,
                                     multiple=val.pad_multiple, self_ensemble=val.self_ensemble)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            current = tile or max(lq.shape[-2:])
            tile = max(current // 2, 2 * val.tile_overlap, val.pad_multiple)
            if tile >= current:
                raise
            print(f"note: out of GPU memory on a {lq.shape[-1]}x{lq.shape[-2]} image; retrying in {tile}px tiles "
                  f"(set val.tile to skip this).")


@torch.no_grad()
def metric_value(spec: Dict, img, ref) -> float:
    """One basicsr metric: ``spec`` = ``{'type': registry name, **kwargs}``; ``img`` and ``ref`` are
    HxWx3 BGR uint8 (``ref`` None for no-reference metrics such as NIQE)."""
    return float(METRIC_REGISTRY.get(spec["type"])(img, ref, **{k: v for k, v in spec.items() if k != "type"}))


def evaluate_dataset(net: torch.nn.Module, loader: DataLoader, val: ValOptions, scale: int, device: torch.device,
                     bf16: bool = True, save_dir: Optional[str | Path] = None, suffix: Optional[str] = None,
                     num_samples: int = 0, progress: Optional[Callable[[int, int], None]] = None,
                     ) -> Tuple[Dict[str, float], int, List[np.ndarray]]:
    """Restore each image of ``loader`` with ``net`` and average ``val.metrics`` over images.

    Args:
        net: restoration network ((1,3,H,W) -> (1,3,H*scale,W*scale)); put in eval mode here.
        loader: batches ``{'lq': (1,3,h,w), 'gt': (1,3,h*s,w*s), 'lq_path': [str]}``.
        val: pad multiple, tiling, self-ensemble and metric specs
            ({name: {type: calculate_psnr, crop_border: 0, test_y_channel: true}}).
        save_dir: if given, restored images are written there as ``<stem>[_suffix].png``.
        num_samples: also return this many ``[lq | output | gt]`` RGB uint8 strips (TensorBoard).

    Returns:
        (``{metric name: mean}``, number of images, sample strips HxWx3 RGB uint8). Images
        without ground truth get only no-reference metrics (``fn.no_reference``, e.g. NIQE); a
        metric computed on no image is left out of the dict.
    """
    was_training = net.training
    net.eval()
    sums = {name: 0.0 for name in val.metrics}
    counts = {name: 0 for name in val.metrics}
    count, samples = 0, []
    total = len(loader)
    for batch in loader:
        lq = batch["lq"].to(device)
        out = _restore_with_oom_fallback(net, lq, val, scale, device, bf16)
        out = out.float().clamp_(0, 1).cpu()
        out_img = tensor2img(out, rgb2bgr=True)  # HxWx3 BGR uint8, the layout basicsr's metrics expect
        gt_img = tensor2img(batch["gt"], rgb2bgr=True) if "gt" in batch else None
        for name, spec in val.metrics.items():
            if gt_img is None and not getattr(METRIC_REGISTRY.get(spec["type"]), "no_reference", False):
                continue  # full-reference metric on a set without ground truth
            sums[name] += metric_value(spec, out_img, gt_img)
            counts[name] += 1
        if save_dir is not None:
            stem = Path(batch["lq_path"][0]).stem
            name = f"{stem}_{suffix}.png" if suffix else f"{stem}.png"
            imwrite(out_img, str(Path(save_dir) / name))
        if len(samples) < num_samples:
            strip = [tensor2img(batch["lq"], rgb2bgr=False), tensor2img(out, rgb2bgr=False)]
            if "gt" in batch:
                strip.append(tensor2img(batch["gt"], rgb2bgr=False))
            h = max(s.shape[0] for s in strip)
            strip = [np.pad(s, ((0, h - s.shape[0]), (0, 0), (0, 0))) for s in strip]
            samples.append(np.concatenate(strip, axis=1))
        count += 1
        if progress:
            progress(count, total)
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
