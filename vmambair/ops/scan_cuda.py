"""CUDA selective-scan backends: our extension ("cuda") and mamba-ssm's kernel ("mamba_ssm").

Importing this module never fails: both backends are registered, and each one's
``unavailable_reason`` says why it cannot run (extension not built, no GPU, ...). Nothing is
imported until a backend is first asked about, so ``import vmambair`` stays cheap.

* "cuda" (priority 20): ``vmambair_scan_cuda``, built by ``pip install ./kernels/selective_scan``.
  Takes fp32/bf16/fp16 as they are (fp32 state and accumulation) and also provides the fused
  four-direction planar scan used by :func:`vmambair.ops.planar_omni_scan`.
* "mamba_ssm" (priority 15): mamba-ssm's ``selective_scan_cuda`` when importable.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from .omni_scan import register_fused_omni_scan
from .selective_scan import register_backend

_INSTALL = "pip install ./kernels/selective_scan"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_IMPORTED: dict = {}


def _try_import(name: str):
    """``(module, None)``, or ``(None, the exception)`` when ``name`` cannot be imported; tried once.

    A plain dict cache (not functools.lru_cache): torch.compile traces through it as a constant
    lookup once the import has happened, instead of re-running importlib (a graph break).
    """
    if name not in _IMPORTED:
        try:
            _IMPORTED[name] = importlib.import_module(name), None
        except Exception as e:  # noqa: BLE001  not installed, or e.g. undefined symbols after a torch upgrade
            _IMPORTED[name] = None, e
    return _IMPORTED[name]


def _ext():
    """Our extension package, or None."""
    return _try_import("vmambair_scan_cuda")[0]


def _cuda_reason() -> Optional[str]:
    mod, err = _try_import("vmambair_scan_cuda")
    if mod is None:
        why = (f"the extension is not installed ({err})" if isinstance(err, ModuleNotFoundError) else
               f"the extension is installed but does not load ({type(err).__name__}: {err}); "
               f"rebuild it against this torch with `pip install --force-reinstall {_INSTALL}`")
        return (f"our CUDA selective scan is unavailable: {why}. Build it with `{_INSTALL}` "
                "(needs nvcc from a CUDA toolkit whose major version matches torch.version.cuda).")
    if not torch.cuda.is_available():
        return "our CUDA selective scan is installed, but no CUDA device is visible"
    return None


def _cuda_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    return _ext().selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


def _cuda_omni(x, delta, A, B, C, D=None, delta_bias=None, columns: str = "mixed"):
    return _ext().planar_omni_scan(x, delta, A, B, C, D, delta_bias, columns=columns)


register_backend("cuda", _cuda_scan, devices=("cuda",), priority=20, unavailable_reason=_cuda_reason,
                 dtypes=_DTYPES,
                 description="our CUDA kernel (kernels/selective_scan): warp-level chunked scan, fp32 state")
register_fused_omni_scan("cuda", _cuda_omni)


# ---------------------------------------------------------------- mamba-ssm
def _mamba():
    """mamba-ssm's compiled ``selective_scan_cuda``, or None."""
    return _try_import("selective_scan_cuda")[0]


def _mamba_reason() -> Optional[str]:
    mod, err = _try_import("selective_scan_cuda")
    if mod is None:
        return (f"mamba-ssm's compiled kernel `selective_scan_cuda` is not importable ({type(err).__name__}: {err}); install "
                "mamba-ssm built for this torch (`pip install mamba-ssm --no-build-isolation`), or use the "
                "'cuda' backend")
    if not torch.cuda.is_available():
        return "mamba-ssm's kernel is installed, but no CUDA device is visible"
    return None


class _MambaScan(torch.autograd.Function):
    """mamba-ssm's fwd/bwd entry points (no z), saving its chunk states for the backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus):
        out, x, *_ = _mamba().fwd(u, delta, A, B, C, D, None, delta_bias, softplus)
        ctx.softplus = softplus
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dbias, *_ = _mamba().bwd(
            u, delta, A, B, C, D, None, delta_bias, dout.contiguous(), x, None, None, ctx.softplus, False)
        return (du, ddelta, dA, dB.to(B.dtype), dC.to(C.dtype), dD if D is not None else None,
                dbias if delta_bias is not None else None, None)


def _mamba_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    return _MambaScan.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus))


register_backend("mamba_ssm", _mamba_scan, devices=("cuda",), priority=15, unavailable_reason=_mamba_reason,
                 dtypes=_DTYPES, description="mamba-ssm's selective_scan_cuda (the speed anchor)")
