"""Input-only test sets (no ground truth), e.g. real-world photographs scored with NIQE.

``test.py`` restores every image; only no-reference metrics (``calculate_niqe_score``) are
computed on such a set, and the table shows ``-`` for the full-reference ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.utils import img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

from vmambair.config import OptionsError

from .image_io import DataError, is_image_file, read_image, read_meta_info
from .lmdb_images import LmdbImages, is_lmdb_backend
from .paired_dataset import Item, TrainableDataset, option_getter


@DATASET_REGISTRY.register()
class SingleImageFolderDataset(TrainableDataset):
    """Every image of ``dataroot_lq`` (sorted by name), or those listed in ``meta_info_file``;
    with ``io_backend: {type: lmdb}``, every key of the LMDB folder ``dataroot_lq``.

    ``__getitem__`` returns ``{'lq': (3,h,w) RGB [0,1], 'lq_path': str}``. Test / validation
    only: it has nothing to train on.
    """

    lq_only = True  # options validation: no dataroot_gt needed

    def __init__(self, opt):
        super().__init__()
        get = option_getter(opt)
        if (get("phase") or "test") == "train":
            raise OptionsError("SingleImageFolderDataset has no ground truth and cannot train; use it for "
                               "datasets.test_<k> / val sections only.")
        root = Path(get("dataroot_lq"))
        meta = get("meta_info_file")
        self.db = None
        if is_lmdb_backend(get("io_backend")):  # an LMDB of inputs: keys instead of paths
            self.db = LmdbImages(root, meta)
            self.paths = list(self.db.keys)
        elif meta:
            names = read_meta_info(meta)
            self.paths = [root / n for n in names]
            for p in self.paths:
                if not p.is_file():
                    raise DataError(f"'{p}' is listed in meta-info file '{meta}' but does not exist.")
        else:
            self.paths = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
        if not self.paths:
            raise DataError(f"Folder '{root}' holds no images (looked for png/jpg/bmp/tif/webp files).")

    def set_patch_size(self, gt_size: int) -> None:
        raise OptionsError("SingleImageFolderDataset cannot be used for training.")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: Item) -> Dict[str, Union[torch.Tensor, str]]:
        index = item if isinstance(item, int) else int(item[0])
        path = str(self.paths[index])
        if self.db is not None:
            img, path = self.db.read(path), self.db.path_of(path)
        else:
            img = read_image(path)
        lq = img2tensor([img], bgr2rgb=True, float32=True)[0]
        return {"lq": lq, "lq_path": path}
