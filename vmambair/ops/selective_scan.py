"""The public selective scan and its backend registry.

``selective_scan`` has the semantics of mamba-ssm's ``selective_scan_fn`` without ``z``::

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      (per channel, diagonal A)
    y_t = <C_t, h_t> + D * u_t

Backends register themselves with :func:`register_backend`. Each one is a callable
``fn(u, delta, A, B, C, D, delta_bias, delta_softplus) -> y`` that receives already
normalised inputs: ``u, delta`` (b, d, L) contiguous; ``A`` (d, N); ``B, C`` (b, G, N, L)
contiguous; ``D, delta_bias`` (d,) or None; all of one floating dtype from the backend's
``dtypes``. It returns (b, d, L) in that dtype and supports autograd for every tensor input.

Which backend runs: the ``backend=`` argument, else the runtime switch ``scan_backend``
(:func:`set_backend` / :func:`use_backend` here, ``vmambair.runtime``, the options' ``runtime:``
section, or the ``VMAMBAIR_SCAN_BACKEND`` environment variable at start-up), else the best
available one for the device (highest ``priority``). Forcing a backend that is not available raises
:class:`BackendUnavailableError`; there is no silent fallback.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .. import runtime

ENV_VAR = "VMAMBAIR_SCAN_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A selective-scan backend was asked for by name but cannot run here."""


@dataclass
class ScanBackend:
    name: str
    fn: Callable
    devices: tuple = ("cpu", "cuda")
    priority: int = 0
    # Returns None when usable, else a sentence saying why not and how to fix it.
    unavailable_reason: Callable[[], Optional[str]] = lambda: None
    # Dtypes the backend takes as they are; other floating inputs are computed in fp32.
    dtypes: tuple = (torch.float32, torch.float64)
    description: str = ""
    _cached_reason: object = field(default=..., repr=False)

    def reason(self) -> Optional[str]:
        if self._cached_reason is ...:
            self._cached_reason = self.unavailable_reason()
        return self._cached_reason


_BACKENDS: dict[str, ScanBackend] = {}


def register_backend(name: str, fn: Callable, *, devices=("cpu", "cuda"), priority: int = 0,
                     unavailable_reason: Callable[[], Optional[str]] = lambda: None,
                     dtypes=(torch.float32, torch.float64), description: str = "") -> None:
    """Register (or replace) a selective-scan backend under ``name``."""
    _BACKENDS[name] = ScanBackend(name, fn, tuple(devices), priority, unavailable_reason,
                                  tuple(dtypes), description)


def available_backends(device: str | torch.device | None = None) -> list[str]:
    """Names of the backends that can run (on ``device``'s type, if given), best first."""
    dev = None if device is None else torch.device(device).type
    names = [b for b in _BACKENDS.values()
             if b.reason() is None and (dev is None or dev in b.devices)]
    return [b.name for b in sorted(names, key=lambda b: -b.priority)]


def backend_status() -> dict[str, str]:
    """For each registered backend: 'available' or why it is not."""
    return {n: (b.reason() or "available") for n, b in _BACKENDS.items()}


def set_backend(name: Optional[str]) -> None:
    """Force one backend for every later call (``None`` or 'auto' restores the automatic choice)."""
    if name not in (None, "", "auto"):
        _check_name(name)
    runtime.set_scan_backend(name)


@contextlib.contextmanager
def use_backend(name: Optional[str]):
    """Context manager form of :func:`set_backend`."""
    if name not in (None, "", "auto"):
        _check_name(name)
    with runtime.use(scan_backend=name or "auto"):
        yield


def _check_name(name: str) -> ScanBackend:
    if name not in _BACKENDS:
        raise BackendUnavailableError(
            f"Unknown selective-scan backend {name!r}. Registered backends: "
            f"{', '.join(sorted(_BACKENDS))}. Set the backend by option 'scan_backend', the "
            f"environment variable {ENV_VAR}, or vmambair.ops.set_backend() to one of them, or to 'auto'.")
    return _BACKENDS[name]


def resolve_backend(device: torch.device, name: Optional[str] = None) -> ScanBackend:
    """The backend a call on ``device`` will use (see the module docstring for the order)."""
    name = name or runtime.get().scan_backend
    if name != "auto":
        b = _check_name(name)
        why = b.reason()
        if why is not None:
            raise BackendUnavailableError(f"Selective-scan backend {name!r} was requested but is not available: {why}")
        if device.type not in b.devices:
            raise BackendUnavailableError(
                f"Selective-scan backend {name!r} runs on {', '.join(b.devices)} tensors, but the inputs are "
                f"on {device.type}. Choose a backend for {device.type} ({', '.join(available_backends(device))}) or 'auto'.")
        return b
    names = available_backends(device)
    if not names:
        raise BackendUnavailableError(f"No selective-scan backend can run on {device.type}: {backend_status()}")
    return _BACKENDS[names[0]]


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                   backend: Optional[str] = None) -> torch.Tensor:
    """Selective scan with a diagonal, real A (mamba-ssm's ``selective_scan_fn`` without z).

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N), usually negative.
        B, C: (batch, N, L), or (batch, G, N, L) where channel i uses group i // (dim // G).
        D, delta_bias: (dim,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        backend: force one backend by name (see :func:`backend_status`).

    Returns:
        (batch, dim, L) in u's dtype. Computation is in fp32 (fp64 for fp64 inputs).
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan: u and delta must both be (batch, dim, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    b, d, L = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (dim={d}, N); got {tuple(A.shape)}")
    N = A.shape[1]
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[0] != b or t.shape[2] != N or t.shape[3] != L:
            raise ValueError(f"selective_scan: {name} must be (batch={b}, N={N}, L={L}) or (batch, G, N, L); got {tuple(t.shape)}")
    if B.shape[1] != C.shape[1] or d % B.shape[1] != 0:
        raise ValueError(f"selective_scan: B and C need the same number of groups G dividing dim={d}; got {B.shape[1]} and {C.shape[1]}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"selective_scan: {name} must be (dim={d},); got {tuple(t.shape)}")

    bk = resolve_backend(u.device, backend)
    out_dtype = u.dtype
    compute = u.dtype if u.dtype in bk.dtypes else torch.float32
    # Parameters (A, D, delta_bias) are always used in fp32 or better.
    pdtype = torch.float64 if compute == torch.float64 else torch.float32

    def prep(t, dt):
        return None if t is None else t.to(dt).contiguous()

    y = bk.fn(prep(u, compute), prep(delta, compute), prep(A, pdtype), prep(B, compute), prep(C, compute),
              prep(D, pdtype), prep(delta_bias, pdtype), bool(delta_softplus))
    return y.to(out_dtype)
