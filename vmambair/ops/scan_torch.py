"""Pure-PyTorch selective scan for machines with no compiler and no extension.

Forward and backward are written out by hand (a custom autograd Function) so that nothing
of size (b, d, N, L) is kept between them: the forward keeps only the inputs and the state at
segment starts; the backward recomputes each segment's states, runs the adjoint recurrence
backwards, and forms every gradient in closed form.

Each recurrence ``h_t = a_t * h_{t-1} + x_t`` is solved by a two-level scan: the length is
cut into chunks of T ~ sqrt(length); one loop of T steps runs all chunks at once, one loop
over the chunks carries the state across them. That is ~2*sqrt(L) PyTorch ops per
recurrence instead of L, and it uses only products of decays (never their inverses), so it
cannot overflow the way a log-space cumulative-sum scan can.
"""
import math

import torch
import torch.nn.functional as F

from .scan_reference import expand_groups

# Elements of one (b, d, N, segment) tensor; bounds peak memory to a few hundred MB.
_SEGMENT_ELEMS = 1 << 23


def linear_scan(a: torch.Tensor, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Solve h_t = a_t * h_{t-1} + x_t along the last dim; a, x (..., S); h0 (...) -> h (..., S)."""
    S = a.shape[-1]
    T = max(1, int(math.ceil(math.sqrt(S))))
    nc = (S + T - 1) // T
    pad = nc * T - S
    if pad:
        a = F.pad(a, (0, pad), value=1.0)
        x = F.pad(x, (0, pad), value=0.0)
    lead = a.shape[:-1]
    # (..., nc, T) -> (T, ..., nc): each inner step touches one contiguous slab.
    a_c = a.reshape(*lead, nc, T).movedim(-1, 0).contiguous()
    x_c = x.reshape(*lead, nc, T).movedim(-1, 0).contiguous()
    hloc = torch.empty_like(x_c)
    hloc[0] = x_c[0]
    for t in range(1, T):
        torch.addcmul(x_c[t], a_c[t], hloc[t - 1], out=hloc[t])
    prod = torch.cumprod(a_c, dim=0)  # decay from chunk start to step t
    carry = torch.empty(lead + (nc,), dtype=x.dtype, device=x.device)
    c = h0
    for k in range(nc):
        carry[..., k] = c
        c = prod[-1, ..., k] * c + hloc[-1, ..., k]
    h = torch.addcmul(hloc, prod, carry.unsqueeze(0))
    return h.movedim(0, -1).reshape(*lead, nc * T)[..., :S]


def _segments(b, d, N, L):
    step = max(256, _SEGMENT_ELEMS // max(1, b * d * N))
    return [(s, min(L, s + step)) for s in range(0, L, step)]


def _group_sum(t: torch.Tensor, G: int) -> torch.Tensor:
    """(b, d, N, S) -> (b, G, N, S), summing the channels of each group."""
    b, d, N, S = t.shape
    return t.view(b, G, d // G, N, S).sum(2)


class _TorchScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus):
        b, d, L = u.shape
        G, N = B.shape[1], A.shape[1]
        z = delta if delta_bias is None else delta + delta_bias[:, None].to(delta.dtype)
        dt = F.softplus(z) if softplus else z
        A_ = A.to(u.dtype)
        y = torch.empty_like(u)
        h0 = u.new_zeros(b, d, N)
        starts = []
        for s, e in _segments(b, d, N, L):
            starts.append(h0)
            a = torch.exp(dt[:, None, :, s:e].transpose(1, 2) * A_[None, :, :, None])
            x = (dt[:, :, s:e] * u[:, :, s:e])[:, :, None, :] * expand_groups(B[..., s:e], d)
            h = linear_scan(a, x, h0)
            y[:, :, s:e] = (h * expand_groups(C[..., s:e], d)).sum(2)
            h0 = h[..., -1]
        if D is not None:
            y = y + D[:, None].to(u.dtype) * u
        ctx.softplus = softplus
        ctx.has_D, ctx.has_bias = D is not None, delta_bias is not None
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, torch.stack(starts))
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, starts = ctx.saved_tensors
        dy = dy.contiguous().to(u.dtype)
        b, d, L = u.shape
        G, N = B.shape[1], A.shape[1]
        z = delta if delta_bias is None else delta + delta_bias[:, None].to(delta.dtype)
        dt = F.softplus(z) if ctx.softplus else z
        A_ = A.to(u.dtype)
        du = torch.empty_like(u)
        ddt = torch.empty_like(u)
        dB = torch.empty_like(B)
        dC = torch.empty_like(C)
        dA = torch.zeros(d, N, dtype=u.dtype, device=u.device)
        gh_next = u.new_zeros(b, d, N)   # adjoint of the state at the next segment's first step
        a_next = u.new_ones(b, d, N)     # decay at the next segment's first step
        segs = _segments(b, d, N, L)
        for i in reversed(range(len(segs))):
            s, e = segs[i]
            h0 = starts[i]
            dts = dt[:, :, s:e]
            a = torch.exp(dts[:, :, None, :] * A_[None, :, :, None])
            Bx = expand_groups(B[..., s:e], d)
            Cx = expand_groups(C[..., s:e], d)
            h = linear_scan(a, (dts * u[:, :, s:e])[:, :, None, :] * Bx, h0)
            dys = dy[:, :, s:e]
            dC[..., s:e] = _group_sum(dys[:, :, None, :] * h, G)
            # Adjoint recurrence gh_t = dy_t C_t + a_{t+1} gh_{t+1}, run on the reversed sequence.
            alpha = torch.cat([a[..., 1:], a_next[..., None]], dim=-1).flip(-1)
            gh = linear_scan(alpha, (dys[:, :, None, :] * Cx).flip(-1), gh_next).flip(-1)
            h_prev = torch.cat([h0[..., None], h[..., :-1]], dim=-1)
            da_a = gh * h_prev * a                       # d(loss)/d(dt*A) per element
            ghB = (gh * Bx).sum(2)                        # (b, d, S)
            ddt[:, :, s:e] = (da_a * A_[None, :, :, None]).sum(2) + ghB * u[:, :, s:e]
            dA += (da_a * dts[:, :, None, :]).sum((0, 3))
            du[:, :, s:e] = ghB * dts
            dB[..., s:e] = _group_sum(gh * (dts * u[:, :, s:e])[:, :, None, :], G)
            gh_next, a_next = gh[..., 0], a[..., 0]
        dD = ddelta_bias = None
        if D is not None:
            du += D[:, None].to(u.dtype) * dy
            dD = (dy * u).sum((0, 2)).to(D.dtype)
        ddelta = ddt * torch.sigmoid(z) if ctx.softplus else ddt
        if delta_bias is not None:
            ddelta_bias = ddelta.sum((0, 2)).to(delta_bias.dtype)
        return du, ddelta.to(delta.dtype), dA.to(A.dtype), dB, dC, dD, ddelta_bias, None


def scan_torch(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """u, delta (b, d, L); A (d, N); B, C (b, G, N, L); D, delta_bias (d,) -> y (b, d, L)."""
    return _TorchScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus)
