"""Reading images the same way in training, validation and testing.

Every image becomes float32 HxWx3 BGR in [0, 1] (basicsr's convention, so ``img2tensor`` /
``tensor2img`` apply unchanged):

* 8-bit images are divided by 255, 16-bit ones by 65535 (no precision lost to an 8-bit detour),
  float images (EXR/TIFF) are clipped to [0, 1];
* grayscale images are repeated to three channels;
* RGBA images are composited onto white (the colour transparent pixels show in most viewers)
  and the alpha channel is dropped.

Unreadable files raise :class:`DataError` naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".exr")


class DataError(RuntimeError):
    """A data file is missing, unreadable, corrupt or inconsistent with its pair."""


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def to_float_bgr(img: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Convert a decoded image (HxW, HxWx1, HxWx3 BGR or HxWx4 BGRA; uint8/uint16/float) to
    float32 HxWx3 BGR in [0, 1]."""
    if img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        out = img.astype(np.float32) / 65535.0
    elif img.dtype in (np.float32, np.float64):
        out = np.clip(img.astype(np.float32), 0.0, 1.0)
    else:
        raise DataError(f"Image '{source}' has unsupported pixel type {img.dtype}; use 8- or 16-bit PNG/JPEG/TIFF.")
    if out.ndim == 2:
        out = out[:, :, None]
    channels = out.shape[2]
    if channels == 1:
        out = np.repeat(out, 3, axis=2)
    elif channels == 4:
        alpha = out[:, :, 3:4]
        out = out[:, :, :3] * alpha + (1.0 - alpha)
    elif channels != 3:
        raise DataError(f"Image '{source}' has {channels} channels; expected 1 (gray), 3 (colour) or 4 (with alpha).")
    return np.ascontiguousarray(out, dtype=np.float32)


def read_image_unchanged(path: str | os.PathLike, fix: str = "replace or remove it") -> np.ndarray:
    """Decode an image file keeping its bit depth and channels: HxW, HxWx3 BGR or HxWx4 BGRA;
    uint8, uint16 or float32.

    Raises:
        DataError: the file is missing, empty, corrupt, or of an unsupported pixel type; the
        message names the file and ends with ``fix`` (what the user should do about it).
    """
    try:
        content = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"Cannot read image file '{path}': {err.strerror}; {fix}.") from None
    if not content:
        raise DataError(f"Image file '{path}' is empty (0 bytes); {fix}.")
    img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"Image file '{path}' is corrupt or not an image OpenCV can decode; {fix}.")
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        raise DataError(f"Image file '{path}' has pixel type {img.dtype}; use 8- or 16-bit PNG/TIFF/JPEG.")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        raise DataError(f"Image file '{path}' has {img.shape[2]} channels; expected 1, 3 or 4.")
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as float32 HxWx3 BGR in [0, 1] (see module docstring).

    Raises:
        DataError: the file is missing, empty, or not a decodable image.
    """
    return to_float_bgr(read_image_unchanged(path, "replace or remove it (and its pair)"), str(path))


def read_meta_info(path: str | os.PathLike) -> List[str]:
    """The names a basicsr meta-info file lists: the first token of each non-empty line (a path
    relative to the dataset folder, or an LMDB key), in file order."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"Cannot read meta-info file '{path}' ({err.strerror}); check the option "
                        f"'meta_info_file' or regenerate it with scripts/generate_meta_info.py.") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]
