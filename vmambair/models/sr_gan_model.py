"""GAN super-resolution model: L1 + perceptual + adversarial losses, U-Net discriminator.

``net_g`` (e.g. VmambaIR) and ``net_d`` (e.g. basicsr's ``UNetDiscriminatorSN``) have their own
optimizers (``train.optim_g`` / ``train.optim_d``) and their own scheduler instances (both built
from ``train.scheduler``). One iteration ``t`` (basicsr / ESRGAN semantics):

* G step, when ``t % net_d_iters == 0 and t > net_d_init_iters``: ``sr = net_g(lq)`` (autocast
  in train.precision on CUDA), ``l_g = pixel(sr, gt) + perceptual(sr, gt) + gan(D(sr), real)``
  in fp32, with D's parameters frozen; optional gradient clipping; Adam step (fp16: through the
  gradient scaler).
* D step, every iteration: ``gan(D(gt), real) + gan(D(sr.detach()), fake)``, fp32.
* EMA of ``net_g`` (``train.ema_decay``), every iteration as in basicsr.

With ``train.accumulate`` = K, both steps average their gradients over K micro-batches: G's
backward runs for every micro-batch (outputs kept, detached), then D's. A non-finite loss or
gradient skips that network's step (the NaN guard).

Under DDP the G step runs D as the plain module (its parameters are frozen there, so no gradient
reduction of D is expected); the D step uses the DDP wrapper.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Tuple

import torch

import vmambair.compat  # noqa: F401  (before basicsr)
import vmambair.losses  # noqa: F401  (registers VGGPerceptualLoss)
from basicsr.utils.registry import MODEL_REGISTRY

from vmambair.engine.dist import DistContext
from vmambair.config import Options, OptionsError, build_from_spec

from .base_model import tensors_are_finite
from .restoration_model import ImageRestorationModel


@MODEL_REGISTRY.register()
class SRGANRestorationModel(ImageRestorationModel):
    """Paired-data GAN model (bicubic x4 SR stage 2; also the base of the real-world GAN model).

    Options used: ``network_d``; ``path.pretrain_network_d`` / ``param_key_d`` / ``strict_load_d``;
    ``train.{optim_d, pixel_opt, perceptual_opt, gan_opt, net_d_iters, net_d_init_iters}``.
    """

    def __init__(self, opt: Options, ctx: DistContext):
        if opt.is_train and opt.train is not None and opt.train.cuda_graph:
            raise OptionsError(f"Option 'train.cuda_graph' is not supported by {type(self).__name__} (a GAN step "
                               "alternates two networks and optimizers); remove it, and use 'train.compile: true' "
                               "for speed.")
        super().__init__(opt, ctx)  # net_g, pixel loss, EMA, optim_g, its scheduler
        if not self.is_train:
            return
        t, p = opt.train, opt.path
        for key in ("network_d", "train.optim_d", "train.gan_opt"):
            section, _, name = key.rpartition(".")
            holder = getattr(opt, section) if section else opt
            if getattr(holder, name) is None:
                raise OptionsError(f"Option '{key}' is required by {type(self).__name__} (see options/sr_x4_gan.yml).")
        if t.net_d_iters < 1 or t.net_d_init_iters < 0:
            raise OptionsError("Options 'train.net_d_iters' must be >= 1 and 'train.net_d_init_iters' >= 0.")
        self.build_network("net_d", opt.network_d, p.pretrain_network_d, p.param_key_d, p.strict_load_d)
        self.wrap_for_training("net_d")
        self.build_optimizer("optim_d", "net_d", t.optim_d)
        self.build_scheduler("optim_d", t.scheduler)
        self.perceptual_loss = (build_from_spec("loss", t.perceptual_opt).to(self.device)
                                if t.perceptual_opt is not None else None)
        self.gan_loss = build_from_spec("loss", t.gan_opt).to(self.device)
        self.net_d_iters, self.net_d_init_iters = t.net_d_iters, t.net_d_init_iters
        self.train_mode()

    def loss_targets(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ground truth seen by the (pixel, perceptual, GAN) losses. Paired SR: ``gt`` for all;
        the real-world model substitutes the USM-sharpened GT where configured."""
        return self.gt, self.gt, self.gt

    def generator_updates_at(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (1-based) updates G (D is updated every iteration)."""
        return iteration % self.net_d_iters == 0 and iteration > self.net_d_init_iters

    def _set_requires_grad(self, name: str, flag: bool) -> None:
        for param in self.networks[name].parameters():
            param.requires_grad_(flag)

    def _generator_loss(self, net_g, net_d, pix_gt, percep_gt) -> Tuple[torch.Tensor, torch.Tensor,
                                                                           Dict[str, torch.Tensor]]:
        """``sr = net_g(lq)`` (autocast) and G's total loss in fp32 -> (sr, total, detached parts)."""
        with self.autocast():
            output = net_g(self.lq)
        output = output.float()  # losses and D in fp32
        l_pix = self.pixel_loss(output, pix_gt)
        total, parts = l_pix, {"l_g_pix": l_pix.detach()}
        if self.perceptual_loss is not None:
            l_percep, l_style = self.perceptual_loss(output, percep_gt)
            if l_percep is not None:
                total = total + l_percep
                parts["l_g_percep"] = l_percep.detach()
            if l_style is not None:
                total = total + l_style
                parts["l_g_style"] = l_style.detach()
        l_g_gan = self.gan_loss(net_d(output), True, is_disc=False)
        parts["l_g_gan"] = l_g_gan.detach()
        return output, total + l_g_gan, parts

    def optimize_parameters(self, iteration: int, micro_batches: Optional[List[Dict[str, Any]]] = None
                            ) -> Dict[str, torch.Tensor]:
        """One G step (when due) and one D step over ``micro_batches`` (K accumulated batches, each
        fed in turn; None: the batch already fed). G's gradients go through the fp16 loss scaler
        when train.precision is fp16; D runs in fp32 and needs none. A non-finite loss or gradient
        skips the step of the network it belongs to (:attr:`step_skipped`)."""
        batches = micro_batches if micro_batches else [None]
        count = len(batches)
        losses: Dict[str, List[torch.Tensor]] = {}
        update_g = self.generator_updates_at(iteration)
        fakes = []  # (detached output, GAN target) of each micro-batch, for the D step

        # ---------------------------------------------------------------- generator
        if update_g:
            self._set_requires_grad("net_d", False)
            self.optimizers["optim_g"].zero_grad(set_to_none=True)
            multiplier = self.backward_multiplier(count)
        net_g = self.wrapped["net_g"]
        for index, batch in enumerate(batches):
            if batch is not None:
                self.feed_data(batch)
            pix_gt, percep_gt, gan_gt = self.loss_targets()
            if update_g:
                sync = index == count - 1 or not hasattr(net_g, "no_sync")
                with contextlib.nullcontext() if sync else net_g.no_sync():
                    output, total, parts = self._generator_loss(net_g, self.networks["net_d"], pix_gt, percep_gt)
                    (total * multiplier).backward()
                for k, v in parts.items():
                    losses.setdefault(k, []).append(v)
                losses.setdefault("_g_total", []).append(total.detach())
            else:
                # D-only iteration: the fake images come from the plain network (a DDP forward
                # without backward would desynchronise the next reduction).
                with torch.no_grad(), self.autocast():
                    output = self.networks["net_g"](self.lq).float()
            fakes.append((output.detach(), gan_gt))
        yes = torch.ones((), dtype=torch.bool, device=self.device)
        g_finite, g_loss_finite = yes, yes
        if update_g:
            g_loss_finite = torch.isfinite(torch.stack(losses.pop("_g_total")).sum())
            g_finite = self.finish_gradients("optim_g", self.networks["net_g"].parameters(), g_loss_finite,
                                             self.clip_grad_norm)
            self._set_requires_grad("net_d", True)

        # ---------------------------------------------------------------- discriminator
        opt_d, net_d = self.optimizers["optim_d"], self.wrapped["net_d"]
        opt_d.zero_grad(set_to_none=True)
        for index, (fake, gan_gt) in enumerate(fakes):
            sync = index == count - 1 or not hasattr(net_d, "no_sync")
            with contextlib.nullcontext() if sync else net_d.no_sync():
                real_pred = net_d(gan_gt)
                l_d_real = self.gan_loss(real_pred, True, is_disc=True)
                (l_d_real / count).backward()
                fake_pred = net_d(fake.clone())
                l_d_fake = self.gan_loss(fake_pred, False, is_disc=True)
                (l_d_fake / count).backward()
            for k, v in (("l_d_real", l_d_real), ("l_d_fake", l_d_fake), ("out_d_real", real_pred.mean()),
                         ("out_d_fake", fake_pred.mean())):
                losses.setdefault(k, []).append(v.detach())
        d_loss_finite = torch.isfinite(torch.stack(losses["l_d_real"] + losses["l_d_fake"]).sum())
        d_params = [p for p in self.networks["net_d"].parameters() if p.grad is not None]
        d_finite = tensors_are_finite([p.grad for p in d_params]).to(self.device) & d_loss_finite

        # Each skip is decided on the device (no host synchronisation with fused optimizers).
        if update_g:
            self.step_optimizer("optim_g", g_finite)
        self.step_optimizer("optim_d", d_finite)
        if "net_g" in self.ema:
            self.ema["net_g"].update(self.networks["net_g"], enabled=g_finite)
        self.record_step(g_finite & d_finite, g_loss_finite & d_finite, scaler_used=update_g)
        return {k: torch.stack(v).mean() if len(v) > 1 else v[0] for k, v in losses.items()}
