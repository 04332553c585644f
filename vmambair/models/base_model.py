"""Base class of trainable models: named networks, optimizers, schedulers and EMA copies.

A model owns any number of networks (``net_g``; a GAN adds ``net_d``), each with its optimizer
and scheduler, and knows how to (de)serialise all of it into a training state made only of
tensors and primitives. The trainer (vmambair.apps.train) drives it through:

    model.feed_data(batch)                   # {'lq': (b,3,h,w), 'gt': (b,3,h*s,w*s), ...}
    losses = model.optimize_parameters(it)   # {'l_pix': tensor, ...} (detached, not yet synced)
    model.update_learning_rate(it)
    model.inference_network()                # network used for validation (EMA if enabled)
    model.state_dict() / load_state_dict()   # everything needed to resume
    model.save_weights(models_dir, it)

A GAN model subclasses this, builds ``net_d`` with :meth:`build_network` and ``optim_d`` with
:meth:`build_optimizer`, and overrides :meth:`optimize_parameters`.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vmambair.engine.checkpoint import load_into_network, save_network
from vmambair.engine.compiling import compile_ahead, compile_network, is_compiled
from vmambair.engine.dist import DistContext
from vmambair.config import Options, OptionsError, build_from_spec
from vmambair.engine.inference import autocast_context
from vmambair.engine.portable import training_metadata


class ModelEMA:
    """Exponential moving average of a network's weights: ``ema = decay*ema + (1-decay)*w``.

    Buffers (e.g. BatchNorm statistics) are copied, not averaged.
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, enabled: Optional[torch.Tensor] = None) -> None:
        """Move the average towards ``net``; ``enabled`` (0-dim bool tensor): only when true,
        decided on the device (a false one leaves every average exactly as it was)."""
        ema_state = self.module.state_dict()
        weight = 1.0 - self.decay
        if enabled is not None:
            weight = enabled.float() * weight
        for name, value in net.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.detach(), weight if isinstance(weight, float) else weight.to(target.dtype))
            else:
                target.copy_(value)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def train_precision(train) -> str:
    """``train.precision`` ('bf16', 'fp16' or 'fp32'), falling back on the old ``train.bf16``
    when options were built without :func:`vmambair.config.load_options`."""
    if train is None:
        return "fp32"
    if getattr(train, "precision", None):
        return train.precision
    return "fp32" if getattr(train, "bf16", True) is False else "bf16"


def check_precision_supported(precision: str, device: torch.device) -> None:
    """Refuse bf16 on a CUDA card without native bf16 (before Ampere): autocast would emulate it
    slowly or not at all, and a silent fp32 run is not what the options asked for.

    Raises:
        OptionsError: one line that names the card and suggests fp16.
    """
    if precision == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        name = torch.cuda.get_device_name(device)
        raise OptionsError(f"Option 'train.precision' is bf16, but {name} has no bf16 support (compute capability "
                           f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))} < 8.0): use fp16 on this "
                           f"card (--set train.precision=fp16), or fp32.")


class StepOutcome:
    """Whether one optimizer step was skipped (and whether only for an fp16 overflow), read back
    from the device without stalling it: the flags are copied to pinned host memory behind the
    step, and reading waits for that step only, not for work queued after it."""

    def __init__(self, skipped: torch.Tensor, overflow: torch.Tensor):
        flags = torch.stack([skipped, overflow])
        self._event = None
        if flags.is_cuda:
            self._host = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
            self._host.copy_(flags, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = flags
        self._values = None

    def values(self):
        """(skipped, fp16_overflow) as Python bools."""
        if self._values is None:
            if self._event is not None:
                self._event.synchronize()
            self._values = tuple(bool(v) for v in self._host.tolist())
        return self._values


def tensors_are_finite(tensors) -> torch.Tensor:
    """One 0-dim bool tensor on the tensors' device: every element of every tensor is finite
    (None entries are ignored). No host synchronisation."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.tensor(True)
    norms = torch._foreach_norm([t.detach().float() for t in tensors], float("inf"))
    return torch.isfinite(torch.stack(norms)).all()


class BaseModel:
    """Holds networks / optimizers / schedulers / EMA by name; subclasses define the step.

    Args:
        opt: validated options.
        ctx: distributed context (device, rank, world size).
    """

    vmambair_model = True  # drives our trainer loop: options may name it

    def __init__(self, opt: Options, ctx: DistContext):
        self.opt = opt
        self.ctx = ctx
        self.device = ctx.device
        self.is_train = opt.is_train
        self.networks: Dict[str, nn.Module] = {}      # plain modules (saved, validated)
        self.wrapped: Dict[str, nn.Module] = {}       # DDP wrappers used for training forwards
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.schedulers: Dict[str, Any] = {}
        self.ema: Dict[str, ModelEMA] = {}
        t = opt.train if self.is_train else None
        self.precision = train_precision(t)
        self.accumulate = max(1, int(getattr(t, "accumulate", 1) or 1)) if t is not None else 1
        # fp16 gradients underflow without loss scaling; bf16 / fp32 need none. One scaler serves
        # every optimizer that trains an autocast network (net_g; the GAN's D runs in fp32).
        self.scaler = None
        if self.is_train and self.precision == "fp16" and self.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")
        self.last_outcome: Optional[StepOutcome] = None  # of the last optimize_parameters
        if self.is_train:
            check_precision_supported(self.precision, self.device)

    def autocast(self):
        """Autocast of network forwards in ``train.precision`` (CUDA only; fp32 elsewhere)."""
        dtype = AUTOCAST_DTYPES[self.precision]
        return autocast_context(self.device, dtype is not None, dtype or torch.bfloat16)

    @property
    def autocast_bf16(self) -> bool:
        """Whether validation during training runs in bf16 (only when training does)."""
        return self.precision == "bf16"

    def backward_multiplier(self, micro_batches: int):
        """What a micro-batch's loss is multiplied by before its backward: ``1 / micro_batches``
        (gradients of the mean over the accumulated batch) times the fp16 loss scale. A Python
        float without a scaler; else a 0-dim CUDA tensor (no host synchronisation)."""
        if self.scaler is None:
            return 1.0 / micro_batches
        return self.scaler.scale(torch.ones((), device=self.device)) / micro_batches

    def finish_gradients(self, optimizer_name: str, params, loss_finite: torch.Tensor,
                         clip: Optional[float] = None) -> torch.Tensor:
        """Prepare the accumulated gradients of ``params`` for ``optimizer_name``'s step: unscale
        (fp16), clip the norm (``clip``), and return a 0-dim bool tensor: loss and gradients finite."""
        params = [p for p in params if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizers[optimizer_name])
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            finite = torch.isfinite(norm)
        else:
            finite = tensors_are_finite([p.grad for p in params])
        return finite & loss_finite.to(finite.device)

    def step_optimizer(self, optimizer_name: str, finite: torch.Tensor) -> None:
        """The optimizer step when ``finite`` (0-dim bool tensor) is true; skipped otherwise (the
        weights and optimizer moments stay those of the last good step).

        Optimizers that take a ``found_inf`` flag (fused Adam / AdamW / SGD, the default on CUDA)
        skip on the device, with no host synchronisation; others read the flag first. The
        gradients are already unscaled (fp16), so the scaler's own ``step`` adds nothing here.
        """
        optimizer = self.optimizers[optimizer_name]
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            optimizer.grad_scale, optimizer.found_inf = None, (~finite).float()  # 0-dim, as GradScaler makes it
            try:
                optimizer.step()
            finally:
                del optimizer.grad_scale, optimizer.found_inf
        elif bool(finite):
            optimizer.step()

    def record_step(self, finite: torch.Tensor, loss_finite: torch.Tensor, scaler_used: bool = True) -> None:
        """Keep the step's outcome (:attr:`last_outcome`, read later without stalling the GPU) and
        update the fp16 loss scale.

        In fp16 a finite loss with overflowing gradients is the scaler's business (it halves the
        scale and the next steps go on): such a step counts as an overflow, not as non-finite,
        while the scale is above 1. Below that, scaling is not the problem and it counts.
        """
        skipped = ~finite.to(self.device)
        overflow = torch.zeros((), dtype=torch.bool, device=self.device)
        if self.scaler is not None and scaler_used:
            scale_above_one = self.scaler.scale(torch.ones((), device=self.device)) > 1.0  # before update()
            overflow = skipped & loss_finite.to(self.device) & scale_above_one
            self.scaler.update()
        self.last_outcome = StepOutcome(skipped, overflow)

    @property
    def step_skipped(self) -> bool:
        """The last optimize_parameters skipped its step (non-finite loss or gradient). Reading
        it waits for that step to finish on the device."""
        return self.last_outcome is not None and self.last_outcome.values()[0]

    @property
    def fp16_overflow(self) -> bool:
        """... and only because of an fp16 gradient overflow, which the loss scaler handles."""
        return self.last_outcome is not None and self.last_outcome.values()[1]

    @property
    def uses_cuda_graph(self) -> bool:
        """``train.cuda_graph`` is on and the model trains on a CUDA device."""
        t = self.opt.train
        return bool(self.is_train and t is not None and t.cuda_graph and self.device.type == "cuda")

    # ------------------------------------------------------------------ construction helpers
    def build_network(self, name: str, spec: Dict[str, Any], pretrained: Optional[str] = None,
                      param_key: str = "params", strict: bool = True) -> nn.Module:
        """Instantiate ``spec`` from ARCH_REGISTRY, load ``pretrained`` weights, register as ``name``."""
        net = build_from_spec("arch", spec)
        if pretrained:
            load_into_network(net, pretrained, key=param_key, strict=strict)
        net = net.to(self.device)
        self.networks[name] = net
        self.wrapped[name] = net
        return net

    def wrap_for_training(self, name: str) -> nn.Module:
        """Wrap network ``name`` in DDP when running distributed (after EMA copies are made).

        With ``train.compile`` on a CUDA device, network_g is compiled in place (its
        ``compile_blocks`` when it has one, else ``nn.Module.compile``): parameter names and
        checkpoints stay as they are.
        """
        net = self.networks[name]
        if name == "net_g" and self.opt.train is not None and self.opt.train.compile and self.device.type == "cuda":
            compile_network(net)  # batch/height/width dynamic: no recompile per stage
        if self.ctx.distributed and name == "net_g" and self.uses_cuda_graph:
            # DDP's gradient hooks cannot run inside a recorded graph: start from rank 0's weights
            # as DDP would, and average the gradients after each replay (ImageRestorationModel).
            self.ctx.broadcast_([*net.parameters(), *net.buffers()])
        elif self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped[name] = DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)
        return self.wrapped[name]

    def compile_ahead(self, lq_shape: Sequence[int]) -> bool:
        """Compile ``net_g``'s training graphs for inputs of ``lq_shape`` (b, c, h, w) now
        (:func:`vmambair.engine.compiling.compile_ahead`: nothing else changes). Returns False,
        doing nothing, unless net_g is compiled."""
        net = self.networks["net_g"]
        if not is_compiled(net):
            return False
        compile_ahead(net, lq_shape, self.autocast)
        return True

    def build_optimizer(self, name: str, net_name: str, spec: Dict[str, Any]) -> torch.optim.Optimizer:
        params = [p for p in self.networks[net_name].parameters() if p.requires_grad]
        if self.device.type == "cuda" and spec["type"] in ("Adam", "AdamW") and "fused" not in spec:
            spec = {**spec, "fused": True}  # one kernel per step instead of a launch per tensor group
        optimizer = build_from_spec("optim", spec, params)
        self.optimizers[name] = optimizer
        return optimizer

    def build_scheduler(self, optimizer_name: str, spec: Optional[Dict[str, Any]]) -> None:
        if spec is not None:
            self.schedulers[optimizer_name] = build_from_spec("scheduler", spec, self.optimizers[optimizer_name])

    def enable_ema(self, net_name: str, decay: float) -> None:
        if decay and decay > 0:
            self.ema[net_name] = ModelEMA(self.networks[net_name], decay)

    # ------------------------------------------------------------------ interface
    def feed_data(self, batch: Dict[str, Any]) -> None:
        raise NotImplementedError

    def optimize_parameters(self, iteration: int) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def inference_network(self, use_ema: bool = True) -> nn.Module:
        """The network to validate / test: EMA copy of ``net_g`` when enabled."""
        if use_ema and "net_g" in self.ema:
            return self.ema["net_g"].module
        return self.networks["net_g"]

    def update_learning_rate(self, iteration: int) -> None:
        """Step every scheduler once; apply linear warm-up for ``train.warmup_iter`` iterations."""
        for scheduler in self.schedulers.values():
            scheduler.step()
        warmup = self.opt.train.warmup_iter if self.opt.train else -1
        if warmup and warmup > 0 and iteration < warmup:
            for name, optimizer in self.optimizers.items():
                lrs = (self.schedulers[name].get_last_lr() if name in self.schedulers
                       else [g["initial_lr"] if "initial_lr" in g else g["lr"] for g in optimizer.param_groups])
                for group, lr in zip(optimizer.param_groups, lrs):
                    group["lr"] = lr * (iteration + 1) / warmup

    def current_learning_rate(self) -> float:
        first = next(iter(self.optimizers.values()))
        return first.param_groups[0]["lr"]

    def train_mode(self) -> None:
        for net in self.networks.values():
            net.train()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Networks, EMA copies, optimizers and schedulers (tensors and primitives only)."""
        return {
            "networks": {k: v.state_dict() for k, v in self.networks.items()},
            "ema": {k: v.state_dict() for k, v in self.ema.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for k, sd in state["networks"].items():
            self.networks[k].load_state_dict(sd)
        for k, sd in state.get("ema", {}).items():
            if k in self.ema:
                self.ema[k].load_state_dict(sd)
        for k, sd in state["optimizers"].items():
            self.optimizers[k].load_state_dict(sd)
        for k, sd in state.get("schedulers", {}).items():
            if k in self.schedulers:
                self.schedulers[k].load_state_dict(sd)
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])

    def save_weights(self, models_dir: str | Path, iteration: int, safetensors: bool = False) -> None:
        """Write ``net_<x>_<iter>.pth`` and ``net_<x>_latest.pth`` ({'params', 'params_ema'})."""
        for name, net in self.networks.items():
            payload = {"params": net}
            if name in self.ema:
                payload["params_ema"] = self.ema[name].module
            for tag in (str(iteration), "latest"):
                save_network(payload, Path(models_dir) / f"{name}_{tag}.pth", safetensors=safetensors,
                             metadata=training_metadata(self.opt, name, iteration) if safetensors else None)
