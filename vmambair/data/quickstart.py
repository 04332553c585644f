"""The quick-start deraining set: real photographs that ship inside scikit-image, with synthetic
rain streaks, built on first use (no download, no dataset to fetch).

``python train.py -opt options/quickstart.yml`` names :class:`QuickstartRainDataset` for its
train and validation sets. On first use each split is generated into its folders (Restormer's
``<split>/{input,target}`` layout, plus ``manifest.json`` recording every photo and rain
setting) and afterwards simply read like any :class:`PairedImageFolderDataset`. Generation is
deterministic (a fixed seed per split), and the training and held-out photo lists are disjoint
(checked at import); the two motorcycle photos are a stereo pair of one scene, so both are on
the training side.

Rain model (one image): 1 to 3 layers of streaks. Each layer scatters drops with a given
density, draws each drop as an anti-aliased line of a given length and angle (angles of one
image's layers differ by a few degrees, as in wind-blown rain), softens it with a Gaussian of a
given width, and scales it by a brightness. The layers are screen-blended onto the photo,
``rainy = 1 - (1 - clean) * (1 - streaks)``, so rain only brightens, as real streaks do.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.utils.registry import DATASET_REGISTRY

from vmambair.utils.fileio import atomic_write_bytes

from .image_io import DataError
from .paired_dataset import PairedImageFolderDataset, option_getter

# Photos bundled in scikit-image's wheel (skimage/data/*.png|jpg): these load offline. Several
# others in skimage.data are fetched with pooch on first use and would fail on machines without
# network access, so they are not used.
TRAIN_PHOTOS: Tuple[str, ...] = ("astronaut", "motorcycle_left", "motorcycle_right", "hubble_deep_field",
                                 "retina", "immunohistochemistry", "camera", "coins", "moon", "grass",
                                 "gravel", "brick")
HELD_OUT_PHOTOS: Tuple[str, ...] = ("chelsea", "coffee", "rocket")
assert not set(TRAIN_PHOTOS) & set(HELD_OUT_PHOTOS), "quick-start train and held-out photos must be disjoint"

BUILDER_VERSION = 1

# Defaults of each split; every key can be overridden in the options under
# ``datasets.<key>.degradation`` (e.g. ``{variants: 2, max_side: 256}``).
SPLIT_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "train": {"photos": list(TRAIN_PHOTOS), "variants": 4, "max_side": 384, "seed": 0},
    "val": {"photos": list(HELD_OUT_PHOTOS), "variants": 2, "max_side": 256, "seed": 1},
}
RAIN_DEFAULTS: Dict[str, Any] = {
    "layers": [1, 3],            # streak layers per image (inclusive range)
    "angle": [-30.0, 30.0],      # degrees from vertical of an image's main direction
    "length": [8.0, 36.0],       # streak length in pixels
    "density": [0.0003, 0.0015],  # fraction of pixels that start a drop, per layer
    "width": [0.3, 0.8],          # Gaussian sigma in pixels (streak thickness)
    "brightness": [0.35, 0.8],    # peak streak value before screen blending
}


def load_photo(name: str) -> np.ndarray:
    """One bundled scikit-image photograph as uint8 HxWx3 RGB (grayscale ones repeated).

    Raises:
        DataError: unknown name, or a photo that is not bundled with this scikit-image.
    """
    import skimage.data as skdata

    try:
        if name in ("motorcycle_left", "motorcycle_right"):
            left, right, _ = skdata.stereo_motorcycle()
            img = left if name == "motorcycle_left" else right
        else:
            fetch = getattr(skdata, name, None)
            if fetch is None or not callable(fetch):
                raise DataError(f"'{name}' is not a scikit-image photo; choose from "
                                f"{', '.join(TRAIN_PHOTOS + HELD_OUT_PHOTOS)}.")
            img = fetch()
    except DataError:
        raise
    except Exception as err:  # pooch download errors, missing files
        raise DataError(f"scikit-image photo '{name}' could not be loaded ({type(err).__name__}: {err}); "
                        f"use photos bundled with scikit-image, e.g. {', '.join(TRAIN_PHOTOS[:4])}.") from None
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"scikit-image photo '{name}' is {img.dtype} {img.shape}, not an 8-bit photograph.")
    return np.ascontiguousarray(img)


def resize_max_side(img: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """Downscale HxWxC ``img`` (area filter) so that its longer side is at most ``max_side``."""
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def sample_rain_params(rng: np.random.Generator, rain: Dict[str, Any] = RAIN_DEFAULTS) -> List[Dict[str, float]]:
    """Draw one image's rain: a list of layers ``{angle, length, density, width, brightness}``."""
    u = lambda key: float(rng.uniform(*rain[key]))  # noqa: E731
    main_angle = u("angle")
    layers = []
    for _ in range(int(rng.integers(rain["layers"][0], rain["layers"][1] + 1))):
        layers.append({"angle": main_angle + float(rng.uniform(-6, 6)), "length": u("length"),
                       "density": u("density"), "width": u("width"), "brightness": u("brightness")})
    return layers


def streak_kernel(length: float, angle: float, width: float) -> np.ndarray:
    """One streak as a square float32 kernel (odd size) with peak 1: an anti-aliased line of
    ``length`` pixels at ``angle`` degrees from vertical, softened by a Gaussian of sigma
    ``width`` (pixels). Normalising the peak after the blur keeps thin streaks visible."""
    pad = int(np.ceil(3 * width)) + 1
    size = (int(np.ceil(length)) | 1) + 2 * pad
    c = size / 2
    dx, dy = np.sin(np.radians(angle)) * length / 2, np.cos(np.radians(angle)) * length / 2
    # cv2.line takes fixed-point coordinates: shift=4 gives 1/16-pixel precision.
    to_fp = lambda v: int(round(v * 16))  # noqa: E731
    canvas = np.zeros((size, size), np.uint8)
    cv2.line(canvas, (to_fp(c - dx), to_fp(c - dy)), (to_fp(c + dx), to_fp(c + dy)), 255, 1, cv2.LINE_AA, 4)
    kernel = cv2.GaussianBlur(canvas.astype(np.float32), (0, 0), width)
    return kernel / max(float(kernel.max()), 1e-6)


def rain_streaks(shape: Tuple[int, int], layers: Sequence[Dict[str, float]], rng: np.random.Generator) -> np.ndarray:
    """Streak intensity map (H, W) float32 in [0, 1] for the given layers."""
    h, w = shape
    total = np.zeros((h, w), np.float32)
    for layer in layers:
        drops = (rng.random((h, w)) < layer["density"]).astype(np.float32)
        drops *= rng.uniform(0.6, 1.0, (h, w)).astype(np.float32)   # drops differ in size / distance
        streaks = cv2.filter2D(drops, -1, streak_kernel(layer["length"], layer["angle"], layer["width"]),
                               borderType=cv2.BORDER_CONSTANT)
        total = 1 - (1 - total) * (1 - layer["brightness"] * np.clip(streaks, 0, 1))
    return total


def add_rain(clean: np.ndarray, layers: Sequence[Dict[str, float]], rng: np.random.Generator) -> np.ndarray:
    """Screen-blend rain onto ``clean`` (uint8 HxWx3) and return the rainy uint8 HxWx3 image."""
    streaks = rain_streaks(clean.shape[:2], layers, rng)[:, :, None]
    rainy = 1 - (1 - clean.astype(np.float32) / 255.0) * (1 - streaks)
    return np.clip(np.round(rainy * 255.0), 0, 255).astype(np.uint8)


@dataclass
class QuickstartRainOptions:
    """The quick start's ``degradation`` key: each setting replaces its split's default (null: keep it)."""

    photos: Optional[List[str]] = None       # scikit-image photo names of the split
    variants: Optional[int] = None           # rainy versions of each photo
    max_side: Optional[int] = None           # photos are shrunk to this longer side
    seed: Optional[int] = None               # seed of the split's rain
    layers: Optional[List[int]] = None       # streak layers per image (inclusive range)
    angle: Optional[List[float]] = None      # degrees from vertical of an image's main direction
    length: Optional[List[float]] = None     # streak length in pixels
    density: Optional[List[float]] = None    # fraction of pixels that start a drop, per layer
    width: Optional[List[float]] = None      # Gaussian sigma in pixels (streak thickness)
    brightness: Optional[List[float]] = None  # peak streak value before screen blending

    def overrides(self) -> Dict[str, Any]:
        """The settings given: ``{name: value}`` without the nulls."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def split_settings(split: str, overrides=None) -> Dict[str, Any]:
    """The full settings of one split (defaults + ``overrides``), checked.

    Raises:
        DataError: an unknown key, or training and held-out photos that overlap.
    """
    if split not in SPLIT_DEFAULTS:
        raise DataError(f"Quick-start split must be one of {sorted(SPLIT_DEFAULTS)}, got {split!r}.")
    settings = dict(SPLIT_DEFAULTS[split])
    settings["rain"] = dict(RAIN_DEFAULTS)
    if isinstance(overrides, QuickstartRainOptions):
        overrides = overrides.overrides()
    for key, value in (overrides or {}).items():
        if key in settings and key != "rain":
            settings[key] = value
        elif key in RAIN_DEFAULTS:
            settings["rain"][key] = list(value)
        else:
            valid = sorted([k for k in settings if k != "rain"] + list(RAIN_DEFAULTS))
            raise DataError(f"Unknown quick-start setting 'degradation.{key}'; valid keys: {', '.join(valid)}.")
    other = "val" if split == "train" else "train"
    clash = set(settings["photos"]) & set(SPLIT_DEFAULTS[other]["photos"])
    if clash:
        raise DataError(f"Quick-start {split} photos {sorted(clash)} are also {other} photos; the training and "
                        f"held-out photos must be disjoint.")
    settings["split"], settings["version"] = split, BUILDER_VERSION
    return settings


def build_split(root: str | os.PathLike, settings: Dict[str, Any], gt_name: str = "target",
                lq_name: str = "input", log=print) -> Path:
    """Generate one split into ``root/{gt_name,lq_name}`` (PNG pairs) and ``root/manifest.json``.

    Nothing is done when ``root/manifest.json`` already records the same settings. The split is
    written to a temporary sibling folder and renamed into place, so an interrupted build never
    leaves a half-built set behind under the real name (and concurrent builders do not clash).

    Args:
        root: split folder.
        settings: from :func:`split_settings`.

    Returns:
        ``root``.
    """
    root = Path(root)
    if manifest_matches(root, settings):
        return root
    n = len(settings["photos"]) * settings["variants"]
    log(f"Building the quick-start {settings['split']} set ({len(settings['photos'])} scikit-image photos x "
        f"{settings['variants']} rain variants = {n} pairs) in {root} (first run only).")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / gt_name).mkdir(parents=True)
    (tmp / lq_name).mkdir(parents=True)
    rng = np.random.default_rng(settings["seed"])
    items = []
    for photo in settings["photos"]:
        clean = resize_max_side(load_photo(photo), settings["max_side"])
        bgr = np.ascontiguousarray(clean[:, :, ::-1])
        for v in range(settings["variants"]):
            stem = f"{photo}_{v}"
            layers = sample_rain_params(rng, settings["rain"])
            rainy = add_rain(bgr, layers, rng)
            cv2.imwrite(str(tmp / gt_name / f"{stem}.png"), bgr)
            cv2.imwrite(str(tmp / lq_name / f"{stem}.png"), rainy)
            items.append({"name": stem, "photo": photo, "size": [clean.shape[1], clean.shape[0]], "rain": layers})
    manifest = {"settings": settings, "items": items}
    atomic_write_bytes(json.dumps(manifest, indent=1).encode(), tmp / "manifest.json")
    if root.exists():  # an outdated or partial build: replace it
        stale = root.parent / f".{root.name}.stale-{os.getpid()}"
        try:
            root.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    try:
        tmp.rename(root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not manifest_matches(root, settings):  # another process won the race with other data
            raise DataError(f"Could not put the quick-start set in place at '{root}'; delete that folder and retry.")
    return root


def manifest_matches(root: str | os.PathLike, settings: Dict[str, Any]) -> bool:
    """True when ``root`` holds a finished build of exactly ``settings``."""
    path = Path(root) / "manifest.json"
    try:
        recorded = json.loads(path.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return json.loads(json.dumps(settings)) == recorded


@DATASET_REGISTRY.register()
class QuickstartRainDataset(PairedImageFolderDataset):
    """Paired rainy / clean scikit-image photos, generated on first use (see module docstring).

    Options (one ``datasets.<key>`` section): ``dataroot_gt`` and ``dataroot_lq`` are the
    ``target`` and ``input`` folders of one split folder (e.g. ``quickstart/train/target`` and
    ``quickstart/train/input``), created if missing; the split is the phase (``train``: training
    photos, ``val``/``test``: held-out photos); ``degradation`` optionally overrides the
    settings (``photos``, ``variants``, ``max_side``, ``seed`` and the rain ranges ``layers``,
    ``angle``, ``length``, ``density``, ``width``, ``brightness``). Everything else is as in
    :class:`PairedImageFolderDataset` (crops, flips, progressive patches).
    """

    builds_data = True  # options validation: the folders may not exist yet
    degradation_options = QuickstartRainOptions  # the typed ``degradation`` key

    def __init__(self, opt):
        get = option_getter(opt)
        phase = get("phase") or "train"
        gt, lq = Path(get("dataroot_gt")), Path(get("dataroot_lq"))
        if gt.parent != lq.parent:
            raise DataError(f"QuickstartRainDataset writes its pairs into one split folder: dataroot_gt ('{gt}') "
                            f"and dataroot_lq ('{lq}') must be siblings, e.g. quickstart/train/target and "
                            f"quickstart/train/input.")
        settings = split_settings("train" if phase == "train" else "val", get("degradation"))
        build_split(gt.parent, settings, gt.name, lq.name)
        super().__init__(opt)
