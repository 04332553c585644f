"""Every performance switch in one place: what runs, never what is computed.

Each switch has a ``set_*`` function, and :func:`use` changes several for a ``with`` block. The
``runtime:`` section of an options file sets them for a run (``vmambair.config.schema.RuntimeOptions``),
and three environment variables give their initial values for a whole process:

==========================  ==============================  ========================================
switch                      environment variable            what it picks
==========================  ==============================  ========================================
scan_backend                ``VMAMBAIR_SCAN_BACKEND``       selective-scan backend ('auto' = best)
fused_max_pixels            ``VMAMBAIR_FUSED_MAX_PIXELS``   largest batch*H*W for the fused op
scan_columns                ``VMAMBAIR_SCAN_COLUMNS``       the fused op's column mode
fused_omni_scan             -                               allow the fused four-direction op
effn_align                  -                               EFFN hidden width padded to a multiple
original_projections        -                               the authors' per-direction projections
recompile_limit             -                               torch.compile recompiles per function
activation_memory_budget    -                               compiled training: activations kept
inference_scan_directions   -                               unfused scans without gradients: directions per call
==========================  ==============================  ========================================

None of them changes a network's function (outputs agree within float rounding); they trade
speed and memory. The layers below read them at call time (``get()``), so a change takes effect
at the next call. This module sits at the bottom of the package and imports nothing of it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Iterator

COLUMN_MODES = ("mixed", "transposed", "staged")


@dataclass
class Settings:
    """The current switches (see the module docstring)."""

    scan_backend: str = "auto"
    fused_max_pixels: int = 256 * 256
    scan_columns: str = "mixed"
    fused_omni_scan: bool = True
    effn_align: int = 8
    original_projections: bool = False
    recompile_limit: int = 32
    activation_memory_budget: float = 1.0
    inference_scan_directions: int | str = "auto"


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer; set it to the largest batch*H*W (e.g. 65536) that "
                         f"should use the fused omni-scan kernel, or unset it.") from None


def _from_environment() -> Settings:
    s = Settings()
    s.scan_backend = os.environ.get("VMAMBAIR_SCAN_BACKEND") or s.scan_backend
    s.fused_max_pixels = _int_env("VMAMBAIR_FUSED_MAX_PIXELS", s.fused_max_pixels)
    columns = os.environ.get("VMAMBAIR_SCAN_COLUMNS") or s.scan_columns
    _check_columns(columns, "VMAMBAIR_SCAN_COLUMNS")
    s.scan_columns = columns
    return s


def _check_columns(mode: str, where: str) -> None:
    if mode not in COLUMN_MODES:
        raise ValueError(f"{where}={mode!r} is not a column mode of the fused scan; use one of "
                         f"{', '.join(COLUMN_MODES)} ('mixed' is the default).")


_current = _from_environment()


def get() -> Settings:
    """The switches now in force (read them, do not modify the object: use the setters)."""
    return _current


def set_scan_backend(name: str | None) -> None:
    """Force a selective-scan backend by name ('auto' or None: the best available one). The name
    is checked when a scan runs (``vmambair.ops`` knows the backends); ``vmambair.ops.set_backend``
    checks it at once."""
    _current.scan_backend = name or "auto"


def set_fused_max_pixels(n: int) -> None:
    """Use the fused four-direction scan for batches of at most ``n`` pixels (batch x H x W)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"fused_max_pixels must be a non-negative integer, got {n!r}")
    _current.fused_max_pixels = n


def set_scan_columns(mode: str) -> None:
    """How the fused scan's column directions move data: 'mixed', 'transposed' or 'staged'."""
    _check_columns(mode, "scan_columns")
    _current.scan_columns = mode


def set_fused_omni_scan(enabled: bool) -> None:
    """Allow (default) or forbid the fused four-direction scan, e.g. to time the unfused path."""
    _current.fused_omni_scan = bool(enabled)


def set_effn_align(multiple: int) -> None:
    """Run EFFN's hidden layers padded to a multiple of this many channels (0: natural width)."""
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 0:
        raise ValueError(f"effn_align must be a non-negative integer, got {multiple!r}")
    _current.effn_align = multiple


def set_original_projections(enabled: bool) -> None:
    """Compute the planar scans' projections the authors' way (per-direction rank-R einsums on
    materialised sequences) instead of as 1x1 convolutions: the reference execution path."""
    _current.original_projections = bool(enabled)


def set_recompile_limit(n: int) -> None:
    """How many times torch.compile may recompile one function (one per input shape) before it
    falls back to eager; applied to torch._dynamo's config when blocks are compiled."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"recompile_limit must be a positive integer, got {n!r}")
    _current.recompile_limit = n


def set_activation_memory_budget(fraction: float) -> None:
    """Compiled training: keep at most about this fraction of the activations that a compiled
    block would save for its backward pass, recomputing the cheapest of the others there (1.0:
    torch's default choice; 0.0: recompute all it can). Applied to torch._functorch's (process-wide)
    partitioner config when blocks are compiled; the blocks' function and gradients are unchanged."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"activation_memory_budget must be a number from 0 to 1, got {fraction!r}")
    _current.activation_memory_budget = float(fraction)


def set_inference_scan_directions(n: int | str) -> None:
    """Planar scans run without gradients on the unfused path (no fused kernel, or a map larger
    than fused_max_pixels): how many of their four directions one scan takes. 4: all at once; 2 or
    1: in turn, each group's projections, sequence copies and outputs freed before the next
    group's are made (less peak memory, more and smaller launches). "auto" (default): 1 on the
    CPU, where it was both leaner and faster (benchmarks/data/scan_directions_derain_512_cpu.json),
    4 elsewhere: on an H100, 1 took 5-6 % longer for 8-28 % less memory
    (benchmarks/data/derain_2048_scan_directions1_h100.json). Training is not affected."""
    if n != "auto" and (isinstance(n, bool) or n not in (1, 2, 4)):
        raise ValueError(f"inference_scan_directions must be 1, 2, 4 or 'auto', got {n!r}")
    _current.inference_scan_directions = n


def inference_scan_directions(device_type: str) -> int:
    """The directions per unfused scan without gradients on a device type ("cpu", "cuda", ...):
    the switch's value, with "auto" resolved."""
    n = _current.inference_scan_directions
    if n == "auto":
        return 1 if device_type == "cpu" else 4
    return n


_SETTERS = {
    "scan_backend": set_scan_backend, "fused_max_pixels": set_fused_max_pixels, "scan_columns": set_scan_columns,
    "fused_omni_scan": set_fused_omni_scan, "effn_align": set_effn_align,
    "original_projections": set_original_projections, "recompile_limit": set_recompile_limit,
    "activation_memory_budget": set_activation_memory_budget, "inference_scan_directions": set_inference_scan_directions,
}


def configure(**changes) -> None:
    """Set several switches at once by name (unknown names are an error naming the valid ones)."""
    for name, value in changes.items():
        if name not in _SETTERS:
            raise ValueError(f"Unknown runtime switch {name!r}; the switches are {', '.join(_SETTERS)}.")
        _SETTERS[name](value)


@contextlib.contextmanager
def use(**changes) -> Iterator[Settings]:
    """Change switches for a ``with`` block and restore all of them afterwards."""
    global _current
    saved = dataclasses.replace(_current)
    try:
        configure(**changes)
        yield _current
    finally:
        _current = saved


def apply_compile_settings() -> None:
    """Copy the compile-related switches into torch._dynamo's and torch._functorch's (process-wide)
    config. The memory budget is read when a graph is partitioned, at its first call."""
    import torch._dynamo
    import torch._functorch.config
    torch._functorch.config.activation_memory_budget = _current.activation_memory_budget
    cfg = torch._dynamo.config
    if hasattr(cfg, "recompile_limit"):
        cfg.recompile_limit = max(cfg.recompile_limit, _current.recompile_limit)
    else:  # older torch
        cfg.cache_size_limit = max(cfg.cache_size_limit, _current.recompile_limit)
