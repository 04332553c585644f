"""End-of-training comparison against the unrestored inputs (``val.report_inputs: true``).

For each validation image: the metrics of the input against the target (the number to beat)
beside those of the restored output, and a side-by-side image ``input | restored | target``.
The quick start uses it to show what training bought on its held-out photos.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.utils import tensor2img

from ..engine.checkpoint import atomic_write_bytes
from ..engine.evaluate import build_eval_loader, metric_value, val_tile
from ..engine.inference import ImageTooLargeError, evaluation_mode, run_inference
from ..config import ValOptions


def _metrics(img: np.ndarray, ref: np.ndarray, specs: Dict[str, Dict]) -> Dict[str, float]:
    """``{name: value}`` of basicsr metric ``specs`` for HxWx3 BGR uint8 ``img`` against ``ref``."""
    return {name: metric_value(spec, img, ref) for name, spec in specs.items()}


def compare_with_inputs(net: torch.nn.Module, dataset, val: ValOptions, scale: int, device: torch.device,
                        bf16: bool, out_dir: str | Path, log: Optional[Callable[[str], None]] = None) -> List[Dict]:
    """Restore every image of a paired ``dataset`` and compare with its unrestored input.

    Args:
        net: (1,3,h,w) -> (1,3,h*scale,w*scale).
        dataset: items ``{'lq': (3,h,w), 'gt': (3,h*s,w*s), 'lq_path': str}``.
        val: metric specs, padding and tiling settings.
        scale: for ``scale > 1`` the input is upscaled bicubically before it is scored.
        out_dir: side-by-side PNGs go here as ``<stem>.png`` (written atomically).
        log: receives notes (tiling) and the line of an image that could not run (default: print).
        Images run through :func:`vmambair.engine.inference.run_inference` under inference mode.

    Returns:
        One row per image: ``{'name', 'input': {metric: v}, 'restored': {metric: v}, 'image': path}``.
    """
    log = log or print
    was_training = net.training
    net.eval()
    out_dir = Path(out_dir)
    rows = []
    with evaluation_mode():
        for batch in build_eval_loader(dataset):
            if "gt" not in batch:  # input-only sets (no target to compare with)
                continue
            row = _compare_one(net, batch, val, scale, device, bf16, out_dir, log)
            if row is not None:
                rows.append(row)
    if was_training:
        net.train()
    return rows


def _compare_one(net, batch, val: ValOptions, scale: int, device: torch.device, bf16: bool, out_dir: Path,
                 log: Callable[[str], None]) -> Optional[Dict]:
    """One row of :func:`compare_with_inputs`; None (and one logged line) when it cannot run."""
    stem = Path(batch["lq_path"][0]).stem
    try:
        out = run_inference(net, batch["lq"], scale=scale, tile=val_tile(val), overlap=val.tile_overlap,
                            multiple=val.pad_multiple, device=device, precision="bf16" if bf16 else "fp32",
                            name=stem, log=log).output
    except ImageTooLargeError as err:
        log(f"error: {err}; left out of the comparison")
        return None
    out_img = tensor2img(out.float().clamp_(0, 1).cpu(), rgb2bgr=True)
    gt_img = tensor2img(batch["gt"], rgb2bgr=True)
    in_img = tensor2img(batch["lq"], rgb2bgr=True)
    if in_img.shape != gt_img.shape:
        in_img = cv2.resize(in_img, gt_img.shape[1::-1], interpolation=cv2.INTER_CUBIC)
    path = out_dir / f"{stem}.png"
    ok, encoded = cv2.imencode(".png", np.concatenate([in_img, out_img, gt_img], axis=1))
    if ok:
        atomic_write_bytes(encoded.tobytes(), path)
    return {"name": stem, "input": _metrics(in_img, gt_img, val.metrics),
            "restored": _metrics(out_img, gt_img, val.metrics), "image": str(path)}


def format_comparison(rows: List[Dict], set_name: str) -> Tuple[str, Dict[str, Dict[str, float]]]:
    """A Markdown table of :func:`compare_with_inputs` rows with a mean row, and the means.

    Returns:
        (text, ``{'input': {metric: mean}, 'restored': {metric: mean}}``).
    """
    names = list(rows[0]["input"]) if rows else []
    means = {side: {m: float(np.mean([r[side][m] for r in rows])) for m in names} for side in ("input", "restored")}
    header = ["image"] + [f"input {m}" for m in names] + [f"restored {m}" for m in names]
    lines = [f"{set_name}: {len(rows)} images", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows + [{"name": "**mean**", **means}]:
        lines.append("| " + " | ".join([r["name"]] + [f"{r['input'][m]:.4f}" for m in names]
                                       + [f"{r['restored'][m]:.4f}" for m in names]) + " |")
    return "\n".join(lines), means
