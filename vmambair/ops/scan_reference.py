"""Sequential selective scan: one step at a time, differentiated by autograd.

Obviously correct and slow; the other backends are tested against it.
"""
import torch
import torch.nn.functional as F


def expand_groups(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(b, G, N, L) -> (b, dim, N, L): channel i reads group i // (dim // G)."""
    b, G, N, L = t.shape
    return t.unsqueeze(2).expand(b, G, dim // G, N, L).reshape(b, dim, N, L)


def prepare_delta(delta, delta_bias, delta_softplus):
    """delta (b, d, L) -> the step sizes actually used: softplus(delta + bias) or delta + bias."""
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """u, delta (b, d, L); A (d, N); B, C (b, G, N, L); D, delta_bias (d,) -> y (b, d, L)."""
    b, d, L = u.shape
    dt = prepare_delta(delta, delta_bias, delta_softplus)
    Bx = expand_groups(B, d)
    Cx = expand_groups(C, d)
    A = A.to(u.dtype)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    # unbind, not indexing with [..., t]: the backward of an index materialises a full-size
    # gradient per step (O(L^2) memory traffic); unbind's backward is one stack.
    for dt_t, u_t, B_t, C_t in zip(dt.unbind(-1), u.unbind(-1), Bx.unbind(-1), Cx.unbind(-1)):
        h = torch.exp(dt_t[:, :, None] * A) * h + (dt_t * u_t)[:, :, None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(u.dtype)[:, None] * u
    return y
