"""Ground-truth-only training set for real-world SR: images + Real-ESRGAN kernels per item.

The LQ images do not exist on disk: the model synthesises them on the training device from
the GT batch and the kernels drawn here (see :mod:`vmambair.data.degradation`).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Union

import cv2
import numpy as np
import torch

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.data.transforms import augment
from basicsr.utils import img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

from vmambair.config import OptionsError

from .degradation import DegradationError, DegradationSettings, parse_degradation, sample_kernels, seeded_global_rngs
from .image_io import DataError, is_image_file, read_image, read_meta_info
from .lmdb_images import LmdbImages, is_lmdb_backend
from .paired_dataset import Item, TrainableDataset, option_getter


def list_gt_files(gt_dir: str, meta_info_file: str | None = None) -> List[str]:
    """GT image paths: the meta-info file's entries (first token per line, relative to ``gt_dir``,
    as ``scripts/generate_meta_info.py`` writes them), or every image under ``gt_dir`` (recursive)."""
    root = Path(gt_dir)
    if meta_info_file:
        names = read_meta_info(meta_info_file)
        files = [root / n for n in names]
        for p in files:
            if not p.is_file():
                raise DataError(f"'{p}' is listed in meta-info file '{meta_info_file}' but does not exist. "
                                f"Regenerate it with scripts/generate_meta_info.py.")
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise DataError(f"Folder '{root}' holds no images (looked for png/jpg/bmp/tif/webp files, recursively).")
    return [str(p) for p in files]


@DATASET_REGISTRY.register()
class RealESRGANGTDataset(TrainableDataset):
    """Real-ESRGAN's training set (basicsr's ``RealESRGANDataset`` behaviour, on our sampler).

    Each item: a GT image, flipped / rotated, reflect-padded or randomly cropped to
    ``crop_pad_size`` (400), and three kernels (first blur, second blur, final sinc).

    Args (one ``datasets.train`` section): ``dataroot_gt`` (an image folder, or an LMDB folder with
    ``io_backend: {type: lmdb}``), optional ``meta_info_file``,
    ``use_hflip``, ``use_rot``, ``gt_size`` (the final crop, done by the model after the
    degradation), ``degradation`` (see DegradationSettings), ``dataset_enlarge_ratio``.

    ``__getitem__((index, seed))`` returns ``{'gt': (3,P,P) RGB [0,1], 'kernel1', 'kernel2',
    'sinc_kernel': (K,K) float32, 'gt_path': str}`` with P = crop_pad_size, K = 21. The same
    seed gives the same crop, flips and kernels.
    """

    degradation_options = DegradationSettings  # the typed ``degradation`` key
    synthesizes_lq = True  # no dataroot_lq: options validation knows this

    def __init__(self, opt):
        super().__init__()
        get = option_getter(opt)
        try:
            self.settings = parse_degradation(get("degradation"))
        except DegradationError as err:  # a wrong option: train.py exits 2, like other option errors
            raise OptionsError(str(err)) from None
        self.use_hflip = bool(get("use_hflip", True))
        self.use_rot = bool(get("use_rot", False))
        self.phase = get("phase") or "train"
        self.enlarge = int(get("dataset_enlarge_ratio", 1) or 1)
        self.gt_db = None
        if is_lmdb_backend(get("io_backend")):  # LMDB of GT images (scripts/create_lmdb.py): keys, not paths
            self.gt_db = LmdbImages(get("dataroot_gt"), get("meta_info_file"))
            self.paths = list(self.gt_db.keys)
        else:
            self.paths = list_gt_files(get("dataroot_gt"), get("meta_info_file"))
        self.set_patch_size(get("gt_size") or self.settings.crop_pad_size)

    def set_patch_size(self, gt_size: int) -> None:
        if int(gt_size) > self.settings.crop_pad_size:
            raise OptionsError(f"Option 'datasets.train.gt_size' ({gt_size}) exceeds 'datasets.train.degradation."
                               f"crop_pad_size' ({self.settings.crop_pad_size}); the final crop must fit in the "
                               f"degraded patch: lower gt_size or raise crop_pad_size.")
        self.gt_size = int(gt_size)

    def __len__(self) -> int:
        return len(self.paths) * self.enlarge

    def __getitem__(self, item: Item) -> Dict[str, Union[torch.Tensor, str]]:
        index, seed = (item, None) if isinstance(item, int) else (int(item[0]), int(item[1]))
        path = self.paths[index % len(self.paths)]
        if self.gt_db is not None:
            img, path = self.gt_db.read(path), self.gt_db.path_of(path)
        else:
            img = read_image(path)  # HxWx3 BGR float32 in [0, 1]; DataError names a corrupt file
        size = self.settings.crop_pad_size
        with seeded_global_rngs(seed):
            img = augment(img, self.use_hflip, self.use_rot)
            h, w = img.shape[:2]
            if h < size or w < size:  # small images (OST has some) are reflect-padded, as Real-ESRGAN does
                img = cv2.copyMakeBorder(img, 0, max(0, size - h), 0, max(0, size - w), cv2.BORDER_REFLECT_101)
            h, w = img.shape[:2]
            if h > size or w > size:
                top, left = random.randint(0, h - size), random.randint(0, w - size)
                img = img[top: top + size, left: left + size]
            kernel1, kernel2, sinc = sample_kernels(self.settings)
        gt = img2tensor([np.ascontiguousarray(img)], bgr2rgb=True, float32=True)[0]
        return {"gt": gt, "kernel1": kernel1, "kernel2": kernel2, "sinc_kernel": sinc, "gt_path": path}
