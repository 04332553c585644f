"""GAN super-resolution model: L1 + perceptual + adversarial losses, U-Net discriminator.

``net_g`` (e.g. VmambaIR) and ``net_d`` (e.g. basicsr's ``UNetDiscriminatorSN``) have their own
optimizers (``train.optim_g`` / ``train.optim_d``) and their own scheduler instances (both built
from ``train.scheduler``). One iteration ``t`` (basicsr / ESRGAN semantics):

* G step, when ``t % net_d_iters == 0 and t > net_d_init_iters``: ``sr = net_g(lq)`` (bf16
  autocast on capable GPUs), ``l_g = pixel(sr, gt) + perceptual(sr, gt) + gan(D(sr), real)``
  in fp32, with D's parameters frozen; optional gradient clipping; Adam step.
* D step, every iteration: ``gan(D(gt), real) + gan(D(sr.detach()), fake)``, fp32.
* EMA of ``net_g`` (``train.ema_decay``), every iteration as in basicsr.

Under DDP the G step runs D as the plain module (its parameters are frozen there, so no gradient
reduction of D is expected); the D step uses the DDP wrapper.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

import vmambair.compat  # noqa: F401  (before basicsr)
import vmambair.losses  # noqa: F401  (registers VGGPerceptualLoss)
from basicsr.utils.registry import MODEL_REGISTRY

from vmambair.engine.dist import DistContext
from vmambair.engine.inference import autocast_context
from vmambair.config import Options, OptionsError, build_from_spec

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

    def optimize_parameters(self, iteration: int) -> Dict[str, torch.Tensor]:
        net_d = self.networks["net_d"]
        pix_gt, percep_gt, gan_gt = self.loss_targets()
        losses: Dict[str, torch.Tensor] = {}

        # ---------------------------------------------------------------- generator
        if self.generator_updates_at(iteration):
            self._set_requires_grad("net_d", False)
            opt_g = self.optimizers["optim_g"]
            opt_g.zero_grad(set_to_none=True)
            with autocast_context(self.device, self.bf16):
                output = self.wrapped["net_g"](self.lq)
            output = output.float()  # losses and D in fp32
            l_pix = self.pixel_loss(output, pix_gt)
            total, losses["l_g_pix"] = l_pix, l_pix.detach()
            if self.perceptual_loss is not None:
                l_percep, l_style = self.perceptual_loss(output, percep_gt)
                if l_percep is not None:
                    total = total + l_percep
                    losses["l_g_percep"] = l_percep.detach()
                if l_style is not None:
                    total = total + l_style
                    losses["l_g_style"] = l_style.detach()
            l_g_gan = self.gan_loss(net_d(output), True, is_disc=False)
            total = total + l_g_gan
            losses["l_g_gan"] = l_g_gan.detach()
            total.backward()
            if self.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.networks["net_g"].parameters(), self.clip_grad_norm)
            opt_g.step()
            self._set_requires_grad("net_d", True)
        else:
            # D-only iteration: the fake images come from the plain network without a graph
            # (a DDP forward without backward would desynchronise the next reduction).
            with torch.no_grad(), autocast_context(self.device, self.bf16):
                output = self.networks["net_g"](self.lq).float()

        # ---------------------------------------------------------------- discriminator
        opt_d = self.optimizers["optim_d"]
        opt_d.zero_grad(set_to_none=True)
        real_pred = self.wrapped["net_d"](gan_gt)
        l_d_real = self.gan_loss(real_pred, True, is_disc=True)
        l_d_real.backward()
        fake_pred = self.wrapped["net_d"](output.detach().clone())
        l_d_fake = self.gan_loss(fake_pred, False, is_disc=True)
        l_d_fake.backward()
        opt_d.step()
        losses.update(l_d_real=l_d_real.detach(), l_d_fake=l_d_fake.detach(),
                      out_d_real=real_pred.detach().mean(), out_d_fake=fake_pred.detach().mean())

        if "net_g" in self.ema:
            self.ema["net_g"].update(self.networks["net_g"])
        return losses
