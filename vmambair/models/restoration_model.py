"""Single-network restoration model (deraining, denoising, deblurring, L1-stage SR).

One optimizer step (``train.accumulate`` = K micro-batches): for each micro-batch, ``out =
net_g(lq)`` under autocast in ``train.precision`` (bf16 / fp16 on CUDA; the selective scan itself
runs in fp32), pixel loss against ``gt`` in fp32, backward of ``loss / K`` (times the fp16 loss
scale); then unscale, optional gradient-norm clipping, a finiteness check (a non-finite loss or
gradient skips the step: the NaN guard), optimizer step, optional EMA update. With
``train.cuda_graph`` on CUDA, each micro-batch's forward, loss and backward replay as one CUDA
graph (vmambair.engine.cuda_graph.GraphedLossAndGrad); its gradients are summed outside the graph.
Under DDP, gradients are averaged over processes only after the last micro-batch.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional

import torch

import vmambair.compat  # noqa: F401  (before basicsr)
from basicsr.utils.registry import MODEL_REGISTRY

from vmambair.engine.cuda_graph import GraphedLossAndGrad, GraphRecordingError
from vmambair.engine.dist import DistContext
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
        self.bf16 = self.precision == "bf16"
        self.train_mode()
        self.graphed_step = None
        # The backward inside the graph is of loss x this buffer (1/K, times the fp16 loss
        # scale), refreshed before each replay: the graph reads it, it never changes address.
        self.graph_multiplier = torch.ones((), device=self.device)
        self.grad_sum = None  # sum of the earlier micro-batches' flat gradients (graphed accumulation)
        if self.uses_cuda_graph:
            net = self.networks["net_g"]  # not the DDP wrapper: gradients are averaged after the replay
            # One flat gradient buffer when gradients are all-reduced or summed over micro-batches.
            self.graphed_step = GraphedLossAndGrad(lambda lq, gt: self.pixel_loss_of(net, lq, gt), net.parameters(),
                                                   flat_grads=self.ctx.distributed or self.accumulate > 1,
                                                   loss_multiplier=self.graph_multiplier)

    def feed_data(self, batch: Dict[str, Any]) -> None:
        self.lq = batch["lq"].to(self.device, non_blocking=True)
        self.gt = batch["gt"].to(self.device, non_blocking=True) if "gt" in batch else None

    def pixel_target(self) -> torch.Tensor:
        """The pixel loss's target for the fed batch (the real-world model may sharpen it)."""
        return self.gt

    def pixel_loss_of(self, net, lq: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Pixel loss of ``net(lq)`` (autocast in train.precision) against ``gt``, in fp32."""
        with self.autocast():
            output = net(lq)
        return self.pixel_loss(output.float(), gt)

    def _graphed_micro_step(self, index: int, count: int) -> torch.Tensor:
        """Replay the graph for the fed micro-batch ``index`` of ``count``; sum the gradients."""
        try:
            loss = self.graphed_step(self.lq, self.pixel_target()).clone()  # the next replay rewrites it
        except GraphRecordingError as err:
            raise OptionsError(f"Option 'train.cuda_graph': {err} Train without it: set train.cuda_graph: false "
                               "(or --set train.cuda_graph=false).") from err
        if count > 1:
            # Each replay rewrites the gradients: keep the running sum beside them, and fold it
            # into the graph's buffers after the last micro-batch (p.grad then holds the sum).
            # With flat_grads (set up whenever train.accumulate > 1) that is one tensor.
            flat = self.graphed_step.flat_grad
            grads = [flat] if flat is not None else [p.grad for p in self.graphed_step.params if p.grad is not None]
            if index == 0:
                if self.grad_sum is None or [g.shape for g in self.grad_sum] != [g.shape for g in grads]:
                    self.grad_sum = [torch.empty_like(g) for g in grads]
                torch._foreach_copy_(self.grad_sum, grads)
            elif index < count - 1:
                torch._foreach_add_(self.grad_sum, grads)
            else:
                torch._foreach_add_(grads, self.grad_sum)
        return loss

    def optimize_parameters(self, iteration: int, micro_batches: Optional[List[Dict[str, Any]]] = None
                            ) -> Dict[str, torch.Tensor]:
        """One optimizer step over ``micro_batches`` (each fed with :meth:`feed_data` in turn), or
        over the batch already fed when None. Returns ``{'l_pix': mean loss}`` (detached);
        sets :attr:`step_skipped` when a non-finite loss or gradient skipped the step."""
        batches = micro_batches if micro_batches else [None]
        count = len(batches)
        multiplier = self.backward_multiplier(count)
        losses = []
        if self.graphed_step is not None:
            if torch.is_tensor(multiplier):
                self.graph_multiplier.copy_(multiplier)
            else:
                self.graph_multiplier.fill_(multiplier)
        else:
            self.optimizers["optim_g"].zero_grad(set_to_none=True)
        net = self.wrapped["net_g"]
        for index, batch in enumerate(batches):
            if batch is not None:
                self.feed_data(batch)
            if self.graphed_step is not None:
                losses.append(self._graphed_micro_step(index, count))
                continue
            # DDP: no all-reduce until the last micro-batch (gradients accumulate locally).
            sync = index == count - 1 or not hasattr(net, "no_sync")
            with contextlib.nullcontext() if sync else net.no_sync():
                loss = self.pixel_loss_of(net, self.lq, self.pixel_target())
                (loss.backward() if isinstance(multiplier, float) and multiplier == 1.0
                 else (loss * multiplier).backward())
            losses.append(loss.detach())
        if self.graphed_step is not None:
            # Under torchrun the graph keeps every gradient in one flat buffer (flat_grads); on one
            # process flat_grad is None or there is nothing to average.
            self.ctx.all_reduce_mean_([self.graphed_step.flat_grad])
        loss = torch.stack(losses).mean() if count > 1 else losses[0]
        loss_finite = torch.isfinite(loss)
        finite = self.finish_gradients("optim_g", self.networks["net_g"].parameters(), loss_finite,
                                       self.clip_grad_norm)
        # The skip is decided on the device (no host synchronisation with a fused optimizer).
        self.step_optimizer("optim_g", finite)
        if "net_g" in self.ema:
            self.ema["net_g"].update(self.networks["net_g"], enabled=finite)
        self.record_step(finite, loss_finite)
        return {"l_pix": loss}
