"""The Python API: use a trained VmambaIR without options files or scripts.

    import cv2, vmambair
    model = vmambair.load_model("net_g.safetensors")          # network in eval mode, on the CPU
    out = vmambair.restore(model, cv2.imread("rainy.png", cv2.IMREAD_UNCHANGED))
    cv2.imwrite("restored.png", out)

``vmambair.load_model`` reads self-describing weights (see :mod:`vmambair.engine.portable`);
``vmambair.restore`` runs exactly the code of ``scripts/restore.py`` on one decoded image (tiles,
gray, alpha, 8/16-bit and float images), so both give identical results.

This module sits at the top, beside the apps: it may import any layer.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch

from .engine.inference import restore_array  # the function scripts/restore.py runs on each image
from .engine.portable import load_model  # noqa: F401  (re-exported as vmambair.load_model)

__all__ = ["load_model", "restore"]


def model_scale(model: torch.nn.Module) -> int:
    """Output size / input size of ``model``: set by :func:`load_model`, else the network's ``scale``."""
    return int(getattr(model, "vmambair_scale", None) or getattr(model, "scale", 1))


def restore(model: torch.nn.Module, image: np.ndarray, *, tile: Union[str, int, None] = "auto", overlap: int = 32,
            scale: Optional[int] = None, multiple: int = 8, alpha: str = "resize", self_ensemble: bool = False,
            device: Optional[torch.device] = None, precision: str = "fp32", max_memory: Optional[float] = None,
            progress: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
    """Restore one image held in a numpy array, keeping its layout and type.

    Args:
        model: a network from :func:`load_model` (or any module mapping (1, 3, h, w) RGB in
            [0, 1] to (1, 3, h*scale, w*scale)).
        image: (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA (OpenCV's channel order, as
            ``cv2.imread(path, cv2.IMREAD_UNCHANGED)`` returns it); uint8, uint16, or float32 in
            [0, 1].
        tile: ``'auto'`` (as restore.py: the whole image where its estimated memory fits, else the
            largest tiles that fit), a tile size in input pixels, or None / 0 (whole image at once).
        overlap: overlap of neighbouring tiles in pixels.
        scale: output/input size; default: the model's.
        multiple: the size the network's input is padded to a multiple of (8 for VmambaIR).
        alpha: RGBA images: ``resize`` keeps the alpha (bicubic for SR), ``network`` restores it.
        self_ensemble: average the 8 flips/rotations (8x slower).
        device: where the network runs; default: where its parameters are.
        precision: ``fp32``, or ``bf16`` / ``fp16`` autocast (CUDA only).
        max_memory: with ``tile='auto'``, the memory budget in bytes (default: what is free).
        progress: called as ``progress(done_tiles, total_tiles)``.

    Returns:
        (H*scale, W*scale[, C]) array with ``image``'s dtype and channels.
    """

    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"vmambair.restore: image must be (H, W), (H, W, 3) or (H, W, 4); got shape {image.shape}.")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        if image.dtype == np.float64:
            image = image.astype(np.float32)
        else:
            raise ValueError(f"vmambair.restore: image dtype must be uint8, uint16 or float32 (in [0, 1]); "
                             f"got {image.dtype}.")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    return restore_array(model, image, scale or model_scale(model), tile, overlap, multiple,
                         torch.device(device), precision, alpha, self_ensemble, progress, max_memory=max_memory)
