"""Paired image folders (degraded input / ground truth) for training, validation and testing.

Layouts: Restormer's ``<set>/{input,target}`` and basicsr's ``dataroot_lq`` / ``dataroot_gt``
folders are the same thing here: two folders whose files pair up by name (GT stem ``s`` pairs
with the LQ file of stem ``filename_tmpl.format(s)``, any image extension). An optional basicsr
meta-info file lists the GT files to use (first token of each line). With ``io_backend: {type:
lmdb}`` the two roots are LMDB folders written by ``scripts/create_lmdb.py`` (basicsr's layout) and
the pairs are GT key ``k`` / LQ key ``filename_tmpl.format(k)``; everything else is the same.

Randomness is per item, not per process: the sampler hands each item a seed derived from
(manual_seed, epoch, position in the epoch), so crops and flips are identical whatever the
number of workers or GPUs, and a resumed run replays exactly the same batches.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch.utils.data import Dataset, Sampler

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

from .image_io import DataError, is_image_file, read_image, read_meta_info
from .lmdb_images import LmdbImages, is_lmdb_backend

Item = Union[int, Tuple[int, int]]


@contextmanager
def seeded_python_random(seed: int):
    """Run basicsr's crop/augment (which use the global ``random``) under ``seed``, then
    restore the global state so that nothing else is disturbed."""
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)


def pair_files(gt_dir: str, lq_dir: str, filename_tmpl: str = "{}",
               meta_info_file: Optional[str] = None) -> List[Tuple[str, str]]:
    """List ``(lq_path, gt_path)`` pairs of two folders; raise DataError on any unpaired file.

    Raises:
        DataError: a folder is empty, a GT file has no LQ file (or the reverse), or a name in
            the meta-info file does not exist.
    """
    gt_dir, lq_dir = Path(gt_dir), Path(lq_dir)
    lq_files = sorted(p for p in lq_dir.iterdir() if p.is_file() and is_image_file(p))
    if meta_info_file:
        names = read_meta_info(meta_info_file)
        gt_files = [gt_dir / n for n in names]
        for p in gt_files:
            if not p.is_file():
                raise DataError(f"'{p}' is listed in meta-info file '{meta_info_file}' but does not exist.")
    else:
        gt_files = sorted(p for p in gt_dir.iterdir() if p.is_file() and is_image_file(p))
    for folder, files in ((gt_dir, gt_files), (lq_dir, lq_files)):
        if not files:
            raise DataError(f"Folder '{folder}' holds no images (looked for png/jpg/bmp/tif/webp files).")
    lq_by_stem: Dict[str, Path] = {}
    for p in lq_files:
        if p.stem in lq_by_stem:
            raise DataError(f"Folder '{lq_dir}' has two images named '{p.stem}' ({lq_by_stem[p.stem].name}, "
                            f"{p.name}); keep one.")
        lq_by_stem[p.stem] = p
    pairs, used = [], set()
    for gt in gt_files:
        stem = filename_tmpl.format(gt.stem)
        lq = lq_by_stem.get(stem)
        if lq is None:
            raise DataError(f"GT image '{gt}' has no input pair: no image named '{stem}.*' in '{lq_dir}'. "
                            f"Add it, remove the GT image, or fix datasets.*.filename_tmpl.")
        used.add(stem)
        pairs.append((str(lq), str(gt)))
    if not meta_info_file:
        extra = [p for s, p in lq_by_stem.items() if s not in used]
        if extra:
            raise DataError(f"Input image '{extra[0]}' has no ground-truth pair in '{gt_dir}'"
                            f"{f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''}. Add it or remove the input.")
    return pairs


def pair_lmdb_keys(gt_db: LmdbImages, lq_db: LmdbImages, filename_tmpl: str = "{}") -> List[Tuple[str, str]]:
    """``(lq_key, gt_key)`` pairs of two LMDB databases; DataError naming the first GT key whose
    LQ key is missing."""
    lq_keys = set(lq_db.keys)
    pairs = []
    for key in gt_db.keys:
        lq_key = filename_tmpl.format(key)
        if lq_key not in lq_keys:
            raise DataError(f"GT key '{key}' of LMDB '{gt_db.root}' has no input pair: LMDB '{lq_db.root}' has no "
                            f"key '{lq_key}'. Pack both folders from complete image sets, or fix "
                            f"datasets.*.filename_tmpl.")
        pairs.append((lq_key, key))
    return pairs


def option_getter(opt) -> Callable[..., Any]:
    """``get(key, default=None)`` over a dataset's options, a DatasetOptions or a plain dict."""
    if isinstance(opt, dict):
        return lambda k, d=None: opt.get(k, d)
    own = getattr(opt, "own", None)  # the class's own options (dataset_options), if it declares some

    def get(k, d=None):
        if own is not None and hasattr(own, k):
            return getattr(own, k)
        return getattr(opt, k, d)
    return get


class TrainableDataset(Dataset):
    """Protocol of datasets the vmambair trainer can drive.

    ``__getitem__`` accepts an index or ``(index, seed)`` (the seed drives all randomness of
    that item) and returns ``{'lq': (3,h,w), 'gt': (3,h*s,w*s), 'lq_path', 'gt_path'}``;
    ``set_patch_size`` changes the training crop (progressive training).

    Class attributes read by options validation (``vmambair.config``):
    """

    vmambair_dataset = True   # follows this protocol: options may name it
    synthesizes_lq = False    # makes its inputs itself: no ``dataroot_lq`` needed
    lq_only = False           # inputs only (e.g. NIQE test sets): no ``dataroot_gt`` needed
    builds_data = False       # creates its folders on first use: they need not exist yet
    degradation_options = None  # dataclass typing the ``degradation`` key, for datasets that take one
    dataset_options = None      # dataclass of the class's own keys (beside DatasetOptions' common ones)

    def set_patch_size(self, gt_size: int) -> None:
        raise NotImplementedError


@DATASET_REGISTRY.register()
class PairedImageFolderDataset(TrainableDataset):
    """Paired LQ/GT folders; random crops and flips/rotations in the train phase.

    Args (the options of one ``datasets.<key>`` section, see DatasetOptions):
        dataroot_gt, dataroot_lq, filename_tmpl, meta_info_file: where the pairs are.
        phase: 'train' crops ``gt_size`` patches and augments; 'val'/'test' return whole images.
        gt_size: GT crop size in the train phase (changed by :meth:`set_patch_size`).
        scale: GT size / LQ size.
        use_hflip, use_rot: augmentations.
        dataset_enlarge_ratio: repeat the list this many times per epoch (train phase).
    """

    def __init__(self, opt):
        super().__init__()
        get = option_getter(opt)
        self.phase = get("phase") or "train"
        self.scale = int(get("scale") or 1)
        self.gt_size = get("gt_size")
        self.use_hflip = bool(get("use_hflip", True))
        self.use_rot = bool(get("use_rot", True))
        self.enlarge = int(get("dataset_enlarge_ratio", 1) or 1) if self.phase == "train" else 1
        tmpl = get("filename_tmpl", "{}") or "{}"
        self.gt_db = self.lq_db = None
        if is_lmdb_backend(get("io_backend")):
            self.gt_db = LmdbImages(get("dataroot_gt"), get("meta_info_file"))
            self.lq_db = LmdbImages(get("dataroot_lq"))
            self.pairs = pair_lmdb_keys(self.gt_db, self.lq_db, tmpl)
        else:
            self.pairs = pair_files(get("dataroot_gt"), get("dataroot_lq"), tmpl, get("meta_info_file"))

    def set_patch_size(self, gt_size: int) -> None:
        self.gt_size = int(gt_size)

    def __len__(self) -> int:
        return len(self.pairs) * self.enlarge

    def __getitem__(self, item: Item) -> Dict[str, Union[torch.Tensor, str]]:
        index, seed = (item, None) if isinstance(item, int) else (int(item[0]), int(item[1]))
        lq_path, gt_path = self.pairs[index % len(self.pairs)]
        if self.gt_db is not None:  # LMDB: the pair holds keys
            lq, gt = self.lq_db.read(lq_path), self.gt_db.read(gt_path)
            lq_path, gt_path = self.lq_db.path_of(lq_path), self.gt_db.path_of(gt_path)
        else:
            lq, gt = read_image(lq_path), read_image(gt_path)
        s = self.scale
        if gt.shape[0] != lq.shape[0] * s or gt.shape[1] != lq.shape[1] * s:
            raise DataError(f"Size mismatch: input '{lq_path}' is {lq.shape[1]}x{lq.shape[0]} but ground truth "
                            f"'{gt_path}' is {gt.shape[1]}x{gt.shape[0]} (expected {s}x the input). "
                            f"Fix or remove this pair.")
        if self.phase == "train":
            if self.gt_size is None:
                raise DataError("Training crop size is not set (datasets.train.gt_size).")
            if min(gt.shape[:2]) < self.gt_size:
                raise DataError(f"Ground truth '{gt_path}' ({gt.shape[1]}x{gt.shape[0]}) is smaller than the "
                                f"training patch {self.gt_size}; remove it or lower gt_size / mini_gt_sizes.")
            with seeded_python_random(seed if seed is not None else random.getrandbits(63)):
                gt, lq = paired_random_crop(gt, lq, self.gt_size, s, gt_path)
                gt, lq = augment([gt, lq], self.use_hflip, self.use_rot)
        gt_t, lq_t = img2tensor([gt, lq], bgr2rgb=True, float32=True)
        return {"lq": lq_t, "gt": gt_t, "lq_path": lq_path, "gt_path": gt_path}


class ResumableBatchSampler(Sampler):
    """Batches of ``(index, item_seed)`` for one rank, resumable at any sample offset.

    Epoch ``e``'s order is a permutation seeded by ``(seed, e)`` (padded to a multiple of
    ``world_size`` by wrapping); rank ``r`` takes positions ``r, r+W, r+2W, ...``. So batch ``k``
    of every rank together holds positions ``[k*B*W, (k+1)*B*W)`` of the epoch order: the same
    samples, with the same seeds, as batch ``k`` of a single process with batch ``B*W``.

    Args:
        num_items: dataset length.
        batch_size: per-rank batch size. The last incomplete batch of an epoch is dropped.
        rank, world_size: this process's place in the run.
        seed: run seed. shuffle: permute each epoch (else dataset order).
        epoch: which epoch to produce. start: per-rank samples of this epoch already consumed.
    """

    def __init__(self, num_items: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, epoch: int = 0, start: int = 0):
        self.num_items, self.batch_size = int(num_items), int(batch_size)
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, int(seed), shuffle
        self.epoch, self.start = int(epoch), int(start)

    @property
    def per_rank(self) -> int:
        """Samples each rank sees per epoch."""
        return -(-self.num_items // self.world_size)

    def epoch_order(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed((self.seed * 1_000_003 + self.epoch) % (2 ** 63))
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        total = self.per_rank * self.world_size
        order += (order * (total // max(len(order), 1) + 1))[: total - len(order)]
        return order

    def item_seed(self, position: int) -> int:
        return ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + position) % (2 ** 63)

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0) // self.batch_size

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        order = self.epoch_order()
        W = self.world_size
        for b in range(len(self)):
            local = range(self.start + b * self.batch_size, self.start + (b + 1) * self.batch_size)
            positions = [self.rank + j * W for j in local]
            yield [(order[p], self.item_seed(p)) for p in positions]
