"""VmambaIR's CUDA selective scan (``pip install ./kernels/selective_scan``).

``selective_scan`` and ``planar_omni_scan`` are the entry points; the underlying custom ops are
``torch.ops.vmambair_scan.{scan_fwd, scan_bwd, omni_fwd, omni_bwd}``. ``vmambair.ops`` picks this
backend automatically for CUDA tensors once it is installed.
"""
from .ops import CHUNK, COLUMN_MODES, MAX_N, column_mode_code, planar_omni_scan, selective_scan  # noqa: F401

__version__ = "0.1.0"
__all__ = ["selective_scan", "planar_omni_scan", "column_mode_code", "COLUMN_MODES", "CHUNK", "MAX_N"]
