"""FLOP counting for VmambaIR-style networks.

Convention (the paper's, via fvcore): one multiply-add = one FLOP. Counted: convolutions and
linear layers (k*k*c_in/groups*c_out per output pixel), the x/dt projections of the scans
(einsums), and each selective scan of (batch b, channels d, length L, state N) as
9*b*d*L*N + b*d*L. Not counted: normalisation, activations, element-wise products and sums,
pooling, pixel (un)shuffle, interpolation (fvcore ignores these too).
"""
import contextlib
import threading

import torch
import torch.nn as nn

_state = threading.local()


def add(n: int) -> None:
    """Add n FLOPs to the active counter (no-op when none is active)."""
    counter = getattr(_state, "counter", None)
    if counter is not None:
        counter[0] += int(n)


def add_scan(b: int, d: int, L: int, N: int) -> None:
    """Count one selective scan of (b, d, L, N)."""
    add(9 * b * d * L * N + b * d * L)


def shapes_only() -> bool:
    """True inside count_flops: scans may return zeros, since FLOPs do not depend on values."""
    return getattr(_state, "shapes_only", False)


@contextlib.contextmanager
def _active():
    _state.counter = [0]
    _state.shapes_only = True
    try:
        yield _state.counter
    finally:
        _state.counter = None
        _state.shapes_only = False


def _conv_hook(m: nn.Conv2d, inp, out):
    kh, kw = m.kernel_size
    add(out.numel() * kh * kw * (m.in_channels // m.groups))


def _linear_hook(m: nn.Linear, inp, out):
    add(out.numel() * m.in_features)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape=(1, 3, 64, 64)) -> int:
    """FLOPs (multiply-adds) of one forward pass of ``model`` on a zero tensor of ``input_shape``."""
    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(_conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(_linear_hook))
    p = next(model.parameters())
    x = torch.zeros(input_shape, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with _active() as counter:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return counter[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
