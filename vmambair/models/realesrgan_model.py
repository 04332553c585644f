"""Real-world SR models: Real-ESRGAN's degradation synthesised in ``feed_data`` on the device.

* ``RealSRNetModel``: stage 1, L1 only (Real-ESRGAN's "RealESRNet"), L1 target USM-sharpened
  when ``degradation.gt_usm``.
* ``RealSRGANModel``: stage 2, L1 + perceptual + GAN (see SRGANRestorationModel), targets
  USM-sharpened per ``degradation.{l1,percep,gan}_gt_usm``.

Training batches come from ``RealESRGANGTDataset`` (GT + kernels); ``feed_data`` turns them into
(lq, gt) pairs with :func:`vmambair.data.degradation.degrade_batch`: fp32 with autocast
disabled (the autocast of the step only wraps the networks), no gradients, then the final
``gt_size`` crop and the training-pair pool. The random choices of each batch come from a seed
of (manual_seed, rank, batch count): different on every GPU, replayed on resume (the pool's
contents are not saved: a resumed run refills it). Batches that already hold ``lq`` (paired
data) are used as they are.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.utils.registry import MODEL_REGISTRY

from vmambair.data.degradation import (DegradationError, RealESRGANDegradation, TrainingPairPool,
                                       degrade_batch, parse_degradation, seeded_global_rngs)
from vmambair.engine.dist import DistContext
from vmambair.config import Options, OptionsError

from .restoration_model import ImageRestorationModel
from .sr_gan_model import SRGANRestorationModel


class RealDegradationMixin:
    """Adds Real-ESRGAN synthesis to a model's ``feed_data``."""

    def setup_degradation(self) -> None:
        ds = self.opt.datasets.get("train")
        if ds is None:
            raise OptionsError(f"{type(self).__name__} needs 'datasets.train' (type RealESRGANGTDataset).")
        try:
            self.degradation = parse_degradation(ds.degradation)
        except DegradationError as err:
            raise OptionsError(str(err)) from None
        self.degrader = RealESRGANDegradation(self.degradation, self.opt.scale).to(self.device)
        q = self.degradation.queue_size
        batches = ds.mini_batch_sizes or [ds.batch_size_per_gpu]
        if q > 0 and any(q % b for b in batches):
            b = next(b for b in batches if q % b)
            raise OptionsError(f"Option 'datasets.train.degradation.queue_size' ({q}) must be a multiple of the "
                               f"per-GPU batch size ({b}) for the training-pair pool, e.g. {b * max(1, q // b)}; "
                               f"or 0 to turn the pool off.")
        self.pool = TrainingPairPool(q) if q > 0 else None
        self.gt_usm = None
        # Real-ESRGAN degrades the USM-sharpened GT; RealESRNet does so only with gt_usm.
        self.sharpen_input = True
        self.degraded_batches = 0  # seeds the degradation of the next batch (saved in training states)

    def degradation_seed(self) -> int:
        """Seed of the next batch's degradation: differs per rank and per batch, same on resume."""
        return ((self.opt.manual_seed * 1_000_003 + self.ctx.rank) * 10_000_019 + self.degraded_batches) % (2 ** 63)

    def feed_data(self, batch: Dict[str, Any]) -> None:
        """``{'gt': (b,3,P,P), 'kernel1', 'kernel2', 'sinc_kernel': (b,K,K)}`` -> ``self.lq``
        (b,3,g/s,g/s), ``self.gt`` and ``self.gt_usm`` (b,3,g,g), g = datasets.train.gt_size."""
        if "kernel1" not in batch:  # paired data (e.g. fine-tuning on real pairs)
            super().feed_data(batch)
            self.gt_usm = self.degrader.sharpen(self.gt) if self.gt is not None else None
            return
        gt_size = self.opt.datasets["train"].gt_size
        with seeded_global_rngs(self.degradation_seed(), torch_device=self.device):
            self.lq, self.gt, self.gt_usm = degrade_batch(self.degrader, self.pool, batch, gt_size, self.device,
                                                          sharpen_input=self.sharpen_input)
        self.degraded_batches += 1

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["degraded_batches"] = getattr(self, "degraded_batches", 0)
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.degraded_batches = int(state.get("degraded_batches", 0))


@MODEL_REGISTRY.register()
class RealSRNetModel(RealDegradationMixin, ImageRestorationModel):
    """Stage 1 of real-world SR: L1 on synthesised pairs (Real-ESRGAN's RealESRNet)."""

    def __init__(self, opt: Options, ctx: DistContext):
        super().__init__(opt, ctx)
        if self.is_train:
            self.setup_degradation()
            self.sharpen_input = self.degradation.gt_usm

    def pixel_target(self) -> torch.Tensor:
        # The L1 target is the USM-sharpened GT when degradation.gt_usm (Real-ESRNet's gt_usm).
        if self.degradation.gt_usm and self.gt_usm is not None:
            return self.gt_usm
        return self.gt


@MODEL_REGISTRY.register()
class RealSRGANModel(RealDegradationMixin, SRGANRestorationModel):
    """Stage 2 of real-world SR: GAN training on synthesised pairs (Real-ESRGAN)."""

    def __init__(self, opt: Options, ctx: DistContext):
        super().__init__(opt, ctx)
        if self.is_train:
            self.setup_degradation()

    def loss_targets(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s, usm = self.degradation, self.gt_usm if self.gt_usm is not None else self.gt
        return (usm if s.l1_gt_usm else self.gt, usm if s.percep_gt_usm else self.gt,
                usm if s.gan_gt_usm else self.gt)
