"""Python side of the ``vmambair_scan`` custom ops: fake kernels, autograd, and friendly wrappers.

The C++ extension (``_C``) defines four CUDA ops with ``TORCH_LIBRARY``:

* ``scan_fwd(u, delta, A, B, C, D?, delta_bias?, softplus, nseg) -> (y, states)``
* ``scan_bwd(dy, u, delta, A, B, C, D?, delta_bias?, states, softplus, nseg) -> 7 grads``
* ``omni_fwd(x, delta, A, B, C, D?, delta_bias?, softplus, nseg, keep_columns) -> (y, states,
  xT, deltaT, BT, CT)`` / ``omni_bwd(dy, x, ..., nseg, xT?, deltaT?, BT?, CT?) -> 7 grads``: the
  fused four-direction planar scan. Its column directions read transposed copies (x transposed,
  and delta / B / C of directions 1 and 3 as (b, 2, ., W, H)); with ``keep_columns`` the forward
  returns them (else, or with ``VMAMBAIR_SCAN_COLUMNS=staged``, empty (0,) tensors) so that the
  backward need not transpose them again. (The column directions' outputs go straight into the
  image layout with the default ``mixed`` mode, or through transposed buffers with ``transposed``.)

Here they get fake (meta) implementations, so ``torch.compile`` can trace them, and autograd
formulas, so ``y.backward()`` works through them. ``states`` (fp32, (b, dim, ceil(L/256), N))
is the state at the start of every 256-position chunk; the backward recomputes the rest.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _C  # noqa: F401  registers torch.ops.vmambair_scan.*

CHUNK = _C.CHUNK
MAX_N = _C.MAX_N
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ops = torch.ops.vmambair_scan


def _nchunks(L):
    return (L + CHUNK - 1) // CHUNK


# ---------------------------------------------------------------- fake (meta) implementations
@torch.library.register_fake("vmambair_scan::scan_fwd")
def _scan_fwd_fake(u, delta, A, B, C, D, delta_bias, softplus, nseg=0):
    b, d, L = u.shape
    return torch.empty_like(u), u.new_empty((b, d, _nchunks(L), A.shape[1]), dtype=torch.float32)


def _bwd_fake(dy, u, delta, A, B, C, D, delta_bias, states, softplus, nseg=0):
    f32 = torch.float32
    dD = A.new_empty((A.shape[0],) if D is not None else (0,), dtype=f32)
    dbias = A.new_empty((A.shape[0],) if delta_bias is not None else (0,), dtype=f32)
    return (torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A, dtype=f32),
            torch.empty_like(B), torch.empty_like(C), dD, dbias)


torch.library.register_fake("vmambair_scan::scan_bwd")(_bwd_fake)


@torch.library.register_fake("vmambair_scan::omni_bwd")
def _omni_bwd_fake(dy, x, delta, A, B, C, D, delta_bias, states, softplus, nseg=0, xT=None, deltaT=None, BT=None,
                   CT=None, columns=-1):
    return _bwd_fake(dy, x, delta, A, B, C, D, delta_bias, states, softplus, nseg)


# The fused op's column modes (the ops' `columns` argument); see csrc/ops.cpp.
COLUMN_MODES = {"staged": 0, "transposed": 1, "mixed": 2}


def column_mode_code(mode: str) -> int:
    """The ``columns`` argument of omni_fwd / omni_bwd for a mode name ('mixed', 'transposed', 'staged')."""
    if mode not in COLUMN_MODES:
        raise ValueError(f"vmambair_scan: column mode {mode!r} is not one of {sorted(COLUMN_MODES)}")
    return COLUMN_MODES[mode]


def transposed_columns(columns: int) -> bool:
    """Whether the fused op's column directions read transposed copies (mixed, transposed or the
    default -1); 'staged' (0) gathers in place."""
    return columns != 0


@torch.library.register_fake("vmambair_scan::omni_fwd")
def _omni_fwd_fake(x, delta, A, B, C, D, delta_bias, softplus, nseg=0, keep_columns=False, columns=-1):
    b, d, H, W = x.shape
    N = B.shape[2]
    y, states = torch.empty_like(x), x.new_empty((b, 4 * d, _nchunks(H * W), A.shape[1]), dtype=torch.float32)
    if keep_columns and transposed_columns(columns) and b * d * H * W > 0:
        return y, states, x.new_empty((b, d, W, H)), x.new_empty((b, 2, d, W, H)), x.new_empty((b, 2, N, W, H)), \
            x.new_empty((b, 2, N, W, H))
    return (y, states) + tuple(x.new_empty((0,)) for _ in range(4))


# ---------------------------------------------------------------- autograd
def _setup(ctx, inputs, output, extra=()):
    u, delta, A, B, C, D, delta_bias, softplus = inputs[:8]
    # Only y has a gradient; autograd would otherwise fill a zero tensor for each other output
    # (states, and the fused op's kept copies: as many bytes as x again, twice over) per backward.
    ctx.set_materialize_grads(False)
    ctx.ninputs = len(inputs)
    ctx.nseg = inputs[8] if len(inputs) > 8 else 0
    ctx.softplus = softplus
    ctx.has_D, ctx.has_bias = D is not None, delta_bias is not None
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[1], *extra)


def _setup_omni(ctx, inputs, output):
    # The column copies the forward kept (keep_columns, transposed columns): the backward reuses
    # them (an empty map's are empty, and the backward then makes its own, which is nothing).
    ctx.columns = int(inputs[10]) if len(inputs) > 10 else -1
    ctx.kept = len(inputs) > 9 and bool(inputs[9]) and transposed_columns(ctx.columns)
    _setup(ctx, inputs, output, tuple(output[2:6]) if ctx.kept else ())


def _make_backward(bwd_op):
    def backward(ctx, dy, *_unused):
        u, delta, A, B, C, D, delta_bias, states = ctx.saved_tensors[:8]
        if dy is None:
            return (None,) * ctx.ninputs
        omni = hasattr(ctx, "columns")
        kept = tuple(ctx.saved_tensors[8:12]) if getattr(ctx, "kept", False) else (None,) * 4
        extra = (*kept, ctx.columns) if omni else ()
        du, ddelta, dA, dB, dC, dD, dbias = bwd_op(dy.contiguous().to(u.dtype), u, delta, A, B, C, D, delta_bias,
                                                   states, ctx.softplus, ctx.nseg, *extra)
        grads = (du, ddelta, dA, dB, dC, dD if ctx.has_D else None, dbias if ctx.has_bias else None)
        return grads + (None,) * (ctx.ninputs - len(grads))
    return backward


torch.library.register_autograd("vmambair_scan::scan_fwd", _make_backward(_ops.scan_bwd), setup_context=_setup)
torch.library.register_autograd("vmambair_scan::omni_fwd", _make_backward(_ops.omni_bwd), setup_context=_setup_omni)


# ---------------------------------------------------------------- public wrappers
def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.dtype in _DTYPES else torch.float32


def _param(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.float().contiguous()


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                   delta_softplus: bool = False, nseg: int = 0) -> torch.Tensor:
    """Selective scan on CUDA tensors (semantics of ``vmambair.ops.selective_scan``).

    Args:
        u, delta: (batch, dim, L) in fp32, bf16 or fp16 (delta/B/C are cast to u's dtype).
        A: (dim, N), N <= 16, used in fp32.
        B, C: (batch, N, L) or (batch, G, N, L); channel i uses group i // (dim // G).
        D, delta_bias: (dim,) or None, used in fp32.
        nseg: sequence segments per channel (0 = automatic); for tests and tuning.
    Returns:
        (batch, dim, L) in u's dtype (fp64 inputs are computed in fp32 and cast back).
    """
    dt = _compute_dtype(u)
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    y, _ = _ops.scan_fwd(u.to(dt).contiguous(), delta.to(dt).contiguous(), A.float().contiguous(),
                         B.to(dt).contiguous(), C.to(dt).contiguous(), _param(D), _param(delta_bias),
                         bool(delta_softplus), int(nseg))
    return y if y.dtype == u.dtype else y.to(u.dtype)


def planar_omni_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                     D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                     nseg: int = 0, columns: str = "mixed") -> torch.Tensor:
    """Fused four-direction planar scan with softplus on delta (``vmambair.ops.planar_omni_scan``).

    Args:
        x: (b, d, H, W) scan input.
        delta: (b, 4, d, H, W) per-direction step sizes before bias and softplus.
        A: (4d, N); direction k uses rows k*d .. k*d+d-1 (likewise D, delta_bias: (4d,)).
        B, C: (b, 4, N, H, W).
        columns: how the column directions move data: 'mixed' (transposed copies in, y / du / ddelta
            straight into the image layout where H divides 64 and W % 4 == 0), 'transposed' (copies in
            and out), 'staged' (no copies). See the package README.
    Returns:
        (b, d, H, W): the four directions (row-major, column-major, both reversed), each mapped back
        to its pixel, summed; in x's dtype. No permuted copy of anything is made.
    """
    dt = _compute_dtype(x)
    # Keep the column copies for the backward only when there will be one.
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, delta, A, B, C, D, delta_bias))
    y = _ops.omni_fwd(x.to(dt).contiguous(), delta.to(dt).contiguous(), A.float().contiguous(),
                      B.to(dt).contiguous(), C.to(dt).contiguous(), _param(D), _param(delta_bias), True, int(nseg),
                      keep, column_mode_code(columns))[0]
    return y if y.dtype == x.dtype else y.to(x.dtype)
