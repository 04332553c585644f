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

from typing import Optional

import torch

from .omni_scan import register_fused_omni_scan
from .selective_scan import register_backend

_INSTALL = "pip install ./kernels/selective_scan"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_ext_mod = None
_ext_err: Optional[str] = None


def _ext():
    """The imported extension package, or None (the reason is kept in ``_ext_err``)."""
    global _ext_mod, _ext_err
    if _ext_mod is None and _ext_err is None:
        try:
            import vmambair_scan_cuda

            _ext_mod = vmambair_scan_cuda
        except ModuleNotFoundError as e:
            _ext_err = f"the extension is not installed ({e})"
        except Exception as e:  # noqa: BLE001  e.g. undefined symbols after a torch upgrade
            _ext_err = (f"the extension is installed but does not load ({type(e).__name__}: {e}); "
                        f"rebuild it against this torch with `pip install --force-reinstall {_INSTALL}`")
    return _ext_mod


def _cuda_reason() -> Optional[str]:
    if _ext() is None:
        return (f"our CUDA selective scan is unavailable: {_ext_err}. Build it with `{_INSTALL}` "
                "(needs nvcc from a CUDA toolkit whose major version matches torch.version.cuda).")
    if not torch.cuda.is_available():
        return "our CUDA selective scan is installed, but no CUDA device is visible"
    return None


def _cuda_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    return _ext().selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)


def _cuda_omni(x, delta, A, B, C, D=None, delta_bias=None):
    return _ext().planar_omni_scan(x, delta, A, B, C, D, delta_bias)


register_backend("cuda", _cuda_scan, devices=("cuda",), priority=20, unavailable_reason=_cuda_reason,
                 dtypes=_DTYPES,
                 description="our CUDA kernel (kernels/selective_scan): warp-level chunked scan, fp32 state")
register_fused_omni_scan("cuda", _cuda_omni)


# ---------------------------------------------------------------- mamba-ssm
_mamba_mod = None
_mamba_err: Optional[str] = None


def _mamba():
    global _mamba_mod, _mamba_err
    if _mamba_mod is None and _mamba_err is None:
        try:
            import selective_scan_cuda

            _mamba_mod = selective_scan_cuda
        except Exception as e:  # noqa: BLE001
            _mamba_err = f"{type(e).__name__}: {e}"
    return _mamba_mod


def _mamba_reason() -> Optional[str]:
    if _mamba() is None:
        return (f"mamba-ssm's compiled kernel `selective_scan_cuda` is not importable ({_mamba_err}); install "
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
