"""A selective scan written for export: standard operators only, any sequence length.

ONNX has no selective-scan operator, and a loop of L = H*W steps (ONNX ``Loop``) would run
hundreds of thousands of tiny iterations. This backend solves the recurrence

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,      y_t = <C_t, h_t> + D * u_t

with a fixed number of operators whatever L is, so that one traced graph serves every image
size (the sequence length is a symbolic ``H*W``):

1. The sequence is padded to a multiple of ``CHUNK`` (with delta = 0: decay 1, input 0, so the
   padding changes nothing before it) and cut into chunks. One unrolled loop of ``CHUNK`` steps
   runs every chunk at once from a zero state, giving each chunk's final state.
2. The states entering the chunks solve the same kind of recurrence over the chunk sequence
   (decay = the product of the chunk's decays, input = its final state). That is solved the same
   way, ``LEVELS`` times over, each level ``CHUNK`` times shorter; the last, short level is solved
   in closed form as a masked matrix of decays exp(S_i - S_j), j < i, from a cumulative sum of
   log-decays (every exponent is <= 0, so nothing overflows).
3. A second unrolled loop re-runs every chunk from its true entering state and contracts the
   state with C at each step, so nothing of size (b, d, N, L) is ever held at once.

Exact up to floating-point rounding (the order of sums differs from the sequential scan). The
closed form is cheap while the last level is short: CHUNK**(LEVELS + 1) = 65536 positions per
last-level element, i.e. 16 elements for a 1024x1024 map. Registered as the backend ``export``
(never chosen automatically; ``vmambair.ops.use_backend("export")`` selects it, as
``scripts/export.py --onnx`` does). Inference only: it has no custom backward (autograd through
it works but stores every step).
"""
from __future__ import annotations

import functools
from typing import List

import torch
import torch.nn.functional as F

CHUNK = 16
LEVELS = 3


def _pad_last(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the last dim to a multiple of ``multiple``.

    Written as a constant pad and a crop to the rounded-up length because a tracer records the
    crop's end as arithmetic on the traced size, whereas a pad amount would be frozen to the
    value of the example input.
    """
    n = t.shape[-1]
    return F.pad(t, (0, multiple - 1))[..., : (n + multiple - 1) // multiple * multiple]


def _scripted_when_traced(fn):
    """``fn`` itself, but while a tracer runs, its TorchScript compilation (compiled once): the
    ONNX exporter then writes its loop as one ``Loop`` node instead of one copy per step.
    (``torch.jit.script_if_tracing`` does the same but compiles again at every call.)"""
    compiled = []

    @functools.wraps(fn)
    def wrapper(*args):
        if not torch.jit.is_tracing():
            return fn(*args)
        if not compiled:
            compiled.append(torch.jit.script(fn))
        return compiled[0](*args)
    return wrapper


def _chunked(t: torch.Tensor) -> torch.Tensor:
    """(..., n) -> zero-padded (..., ceil(n / CHUNK), CHUNK). (reshape with the traced leading
    sizes: the TorchScript exporter freezes unflatten's sizes to the example's.)"""
    return _pad_last(t, CHUNK).reshape(*t.shape[:-1], -1, CHUNK)


def _last_to_front(t: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (T, ...), with non-negative permutation indices (ONNX's Transpose needs them)."""
    return t.permute(t.dim() - 1, *range(t.dim() - 1))


def _front_to_last(t: torch.Tensor) -> torch.Tensor:
    """(T, ...) -> (..., T)."""
    return t.permute(*range(1, t.dim()), 0)


def _entering_states_closed_form(log_a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """State before each element of h_i = exp(log_a_i) h_{i-1} + x_i, h_{-1} = 0: (..., n) -> (..., n).

    h_enter_i = sum_{j < i} exp(E_ij) x_j with E_ij = sum_{j < k < i} log_a_k. E is summed
    directly, from k = i - 1 down, never as a difference of two long cumulative sums: those
    would be large and nearly equal, and the difference would lose the digits that matter.
    """
    n_la = log_a.unsqueeze(-2)                                   # (..., 1, k)
    before_i = torch.tril(n_la.expand(*log_a.shape[:-1], log_a.shape[-1], log_a.shape[-1]), diagonal=-1)
    # from_j[i, j] = sum_{j <= k < i} log_a_k: reversed cumulative sum along k
    from_j = torch.flip(torch.cumsum(torch.flip(before_i, [-1]), dim=-1), [-1])
    exponent = F.pad(from_j[..., 1:], (0, 1))                    # E[i, j] = from_j[i, j + 1]
    # Keep j < i: zero the rest before exp (their exponents are 0 anyway) and after it. (tril,
    # not a mask from arange: the TorchScript exporter folds arange and full_like of traced sizes
    # into constants of the example's shape.)
    weights = torch.tril(torch.exp(torch.tril(exponent, diagonal=-1)), diagonal=-1)
    return (weights * x.unsqueeze(-2)).sum(-1)


@_scripted_when_traced
def _inclusive_states(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + x_t from h_{-1} = 0 along dim 0: a, x (T, ...) -> h (T, ...).

    Scripted when traced: the exporter writes the loop as one ONNX ``Loop`` instead of T copies."""
    h = x[0]
    out: List[torch.Tensor] = [h]
    for t in range(1, x.shape[0]):
        h = a[t] * h + x[t]
        out.append(h)
    return torch.stack(out, 0)


@_scripted_when_traced
def _chunk_final_states(dt: torch.Tensor, dtu: torch.Tensor, B: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Each chunk's state after its last step, from zero: dt, dtu (T, b, G, dg, 1, nc); B (T, b, G, 1, N, nc);
    A (1, G, dg, N, 1) -> (b, G, dg, N, nc). Only the running state is kept."""
    s = dtu[0] * B[0]
    for t in range(1, dt.shape[0]):
        s = torch.exp(dt[t] * A) * s + dtu[t] * B[t]
    return s


@_scripted_when_traced
def _chunk_outputs(dt: torch.Tensor, dtu: torch.Tensor, B: torch.Tensor, C: torch.Tensor, A: torch.Tensor,
                   h: torch.Tensor) -> torch.Tensor:
    """Every step of every chunk from its entering state h (b, G, dg, N, nc), contracted with C
    (T, b, G, 1, N, nc) at once: -> y (T, b, G, dg, nc) without D."""
    ys: List[torch.Tensor] = []
    for t in range(dt.shape[0]):
        h = torch.exp(dt[t] * A) * h + dtu[t] * B[t]
        ys.append((h * C[t]).sum(3))
    return torch.stack(ys, 0)


def entering_states(log_a: torch.Tensor, x: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """State before each element of h_i = exp(log_a_i) h_{i-1} + x_i (h_{-1} = 0), along the last dim.

    Args:
        log_a, x: (..., n) log-decays (<= 0) and inputs.
        levels: chunked levels before the closed form.
    Returns:
        (..., n).
    """
    if levels == 0:
        return _entering_states_closed_form(log_a, x)
    n = x.shape[-1]
    la = _last_to_front(_chunked(log_a))                                   # (T, ..., nc)
    inclusive = _inclusive_states(torch.exp(la), _last_to_front(_chunked(x)))
    chunk_enter = entering_states(la.sum(0), inclusive[-1], levels - 1)    # (..., nc)
    # Before step t: the local state of step t - 1 (zero at t = 0; x * 0, not zeros_like, which
    # the TorchScript exporter folds into a constant of the example's shape), plus the entering
    # state decayed by an exclusive cumulative sum (summed as such, not as cumsum - la, which
    # would cancel digits).
    local = torch.cat([inclusive[:1] * 0.0, inclusive[:-1]], 0)
    decay_before = torch.exp(torch.cumsum(torch.cat([la[:1] * 0.0, la[:-1]], 0), dim=0))
    h = local + decay_before * chunk_enter.unsqueeze(0)                    # (T, ..., nc)
    return _front_to_last(h).flatten(-2)[..., :n]


def scan_export(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """Selective-scan backend: u, delta (b, d, L); A (d, N); B, C (b, G, N, L); D, delta_bias (d,) -> (b, d, L)."""
    b, d, L = u.shape
    G, N = B.shape[1], A.shape[1]
    dg = d // G
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    padded = (L + CHUNK - 1) // CHUNK * CHUNK

    def steps(t: torch.Tensor, shape) -> torch.Tensor:
        # (b, ?, L) -> zero-padded (see _pad_last) and chunked, step first: (T, b, G, ., ., nc)
        return _last_to_front(F.pad(t, (0, CHUNK - 1))[..., :padded].reshape(*shape, -1, CHUNK))

    dt = steps(delta, (b, G, dg, 1))
    dtu = steps(delta * u, (b, G, dg, 1))
    Bs = steps(B, (b, G, 1, N))
    Cs = steps(C, (b, G, 1, N))
    A_ = A.to(u.dtype).reshape(1, G, dg, N, 1)

    state = _chunk_final_states(dt, dtu, Bs, A_)                 # 1. each chunk from a zero state
    h = entering_states(dt.sum(0) * A_, state)                   # 2. the state entering each chunk
    ys = _chunk_outputs(dt, dtu, Bs, Cs, A_, h)                   # 3. each chunk from its true start
    y = _front_to_last(ys).reshape(b, d, -1)[..., :L]
    if D is not None:
        y = y + D.to(u.dtype)[:, None] * u
    return y
