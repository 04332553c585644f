"""Selective scan: one public function, several backends (see selective_scan.py)."""
from .selective_scan import (ENV_VAR, BackendUnavailableError, available_backends, backend_status,
                             register_backend, resolve_backend, selective_scan, set_backend, use_backend)
from .scan_reference import scan_reference
from .scan_torch import scan_torch
from .scan_export import scan_export

register_backend("reference", scan_reference, priority=-100,
                 description="sequential per-step PyTorch loop (autograd); slow, obviously correct")
register_backend("torch", scan_torch, priority=0,
                 description="two-level chunked scan in pure PyTorch with a hand-written backward")
register_backend("export", scan_export, priority=-1000,
                 description="standard operators only, any length (for ONNX export; never chosen automatically)")

# Optional backends register themselves when their module imports; each says why it cannot run.
from . import scan_cpu  # noqa: E402,F401  compiled C for CPU tensors
from . import scan_cuda  # noqa: E402,F401  our CUDA extension and mamba-ssm's kernel
from .omni_scan import fused_omni_scan, planar_omni_scan, planar_omni_scan_unfused, takes_fused_path  # noqa: E402,F401

__all__ = ["selective_scan", "planar_omni_scan", "fused_omni_scan", "planar_omni_scan_unfused", "takes_fused_path",
           "set_backend", "use_backend",
           "available_backends", "backend_status", "register_backend", "resolve_backend",
           "BackendUnavailableError", "ENV_VAR"]
