"""The public selective scan: backends against a brute-force loop and each other, and dispatch."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vmambair import ops
from vmambair.ops import scan_reference, scan_torch
scan_torch_module = sys.modules["vmambair.ops.scan_torch"]


def brute_force(u, delta, A, B, C, D, bias, softplus):
    """Closed form y_t = sum_{s<=t} C_t . (prod_{r=s+1..t} e^{dt_r A}) dt_s B_s u_s + D u_t, in numpy float64."""
    u, delta, A, B, C = (t.detach().double().numpy() for t in (u, delta, A, B, C))
    b, d, L = u.shape
    G = B.shape[1]
    dt = delta + (bias.detach().double().numpy()[:, None] if bias is not None else 0)
    if softplus:
        dt = np.log1p(np.exp(dt))
    y = np.zeros((b, d, L))
    for bi in range(b):
        for c in range(d):
            g = c // (d // G)
            for t in range(L):
                acc = 0.0
                for s in range(t + 1):
                    decay = np.exp(dt[bi, c, s + 1:t + 1].sum() * A[c])  # (N,)
                    acc += (C[bi, g, :, t] * decay * B[bi, g, :, s]).sum() * dt[bi, c, s] * u[bi, c, s]
                y[bi, c, t] = acc + (D[c].item() * u[bi, c, t] if D is not None else 0)
    return torch.from_numpy(y)


def make_inputs(b, d, L, N, G, dtype=torch.float32, seed=0, with_D=True, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, L, generator=g, dtype=dtype)
    delta = (torch.randn(b, d, L, generator=g, dtype=dtype) * 0.5 - 1.0)
    A = -(torch.rand(d, N, generator=g, dtype=dtype) * 2 + 0.1)
    B = torch.randn(b, G, N, L, generator=g, dtype=dtype)
    C = torch.randn(b, G, N, L, generator=g, dtype=dtype)
    D = torch.randn(d, generator=g, dtype=dtype) if with_D else None
    bias = torch.randn(d, generator=g, dtype=dtype) * 0.3 if with_bias else None
    return [u, delta, A, B, C, D, bias]


def forward_and_grads(fn, inputs, softplus, seed=1):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    y = fn(*leaves, softplus)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], g)
    return y.detach(), grads


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("G,N", [(1, 1), (2, 16), (4, 3)])
def test_reference_matches_brute_force(G, N, softplus):
    inputs = make_inputs(2, 4, 9, N, G, dtype=torch.float64)
    if not softplus:
        inputs[1], inputs[6] = inputs[1].abs(), inputs[6].abs()
    y = scan_reference(*inputs, softplus)
    torch.testing.assert_close(y, brute_force(*inputs, softplus), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("N", [1, 16])
@pytest.mark.parametrize("L", [1, 7, 333])
def test_torch_backend_matches_reference_fp32(G, N, L):
    inputs = make_inputs(2, 8, L, N, G)
    y_ref, g_ref = forward_and_grads(scan_reference, inputs, True)
    y, g = forward_and_grads(scan_torch, inputs, True)
    assert rel_err(y, y_ref) < 1e-5
    for name, a, b in zip("u delta A B C D bias".split(), g, g_ref):
        assert rel_err(a, b) < 1e-5, name


def test_torch_backend_without_D_bias_softplus():
    inputs = make_inputs(1, 4, 50, 4, 2, with_D=False, with_bias=False)
    inputs[1] = inputs[1].abs() * 0.3  # without softplus the step sizes must be positive to decay
    y_ref, g_ref = forward_and_grads(scan_reference, inputs, False)
    y, g = forward_and_grads(scan_torch, inputs, False)
    assert rel_err(y, y_ref) < 1e-5
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 1e-5


def test_torch_backend_segments(monkeypatch):
    """Long sequences are cut into segments with a carried state (forward) and adjoint (backward)."""
    monkeypatch.setattr(scan_torch_module, "_SEGMENT_ELEMS", 1)  # -> 256-step segments
    inputs = make_inputs(1, 4, 700, 4, 2, dtype=torch.float64)
    y_ref, g_ref = forward_and_grads(scan_reference, inputs, True)
    y, g = forward_and_grads(scan_torch, inputs, True)
    assert rel_err(y, y_ref) < 1e-10
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 1e-10


def test_gradcheck_float64():
    inputs = [t.requires_grad_() for t in make_inputs(1, 4, 5, 2, 2, dtype=torch.float64)]
    for fn in (scan_reference, scan_torch):
        assert torch.autograd.gradcheck(lambda *x: fn(*x, True), inputs, eps=1e-6, atol=1e-6)


def test_public_function_shapes_and_dtypes():
    u, delta, A, B, C, D, bias = make_inputs(2, 6, 11, 4, 1)
    y3 = ops.selective_scan(u, delta, A, B[:, 0], C[:, 0], D, bias, delta_softplus=True, backend="torch")
    y4 = ops.selective_scan(u, delta, A, B, C, D, bias, delta_softplus=True, backend="torch")
    torch.testing.assert_close(y3, y4)
    yb = ops.selective_scan(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, bias, True)
    assert yb.dtype == torch.bfloat16 and yb.shape == (2, 6, 11)
    with pytest.raises(ValueError, match="groups G dividing"):
        ops.selective_scan(u, delta, A, B.expand(2, 4, 4, 11), C.expand(2, 4, 4, 11))
    with pytest.raises(ValueError, match=r"A must be \(dim=6"):
        ops.selective_scan(u, delta, A[:3], B, C)


def test_forcing_unknown_or_unavailable_backend_is_an_error():
    u, delta, A, B, C, D, bias = make_inputs(1, 2, 3, 2, 1)
    with pytest.raises(ops.BackendUnavailableError, match="Unknown selective-scan backend 'nope'"):
        ops.selective_scan(u, delta, A, B, C, backend="nope")
    # The CUDA-only backends cannot take CPU tensors (or are not installed): never a silent fallback.
    with pytest.raises(ops.BackendUnavailableError):
        ops.selective_scan(u, delta, A, B, C, backend="cuda")


def test_backend_choice_by_context_and_env():
    u, delta, A, B, C, D, bias = make_inputs(1, 2, 3, 2, 1)
    with ops.use_backend("reference"):
        assert ops.resolve_backend(u.device).name == "reference"
    assert ops.resolve_backend(u.device).name == ops.available_backends("cpu")[0]
    code = ("import vmambair, torch; from vmambair import ops; "
            "print(ops.resolve_backend(torch.device('cpu')).name)")
    env = dict(os.environ, VMAMBAIR_SCAN_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "reference"


def test_omni_scan_unfused_matches_per_direction_loop():
    """Each direction scanned on its own pixel order and mapped back by hand, then summed."""
    torch.manual_seed(0)
    b, d, H, W, N = 1, 3, 4, 5, 2
    x = torch.randn(b, d, H, W, dtype=torch.float64)
    delta = torch.randn(b, 4, d, H, W, dtype=torch.float64)
    A = -torch.rand(4 * d, N, dtype=torch.float64)
    Bm = torch.randn(b, 4, N, H, W, dtype=torch.float64)
    Cm = torch.randn(b, 4, N, H, W, dtype=torch.float64)
    D = torch.randn(4 * d, dtype=torch.float64)
    bias = torch.randn(4 * d, dtype=torch.float64)
    got = ops.planar_omni_scan_unfused(x, delta, A, Bm, Cm, D, bias, backend="reference")
    # pixel index sequences for the four orders
    rows = [(i, j) for i in range(H) for j in range(W)]
    cols = [(i, j) for j in range(W) for i in range(H)]
    orders = [rows, cols, rows[::-1], cols[::-1]]
    want = torch.zeros(b, d, H, W, dtype=torch.float64)
    for k, order in enumerate(orders):
        sl = slice(k * d, (k + 1) * d)
        seq = lambda t: torch.stack([t[..., i, j] for i, j in order], -1)  # noqa: E731
        y = scan_reference(seq(x), seq(delta[:, k]), A[sl], seq(Bm[:, k])[:, None], seq(Cm[:, k])[:, None],
                           D[sl], bias[sl], True)
        for t, (i, j) in enumerate(order):
            want[..., i, j] += y[..., t]
    torch.testing.assert_close(got, want)


def test_fused_omni_scan_only_up_to_the_pixel_limit(monkeypatch):
    """The fused kernel (a spy here) runs for batches of at most runtime.fused_max_pixels pixels, else the
    unfused path, and gets the runtime column mode."""
    from vmambair import runtime
    from vmambair.ops import omni_scan

    calls = []
    modes = []
    monkeypatch.setitem(omni_scan._FUSED, "torch", lambda x, *a, columns: calls.append(x.shape[-2:])
                        or modes.append(columns) or torch.zeros_like(x))
    g = torch.Generator().manual_seed(0)

    def inputs(h, w, d=3, n=2, b=1):
        r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        return (r(b, d, h, w), r(b, 4, d, h, w), -torch.rand(4 * d, n), r(b, 4, n, h, w), r(b, 4, n, h, w))

    with runtime.use(fused_max_pixels=64, scan_columns="staged"):
        small = ops.planar_omni_scan(*inputs(8, 8), backend="torch")
        assert calls == [(8, 8)] and modes == ["staged"] and not small.any()  # the spy's zeros came back
        big = ops.planar_omni_scan(*inputs(8, 9), backend="torch")
        assert calls == [(8, 8)] and big.abs().sum() > 0  # 72 pixels: unfused, a real result
        batch = ops.planar_omni_scan(*inputs(4, 4, b=5), backend="torch")
        assert calls == [(8, 8)] and batch.abs().sum() > 0  # 5 x 16 = 80 pixels in the batch: unfused
    assert runtime.get().fused_max_pixels == 256 * 256  # restored after the block
    with pytest.raises(ValueError, match="fused_max_pixels must be a non-negative integer"):
        runtime.set_fused_max_pixels("lots")


@pytest.mark.parametrize("groups", [[(0, 1), (2, 3)], [(0,), (1,), (2,), (3,)], [(1, 2, 3), (0,)]])
def test_omni_scan_over_direction_groups_sums_to_the_whole(groups):
    """planar_omni_scan with ``directions``: scanning the four directions in groups (each group's
    delta / B / C slots and A / D / bias rows sliced out) and adding the results gives the
    four-direction result; the group (1, 2, 3) also checks that slot i scans directions[i]."""
    torch.manual_seed(0)
    b, d, H, W, N = 2, 3, 4, 5, 2
    x = torch.randn(b, d, H, W, dtype=torch.float64)
    delta = torch.randn(b, 4, d, H, W, dtype=torch.float64)
    A = -torch.rand(4 * d, N, dtype=torch.float64)
    Bm, Cm = torch.randn(b, 4, N, H, W, dtype=torch.float64), torch.randn(b, 4, N, H, W, dtype=torch.float64)
    D, bias = torch.randn(4 * d, dtype=torch.float64), torch.randn(4 * d, dtype=torch.float64)
    whole = ops.planar_omni_scan(x, delta, A, Bm, Cm, D, bias, backend="reference")
    total = torch.zeros_like(whole)
    for dirs in groups:
        rows = torch.cat([torch.arange(k * d, (k + 1) * d) for k in dirs])
        total += ops.planar_omni_scan(x, delta[:, list(dirs)], A[rows], Bm[:, list(dirs)], Cm[:, list(dirs)], D[rows],
                                      bias[rows], backend="reference", directions=dirs)
    torch.testing.assert_close(total, whole)
