"""Compiled C selective scan for CPU tensors (backend "cpu").

The kernel (``csrc/selective_scan_cpu.c``) is plain C99 with OpenMP and no torch headers. On
first use it is compiled with the system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``)
into a per-user cache directory and loaded with :mod:`ctypes`; tensors are passed by data
pointer. Later processes load the cached library directly. Compiling takes about a second.

Cache directory: ``$VMAMBAIR_CACHE_DIR``, else ``$XDG_CACHE_HOME/vmambair``, else
``~/.cache/vmambair`` (a per-user temp directory if none of these is writable). The library's
name carries a hash of the source, the compiler, its version, the flags and (for
``-march=native`` builds) the CPU model, so a changed source or a different machine sharing a
home directory gets its own build. Each build is written to a temporary file and renamed into
place, so processes compiling at the same time cannot leave a half-written library behind.

``VMAMBAIR_CPU_SCAN_NO_COMPILE=1`` turns the backend off (nothing is compiled or loaded): the
automatic choice then falls back to the "torch" backend, and forcing "cpu" raises
:class:`~vmambair.ops.BackendUnavailableError` saying why.

Threads: ``torch.get_num_threads()`` at call time. Work is split over (batch, channel) rows in
the forward and over (batch, group, slice of the group's channels) in the backward, so no two
threads ever add into the same element of dB or dC.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .selective_scan import register_backend

NO_COMPILE_ENV = "VMAMBAIR_CPU_SCAN_NO_COMPILE"
CACHE_ENV = "VMAMBAIR_CACHE_DIR"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCE = CSRC / "selective_scan_cpu.c"  # includes scan_cpu_kernel.h (hashed as well)
_ABI_VERSION = 3

# Time steps per chunk. The forward saves the state before every chunk for the backward
# (b*d*N*L/CHUNK numbers: a quarter of u's size at N=16); the backward recomputes one chunk
# at a time into per-thread buffers of 5*CHUNK*N numbers, which stay in L1/L2 cache.
CHUNK = 64

# Upper bound on the per-slice copies of dB and dC the backward may allocate to keep all
# threads busy when batch * groups is smaller than the thread count.
_PARTIAL_BYTES = 256 << 20

# -fno-trapping-math lets the compiler turn the float compares in exp/softplus into vector
# selects (with FP traps assumed observable, gcc keeps those loops scalar: 3x slower); we
# never read FP exception flags. No -ffast-math: it would change rounding and, linked into a
# shared library, can set flush-to-zero for the whole process.
_BASE_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
# Flag sets tried in order; the first that compiles is used. -march=native lets the compiler
# use AVX2/FMA where present; OpenMP gives threads; -fopenmp-simd alone still vectorises.
_VARIANTS = [["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native", "-fopenmp-simd"],
             ["-fopenmp-simd"], []]

_lib: Optional[ctypes.CDLL] = None
_lib_error: Optional[str] = None
_lib_info: dict = {}


def _compiler() -> Optional[list[str]]:
    """The C compiler command as a list (``$CC`` may carry arguments, e.g. 'ccache gcc')."""
    cc = os.environ.get("CC")
    if cc:
        parts = shlex.split(cc)
        if parts and shutil.which(parts[0]):
            return parts
        return None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def _cpu_identity() -> str:
    """CPU model and feature flags: a -march=native build is only valid on the same kind of CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _cache_dir() -> Path:
    candidates = []
    if os.environ.get(CACHE_ENV):
        candidates.append(Path(os.environ[CACHE_ENV]))
    if os.environ.get("XDG_CACHE_HOME"):
        candidates.append(Path(os.environ["XDG_CACHE_HOME"]) / "vmambair")
    candidates.append(Path.home() / ".cache" / "vmambair")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    candidates.append(Path(tempfile.gettempdir()) / f"vmambair-{uid}")
    for d in candidates:
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise OSError(f"no writable cache directory among {', '.join(map(str, candidates))}")


def _compile(cc: list[str], flags: list[str], out: Path) -> Optional[str]:
    """Build ``out`` atomically; None on success, else the compiler's complaint (shortened)."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.stem + ".", suffix=".tmp.so")
    os.close(fd)
    cmd = cc + _BASE_FLAGS + flags + [str(SOURCE), "-o", tmp, "-lm"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            return f"`{' '.join(cmd)}` failed: {msg[-1] if msg else 'exit code %d' % r.returncode}"
        os.replace(tmp, out)  # atomic on POSIX: readers see either no file or a whole one
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"`{' '.join(cmd)}` could not run: {e}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suf in ("f32", "f64"):
        f = getattr(lib, f"vmambair_scan_fwd_{suf}")
        f.argtypes = [p] * 7 + [i32, p, p] + [i64] * 7 + [i32]
        f.restype = i32
        f = getattr(lib, f"vmambair_scan_bwd_{suf}")
        f.argtypes = [p] * 7 + [i32] + [p] * 7 + [i64] * 7 + [i32]
        f.restype = i32
    lib.vmambair_scan_abi_version.restype = i32
    lib.vmambair_scan_has_openmp.restype = i32


def _load() -> tuple[Optional[ctypes.CDLL], Optional[str]]:
    """Compile (if needed) and load the library once per process; (lib, None) or (None, reason)."""
    global _lib, _lib_error
    if _lib is not None or _lib_error is not None:
        return _lib, _lib_error
    cc = _compiler()
    if cc is None:
        _lib_error = ("no C compiler found (set $CC or install gcc/clang, e.g. `apt-get install gcc`), "
                      "so the compiled CPU selective scan cannot be built")
        return None, _lib_error
    if not SOURCE.is_file():
        _lib_error = f"the C source {SOURCE} is missing from the installation"
        return None, _lib_error
    try:
        cache = _cache_dir()
    except OSError as e:
        _lib_error = f"the compiled CPU selective scan has nowhere to be built: {e}"
        return None, _lib_error
    try:
        version = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    src = b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in sorted(CSRC.glob("*.[ch]")))
    errors = []
    for flags in _VARIANTS:
        key = hashlib.sha256()
        for part in (src, " ".join(cc).encode(), version.encode(), " ".join(_BASE_FLAGS + flags).encode(),
                     (_cpu_identity() if "-march=native" in flags else platform.machine()).encode()):
            key.update(part + b"\0")
        out = cache / f"scan_cpu_{key.hexdigest()[:20]}.so"
        failed = out.with_suffix(".failed")
        if failed.exists():  # this flag set failed before with this compiler: skip the retry
            errors.append(failed.read_text().strip())
            continue
        if not out.exists():
            err = _compile(cc, flags, out)
            if err is not None:
                errors.append(err)
                try:
                    failed.write_text(err + "\n")
                except OSError:
                    pass
                continue
        try:
            lib = ctypes.CDLL(str(out))
            _declare(lib)
            if lib.vmambair_scan_abi_version() != _ABI_VERSION:
                raise OSError("ABI version mismatch")
        except (OSError, AttributeError) as e:
            errors.append(f"loading {out} failed: {e}")
            continue
        _lib = lib
        _lib_info.update(path=str(out), flags=" ".join(_BASE_FLAGS + flags), compiler=" ".join(cc),
                         openmp=bool(lib.vmambair_scan_has_openmp()))
        return _lib, None
    _lib_error = ("the C selective scan failed to compile or load with " + " ".join(cc) + " (last error: "
                  + (errors[-1] if errors else "unknown") + ")")
    return None, _lib_error


def unavailable_reason() -> Optional[str]:
    """None when the compiled backend can run, else one sentence saying why not."""
    if os.environ.get(NO_COMPILE_ENV, "").strip() not in ("", "0"):
        return (f"the compiled CPU selective scan is disabled by {NO_COMPILE_ENV}="
                f"{os.environ[NO_COMPILE_ENV]}; unset it to build and use it")
    return _load()[1]


def library_info() -> dict:
    """Where the loaded library lives and how it was built (empty before the first load)."""
    return dict(_lib_info)


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _num_slices(b: int, d: int, G: int, nthreads: int, max_slices: int = 1 << 30) -> int:
    """How many slices K to cut each group's channels into (work items are (batch, group, slice)).

    Fewer items means B and C are transposed fewer times (once per item and chunk) and, in the
    backward, fewer copies of dB/dC to sum; but with fewer items than threads (e.g. batch 1,
    G = 1) threads idle. Take the smallest K that spreads the items evenly over the threads or
    gives each thread about four of them.
    """
    items, dpg = b * G, d // G
    K = 1
    while K < min(dpg, max_slices) and (items * K) % nthreads != 0 and items * K < 4 * nthreads:
        K += 1
    return K


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus):
        lib = _lib
        b, d, L = u.shape
        G, N = B.shape[1], A.shape[1]
        suf = "f64" if u.dtype == torch.float64 else "f32"
        y = torch.empty_like(u)
        need_grad = any(ctx.needs_input_grad[:7])
        nch = (L + CHUNK - 1) // CHUNK
        ckpt = u.new_empty(b, d, nch, N) if need_grad else None
        if y.numel():
            nthreads = torch.get_num_threads()
            K = _num_slices(b, d, G, nthreads)
            rc = getattr(lib, f"vmambair_scan_fwd_{suf}")(
                _ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(delta_bias), int(softplus),
                _ptr(y), _ptr(ckpt), K, b, d, L, G, N, CHUNK, nthreads)
            if rc:
                raise MemoryError("selective_scan (cpu backend): could not allocate per-thread scratch memory")
        ctx.softplus = bool(softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, ckpt)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, ckpt = ctx.saved_tensors
        b, d, L = u.shape
        G, N = B.shape[1], A.shape[1]
        dy = dy.to(u.dtype).contiguous()
        nthreads = torch.get_num_threads()
        # Each slice beyond the first costs a copy of dB and dC: cap their memory.
        K = _num_slices(b, d, G, nthreads, max(1, _PARTIAL_BYTES // max(1, 2 * B.numel() * B.element_size())))
        du = torch.empty_like(u)
        ddelta = torch.empty_like(u)
        dA_part = u.new_empty(b, d, N)
        dB_part = u.new_empty((K,) + tuple(B.shape))
        dC_part = u.new_empty((K,) + tuple(C.shape))
        if u.numel():
            suf = "f64" if u.dtype == torch.float64 else "f32"
            rc = getattr(_lib, f"vmambair_scan_bwd_{suf}")(
                _ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(delta_bias), int(ctx.softplus),
                _ptr(ckpt), _ptr(dy), _ptr(du), _ptr(ddelta), _ptr(dA_part), _ptr(dB_part), _ptr(dC_part),
                K, b, d, L, G, N, CHUNK, nthreads)
            if rc:
                raise MemoryError("selective_scan (cpu backend): could not allocate per-thread scratch memory")
        else:  # nothing to scan (b, d or L is 0): every gradient is zero
            for t in (du, ddelta, dA_part, dB_part, dC_part):
                t.zero_()
        dA = dA_part.sum(0)
        dB = dB_part[0] if K == 1 else dB_part.sum(0)
        dC = dC_part[0] if K == 1 else dC_part.sum(0)
        dD = (dy * u).sum((0, 2)) if D is not None else None
        dbias = ddelta.sum((0, 2)) if delta_bias is not None else None
        return du, ddelta, dA, dB, dC, dD, dbias, None


def scan_cpu(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
             delta_softplus: bool = False) -> torch.Tensor:
    """Selective scan by the compiled C kernel, differentiable in every tensor input.

    Args:
        u, delta: (b, d, L) CPU tensors, float32 or float64 (the computation dtype).
        A: (d, N). B, C: (b, G, N, L) (or (b, N, L) for G = 1); channel i reads group i // (d // G).
        D, delta_bias: (d,) or None. delta_softplus: step size softplus(delta + delta_bias).

    Returns:
        y: (b, d, L) in u's dtype.

    Usually reached through :func:`vmambair.ops.selective_scan`, which normalises the inputs.
    Parameters in another dtype than u are cast to it (differentiably).
    """
    why = unavailable_reason()
    if why is not None:
        raise RuntimeError(f"selective_scan (cpu backend) is not available: {why}")
    if u.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"selective_scan (cpu backend) computes in float32 or float64, got u of dtype {u.dtype}")
    tensors = [u, delta, A, B, C, D, delta_bias]
    if any(t is not None and t.device.type != "cpu" for t in tensors):
        raise ValueError("selective_scan (cpu backend) takes CPU tensors only; use backend 'auto' for other devices")
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    b, d, L = u.shape
    G = B.shape[1]
    if d % G != 0 or C.shape[1] != G:
        raise ValueError(f"selective_scan (cpu backend): B and C need the same number of groups G dividing d={d}; "
                         f"got {B.shape[1]} and {C.shape[1]}")
    u, delta, A, B, C, D, delta_bias = (None if t is None else t.to(u.dtype).contiguous()
                                        for t in (u, delta, A, B, C, D, delta_bias))
    return _CpuScan.apply(u, delta, A, B, C, D, delta_bias, bool(delta_softplus))


register_backend(
    "cpu", scan_cpu, devices=("cpu",), priority=10, unavailable_reason=unavailable_reason,
    dtypes=(torch.float32, torch.float64),
    description="compiled C (OpenMP) scan with a hand-written backward; built with the system C compiler "
                f"on first use (disable with {NO_COMPILE_ENV}=1)")
