"""Single-network restoration model (deraining, denoising, deblurring, L1-stage SR).

One step: ``out = net_g(lq)`` under bf16 autocast (CUDA with bf16 only; the selective scan
itself runs in fp32), pixel loss against ``gt`` in fp32, backward, optional gradient-norm
clipping, optimizer step, optional EMA update. With ``train.cuda_graph`` on CUDA, forward, loss
and backward replay as one CUDA graph (vmambair.engine.cuda_graph.GraphedLossAndGrad).
"""
from __future__ import annotations

from typing import Any, Dict

import torch

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.utils.registry import MODEL_REGISTRY

from vmambair.engine.cuda_graph import GraphedLossAndGrad, GraphRecordingError
from vmambair.engine.dist import DistContext
from vmambair.engine.inference import autocast_context
from vmambair.config import Options, OptionsError, build_from_spec

from .base_model import BaseModel


@MODEL_REGISTRY.register()
class ImageRestorationModel(BaseModel):
    """``net_g`` trained with ``train.pixel_opt`` (e.g. L1), ``optim_g``, ``scheduler``."""

    def __init__(self, opt: Options, ctx: DistContext):
        super().__init__(opt, ctx)
        p = opt.path
        self.build_network("net_g", opt.network_g, p.pretrain_network_g, p.param_key_g, p.strict_load_g)
        if not self.is_train:
            return
        t = opt.train
        if t.pixel_opt is None:
            raise OptionsError("Option 'train.pixel_opt' is required by ImageRestorationModel "
                               "(e.g. {type: L1Loss, loss_weight: 1.0}).")
        self.pixel_loss = build_from_spec("loss", t.pixel_opt).to(self.device)
        self.enable_ema("net_g", t.ema_decay)
        self.wrap_for_training("net_g")
        self.build_optimizer("optim_g", "net_g", t.optim_g)
        self.build_scheduler("optim_g", t.scheduler)
        self.clip_grad_norm = t.clip_grad_norm
        self.bf16 = t.bf16
        self.train_mode()
        self.graphed_step = None
        if self.uses_cuda_graph:
            net = self.networks["net_g"]  # not the DDP wrapper: gradients are averaged after the replay
            self.graphed_step = GraphedLossAndGrad(lambda lq, gt: self.pixel_loss_of(net, lq, gt), net.parameters(),
                                                   flat_grads=self.ctx.distributed)

    def feed_data(self, batch: Dict[str, Any]) -> None:
        self.lq = batch["lq"].to(self.device, non_blocking=True)
        self.gt = batch["gt"].to(self.device, non_blocking=True) if "gt" in batch else None

    def pixel_loss_of(self, net, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Pixel loss of ``net(lq)`` (bf16 autocast where enabled) against ``gt``, in fp32."""
        with autocast_context(self.device, self.bf16):
            output = net(lq)
        return self.pixel_loss(output.float(), gt)

    def optimize_parameters(self, iteration: int) -> Dict[str, torch.Tensor]:
        optimizer = self.optimizers["optim_g"]
        if self.graphed_step is not None:
            try:
                loss = self.graphed_step(self.lq, self.gt).clone()  # the next replay rewrites it
            except GraphRecordingError as err:
                raise OptionsError(f"Option 'train.cuda_graph': {err} Train without it: set train.cuda_graph: false "
                                   "(or --set train.cuda_graph=false).") from err
            # Under torchrun the graph keeps every gradient in one flat buffer (flat_grads); on one
            # process flat_grad is None and there is nothing to average.
            self.ctx.all_reduce_mean_([self.graphed_step.flat_grad])
        else:
            optimizer.zero_grad(set_to_none=True)
            loss = self.pixel_loss_of(self.wrapped["net_g"], self.lq, self.gt)
            loss.backward()
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.networks["net_g"].parameters(), self.clip_grad_norm)
        optimizer.step()
        if "net_g" in self.ema:
            self.ema["net_g"].update(self.networks["net_g"])
        return {"l_pix": loss.detach()}
