"""Learning-rate schedulers selectable by name in ``train.scheduler``.

basicsr 1.4.2 provides MultiStepRestartLR and CosineAnnealingRestartLR; Restormer's recipes
(and VmambaIR's deraining recipe) use a cyclic variant with one ``eta_min`` per cycle, which
basicsr lacks, so it is written here. All schedulers are stepped once per iteration and keep
only numbers in their ``state_dict`` (safe to resume with ``weights_only=True``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..config.registry import SCHEDULER_REGISTRY


class CosineAnnealingRestartCyclicLR(LRScheduler):
    """Cosine annealing in consecutive cycles, each with its own restart weight and floor.

    For iteration ``t`` in cycle ``i`` (which starts at ``s_i`` = sum of earlier periods and
    lasts ``periods[i]`` iterations)::

        lr = eta_mins[i] + restart_weights[i] * 0.5 * (base_lr - eta_mins[i])
                         * (1 + cos(pi * (t - s_i) / periods[i]))

    The deraining recipe uses periods [92000, 208000], restart_weights [1, 1] and eta_mins
    [3e-4, 1e-6]: a constant 3e-4 for the first 92k iterations, then a cosine decay to 1e-6.
    Past the last cycle the lr stays at its final value.

    Args:
        optimizer: the optimizer whose param groups are scheduled.
        periods: length of each cycle, in iterations.
        restart_weights: lr multiplier at the start of each cycle.
        eta_mins: lowest lr of each cycle.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, periods: Sequence[int],
                 restart_weights: Sequence[float] = (1,), eta_mins: Sequence[float] = (0,),
                 last_epoch: int = -1):
        if not (len(periods) == len(restart_weights) == len(eta_mins)):
            raise ValueError(f"CosineAnnealingRestartCyclicLR: periods {list(periods)}, restart_weights "
                             f"{list(restart_weights)} and eta_mins {list(eta_mins)} must have the same length.")
        self.periods = [int(p) for p in periods]
        self.restart_weights = [float(w) for w in restart_weights]
        self.eta_mins = [float(e) for e in eta_mins]
        self.cumulative_period = [sum(self.periods[: i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t = self.last_epoch
        idx = next((i for i, end in enumerate(self.cumulative_period) if t <= end), len(self.periods) - 1)
        start = 0 if idx == 0 else self.cumulative_period[idx - 1]
        progress = min(max(t - start, 0), self.periods[idx]) / self.periods[idx]
        weight, eta_min = self.restart_weights[idx], self.eta_mins[idx]
        return [eta_min + weight * 0.5 * (base - eta_min) * (1 + math.cos(math.pi * progress))
                for base in self.base_lrs]


def _register_schedulers() -> None:
    from basicsr.models.lr_scheduler import CosineAnnealingRestartLR, MultiStepRestartLR
    from torch.optim import lr_scheduler as torch_sched
    for cls in (CosineAnnealingRestartCyclicLR, CosineAnnealingRestartLR, MultiStepRestartLR,
                *(getattr(torch_sched, n) for n in ("MultiStepLR", "CosineAnnealingLR", "StepLR",
                                                    "ExponentialLR", "ConstantLR", "LinearLR"))):
        if cls.__name__ not in SCHEDULER_REGISTRY._obj_map:
            SCHEDULER_REGISTRY._do_register(cls.__name__, cls)


_register_schedulers()
