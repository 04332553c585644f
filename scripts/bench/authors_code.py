#!/usr/bin/env python
"""Load the VmambaIR authors' own networks from a checkout of their repository, for timing and
equivalence checks against ours.

Nothing of the authors' code is stored in this repository: the user points at their checkout
(GitHub AlphacatPlus/VmambaIR) and its arch files are imported from there at run time.

    from authors_code import load_authors_network, authors_kernel_available
    net = load_authors_network(".authors/VmambaIR", "derain", num_blocks=[1, 1, 1, 1])

Families (the arch file, relative to the checkout, and the class):
  realsr    RealSR/VmambaIR/archs/MambaRealSR11_arch.py      MambaRealSR11 (real-world x4)
  derain    Deraining/basicsr/models/archs/mamber33_arch.py  Mamber33 (deraining; its channel
            attention is y * c + y, as ours)
  derain32  Deraining/basicsr/models/archs/mamber32_arch.py  Mamber32 (the variant with y + c)

What the arch files import but a forward/backward does not need is replaced while they load:
``fvcore`` (FLOP counting), basicsr's ``ARCH_REGISTRY`` (a decorator that only records the class)
and, for the real-world file, the package path ``VmambaIR.archs.common`` (loaded from their
``common.py`` itself). Their selective scan ``selective_scan_cuda_core`` is either
  "kernel":    their compiled CUDA kernel, built from their sources by
               scripts/bench/build_authors_kernel.sh (CUDA tensors, fp32/fp16/bf16 only), or
  "reference": our sequential scan (vmambair.ops.scan_reference) behind the same call signature
               (fwd / bwd), on any device and dtype (float64 included); its backward recomputes
               the forward under autograd.
"auto" picks the kernel when it can be imported, else the reference.

Command line:
    python scripts/bench/authors_code.py check --original PATH    # CPU smoke test of every family
    python scripts/bench/authors_code.py build --kernel-src DIR --out DIR   (used by the .sh)
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where build_authors_kernel.sh puts selective_scan_cuda_core*.so unless told otherwise; the
# VMAMBAIR_AUTHORS_KERNEL environment variable or kernel_dir= arguments override it.
DEFAULT_KERNEL_DIR = REPO_ROOT / ".authors" / "kernel_build"
KERNEL_MODULE = "selective_scan_cuda_core"

FAMILIES = {
    "realsr": ("RealSR/VmambaIR/archs/MambaRealSR11_arch.py", "MambaRealSR11"),
    "derain": ("Deraining/basicsr/models/archs/mamber33_arch.py", "Mamber33"),
    "derain32": ("Deraining/basicsr/models/archs/mamber32_arch.py", "Mamber32"),
}
# The real-world file imports this module of its own package.
REALSR_COMMON = "RealSR/VmambaIR/archs/common.py"


class AuthorsCodeError(RuntimeError):
    """The authors' checkout or kernel cannot be used; the message names the path and the fix."""


# ----------------------------------------------------------------------------- reference scan
def _reference_fwd(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, nrows=1):
    """Same signature and outputs as ``selective_scan_cuda_core.fwd``.

    u, delta (b, d, L); A (d, N) float; B, C (b, G, N, L); D, delta_bias (d,) or None.
    Returns [y (b, d, L), x] where x stands for the kernel's chunk states (unused: the backward
    recomputes), an empty tensor.
    """
    from vmambair.ops.scan_reference import scan_reference

    with torch.no_grad():
        y = scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus)
    return [y.to(u.dtype), u.new_empty(0)]


def _reference_bwd(u, delta, A, B, C, D, delta_bias, dout, x, delta_softplus, nrows=1):
    """Same signature and outputs as ``selective_scan_cuda_core.bwd``: the gradients
    [du, ddelta, dA, dB, dC, dD, ddelta_bias] of sum(y * dout), shaped like the inputs
    (dD / ddelta_bias None when D / delta_bias is None)."""
    from vmambair.ops.scan_reference import scan_reference

    inputs = [t.detach().requires_grad_(True) if t is not None else None
              for t in (u, delta, A, B, C, D, delta_bias)]
    with torch.enable_grad():
        y = scan_reference(*inputs, delta_softplus=delta_softplus)
        wanted = [t for t in inputs if t is not None]
        grads = iter(torch.autograd.grad(y, wanted, dout.to(y.dtype)))
    return [next(grads) if t is not None else None for t in inputs]


def reference_scan_module() -> types.ModuleType:
    """A module object that stands in for ``selective_scan_cuda_core`` (fwd / bwd)."""
    mod = types.ModuleType(KERNEL_MODULE)
    mod.fwd = _reference_fwd
    mod.bwd = _reference_bwd
    mod.__doc__ = "vmambair's sequential reference scan behind the authors' kernel signature"
    return mod


# ----------------------------------------------------------------------------- their kernel
def _kernel_dir(kernel_dir=None) -> Path:
    return Path(kernel_dir or os.environ.get("VMAMBAIR_AUTHORS_KERNEL") or DEFAULT_KERNEL_DIR)


def load_authors_kernel(kernel_dir=None) -> types.ModuleType:
    """Import the authors' compiled ``selective_scan_cuda_core`` from ``kernel_dir`` (default
    .authors/kernel_build, or $VMAMBAIR_AUTHORS_KERNEL), falling back to sys.path.

    Raises AuthorsCodeError when it is neither there nor importable, or CUDA is absent.
    """
    if not torch.cuda.is_available():
        raise AuthorsCodeError("the authors' selective_scan_cuda_core kernel needs a CUDA GPU; "
                               "on CPU use scan='reference'")
    if KERNEL_MODULE in sys.modules and hasattr(sys.modules[KERNEL_MODULE], "__file__"):
        return sys.modules[KERNEL_MODULE]
    folder = _kernel_dir(kernel_dir)
    libs = sorted(folder.glob(f"{KERNEL_MODULE}*.so")) if folder.is_dir() else []
    if libs:
        loader = importlib.machinery.ExtensionFileLoader(KERNEL_MODULE, str(libs[0]))
        spec = importlib.util.spec_from_file_location(KERNEL_MODULE, str(libs[0]), loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        sys.modules[KERNEL_MODULE] = mod
        return mod
    try:
        import selective_scan_cuda_core as mod  # noqa: F401  (an install of theirs on sys.path)
        return mod
    except ImportError:
        raise AuthorsCodeError(
            f"the authors' kernel {KERNEL_MODULE} is not built: no {KERNEL_MODULE}*.so in {folder} "
            f"and none importable. Build it with: bash scripts/bench/build_authors_kernel.sh "
            f"<their checkout> [{folder}]") from None


def authors_kernel_available(kernel_dir=None) -> bool:
    """Whether the authors' compiled CUDA scan can be loaded here (a GPU and a built .so)."""
    try:
        load_authors_kernel(kernel_dir)
        return True
    except (AuthorsCodeError, ImportError, OSError):
        return False


def build_authors_kernel(kernel_src: str, out_dir: str, arch_list: str = "9.0") -> Path:
    """Compile their "core" scan (selective_scan.cpp + core fwd/bwd .cu) from ``kernel_src`` (a
    copy of their csrc/selective_scan, already patched for the CUDA version) into ``out_dir``."""
    sys.path.insert(0, str(REPO_ROOT / "kernels" / "selective_scan"))
    import build_config  # our extension's finder of the CUDA toolkit

    os.environ["CUDA_HOME"] = build_config.find_cuda_home()
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    from torch.utils.cpp_extension import load

    src = Path(kernel_src).resolve()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sources = [src / "cus" / n for n in
               ("selective_scan.cpp", "selective_scan_core_fwd.cu", "selective_scan_core_bwd.cu")]
    for s in sources:
        if not s.is_file():
            raise AuthorsCodeError(f"{s} is missing: --kernel-src must be their "
                                   f"Mamba/kernels/selective_scan/csrc/selective_scan folder")
    # Their setup.py's flags, less -std (torch's cpp_extension adds the standard its headers need).
    load(name=KERNEL_MODULE, sources=[str(s) for s in sources], extra_include_paths=[str(src)],
         build_directory=str(out), verbose=True, extra_cflags=["-O3"],
         extra_cuda_cflags=["-O3", "--use_fast_math", "--expt-relaxed-constexpr", "--expt-extended-lambda",
                            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                            "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                            "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                            "--threads", "4"])
    return out


# ----------------------------------------------------------------------------- loading their arch
class _StubRegistry:
    """Stands in for basicsr's ARCH_REGISTRY: register() returns the class unchanged (so loading
    the file twice does not trip basicsr's duplicate-name check)."""

    def register(self, obj=None, suffix=None):
        return obj if obj is not None else (lambda o: o)


def _fvcore_stub() -> dict:
    def unavailable(*args, **kwargs):
        raise AuthorsCodeError("fvcore is stubbed out by authors_code.py (FLOP counting is not needed "
                               "for timing)")
    fv = types.ModuleType("fvcore")
    fvnn = types.ModuleType("fvcore.nn")
    fvnn.flop_count = fvnn.parameter_count = unavailable
    fv.nn = fvnn
    return {"fvcore": fv, "fvcore.nn": fvnn}


@contextlib.contextmanager
def _substituted_modules(mods: dict):
    """Put ``mods`` into sys.modules for the duration, then restore what was there."""
    saved = {name: sys.modules.get(name) for name in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def _exec_file(path: Path, module_name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, str(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def checkout_root(original_path) -> Path:
    """The root of the authors' checkout; raises AuthorsCodeError when ``original_path`` has none
    of the expected arch files."""
    root = Path(original_path).expanduser().resolve()
    if not root.is_dir():
        raise AuthorsCodeError(f"--original {original_path}: no such folder. Pass a checkout of "
                               f"https://github.com/AlphacatPlus/VmambaIR (e.g. .authors/VmambaIR)")
    missing = [rel for rel, _ in FAMILIES.values() if not (root / rel).is_file()]
    if missing:
        raise AuthorsCodeError(f"--original {original_path}: {missing[0]} is missing; this is not a "
                               f"checkout of AlphacatPlus/VmambaIR (or an incomplete one)")
    return root


_LOADED: dict = {}


def authors_module(original_path, family: str, scan: str = "auto", kernel_dir=None) -> types.ModuleType:
    """The authors' arch module of ``family`` (see FAMILIES), loaded from their checkout with the
    given scan ("auto", "kernel" or "reference"). Cached per (checkout, family, scan)."""
    if family not in FAMILIES:
        raise AuthorsCodeError(f"family {family!r} is unknown; choose one of {sorted(FAMILIES)}")
    if scan not in ("auto", "kernel", "reference"):
        raise AuthorsCodeError(f"scan {scan!r} is unknown; choose auto, kernel or reference")
    root = checkout_root(original_path)
    if scan == "auto":
        scan = "kernel" if authors_kernel_available(kernel_dir) else "reference"
    key = (str(root), family, scan)
    if key in _LOADED:
        return _LOADED[key]
    kernel = load_authors_kernel(kernel_dir) if scan == "kernel" else reference_scan_module()

    registry = types.ModuleType("basicsr.utils.registry")
    registry.ARCH_REGISTRY = _StubRegistry()
    mods = {KERNEL_MODULE: kernel, "basicsr.utils.registry": registry, **_fvcore_stub()}
    rel, _ = FAMILIES[family]
    if family == "realsr":
        pkg, archs = types.ModuleType("VmambaIR"), types.ModuleType("VmambaIR.archs")
        pkg.__path__, archs.__path__ = [], []  # namespace-like packages: nothing else is imported
        archs.common = _exec_file(root / REALSR_COMMON, "VmambaIR.archs.common")
        pkg.archs = archs
        mods.update({"VmambaIR": pkg, "VmambaIR.archs": archs, "VmambaIR.archs.common": archs.common})
    with _substituted_modules(mods):
        # A private module name: their files define classes with the same names as each other.
        mod = _exec_file(root / rel, f"_authors_{family}_{scan}")
    mod.SCAN_IMPLEMENTATION = scan
    _LOADED[key] = mod
    return mod


def load_authors_network(original_path, family: str, scan: str = "auto", kernel_dir=None,
                         **kwargs) -> torch.nn.Module:
    """Build the authors' network of ``family`` ("realsr", "derain", "derain32") from their
    checkout at ``original_path``; ``kwargs`` go to its constructor (dim, num_blocks,
    num_refinement_blocks, ...; their defaults otherwise). The module takes (b, 3, H, W) and
    returns (b, 3, H, W) for deraining, (b, 3, 4H, 4W) for realsr. H, W: multiples of 8.

    ``net.authors_scan`` records which scan was bound ("kernel" or "reference")."""
    mod = authors_module(original_path, family, scan, kernel_dir)
    net = getattr(mod, FAMILIES[family][1])(**kwargs)
    net.authors_scan = mod.SCAN_IMPLEMENTATION
    return net


# ----------------------------------------------------------------------------- command line
def _check(args) -> int:
    """Build each family at small depth and run a forward (and backward) on a 32x32 input."""
    torch.manual_seed(0)
    device = "cuda" if args.device == "cuda" else "cpu"
    for family in FAMILIES:
        net = load_authors_network(args.original, family, scan=args.scan, dim=8,
                                   num_blocks=[1, 1, 1, 1], num_refinement_blocks=1).to(device)
        x = torch.rand(1, 3, 32, 32, device=device)
        y = net(x)
        y.abs().mean().backward()
        grads = sum(p.grad is not None for p in net.parameters())
        print(f"{family:9s} {type(net).__name__:14s} scan={net.authors_scan:9s} in {tuple(x.shape)} "
              f"-> out {tuple(y.shape)}, finite={bool(torch.isfinite(y).all())}, "
              f"{grads}/{sum(1 for _ in net.parameters())} parameters got gradients")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="build every family small and run it on a 32x32 input")
    c.add_argument("--original", required=True, help="the authors' checkout (AlphacatPlus/VmambaIR)")
    c.add_argument("--scan", default="auto", choices=["auto", "kernel", "reference"])
    c.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b = sub.add_parser("build", help="compile their selective_scan_cuda_core (see build_authors_kernel.sh)")
    b.add_argument("--kernel-src", required=True, help="a patched copy of their csrc/selective_scan")
    b.add_argument("--out", default=str(DEFAULT_KERNEL_DIR))
    b.add_argument("--arch", default=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"))
    args = ap.parse_args(argv)
    try:
        if args.cmd == "check":
            return _check(args)
        out = build_authors_kernel(args.kernel_src, args.out, args.arch)
        print(f"built {KERNEL_MODULE} into {out}")
        return 0
    except AuthorsCodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
