"""Real-ESRGAN's second-order degradation (Wang et al. 2021), built from basicsr's pieces.

The pipeline is split the way Real-ESRGAN splits it:

* data workers (:class:`vmambair.data.realesrgan_dataset.RealESRGANGTDataset`) read and crop
  the ground truth and sample three kernels per image with :func:`sample_kernels`
  (basicsr's ``random_mixed_kernels`` / ``circular_lowpass_kernel``): cheap NumPy work;
* the training device applies them to the whole batch in :class:`RealESRGANDegradation`
  (basicsr's ``filter2D``, ``random_add_gaussian_noise_pt``, ``random_add_poisson_noise_pt``,
  ``DiffJPEG``, ``USMSharp``): blur -> resize -> noise -> JPEG, twice, then the final
  [resize back + sinc] and JPEG in random order, quantisation to 8 bits, the paired crop and
  :class:`TrainingPairPool` (Real-ESRGAN's queue that mixes degradations across batches).

All settings live in one mapping, ``datasets.train.degradation`` of the options file, typed by
:class:`DegradationSettings` (declared as the dataset's ``degradation_options``, so options
validation checks keys and types with the same engine as every other section) and checked for
consistency by :meth:`DegradationSettings.check`; defaults are Real-ESRGAN's
(``options/train_realesrnet_x4plus.yml`` / ``train_realesrgan_x4plus.yml``).

Randomness: kernels come from the per-item seed the sampler gives the dataset; the on-device
part draws from Python's ``random``, NumPy's and torch's generators (as basicsr's functions
do), which the real-world models seed per call and per process with
:func:`seeded_global_rngs` (seed from ``manual_seed``, the rank and the number of batches
degraded so far): every GPU draws different resizes, noise and JPEG qualities (Real-ESRGAN
seeds each rank differently), and a resumed run continues the sequence. Under a fixed seed the
whole pipeline is deterministic on CPU.
"""
from __future__ import annotations

import dataclasses
import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.data.degradations import (circular_lowpass_kernel, random_add_gaussian_noise_pt,
                                       random_add_poisson_noise_pt, random_mixed_kernels)
from basicsr.data.transforms import paired_random_crop
from basicsr.utils.diffjpeg import DiffJPEG
from basicsr.utils.img_process_util import USMSharp, filter2D

from ..config import OptionsError, build_dataclass

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
_KERNEL_PROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]


@dataclass
class DegradationSettings:
    """Real-ESRGAN degradation parameters (defaults: Real-ESRGAN x4plus). Probabilities in [0, 1];
    ``*_range`` are [low, high]; ``resize_prob`` is [up, down, keep]."""

    # -- kernels, sampled per image by the dataset
    blur_kernel_size: int = 21          # largest kernel; sizes are the odd numbers 7..this
    kernel_list: List[str] = field(default_factory=lambda: list(KERNEL_TYPES))
    kernel_prob: List[float] = field(default_factory=lambda: list(_KERNEL_PROB))
    sinc_prob: float = 0.1
    blur_sigma: List[float] = field(default_factory=lambda: [0.2, 3.0])
    betag_range: List[float] = field(default_factory=lambda: [0.5, 4.0])
    betap_range: List[float] = field(default_factory=lambda: [1.0, 2.0])
    blur_kernel_size2: int = 21
    kernel_list2: List[str] = field(default_factory=lambda: list(KERNEL_TYPES))
    kernel_prob2: List[float] = field(default_factory=lambda: list(_KERNEL_PROB))
    sinc_prob2: float = 0.1
    blur_sigma2: List[float] = field(default_factory=lambda: [0.2, 1.5])
    betag_range2: List[float] = field(default_factory=lambda: [0.5, 4.0])
    betap_range2: List[float] = field(default_factory=lambda: [1.0, 2.0])
    final_sinc_prob: float = 0.8
    crop_pad_size: int = 400            # the dataset crops (or reflect-pads) GT to this square
    # -- first degradation, on the training device
    resize_prob: List[float] = field(default_factory=lambda: [0.2, 0.7, 0.1])
    resize_range: List[float] = field(default_factory=lambda: [0.15, 1.5])
    gaussian_noise_prob: float = 0.5
    noise_range: List[float] = field(default_factory=lambda: [1.0, 30.0])
    poisson_scale_range: List[float] = field(default_factory=lambda: [0.05, 3.0])
    gray_noise_prob: float = 0.4
    jpeg_range: List[float] = field(default_factory=lambda: [30.0, 95.0])
    # -- second degradation
    second_blur_prob: float = 0.8
    resize_prob2: List[float] = field(default_factory=lambda: [0.3, 0.4, 0.3])
    resize_range2: List[float] = field(default_factory=lambda: [0.3, 1.2])
    gaussian_noise_prob2: float = 0.5
    noise_range2: List[float] = field(default_factory=lambda: [1.0, 25.0])
    poisson_scale_range2: List[float] = field(default_factory=lambda: [0.05, 2.5])
    gray_noise_prob2: float = 0.4
    jpeg_range2: List[float] = field(default_factory=lambda: [30.0, 95.0])
    # -- training pairs and losses
    queue_size: int = 180               # training-pair pool; a multiple of the per-GPU batch (0: off)
    gt_usm: bool = True                 # USM-sharpen the GT that the losses see (per-loss switches below)
    l1_gt_usm: bool = True
    percep_gt_usm: bool = True
    gan_gt_usm: bool = False

    @property
    def kernel_sizes(self) -> List[int]:
        return list(range(7, self.blur_kernel_size + 1, 2))

    @property
    def kernel_sizes2(self) -> List[int]:
        return list(range(7, self.blur_kernel_size2 + 1, 2))

    @property
    def pad_to(self) -> int:
        """Every kernel is zero-padded to this size so that a batch stacks into one tensor."""
        return max(self.blur_kernel_size, self.blur_kernel_size2)


class DegradationError(OptionsError):
    """Invalid ``datasets.train.degradation`` settings; the message names the key (an options error)."""


def parse_degradation(raw, key: str = "datasets.train.degradation") -> DegradationSettings:
    """Settings from ``raw`` (the options mapping, or settings already built by options
    validation), with Real-ESRGAN's defaults for missing keys, checked.

    Raises:
        DegradationError: unknown key (with the closest valid one), wrong type, or an
            inconsistent value (probabilities that do not sum to 1, even kernel size...).
    """
    if isinstance(raw, DegradationSettings):
        s = raw
    else:
        try:
            s = build_dataclass(DegradationSettings, raw, key)
        except DegradationError:
            raise
        except OptionsError as err:
            raise DegradationError(str(err)) from None
    s.check(key)
    return s


def _check_degradation(s: DegradationSettings, key: str) -> None:
    defaults = DegradationSettings()
    for f in dataclasses.fields(DegradationSettings):
        default, value = getattr(defaults, f.name), getattr(s, f.name)
        if isinstance(default, list) and not f.name.startswith(("kernel_list", "kernel_prob")) \
                and len(value) != len(default):
            raise DegradationError(f"Option '{key}.{f.name}' must have {len(default)} entries like its default "
                                   f"{default!r}, got {value!r}.")
    for suffix in ("", "2"):
        klist, kprob = getattr(s, "kernel_list" + suffix), getattr(s, "kernel_prob" + suffix)
        bad = [k for k in klist if k not in KERNEL_TYPES]
        if bad:
            raise DegradationError(f"Option '{key}.kernel_list{suffix}' has unknown kernel(s) {bad}; "
                                   f"choose from {list(KERNEL_TYPES)}.")
        if len(klist) != len(kprob) or abs(sum(kprob) - 1) > 1e-6:
            raise DegradationError(f"Option '{key}.kernel_prob{suffix}' must have one probability per entry of "
                                   f"kernel_list{suffix} ({len(klist)}) summing to 1, got {kprob}.")
        size = getattr(s, "blur_kernel_size" + suffix)
        if size % 2 == 0 or size < 7:
            raise DegradationError(f"Option '{key}.blur_kernel_size{suffix}' must be odd and >= 7, got {size}.")
        rp = getattr(s, "resize_prob" + suffix)
        if abs(sum(rp) - 1) > 1e-6:
            raise DegradationError(f"Option '{key}.resize_prob{suffix}' ([up, down, keep]) must sum to 1, got {rp}.")
    # After the strongest first-order downscale the image must still be wider than the
    # reflect padding of the second blur (kernel // 2), or filter2D fails mid-training.
    smallest = s.crop_pad_size * s.resize_range[0]
    if smallest <= s.blur_kernel_size2 // 2:
        raise DegradationError(f"Option '{key}.crop_pad_size' ({s.crop_pad_size}) x resize_range[0] "
                               f"({s.resize_range[0]}) = {smallest:.1f} px is too small for the second blur kernel "
                               f"({s.blur_kernel_size2}); raise crop_pad_size or resize_range[0].")
    if s.queue_size < 0:
        raise DegradationError(f"Option '{key}.queue_size' must be >= 0 (0 disables the pool).")


DegradationSettings.check = _check_degradation  # called by options validation and parse_degradation


# ----------------------------------------------------------------------------- kernels
@contextmanager
def seeded_global_rngs(seed: Optional[int], torch_device: Optional[torch.device] = None):
    """Run a block under ``seed``: Python's ``random`` and NumPy's global generator (what basicsr's
    kernel samplers use) and, when ``torch_device`` is given, torch's CPU generator and that
    device's (when it is a GPU; the on-device degradation draws from them). All states are
    restored afterwards, so the caller's own random streams are untouched. ``seed=None``: no change."""
    if seed is None:
        yield
        return
    py_state, np_state = random.getstate(), np.random.get_state()
    cpu_state = torch.get_rng_state() if torch_device is not None else None
    cuda_state = torch.cuda.get_rng_state(torch_device) if torch_device is not None and torch_device.type == "cuda" else None
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    if torch_device is not None:
        torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        if cpu_state is not None:
            torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, torch_device)


def _blur_kernel(sizes: Sequence[int], sinc_prob: float, kernel_list, kernel_prob, sigma, betag, betap,
                 pad_to: int) -> np.ndarray:
    size = random.choice(list(sizes))
    if np.random.uniform() < sinc_prob:
        # Real-ESRGAN's cut-off range for kernels of 7..21: small kernels cannot be very sharp.
        omega_c = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
        kernel = circular_lowpass_kernel(omega_c, size, pad_to=False)
    else:
        kernel = random_mixed_kernels(kernel_list, kernel_prob, size, sigma, sigma, [-math.pi, math.pi],
                                      betag, betap, noise_range=None)
    pad = (pad_to - size) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def sample_kernels(s: DegradationSettings) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one image's kernels from the global ``random`` / ``np.random`` (seed them first).

    Returns:
        ``(kernel1, kernel2, sinc_kernel)``, each (K, K) float32 with K = ``s.pad_to`` (21), sums 1.
        ``sinc_kernel`` is a unit impulse (no filtering) with probability 1 - final_sinc_prob.
    """
    k = s.pad_to
    kernel1 = _blur_kernel(s.kernel_sizes, s.sinc_prob, s.kernel_list, s.kernel_prob, s.blur_sigma,
                           s.betag_range, s.betap_range, k)
    kernel2 = _blur_kernel(s.kernel_sizes2, s.sinc_prob2, s.kernel_list2, s.kernel_prob2, s.blur_sigma2,
                           s.betag_range2, s.betap_range2, k)
    if np.random.uniform() < s.final_sinc_prob:
        size = random.choice(s.kernel_sizes)
        sinc = torch.from_numpy(circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), size, pad_to=k))
    else:
        sinc = torch.zeros(k, k)
        sinc[k // 2, k // 2] = 1
    return torch.from_numpy(kernel1).float(), torch.from_numpy(kernel2).float(), sinc.float()


# ----------------------------------------------------------------------------- on-device pipeline
def _random_resize(x: torch.Tensor, prob: Sequence[float], rng: Sequence[float],
                   size: Optional[Tuple[int, int]] = None, base: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Up / down / keep with probabilities ``prob``, scale uniform in ``rng``, random mode."""
    kind = random.choices(["up", "down", "keep"], prob)[0]
    scale = np.random.uniform(1, rng[1]) if kind == "up" else np.random.uniform(rng[0], 1) if kind == "down" else 1
    mode = random.choice(["area", "bilinear", "bicubic"])
    if base is not None:  # second degradation: relative to the final LQ size, as Real-ESRGAN does
        return F.interpolate(x, size=(int(base[0] * scale), int(base[1] * scale)), mode=mode)
    return F.interpolate(x, scale_factor=scale, mode=mode)


def _random_noise(x: torch.Tensor, gaussian_prob: float, sigma_range, poisson_range, gray_prob: float) -> torch.Tensor:
    if np.random.uniform() < gaussian_prob:
        return random_add_gaussian_noise_pt(x, sigma_range=sigma_range, clip=True, rounds=False, gray_prob=gray_prob)
    return random_add_poisson_noise_pt(x, scale_range=poisson_range, gray_prob=gray_prob, clip=True, rounds=False)


class RealESRGANDegradation(nn.Module):
    """The on-device half of Real-ESRGAN's synthesis: GT batch + kernels -> LQ batch.

    Args:
        settings: parsed ``datasets.train.degradation``.
        scale: SR factor (4).

    ``forward(gt, kernel1, kernel2, sinc_kernel, sharpen_input=True)`` with ``gt`` (b, 3, H, W) RGB
    in [0, 1] and kernels (b, K, K) returns ``lq`` (b, 3, H // scale, W // scale) in [0, 1], quantised to
    multiples of 1/255. It always computes in fp32, with autocast disabled: bf16 rounding would
    change the noise and JPEG statistics the network learns to undo.
    """

    def __init__(self, settings: DegradationSettings, scale: int = 4):
        super().__init__()
        self.s, self.scale = settings, int(scale)
        self.jpeger = DiffJPEG(differentiable=False)
        self.usm_sharpener = USMSharp()

    def _jpeg(self, x: torch.Tensor, quality_range: Sequence[float]) -> torch.Tensor:
        quality = x.new_zeros(x.size(0)).uniform_(*quality_range)
        # Clamp first: values outside [0, 1] make DiffJPEG produce strong artefacts.
        # DiffJPEG pads to a multiple of 16 and returns a cropped (non-contiguous) view, which
        # basicsr's filter2D cannot .view(): make it contiguous.
        return self.jpeger(torch.clamp(x, 0, 1), quality=quality).contiguous()

    @torch.no_grad()
    def forward(self, gt: torch.Tensor, kernel1: torch.Tensor, kernel2: torch.Tensor,
                sinc_kernel: torch.Tensor, sharpen_input: bool = True) -> torch.Tensor:
        s = self.s
        with torch.autocast(device_type=gt.device.type, enabled=False):
            gt = gt.float()
            h, w = gt.shape[-2:]
            lq_size = (h // self.scale, w // self.scale)
            # First order: blur, resize, noise, JPEG. Real-ESRGAN blurs the USM-sharpened GT
            # (RealESRNet only when gt_usm: sharpen_input=False blurs the plain GT).
            out = filter2D(self.usm_sharpener(gt) if sharpen_input else gt, kernel1.float())
            out = _random_resize(out, s.resize_prob, s.resize_range)
            out = _random_noise(out, s.gaussian_noise_prob, s.noise_range, s.poisson_scale_range, s.gray_noise_prob)
            out = self._jpeg(out, s.jpeg_range)
            # Second order.
            if np.random.uniform() < s.second_blur_prob:
                out = filter2D(out, kernel2.float())
            out = _random_resize(out, s.resize_prob2, s.resize_range2, base=lq_size)
            out = _random_noise(out, s.gaussian_noise_prob2, s.noise_range2, s.poisson_scale_range2,
                                s.gray_noise_prob2)
            # [resize back + final sinc] and JPEG in random order (other orders give twisted lines).
            if np.random.uniform() < 0.5:
                out = F.interpolate(out, size=lq_size, mode=random.choice(["area", "bilinear", "bicubic"]))
                out = filter2D(out, sinc_kernel.float())
                out = self._jpeg(out, s.jpeg_range2)
            else:
                out = self._jpeg(out, s.jpeg_range2)
                out = F.interpolate(out, size=lq_size, mode=random.choice(["area", "bilinear", "bicubic"]))
                out = filter2D(out, sinc_kernel.float())
            # 8-bit quantisation, as a saved LQ image would have.
            return torch.clamp((out * 255.0).round(), 0, 255) / 255.0

    @torch.no_grad()
    def sharpen(self, gt: torch.Tensor) -> torch.Tensor:
        """USM-sharpened copy of ``gt`` (b, 3, H, W), fp32."""
        with torch.autocast(device_type=gt.device.type, enabled=False):
            return self.usm_sharpener(gt.float())


class TrainingPairPool:
    """Real-ESRGAN's training-pair pool: a queue of ``size`` (lq, gt) pairs on the device.

    Every batch goes in; once the pool is full, each call returns ``b`` random pairs from the
    pool and puts the new batch in their place, so one batch mixes degradations drawn for
    different batches (one batch shares a resize scale and mode). ``size`` must be a multiple
    of the per-GPU batch ``b``. While the pool fills, batches pass through unchanged.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.lq: Optional[torch.Tensor] = None
        self.gt: Optional[torch.Tensor] = None
        self.ptr = 0

    @torch.no_grad()
    def __call__(self, lq: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(b,3,h,w), (b,3,h*s,w*s) -> a batch of the same shapes (from the pool when full)."""
        if self.size <= 0:
            return lq, gt
        b = lq.size(0)
        if self.lq is None:
            if self.size % b != 0:
                raise DegradationError(f"Option 'datasets.train.degradation.queue_size' ({self.size}) must be a "
                                       f"multiple of the per-GPU batch size ({b}), e.g. {b * max(1, self.size // b)}.")
            self.lq = lq.new_zeros((self.size, *lq.shape[1:]))
            self.gt = gt.new_zeros((self.size, *gt.shape[1:]))
        if self.lq.shape[1:] != lq.shape[1:] or self.gt.shape[1:] != gt.shape[1:]:
            raise DegradationError(f"Training-pair pool holds {tuple(self.lq.shape[1:])} LQ patches but got "
                                   f"{tuple(lq.shape[1:])}; the patch size must not change while the pool is on.")
        if self.ptr < self.size:  # still filling: enqueue only
            self.lq[self.ptr: self.ptr + b] = lq
            self.gt[self.ptr: self.ptr + b] = gt
            self.ptr += b
            return lq, gt
        idx = torch.randperm(self.size, device=self.lq.device)
        self.lq, self.gt = self.lq[idx], self.gt[idx]
        out_lq, out_gt = self.lq[:b].clone(), self.gt[:b].clone()
        self.lq[:b], self.gt[:b] = lq, gt
        return out_lq, out_gt


def degrade_batch(degrader: RealESRGANDegradation, pool: Optional[TrainingPairPool], batch: Dict[str, Any],
                  gt_size: int, device: torch.device, sharpen_input: bool = True
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Everything Real-ESRGAN's ``feed_data`` does, on ``device``.

    Args:
        batch: ``{'gt': (b,3,P,P), 'kernel1', 'kernel2', 'sinc_kernel': (b,K,K)}`` from the dataset
            (P = crop_pad_size).
        gt_size: final GT patch (e.g. 256); the LQ patch is gt_size // scale.
        sharpen_input: degrade the USM-sharpened GT (Real-ESRGAN) or the plain GT (RealESRNet
            with ``gt_usm: false``).

    Returns:
        ``(lq, gt, gt_usm)``: (b,3,gt_size/s,gt_size/s), (b,3,gt_size,gt_size) twice; fp32 in [0,1].
    """
    gt = batch["gt"].to(device, non_blocking=True).float()
    k1, k2, sinc = (batch[k].to(device, non_blocking=True) for k in ("kernel1", "kernel2", "sinc_kernel"))
    lq = degrader(gt, k1, k2, sinc, sharpen_input=sharpen_input)
    gt, lq = paired_random_crop(gt, lq, gt_size, degrader.scale)  # tensors in, tensors out
    if pool is not None:
        lq, gt = pool(lq, gt)
    # Sharpen after the pool: the pool returns GT patches of other batches.
    gt_usm = degrader.sharpen(gt) if degrader.s.gt_usm else gt
    return lq.contiguous(), gt, gt_usm
