"""A short-budget training study: every recipe trained for real, evaluated on held-out photos.

``python scripts/study.py options/study/derain_study.yml --out /tmp/study`` reads a study file
(YAML, see ``options/study/``), builds its data from photographs that ship offline (scikit-image's,
and scikit-learn's / matplotlib's sample photos where installed) with a fixed training / held-out
split, trains every configuration x seed to the same number of iterations through the trainer
engine (:class:`vmambair.apps.train.Trainer`, in this process, so compiled kernels are reused
from run to run), evaluates each trained network on the held-out photos, and writes after every
run (atomically, so an interrupted study still leaves a consistent report):

    <out>/<study>/report/results.json, results.csv   one row per run: metrics, times, status
    <out>/<study>/report/README.md                   the results page (tables, pictures, curves)
    <out>/<study>/report/*.png                       curves, bar charts, image grids (matplotlib)
    <out>/<study>/report/logs/<run>.jsonl            each run's train_log.jsonl
    <out>/<study>/runs/<run>/                        the trainer's experiment folders (weights...)
    <out>/data/<part>/                               the generated data (deterministic)

``--archive FILE.tar.gz`` also packs the report folder into one file after every run.

The options files decide everything about training (network, optimizer, loss, compile, CUDA
graphs, EMA, validation, checkpoints); a study only sets data roots, the iteration budget, seeds,
logging, and the overrides its study file lists (e.g. a fixed patch size instead of progressive
stages), which the page states. Three tasks: ``derain`` (synthetic rain as the quick start makes
it; rainy input as the floor), ``sr_bicubic`` (x4, LR by basicsr's MATLAB-style imresize;
bicubic upsampling as the floor), ``sr_real`` (x4, Real-ESRGAN degradation on the fly for
training, a fixed seeded degradation of the held-out photos; NIQE as well as PSNR/SSIM).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import io
import json
import logging
import math
import os
import platform
import shutil
import sys
import tarfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

import vmambair  # noqa: F401  (compat shim + registries)
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import img2tensor, tensor2img
from basicsr.utils.matlab_functions import imresize

from ..config import OptionsError, load_options, read_yaml
from ..data.image_io import DataError
from ..data.quickstart import (HELD_OUT_PHOTOS, TRAIN_PHOTOS, add_rain, load_photo, resize_max_side,
                               sample_rain_params)
from ..engine.compiling import validation_stance
from ..engine.dist import init_dist_from_env, shutdown_dist
from ..engine.inference import autocast_context, restore_image
from ..utils.fileio import atomic_write_bytes
from .train import Trainer

logger = logging.getLogger("vmambair")

TASKS = ("derain", "sr_bicubic", "sr_real")
SCALES = {"derain": 1, "sr_bicubic": 4, "sr_real": 4}
FLOOR_NAMES = {"derain": "rainy input", "sr_bicubic": "bicubic x4", "sr_real": "bicubic x4 of the degraded input"}
# Photos from other packages: used when the package is installed, skipped (and said so) otherwise.
OPTIONAL_PHOTOS = ("sklearn:china", "sklearn:flower", "matplotlib:grace_hopper")
DEFAULT_HELD_OUT = list(HELD_OUT_PHOTOS) + list(OPTIONAL_PHOTOS)
DATA_VERSION = 1


class StudyError(ValueError):
    """A study file or command line that cannot run; the message names the key and the fix."""


# ----------------------------------------------------------------------------- study files
@dataclasses.dataclass
class ConfigSpec:
    """One configuration: an options file, overrides (``key=value`` as train.py's ``--set``)."""
    name: str
    options: str
    overrides: List[str] = dataclasses.field(default_factory=list)
    init_from: Optional[str] = None   # a config of the same part: start from its weights (same seed)
    note: str = ""


@dataclasses.dataclass
class PartSpec:
    """One task of a study: its data, budget, seeds and configurations."""
    name: str
    task: str
    title: str
    iters: int
    seeds: List[int]
    configs: List[ConfigSpec]
    val_every: int = 0                  # 0: about 6 validations per run
    overrides: List[str] = dataclasses.field(default_factory=list)
    data: Dict[str, Any] = dataclasses.field(default_factory=dict)
    grid_images: int = 3
    ema_horizon: float = 0.05           # EMA averages over this fraction of the budget (see docs/study.md)
    note: str = ""


@dataclasses.dataclass
class StudySpec:
    name: str
    title: str
    parts: List[PartSpec]
    path: str


def _check_keys(raw: Dict[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}.")


def load_study(path: str | os.PathLike) -> StudySpec:
    """Read and check a study file (see ``options/study/derain_study.yml`` for the layout).

    Raises:
        StudyError: missing or unknown keys, an unknown task, a missing options file, or an
            ``init_from`` that does not name an earlier configuration of the same part.
    """
    try:
        raw = read_yaml(path)
    except OptionsError as err:
        raise StudyError(str(err)) from None
    where = f"study file '{path}'"
    _check_keys(raw, ["name", "title", "parts"], where)
    if not isinstance(raw.get("name"), str) or not raw["name"].replace("_", "").replace("-", "").isalnum():
        raise StudyError(f"{where}: 'name' must be a word of letters, digits, '_' or '-' (it names folders).")
    if not isinstance(raw.get("parts"), list) or not raw["parts"]:
        raise StudyError(f"{where}: 'parts' must be a non-empty list of tasks.")
    parts = []
    for i, p in enumerate(raw["parts"]):
        pw = f"{where}, parts[{i}]"
        if not isinstance(p, dict):
            raise StudyError(f"{pw}: must be a mapping.")
        _check_keys(p, [f.name for f in dataclasses.fields(PartSpec)], pw)
        for key in ("name", "task", "iters", "configs"):
            if key not in p:
                raise StudyError(f"{pw}: '{key}' is required.")
        if p["task"] not in TASKS:
            raise StudyError(f"{pw}: task must be one of {', '.join(TASKS)}, got {p['task']!r}.")
        if not isinstance(p["iters"], int) or p["iters"] < 1:
            raise StudyError(f"{pw}: 'iters' must be a positive integer, got {p['iters']!r}.")
        configs, names = [], []
        for j, c in enumerate(p["configs"] or []):
            cw = f"{pw}.configs[{j}]"
            if not isinstance(c, dict) or "name" not in c or "options" not in c:
                raise StudyError(f"{cw}: each configuration needs 'name' and 'options'.")
            _check_keys(c, [f.name for f in dataclasses.fields(ConfigSpec)], cw)
            if not Path(c["options"]).is_file():
                raise StudyError(f"{cw}: options file '{c['options']}' does not exist (paths are relative to the "
                                 f"directory the study runs in, normally the repository root).")
            if c.get("init_from") is not None and c["init_from"] not in names:
                raise StudyError(f"{cw}: init_from '{c['init_from']}' must name an earlier configuration of this "
                                 f"part (one of {names}).")
            if c["name"] in names:
                raise StudyError(f"{cw}: configuration name '{c['name']}' is used twice.")
            names.append(c["name"])
            configs.append(ConfigSpec(name=str(c["name"]), options=str(c["options"]),
                                      overrides=[str(o) for o in c.get("overrides") or []],
                                      init_from=c.get("init_from"), note=str(c.get("note") or "")))
        if not configs:
            raise StudyError(f"{pw}: 'configs' must list at least one configuration.")
        seeds = p.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise StudyError(f"{pw}: 'seeds' must be a list of integers, got {seeds!r}.")
        parts.append(PartSpec(name=str(p["name"]), task=p["task"], title=str(p.get("title") or p["name"]),
                              iters=int(p["iters"]), seeds=list(seeds), configs=configs,
                              val_every=int(p.get("val_every") or 0),
                              overrides=[str(o) for o in p.get("overrides") or []], data=dict(p.get("data") or {}),
                              grid_images=int(p.get("grid_images", 3)), ema_horizon=float(p.get("ema_horizon", 0.05)),
                              note=str(p.get("note") or "")))
    if len({p.name for p in parts}) != len(parts):
        raise StudyError(f"{where}: part names must differ.")
    return StudySpec(name=raw["name"], title=str(raw.get("title") or raw["name"]), parts=parts, path=str(path))


# ----------------------------------------------------------------------------- photos and data
def load_any_photo(name: str) -> np.ndarray:
    """A bundled photo as uint8 HxWx3 RGB: a scikit-image name (``astronaut``), or
    ``sklearn:china`` / ``sklearn:flower`` (scikit-learn's sample images) or
    ``matplotlib:grace_hopper`` (matplotlib's sample data).

    Raises:
        DataError: unknown name, or its package is not installed.
    """
    source, _, item = name.partition(":")
    if not item:
        return load_photo(name)
    try:
        if source == "sklearn":
            from sklearn.datasets import load_sample_image
            img = load_sample_image(f"{item}.jpg")
        elif source == "matplotlib":
            import matplotlib.cbook as cbook
            with cbook.get_sample_data(f"{item}.jpg") as f:
                img = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        else:
            raise DataError(f"Unknown photo source '{source}' in '{name}'; use sklearn:<name>, matplotlib:<name> "
                            f"or a scikit-image photo name.")
    except DataError:
        raise
    except Exception as err:  # package missing, file missing
        raise DataError(f"Photo '{name}' could not be loaded ({type(err).__name__}: {err}).") from None
    img = np.ascontiguousarray(np.asarray(img)[:, :, :3])
    if img.dtype != np.uint8:
        raise DataError(f"Photo '{name}' is {img.dtype}, not an 8-bit photograph.")
    return img


def load_photos(names: Sequence[str]) -> Tuple[List[Tuple[str, np.ndarray]], List[str]]:
    """Load ``names``; those of :data:`OPTIONAL_PHOTOS` whose package is missing are skipped.

    Returns:
        ([(name, RGB uint8)], [skipped name: reason]).
    """
    photos, skipped = [], []
    for name in names:
        try:
            photos.append((name, load_any_photo(name)))
        except DataError as err:
            if name not in OPTIONAL_PHOTOS:
                raise
            skipped.append(f"{name}: {str(err).rstrip('.')}")
    return photos, skipped


def _stem(name: str) -> str:
    return name.replace(":", "_")


def _mod_crop(img: np.ndarray, m: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % m, : w - w % m]


def _write_png(img_bgr: np.ndarray, path: Path) -> None:
    ok, enc = cv2.imencode(".png", img_bgr)
    if not ok:
        raise DataError(f"Could not encode '{path}' as PNG.")
    atomic_write_bytes(enc.tobytes(), path)


def _bicubic_down(hr_bgr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-style bicubic downscale (basicsr's imresize, antialiased) of uint8 HxWx3 -> uint8."""
    lr = imresize(hr_bgr.astype(np.float64) / 255.0, 1.0 / scale)
    return np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)


def _bicubic_up(lr_bgr: np.ndarray, scale: int) -> np.ndarray:
    up = imresize(lr_bgr.astype(np.float64) / 255.0, float(scale))
    return np.clip(np.round(up * 255.0), 0, 255).astype(np.uint8)


def _degrade_held_out(hr_bgr: np.ndarray, settings, seed: int) -> np.ndarray:
    """One fixed Real-ESRGAN degradation (seeded, CPU, fp32) of uint8 HxWx3 BGR -> LQ uint8 (x4 smaller)."""
    from ..data.degradation import RealESRGANDegradation, sample_kernels, seeded_global_rngs
    gt = img2tensor([hr_bgr.astype(np.float32) / 255.0], bgr2rgb=True, float32=True)[0][None]
    with seeded_global_rngs(seed, torch_device=torch.device("cpu")):
        k1, k2, sinc = sample_kernels(settings)
        lq = RealESRGANDegradation(settings, 4)(gt, k1[None], k2[None], sinc[None], sharpen_input=True)
    return tensor2img(lq, rgb2bgr=True)


def build_part_data(part: PartSpec, root: Path, recipe_options: str, log=print) -> Dict[str, Any]:
    """Generate (once; deterministic) the training and held-out images of one part under ``root``.

    Layout: ``root/train/{gt,lq}`` and ``root/held_out/{gt,lq}`` (``train/lq`` absent for
    ``sr_real``, whose inputs are made on the fly), plus ``manifest.json``.

    Data settings (``part.data``): ``train_photos``, ``held_out_photos`` (lists of photo names),
    ``train_max_side`` (default 384 deraining, 512 SR), ``held_out_max_side`` (256 / 384),
    ``variants`` / ``held_out_variants`` (rain versions of each photo: 4 / 2).

    Returns:
        The manifest: folders, photo lists (used and skipped), settings.
    """
    task, d = part.task, dict(part.data)
    known = ["train_photos", "held_out_photos", "train_max_side", "held_out_max_side", "variants", "held_out_variants"]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise StudyError(f"part '{part.name}': unknown data key(s) {unknown}; allowed: {', '.join(known)}.")
    sr = task != "derain"
    settings = {"task": task, "version": DATA_VERSION,
                "train_photos": list(d.get("train_photos", TRAIN_PHOTOS)),
                "held_out_photos": list(d.get("held_out_photos", DEFAULT_HELD_OUT)),
                "train_max_side": int(d.get("train_max_side", 512 if sr else 384)),
                "held_out_max_side": int(d.get("held_out_max_side", 384 if sr else 256)),
                "variants": int(d.get("variants", 1 if sr else 4)),
                "held_out_variants": int(d.get("held_out_variants", 1 if sr else 2))}
    clash = set(settings["train_photos"]) & set(settings["held_out_photos"])
    if clash:
        raise StudyError(f"part '{part.name}': photos {sorted(clash)} are both training and held-out photos.")
    if task == "sr_real":
        settings["degradation"] = (read_yaml(recipe_options).get("datasets", {}).get("train", {}) or {}).get("degradation")
    manifest_path = root / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") == json.loads(json.dumps(settings)):
            return manifest
    except (OSError, ValueError):
        pass
    log(f"Building the data of part '{part.name}' ({task}) in {root}.")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    train_photos, skipped_train = load_photos(settings["train_photos"])
    held_photos, skipped_held = load_photos(settings["held_out_photos"])
    if not held_photos:
        raise DataError(f"part '{part.name}': none of the held-out photos {settings['held_out_photos']} could be loaded.")
    degradation = None
    if task == "sr_real":
        from ..data.degradation import parse_degradation
        degradation = parse_degradation(settings["degradation"])
    for split, photos, max_side, variants, seed in (
            ("train", train_photos, settings["train_max_side"], settings["variants"], 0),
            ("held_out", held_photos, settings["held_out_max_side"], settings["held_out_variants"], 1)):
        gt_dir, lq_dir = tmp / split / "gt", tmp / split / "lq"
        gt_dir.mkdir(parents=True)
        if not (task == "sr_real" and split == "train"):
            lq_dir.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for k, (name, rgb) in enumerate(photos):
            clean = np.ascontiguousarray(resize_max_side(rgb, max_side)[:, :, ::-1])  # BGR
            if sr:
                clean = _mod_crop(clean, 4)
            for v in range(variants):
                stem = f"{_stem(name)}_{v}" if variants > 1 else _stem(name)
                _write_png(clean, gt_dir / f"{stem}.png")
                if task == "derain":
                    _write_png(add_rain(clean, sample_rain_params(rng), rng), lq_dir / f"{stem}.png")
                elif task == "sr_bicubic":
                    _write_png(_bicubic_down(clean, 4), lq_dir / f"{stem}.png")
                elif split == "held_out":  # sr_real: one fixed degradation per held-out image
                    _write_png(_degrade_held_out(clean, degradation, 1000 + 10 * k + v), lq_dir / f"{stem}.png")
    manifest = {"settings": settings, "train": [n for n, _ in train_photos], "held_out": [n for n, _ in held_photos],
                "skipped": skipped_train + skipped_held}
    atomic_write_bytes(json.dumps(manifest, indent=1).encode(), tmp / "manifest.json")
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    return manifest


def held_out_pairs(root: Path) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """``[(stem, lq BGR uint8, gt BGR uint8)]`` of a part's held-out folder, sorted by name."""
    pairs = []
    for gt_path in sorted((root / "held_out" / "gt").glob("*.png")):
        lq = cv2.imread(str(root / "held_out" / "lq" / gt_path.name), cv2.IMREAD_COLOR)
        gt = cv2.imread(str(gt_path), cv2.IMREAD_COLOR)
        if lq is None or gt is None:
            raise DataError(f"Held-out pair '{gt_path.name}' under '{root}' could not be read; delete '{root}' to rebuild it.")
        pairs.append((gt_path.stem, lq, gt))
    return pairs


# ----------------------------------------------------------------------------- metrics
def image_metrics(img: np.ndarray, gt: np.ndarray, task: str) -> Dict[str, float]:
    """PSNR / SSIM on Y (border 4 for SR) of HxWx3 BGR uint8 ``img`` against ``gt``; NIQE
    (no-reference, lower is better) as well for ``sr_real``."""
    border = 0 if task == "derain" else 4
    out = {"psnr": float(calculate_psnr(img, gt, border, test_y_channel=True)),
           "ssim": float(calculate_ssim(img, gt, border, test_y_channel=True))}
    if task == "sr_real":
        from ..metrics.lpips_metric import calculate_niqe_score
        try:
            out["niqe"] = calculate_niqe_score(img, None, crop_border=border)
        except ValueError:  # too small for NIQE's 96x96 blocks
            pass
    return out


def mean_metrics(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    keys = [k for k in rows[0] if all(k in r for r in rows)] if rows else []
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def floor_outputs(task: str, lq: np.ndarray) -> np.ndarray:
    """The no-learning output: the rainy input itself, or bicubic x4 upsampling (MATLAB-style)."""
    return lq if task == "derain" else _bicubic_up(lq, 4)


@torch.no_grad()
def restore_pairs(net: torch.nn.Module, pairs, scale: int, device: torch.device, bf16: bool) -> List[np.ndarray]:
    """Restore each ``(stem, lq, gt)`` of ``pairs`` with ``net`` (eager, bf16 autocast where the
    recipe uses it); returns BGR uint8 outputs."""
    was_training = net.training
    net.eval()
    outs = []
    # Compiled blocks run eagerly here: each photo size would otherwise compile (engine/compiling.py).
    with validation_stance(net):
        for _, lq, _ in pairs:
            x = img2tensor([lq.astype(np.float32) / 255.0], bgr2rgb=True, float32=True)[0][None].to(device)
            with autocast_context(device, bf16):
                y = restore_image(net, x, scale=scale, multiple=8)
            outs.append(tensor2img(y.float().clamp(0, 1).cpu(), rgb2bgr=True))
    if was_training:
        net.train()
    return outs


# ----------------------------------------------------------------------------- one run
class TimedTrainer(Trainer):
    """The trainer, adding up the seconds its validations take (to split a run's time)."""

    val_s = 0.0

    def validate(self):
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        try:
            return super().validate()
        finally:
            self.val_s += time.perf_counter() - t


def _quiet_stdout(verbose: bool) -> None:
    """Keep the trainer's progress lines in its log file only (stdout gets one line per run)."""
    if verbose:
        return
    for h in logger.handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)


def _close_log_handlers() -> None:
    for h in list(logger.handlers):
        h.close()
        logger.removeHandler(h)


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def vgg_weights_available() -> bool:
    """Whether torchvision's VGG19 weights are in the torch hub cache (no download attempted)."""
    from ..losses.backbones import BackboneWeightsError, resolve_backbone_weights
    try:
        resolve_backbone_weights("vgg19", None, download=False)
        return True
    except BackboneWeightsError:
        return False


def run_name(part: PartSpec, cfg: ConfigSpec, seed: int) -> str:
    return f"{part.name}_{cfg.name}_s{seed}".replace(" ", "_")


def study_overrides(part: PartSpec, cfg: ConfigSpec, seed: int, data_root: Path, runs_root: Path,
                    iters: int, val_every: int, n_train: int, batch_hint: int) -> List[str]:
    """The study's own overrides of one run: data, budget, seed, logging (then the part's and the
    configuration's overrides, then the command line's ``--set``)."""
    train_lq = [] if part.task == "sr_real" else [f"datasets.train.dataroot_lq={data_root / 'train' / 'lq'}"]
    # One epoch covers the whole run: loader workers start once per run.
    enlarge = max(1, math.ceil(iters * batch_hint / max(n_train, 1)) + 1)
    val = {"name": "HeldOut", "type": "PairedImageFolderDataset", "dataroot_gt": str(data_root / "held_out" / "gt"),
           "dataroot_lq": str(data_root / "held_out" / "lq")}
    out = [f"name={run_name(part, cfg, seed)}", f"manual_seed={seed}", f"path.root={runs_root}",
           f"path.data_root={data_root}", f"datasets.train.dataroot_gt={data_root / 'train' / 'gt'}",
           *train_lq, "datasets.train.meta_info_file=null", "datasets.train.filename_tmpl='{}'",
           f"datasets.train.dataset_enlarge_ratio={enlarge}", f"datasets.val={json.dumps(val)}",
           f"train.total_iter={iters}", f"val.val_freq={val_every}", "val.save_img=false",
           "val.report_inputs=false", f"logger.print_freq={max(1, min(val_every, iters // 40 or 1))}",
           f"logger.save_checkpoint_freq={iters}", "logger.use_tb_logger=false", "logger.keep_training_states=1",
           "logger.profile_iters=null"]
    return out


def _batch_hint(options_path: str, overrides: List[str]) -> int:
    raw = read_yaml(options_path)
    ds = (raw.get("datasets") or {}).get("train") or {}
    batch = max(ds.get("mini_batch_sizes") or [ds.get("batch_size_per_gpu", 1)])
    for o in overrides:
        if o.startswith("datasets.train.batch_size_per_gpu="):
            batch = int(o.split("=", 1)[1])
    return int(batch)


def compose_overrides(part: PartSpec, cfg: ConfigSpec, seed: int, iters: int, val_every: int, data_root: Path,
                      runs_root: Path, manifest: Dict[str, Any], extra_overrides: List[str],
                      check_init: bool = True) -> Tuple[List[str], List[str], Optional[str]]:
    """Every override of one run, in order: the study's (data, budget, seed, logging), the part's,
    the configuration's, the starting weights (``init_from``), the command line's ``--set``, and
    the two budget adjustments (EMA horizon; perceptual term off without VGG19 weights).

    Returns:
        (overrides, notes for the results, error or None: the ``init_from`` weights are missing).
    """
    notes: List[str] = []
    overrides = study_overrides(part, cfg, seed, data_root, runs_root, iters, val_every,
                                len(manifest["train"]) * manifest["settings"]["variants"],
                                _batch_hint(cfg.options, part.overrides + cfg.overrides))
    overrides += part.overrides + cfg.overrides
    if cfg.init_from:
        src = runs_root / "experiments" / run_name(part, ConfigSpec(cfg.init_from, ""), seed) / "models" / "net_g_latest.pth"
        if check_init and not src.is_file():
            return overrides, notes, f"needs the weights of '{cfg.init_from}' seed {seed} ({src}), which did not train"
        if check_init:
            overrides.append(f"path.pretrain_network_g={src}")
        notes.append(f"starts from {cfg.init_from}'s weights")
    overrides += extra_overrides
    raw_opt = read_yaml(cfg.options)
    ema = ((raw_opt.get("train") or {}).get("ema_decay") or 0)
    if ema and ema > 0 and part.ema_horizon > 0 and not any(o.startswith("train.ema_decay=") for o in overrides):
        # The recipe's decay averages over 1/(1-decay) iterations (1000 for 0.999), more than a
        # short run lasts: the average would still be mostly the random initialisation.
        horizon = max(2.0, part.ema_horizon * iters)
        decay = round(1.0 - 1.0 / horizon, 6)
        overrides.append(f"train.ema_decay={decay}")
        notes.append(f"EMA decay {decay} (recipe {ema}: horizon scaled to the budget)")
    if (raw_opt.get("train") or {}).get("perceptual_opt") and not any(o.startswith("train.perceptual_opt") for o in overrides):
        if not ((raw_opt["train"]["perceptual_opt"] or {}).get("vgg_weights")) and not vgg_weights_available():
            overrides.append("train.perceptual_opt=null")
            notes.append("perceptual term off: VGG19 weights not in the torch hub cache")
    return overrides, notes, None


def describe_run(part: PartSpec, cfg: ConfigSpec, seed: int, iters: int, val_every: int, data_root: Path,
                 runs_root: Path, manifest: Dict[str, Any], extra_overrides: List[str]) -> str:
    """One line for ``--dry-run``: the run's options as loaded (patch, batch, switches, parameters)."""
    from ..config import build_from_spec
    overrides, notes, _ = compose_overrides(part, cfg, seed, iters, val_every, data_root, runs_root, manifest,
                                            extra_overrides, check_init=False)
    opt = load_options(cfg.options, overrides, is_train=True)
    ds, t = opt.datasets["train"], opt.train
    net = build_from_spec("arch", opt.network_g)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    patch = f"patches {ds.mini_gt_sizes}, batches {ds.mini_batch_sizes}" if ds.mini_gt_sizes else \
        f"batch {ds.batch_size_per_gpu} x {ds.gt_size} px GT"
    return (f"{part.name} {cfg.name} seed {seed}: {opt.network_g['type']} {params:.2f} M, {opt.model_type}, {iters} it, "
            f"{patch}, lr {t.optim_g.get('lr')}, compile {t.compile}, cuda_graph {t.cuda_graph}, bf16 {t.bf16}, "
            f"EMA {t.ema_decay}, validation every {opt.val.val_freq if opt.val else '-'}"
            + (f"; {'; '.join(notes)}" if notes else ""))


def train_and_evaluate(part: PartSpec, cfg: ConfigSpec, seed: int, iters: int, val_every: int,
                       data_root: Path, runs_root: Path, report_dir: Path, manifest: Dict[str, Any],
                       pairs, extra_overrides: List[str], verbose: bool) -> Dict[str, Any]:
    """Train one configuration x seed through the trainer (:class:`Trainer`) and evaluate it on the held-out pairs.

    Returns:
        The run's record: status, parameters, times, held-out metrics (mean and per image),
        validation curve, notes.
    """
    name = run_name(part, cfg, seed)
    rec: Dict[str, Any] = {"part": part.name, "config": cfg.name, "seed": seed, "run": name, "iters": iters,
                           "options": cfg.options, "status": "failed", "notes": []}
    overrides, notes, error = compose_overrides(part, cfg, seed, iters, val_every, data_root, runs_root, manifest,
                                                extra_overrides)
    rec["notes"], rec["overrides"] = notes, overrides
    if error:
        rec["status"], rec["error"] = "skipped", error
        return rec
    opt = load_options(cfg.options, overrides, is_train=True)
    ctx = init_dist_from_env(None if opt.num_gpu == "auto" else opt.num_gpu, opt.dist_params.backend)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = None
    try:
        trainer = TimedTrainer(opt, ctx, resume=False)
        _quiet_stdout(verbose)
        t1 = time.perf_counter()
        trainer.run()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        net_g = trainer.model.networks["net_g"]
        rec["params_m"] = round(sum(p.numel() for p in net_g.parameters()) / 1e6, 3)
        rec["device"] = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else platform.processor() or "cpu"
        on_cuda = ctx.device.type == "cuda"  # both switches are ignored on the CPU
        rec["compile"], rec["cuda_graph"] = bool(opt.train.compile and on_cuda), bool(opt.train.cuda_graph and on_cuda)
        rec["ema_decay"] = opt.train.ema_decay
        rec["perceptual"] = opt.train.perceptual_opt is not None
        net = trainer.model.inference_network(use_ema=opt.val.use_ema if opt.val else True)
        outs = restore_pairs(net, pairs, opt.scale, ctx.device, opt.train.bf16)
        t3 = time.perf_counter()
        per_image = {stem: image_metrics(out, gt, part.task) for (stem, _, gt), out in zip(pairs, outs)}
        rec["metrics"] = mean_metrics(list(per_image.values()))
        rec["per_image"] = per_image
        rec["setup_s"], rec["train_s"], rec["eval_s"] = round(t1 - t0, 2), round(t2 - t1, 2), round(t3 - t2, 2)
        rec["val_s"] = round(trainer.val_s, 2)
        rec["wall_s"] = round(t3 - t0, 2)
        log_rows = read_jsonl(Path(opt.path.experiments_root) / "train_log.jsonl")
        train_rows = [r for r in log_rows if "it_per_s" in r]
        rates = [r["it_per_s"] for r in train_rows[1:]] or [r["it_per_s"] for r in train_rows]
        if rates:
            rec["ms_per_iter"] = round(1000.0 / float(np.median(rates)), 2)
            # Time not explained by steady steps and validation: compiling, recording CUDA graphs, saving.
            rec["warmup_s"] = round(max(0.0, rec["train_s"] - rec["val_s"] - iters * rec["ms_per_iter"] / 1000.0), 2)
        if ctx.device.type == "cuda":
            rec["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(ctx.device) / 1e9, 2)
        loss_keys = sorted({k for r in train_rows for k in r if k.startswith(("l_", "out_d"))})
        rec["loss_keys"] = loss_keys
        rec["final_losses"] = {k: train_rows[-1][k] for k in loss_keys if k in train_rows[-1]} if train_rows else {}
        finite = all(math.isfinite(float(r[k])) for r in train_rows for k in loss_keys if k in r)
        finite = finite and all(math.isfinite(v) for v in rec["metrics"].values())
        rec["val_curve"] = [{k: r[k] for k in ("iter", "psnr", "ssim") if k in r} for r in log_rows if "val" in r]
        rec["status"] = "ok" if finite else "diverged"
        report_logs = report_dir / "logs"
        report_logs.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes("\n".join(json.dumps(r) for r in log_rows).encode() + b"\n", report_logs / f"{name}.jsonl")
        out_dir = runs_root / "experiments" / name / "held_out"
        for (stem, _, _), out in zip(pairs, outs):
            _write_png(out, out_dir / f"{stem}.png")
        rec["outputs"] = str(out_dir)
    finally:
        del trainer
        _close_log_handlers()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rec


# ----------------------------------------------------------------------------- summary
def summarise(part: PartSpec, runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per configuration: seeds done, mean / min / max of each held-out metric, mean times."""
    rows = []
    for cfg in part.configs:
        done = [r for r in runs if r["config"] == cfg.name and r["status"] in ("ok", "diverged") and r.get("metrics")]
        row: Dict[str, Any] = {"config": cfg.name, "seeds": [r["seed"] for r in done],
                               "status": sorted({r["status"] for r in runs if r["config"] == cfg.name})}
        if done:
            for m in done[0]["metrics"]:
                vals = [r["metrics"][m] for r in done if m in r["metrics"]]
                row[m] = {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals)),
                          "values": vals}
            row["params_m"] = done[0].get("params_m")
            for k in ("ms_per_iter", "wall_s", "warmup_s", "val_s", "peak_mem_gb"):
                vals = [r[k] for r in done if r.get(k) is not None]
                row[k] = round(float(np.mean(vals)), 2) if vals else None
        rows.append(row)
    return rows


def compare_to_reference(summary: List[Dict[str, Any]], metric: str = "psnr") -> List[str]:
    """Sentences: the first configuration against each other one, with the seed ranges."""
    done = [s for s in summary if metric in s]
    if len(done) < 2:
        return []
    ref = done[0]
    lines = []
    for s in done[1:]:
        diff = ref[metric]["mean"] - s[metric]["mean"]
        overlap = not (ref[metric]["min"] > s[metric]["max"] or s[metric]["min"] > ref[metric]["max"])
        if len(ref[metric]["values"]) < 2 or len(s[metric]["values"]) < 2:
            verdict = "one seed only: no spread to compare against"
        elif overlap:
            verdict = "the seed ranges overlap: not separated at this budget"
        else:
            verdict = f"every seed of {ref['config'] if diff > 0 else s['config']} is above every seed of the other"
        lines.append(f"{ref['config']} {'-' if diff < 0 else '+'}{abs(diff):.2f} dB vs {s['config']} "
                     f"({ref[metric]['mean']:.2f} vs {s[metric]['mean']:.2f}; {verdict})")
    return lines


# ----------------------------------------------------------------------------- pictures
def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(buf.getvalue(), path)


def plot_curves(part: PartSpec, cfg: ConfigSpec, runs: List[Dict[str, Any]], report_dir: Path,
                floor: Optional[Dict[str, float]] = None) -> Optional[str]:
    """Training losses and validation PSNR against iterations, one line per seed and loss; the
    floor's PSNR on the same held-out images as a dashed line."""
    plt = _plt()
    mine = [r for r in runs if r["config"] == cfg.name and r.get("loss_keys") is not None]
    if plt is None or not mine:
        return None
    fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(11, 3.6))
    for r in mine:
        rows = [x for x in read_jsonl(report_dir / "logs" / f"{r['run']}.jsonl") if "it_per_s" in x]
        for k in r["loss_keys"]:
            pts = [(x["iter"], x[k]) for x in rows if k in x and math.isfinite(x[k])]
            if pts:
                ax_l.plot(*zip(*pts), label=f"{k} s{r['seed']}")
        pts = [(v["iter"], v["psnr"]) for v in r.get("val_curve", []) if "psnr" in v]
        if pts:
            ax_v.plot(*zip(*pts), marker="o", label=f"seed {r['seed']}")
    if floor and "psnr" in floor:
        ax_v.axhline(floor["psnr"], color="#c44e52", ls="--", label=FLOOR_NAMES[part.task])
    ax_l.set(title=f"{cfg.name}: training losses", xlabel="iteration")
    if ax_l.get_lines() and all(np.min(ln.get_ydata()) > 0 for ln in ax_l.get_lines()):
        ax_l.set_yscale("log")
    ax_v.set(title=f"{cfg.name}: held-out PSNR (Y) during training", xlabel="iteration", ylabel="dB")
    for ax in (ax_l, ax_v):
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    fname = f"{part.name}_curves_{cfg.name}.png"
    _save_fig(fig, report_dir / fname)
    plt.close(fig)
    return fname


def plot_bars(part: PartSpec, summary: List[Dict[str, Any]], floor: Dict[str, float], report_dir: Path,
              metric: str) -> Optional[str]:
    """Held-out ``metric`` per configuration (mean, with the min-max range of the seeds as error bar)."""
    plt = _plt()
    rows = [s for s in summary if metric in s]
    if plt is None or not rows:
        return None
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2.5, 3.6))
    means = [s[metric]["mean"] for s in rows]
    err = [[s[metric]["mean"] - s[metric]["min"] for s in rows], [s[metric]["max"] - s[metric]["mean"] for s in rows]]
    x = np.arange(len(rows))
    ax.bar(x, means, yerr=err, capsize=4, color="#4c72b0")
    for i, s in enumerate(rows):
        ax.scatter([i] * len(s[metric]["values"]), s[metric]["values"], color="k", s=10, zorder=3)
    if metric in floor:
        ax.axhline(floor[metric], color="#c44e52", ls="--", label=f"{FLOOR_NAMES[part.task]} ({floor[metric]:.2f})")
        ax.legend(fontsize=8)
    lo = min(min(s[metric]["min"] for s in rows), floor.get(metric, np.inf))
    hi = max(max(s[metric]["max"] for s in rows), floor.get(metric, -np.inf))
    pad = max(0.5, 0.15 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(x, [s["config"] for s in rows], rotation=20)
    label = {"psnr": "held-out PSNR (Y), dB", "ssim": "held-out SSIM (Y)", "niqe": "held-out NIQE (lower is better)"}[metric]
    ax.set(ylabel=label, title=f"{part.title}: {part.iters} iterations, dots = seeds")
    ax.grid(axis="y", alpha=0.3)
    fname = f"{part.name}_{metric}_bars.png"
    _save_fig(fig, report_dir / fname)
    plt.close(fig)
    return fname


def _zoom_box(a: np.ndarray, b: np.ndarray, frac: float = 0.25) -> Tuple[int, int, int]:
    """(top, left, size) of the square where ``a`` and ``b`` differ most (a region worth zooming)."""
    h, w = b.shape[:2]
    size = max(8, int(min(h, w) * frac))
    diff = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2)
    box = cv2.boxFilter(diff, -1, (size, size), normalize=True, borderType=cv2.BORDER_CONSTANT)
    half = size // 2
    inner = box[half: h - size + half + 1, half: w - size + half + 1]
    top, left = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(top), int(left), size


def plot_grid(part: PartSpec, stem: str, lq: np.ndarray, gt: np.ndarray, methods: List[Tuple[str, np.ndarray]],
              report_dir: Path) -> Optional[str]:
    """``input | each method | ground truth`` with a zoomed crop of each below (SR inputs shown
    nearest-neighbour enlarged)."""
    plt = _plt()
    if plt is None:
        return None
    h, w = gt.shape[:2]
    shown_in = cv2.resize(lq, (w, h), interpolation=cv2.INTER_NEAREST) if lq.shape[:2] != gt.shape[:2] else lq
    panels = [("input", shown_in)] + methods + [("ground truth", gt)]
    top, left, size = _zoom_box(shown_in, gt)
    n = len(panels)
    fig, axes = plt.subplots(2, n, figsize=(2.7 * n, 2.7 * (h / w) + 2.8), gridspec_kw={"height_ratios": [h / w, 1]})
    for i, (title, img) in enumerate(panels):
        rgb = img[:, :, ::-1]
        axes[0, i].imshow(rgb)
        axes[0, i].add_patch(plt.Rectangle((left, top), size, size, fill=False, ec="yellow", lw=1))
        axes[0, i].set_title(title, fontsize=7)
        axes[1, i].imshow(rgb[top: top + size, left: left + size], interpolation="nearest")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fname = f"{part.name}_grid_{stem}.png"
    _save_fig(fig, report_dir / fname)
    plt.close(fig)
    return fname


# ----------------------------------------------------------------------------- page
def _fmt(stat: Optional[Dict[str, float]], digits: int) -> str:
    if not stat:
        return "-"
    if len(stat["values"]) == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ({' / '.join(f'{v:.{digits}f}' for v in stat['values'])})"


def part_markdown(part: PartSpec, state: Dict[str, Any]) -> str:
    """The section of the results page for one part."""
    man, runs, summary, floor = state["manifest"], state["runs"], state["summary"], state["floor"]
    metrics = ["psnr", "ssim"] + (["niqe"] if part.task == "sr_real" else [])
    lines = [f"## {part.title}", ""]
    s = man["settings"]
    lines.append(f"- task `{part.task}`; {state['iters']} iterations per run; seeds {', '.join(map(str, state['seeds']))}; "
                 f"training photos ({len(man['train'])}, longer side <= {s['train_max_side']}): "
                 f"{', '.join(man['train'])}; held-out photos ({len(man['held_out'])} x {s['held_out_variants']} "
                 f"= {state['n_held_out']} images, longer side <= {s['held_out_max_side']}, never trained on): "
                 f"{', '.join(man['held_out'])}.")
    if man.get("skipped"):
        lines.append(f"- photos not available on this machine (skipped): {'; '.join(man['skipped'])}.")
    if part.overrides:
        lines.append(f"- the study's overrides of every run: `{'`, `'.join(part.overrides)}`.")
    if part.note:
        lines.append(f"- {part.note}")
    border = "border 0" if part.task == "derain" else "border 4"
    lines += ["", f"Held-out metrics on Y ({border}); each cell is the mean over seeds, with each seed's "
              f"value in brackets. Times are per run on {state.get('device', 'this machine')}.", ""]
    header = ["configuration", "params (M)"] + [m.upper() if m != "niqe" else "NIQE (lower better)" for m in metrics] + \
             [f"PSNR gain over {FLOOR_NAMES[part.task]} (dB)", "ms / iter", "time per run (s)", "of which compile, graphs, saving (s)", "of which validation (s)", "peak GPU mem (GB)", "status", "notes"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if floor:
        cells = [f"{FLOOR_NAMES[part.task]} (no training)", "-"] + [f"{floor[m]:.{2 if m != 'ssim' else 4}f}" if m in floor else "-" for m in metrics]
        lines.append("| " + " | ".join(cells + ["0"] + ["-"] * 5 + ["", ""]) + " |")
    if "gt_niqe" in state:
        lines.append("| ground truth | - | - | - | " + f"{state['gt_niqe']:.2f}" + " |" + " - |" * 6 + " | |")
    cfg_by_name = {c.name: c for c in part.configs}
    for row in summary:
        cfg = cfg_by_name[row["config"]]
        notes = sorted({n for r in runs if r["config"] == cfg.name for n in r.get("notes", [])})
        if cfg.note:
            notes.insert(0, cfg.note)
        errors = [f"seed {r['seed']}: {r.get('error', '')}" for r in runs if r["config"] == cfg.name and r["status"] in ("failed", "skipped")]
        cells = [cfg.name, f"{row['params_m']:.2f}" if row.get("params_m") else "-"]
        cells += [_fmt(row.get(m), 4 if m == "ssim" else 2) for m in metrics]
        cells += [f"{row['psnr']['mean'] - floor['psnr']:+.2f}" if row.get("psnr") and "psnr" in floor else "-"]
        cells += [f"{row[k]:.1f}" if row.get(k) is not None else "-" for k in ("ms_per_iter", "wall_s", "warmup_s", "val_s")]
        cells += [f"{row['peak_mem_gb']:.1f}" if row.get("peak_mem_gb") is not None else "-"]
        cells += [", ".join(row["status"]) or "not run", "; ".join(notes + errors).replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    comp = compare_to_reference(summary)
    if comp:
        lines += ["", "First configuration against each other one (held-out PSNR, mean over seeds):", ""]
        lines += [f"- {c}" for c in comp]
    pics = state.get("pictures", {})
    if pics.get("bars"):
        lines += ["", *[f"![{b}]({b})" for b in pics["bars"]]]
    if pics.get("grids"):
        lines += ["", "Held-out images (first seed of each configuration; the yellow square is enlarged below):", ""]
        lines += [f"![{g}]({g})" for g in pics["grids"]]
    if pics.get("curves"):
        lines += ["", "Training curves (losses; held-out PSNR at each validation): "
                  + ", ".join(f"[{c}]({f})" for c, f in pics["curves"].items())]
    return "\n".join(lines) + "\n"


def write_report(study: StudySpec, states: Dict[str, Dict[str, Any]], report_dir: Path, meta: Dict[str, Any]) -> None:
    """results.json, results.csv and README.md of the study (atomically)."""
    payload = {"study": study.name, "title": study.title, **meta,
               "parts": {k: {kk: vv for kk, vv in v.items() if kk != "pairs"} for k, v in states.items()}}
    atomic_write_bytes(json.dumps(payload, indent=1, default=str).encode(), report_dir / "results.json")
    buf = io.StringIO()
    cols = ["part", "config", "seed", "status", "device", "iters", "params_m", "psnr", "ssim", "niqe", "ms_per_iter", "wall_s",
            "warmup_s", "val_s", "setup_s", "train_s", "eval_s", "peak_mem_gb", "compile", "cuda_graph", "ema_decay", "notes", "error"]
    w = csv.writer(buf)
    w.writerow(cols)
    for st in states.values():
        for r in st["runs"]:
            m = r.get("metrics") or {}
            w.writerow([r.get(c) if c not in ("psnr", "ssim", "niqe", "notes") else
                        ("; ".join(r.get("notes", [])) if c == "notes" else m.get(c)) for c in cols])
    atomic_write_bytes(buf.getvalue().encode(), report_dir / "results.csv")
    text = [f"# {study.title}", "",
            f"Written by `python scripts/study.py {' '.join(meta['argv'])}` on {meta['device']} "
            f"(torch {meta['torch']}), started {meta['started']}, {meta['elapsed_s']:.0f} s so far"
            f"{' (finished)' if meta.get('finished') else ' (in progress or interrupted)'}. "
            f"Method and caveats: `docs/study.md`. A short-budget sanity check on a few photos, not the "
            f"paper's benchmark.", ""]
    for part in study.parts:
        if part.name in states:
            text.append(part_markdown(part, states[part.name]))
    atomic_write_bytes("\n".join(text).encode(), report_dir / "README.md")
    record = benchmark_record(study, states, meta)
    atomic_write_bytes(json.dumps(record, indent=1).encode(), report_dir / f"{record['id']}.json")


def benchmark_record(study: StudySpec, states: Dict[str, Dict[str, Any]], meta: Dict[str, Any]) -> Dict[str, Any]:
    """The study's results as a benchmark record (schema 1 of ``scripts/bench/bench_record.py``):
    one table per part (the floor, then each configuration: mean and seed range of the held-out
    metrics, times) and a bar chart of held-out PSNR. Copied to ``benchmarks/data/study_<name>.json``
    it puts the study on the generated ``benchmarks/README.md``."""
    tables, charts = [], []
    for part in study.parts:
        st = states.get(part.name)
        if st is None:
            continue
        metrics = ["psnr", "ssim"] + (["niqe"] if part.task == "sr_real" else [])
        cols = ["configuration", "params (M)", "seeds"]
        for m in metrics:
            cols += [f"{m.upper()} mean", f"{m.upper()} min", f"{m.upper()} max"]
        cols += ["PSNR gain over the floor (dB)", "ms / iter", "time per run (s)", "compile, graphs, saving (s)",
                 "validation (s)", "status"]
        floor = st["floor"]
        rows = [[f"{FLOOR_NAMES[part.task]} (no training)", None, None]
                + [x for m in metrics for x in ([round(floor[m], 4)] * 3 if m in floor else [None] * 3)]
                + [0.0, None, None, None, None, "-"]]
        for row in st["summary"]:
            cells: List[Any] = [row["config"], row.get("params_m"), ",".join(map(str, row["seeds"])) or "-"]
            for m in metrics:
                stat = row.get(m)
                cells += [round(stat[k], 4) for k in ("mean", "min", "max")] if stat else [None] * 3
            gain = round(row["psnr"]["mean"] - floor["psnr"], 3) if row.get("psnr") and "psnr" in floor else None
            cells += [gain] + [row.get(k) for k in ("ms_per_iter", "wall_s", "warmup_s", "val_s")]
            cells += [", ".join(row["status"]) or "not run"]
            rows.append(cells)
        notes = [f"{st['iters']} iterations per run; {st['n_held_out']} held-out images; seeds "
                 f"{', '.join(map(str, st['seeds']))}; page: benchmarks/study/{study.name}/README.md"]
        tables.append({"title": part.title, "columns": cols, "rows": rows, "notes": notes})
        done = [r for r in st["summary"] if r.get("psnr")]
        if done:
            charts.append({"title": f"{part.title}: held-out PSNR (Y), mean over seeds", "kind": "bar",
                           "x": [r["config"] for r in done],
                           "series": {"PSNR (dB)": [round(r["psnr"]["mean"], 3) for r in done]},
                           "ylabel": "dB"})
    return {"schema": 1, "id": f"study_{study.name}", "title": study.title, "section": "Training",
            "machine": {"gpu": meta["device"], "torch": meta["torch"], "python": meta["python"]},
            "date": meta["started"][:10], "command": "python scripts/study.py " + " ".join(meta["argv"]),
            "summary": (f"Short-budget training study (docs/study.md); the page with pictures and curves is "
                        f"benchmarks/study/{study.name}/README.md."),
            "tables": tables, "charts": charts}


def write_archive(report_dir: Path, archive: Path) -> None:
    """Pack ``report_dir`` into ``archive`` (.tar.gz), atomically."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(str(report_dir), arcname=report_dir.parent.name)
    atomic_write_bytes(buf.getvalue(), archive)


# ----------------------------------------------------------------------------- driver
def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/study.py", description="Train every configuration of a study file to a "
                                "fixed budget, evaluate on held-out photos, write results and pictures (docs/study.md).")
    p.add_argument("study", nargs="+", help="Study file(s), e.g. options/study/derain_study.yml.")
    p.add_argument("--out", required=True, help="Output folder (data, runs, report).")
    p.add_argument("--only", default="", help="Comma-separated configuration names (or part:name) to run; "
                   "configurations they start from (init_from) must be listed too.")
    p.add_argument("--seeds", default="", help="Comma-separated seeds replacing the study file's, e.g. 0 or 0,1.")
    p.add_argument("--budget-scale", type=float, default=1.0, help="Multiply every part's iterations by this.")
    p.add_argument("--time-limit", type=float, default=0.0, help="Seconds: start no run that would end after "
                   "this (estimated from finished runs); the report is written either way. 0: no limit.")
    p.add_argument("--archive", default="", help="Also pack the report folder(s) into this .tar.gz after every run.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override an option of every run (applied last), e.g. --set train.compile=false.")
    p.add_argument("--verbose", action="store_true", help="Print the trainer's progress lines too.")
    p.add_argument("--dry-run", action="store_true", help="Build the data and check every run's options (one line "
                   "per run: network, parameters, batch, switches); train nothing.")
    return p


def _planned_runs(part: PartSpec, only: List[str], seeds: List[int]) -> List[Tuple[ConfigSpec, int]]:
    """Seed-major order: every configuration of the first seed, then of the next; an interrupted
    study still has one seed of each configuration."""
    chosen = [c for c in part.configs if not only or c.name in only or f"{part.name}:{c.name}" in only]
    names = {c.name for c in chosen}
    for c in chosen:
        if c.init_from and c.init_from not in names:
            raise StudyError(f"--only: '{c.name}' starts from '{c.init_from}' (init_from); list that one too.")
    return [(c, s) for s in seeds for c in chosen]


def fast_path_fallback(err: BaseException, active: List[str]) -> Optional[str]:
    """The override that turns off the fast-path switch ``err`` came from, if it came from one:
    ``train.compile=false`` for errors raised by torch.compile (dynamo, inductor, Triton),
    ``train.cuda_graph=false`` for CUDA-graph recording errors; None otherwise (or when that
    switch is already off in ``active``)."""
    chain, e = [], err
    while e is not None and len(chain) < 12:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(f"{type(x).__module__}.{type(x).__name__} {str(x)[:300]}" for x in chain)
    if "train.compile=false" not in active and any(k in text for k in ("torch._dynamo", "torch._inductor", "triton")):
        return "train.compile=false"
    if "train.cuda_graph=false" not in active and ("cuda_graph" in text or "GraphRecordingError" in text):
        return "train.cuda_graph=false"
    return None


def study_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``scripts/study.py``. Returns 0 (all runs finished), 1 (some failed,
    diverged or were skipped; the report says which), 2 (bad study file or arguments)."""
    args = build_arg_parser().parse_args(argv)
    started, t_start = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), time.perf_counter()
    try:
        studies = [load_study(p) for p in args.study]
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        if args.budget_scale <= 0:
            raise StudyError(f"--budget-scale must be positive, got {args.budget_scale}.")
        known = {c.name for st in studies for p in st.parts for c in p.configs} | \
                {f"{p.name}:{c.name}" for st in studies for p in st.parts for c in p.configs}
        if any(o not in known for o in only):
            raise StudyError(f"--only names {sorted(set(only) - known)} are not configurations of the study; "
                             f"known: {sorted(known)}.")
        plans = {(st.name, p.name): _planned_runs(p, only, seeds or p.seeds) for st in studies for p in st.parts}
    except (StudyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch._dynamo
    # Every configuration and block width adds compiled graphs on the shared block code: allow them all.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    out = Path(args.out).resolve()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    total = sum(len(v) for v in plans.values())
    done_count, problems = 0, 0
    finished_walls: Dict[str, float] = {}
    repeat_times: Dict[str, float] = {}
    fallbacks: Dict[str, List[str]] = {}       # per configuration: fast-path switches turned off after a failure
    fallback_notes: Dict[str, List[str]] = {}
    for st in studies:
        report_dir = out / st.name / "report"
        report_dir.mkdir(parents=True, exist_ok=True)
        states: Dict[str, Dict[str, Any]] = {}
        meta = {"argv": list(argv if argv is not None else sys.argv[1:]), "device": device, "torch": torch.__version__,
                "started": started, "elapsed_s": 0.0, "python": platform.python_version()}

        def flush(final: bool = False) -> None:
            meta["elapsed_s"], meta["finished"] = time.perf_counter() - t_start, final
            write_report(st, states, report_dir, meta)
            if args.archive:
                write_archive(report_dir, Path(args.archive).resolve() if len(studies) == 1 else
                              Path(args.archive).resolve().with_name(f"{st.name}_{Path(args.archive).name}"))

        for part in st.parts:
            plan = plans[(st.name, part.name)]
            if not plan:
                continue
            iters = max(1, round(part.iters * args.budget_scale))
            val_every = max(1, round((part.val_every or max(1, part.iters // 6)) * args.budget_scale))
            data_root = out / "data" / part.name
            try:
                manifest = build_part_data(part, data_root, part.configs[0].options)
                pairs = held_out_pairs(data_root)
            except (StudyError, DataError, OptionsError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            floor_rows = [image_metrics(floor_outputs(part.task, lq), gt, part.task) for _, lq, gt in pairs]
            state: Dict[str, Any] = {"task": part.task, "iters": iters, "seeds": sorted({s for _, s in plan}),
                                     "manifest": manifest, "n_held_out": len(pairs), "floor": mean_metrics(floor_rows),
                                     "floor_per_image": {p[0]: r for p, r in zip(pairs, floor_rows)},
                                     "runs": [], "summary": [], "device": device, "pictures": {}}
            if part.task == "sr_real":
                from ..metrics.lpips_metric import calculate_niqe_score
                gts = []
                for _, _, gt in pairs:
                    try:
                        gts.append(calculate_niqe_score(gt, None, crop_border=4))
                    except ValueError:  # too small for NIQE
                        pass
                if gts:
                    state["gt_niqe"] = float(np.mean(gts))
            states[part.name] = state
            runs_root = out / st.name / "runs"
            if args.dry_run:
                for cfg, seed in plan:
                    try:
                        print(describe_run(part, cfg, seed, iters, val_every, data_root, runs_root, manifest,
                                           args.overrides), flush=True)
                    except (OptionsError, DataError, ValueError, TypeError) as err:
                        print(f"{part.name} {cfg.name} seed {seed}: error: {err}", flush=True)
                        problems += 1
                continue
            for cfg, seed in plan:
                done_count += 1
                elapsed = time.perf_counter() - t_start
                # A configuration seen before needs about its repeat time (its graphs are compiled);
                # a new one, as long as the longest first run so far (which compiled).
                estimate = repeat_times.get(cfg.name, max(finished_walls.values(), default=0.0))
                label = f"[{done_count}/{total}] {part.name} {cfg.name} seed {seed}"
                if args.time_limit and elapsed + estimate > args.time_limit:
                    rec = {"part": part.name, "config": cfg.name, "seed": seed, "run": run_name(part, cfg, seed),
                           "iters": iters, "status": "skipped", "notes": [],
                           "error": f"time limit: {elapsed:.0f} s spent, this run needs about {estimate:.0f} s, "
                                    f"limit {args.time_limit:.0f} s"}
                    print(f"{label}: skipped ({rec['error']})", flush=True)
                else:
                    key = f"{part.name}:{cfg.name}"
                    while True:
                        try:
                            rec = train_and_evaluate(part, cfg, seed, iters, val_every, data_root, runs_root,
                                                     report_dir, manifest, pairs,
                                                     args.overrides + fallbacks.get(key, []), args.verbose)
                            rec["notes"] += fallback_notes.get(key, [])
                            break
                        except KeyboardInterrupt:
                            raise
                        except Exception as err:  # noqa: BLE001  (record it and keep the other runs)
                            (report_dir / "logs").mkdir(parents=True, exist_ok=True)
                            atomic_write_bytes(traceback.format_exc().encode(),
                                               report_dir / "logs" / f"{run_name(part, cfg, seed)}.error.txt")
                            switch = fast_path_fallback(err, args.overrides + fallbacks.get(key, []))
                            if switch is None:
                                rec = {"part": part.name, "config": cfg.name, "seed": seed,
                                       "run": run_name(part, cfg, seed), "iters": iters, "status": "failed",
                                       "notes": fallback_notes.get(key, []),
                                       "error": f"{type(err).__name__}: {err}".strip()[:600]}
                                break
                            # Turn that switch off for this configuration and run again, saying so.
                            fallbacks.setdefault(key, []).append(switch)
                            fallback_notes.setdefault(key, []).append(
                                f"{switch.split('=')[0]} failed ({type(err).__name__}: {str(err)[:160]}); trained "
                                f"with {switch}")
                            print(f"{label}: {type(err).__name__} from {switch.split('=')[0]}; retrying with {switch}",
                                  flush=True)
                    if rec.get("wall_s"):
                        finished_walls[cfg.name] = max(finished_walls.get(cfg.name, 0.0), rec["wall_s"])
                        repeat_times[cfg.name] = rec["wall_s"] - 0.75 * rec.get("warmup_s", 0.0)
                    m = rec.get("metrics") or {}
                    text = ", ".join(f"{k} {v:.4f}" for k, v in m.items())
                    print(f"{label}: {rec['status']}" + (f" in {rec['wall_s']:.1f} s ({rec.get('ms_per_iter', 0):.1f} ms/it, "
                          f"compile/graphs/saving {rec.get('warmup_s', 0):.0f} s, validation {rec.get('val_s', 0):.0f} s); held-out {text}" if rec.get("wall_s") else
                          f": {rec.get('error', '')}"), flush=True)
                if rec["status"] != "ok":
                    problems += 1
                state["runs"].append(rec)
                state["summary"] = summarise(part, state["runs"])
                _update_pictures(part, state, pairs, report_dir, rec)
                flush()
        if args.dry_run:
            continue
        flush(final=True)
        print(f"{st.name}: report in {report_dir / 'README.md'}", flush=True)
    shutdown_dist()
    return 1 if problems else 0


def _update_pictures(part: PartSpec, state: Dict[str, Any], pairs, report_dir: Path, last: Dict[str, Any]) -> None:
    """Redraw what run ``last`` changed: its configuration's curves, the bar charts, and the
    image grids when it is the first finished run of its configuration (grids show one seed)."""
    runs = state["runs"]
    pics = state.setdefault("pictures", {})
    curves = pics.setdefault("curves", {})
    cfg = next(c for c in part.configs if c.name == last["config"])
    f = plot_curves(part, cfg, runs, report_dir, state["floor"])
    if f:
        curves[cfg.name] = f
    pics["curves"] = {c.name: curves[c.name] for c in part.configs if c.name in curves}  # study order
    pics["bars"] = [f for f in (plot_bars(part, state["summary"], state["floor"], report_dir, metric)
                                for metric in ["psnr"] + (["niqe"] if part.task == "sr_real" else [])) if f]
    first_of_cfg = last.get("outputs") and not any(r is not last and r["config"] == last["config"] and r.get("outputs")
                                                   for r in runs)
    if not first_of_cfg:
        return
    firsts = []
    for c in part.configs:
        done = [r for r in runs if r["config"] == c.name and r.get("outputs")]
        if done:
            firsts.append((c.name, Path(done[0]["outputs"])))
    # One rain variant per photo (the first), so that the grids show different photos.
    distinct = [p for p in pairs if not p[0].rsplit("_", 1)[-1].isdigit() or p[0].endswith("_0")] or list(pairs)
    grids = []
    for stem, lq, gt in distinct[: max(0, part.grid_images)]:
        methods = [] if part.task == "derain" else [("bicubic", floor_outputs(part.task, lq))]
        for name, folder in firsts:
            img = cv2.imread(str(folder / f"{stem}.png"), cv2.IMREAD_COLOR)
            if img is not None:
                methods.append((name, img))
        f = plot_grid(part, stem, lq, gt, methods, report_dir)
        if f:
            grids.append(f)
    pics["grids"] = grids
