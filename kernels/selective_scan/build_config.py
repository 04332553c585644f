"""Build configuration of the CUDA extension: where CUDA is, which GPUs to build for.

Used by setup.py and by tests/test_kernel_build.py. Importing it needs only the standard library;
torch is imported lazily, by the functions that need it.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from typing import List, Optional, Tuple


class BuildError(RuntimeError):
    """The extension cannot be built here; the message names the cause and the fix."""


def _nvcc_version(nvcc: str) -> Optional[Tuple[int, int]]:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _home_of_nvcc(nvcc: str) -> Optional[str]:
    """The toolkit root of an nvcc on PATH, also when it is a wrapper script or a symlink."""
    real = os.path.realpath(nvcc)
    root = os.path.dirname(os.path.dirname(real))
    if _is_toolkit(root):
        return root
    # A wrapper script: ask nvcc itself where it lives (its dry run prints TOP=<root>).
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.cu")
            open(src, "w").close()
            out = subprocess.run([nvcc, "--dryrun", "-c", src, "-o", os.path.join(tmp, "probe.o")],
                                 capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
    except (OSError, subprocess.SubprocessError):
        return None
    for key in ("TOP", "_HERE_"):
        m = re.search(rf"#\$ {key}=(\S+)", text)
        if m:
            path = os.path.normpath(m.group(1) if key == "TOP" else os.path.join(m.group(1), ".."))
            if _is_toolkit(path):
                return path
    return None


def _is_toolkit(root: str) -> bool:
    return (os.path.isfile(os.path.join(root, "bin", "nvcc"))
            and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")))


def find_cuda_home() -> str:
    """The CUDA toolkit to build with: CUDA_HOME / CUDA_PATH, nvcc on PATH, /usr/local/cuda*, /opt/cuda.

    Raises BuildError naming what was tried when none is usable.
    """
    tried = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            if _is_toolkit(root):
                return os.path.normpath(root)
            tried.append(f"{var}={root} (no bin/nvcc or include/cuda_runtime.h there)")
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = _home_of_nvcc(nvcc)
        if root:
            return root
        tried.append(f"nvcc on PATH at {nvcc} (could not locate its toolkit)")
    candidates = ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True) + ["/opt/cuda"]
    for root in candidates:
        if _is_toolkit(root):
            return os.path.realpath(root)
    tried.append("/usr/local/cuda, /usr/local/cuda-*, /opt/cuda (not found)")
    raise BuildError(
        "No CUDA toolkit (nvcc) found, so the vmambair selective-scan extension cannot be built. Tried: "
        + "; ".join(tried) + ". Install the CUDA toolkit matching your PyTorch (torch.version.cuda) and set "
        "CUDA_HOME to its root, or put its nvcc on PATH.")


def check_torch_matches(cuda_home: str) -> Tuple[int, int]:
    """Fail with a clear message when PyTorch has no CUDA or a different CUDA major version."""
    import torch

    if torch.version.cuda is None:
        raise BuildError(f"PyTorch {torch.__version__} is a CPU-only build; the CUDA extension needs a CUDA "
                         "build of PyTorch (see https://pytorch.org/get-started/locally/).")
    ver = _nvcc_version(os.path.join(cuda_home, "bin", "nvcc"))
    if ver is None:
        raise BuildError(f"{cuda_home}/bin/nvcc does not run (`nvcc --version` failed).")
    tmaj, tmin = (int(x) for x in torch.version.cuda.split(".")[:2])
    if ver[0] != tmaj:
        raise BuildError(
            f"CUDA/PyTorch mismatch: nvcc at {cuda_home} is CUDA {ver[0]}.{ver[1]} but PyTorch {torch.__version__} "
            f"was built with CUDA {tmaj}.{tmin}. Point CUDA_HOME at a CUDA {tmaj}.x toolkit or install the "
            f"PyTorch build for CUDA {ver[0]}.")
    return ver


def arch_list(cuda_version: Optional[Tuple[int, int]] = None) -> str:
    """TORCH_CUDA_ARCH_LIST to use: the environment's, else the visible GPUs', else '8.0;9.0'."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    try:
        import torch

        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            return ";".join(f"{a}.{b}" for a, b in caps)
    except Exception:  # noqa: BLE001  a broken driver must not stop a build for other GPUs
        pass
    return "8.0;9.0"


def nvcc_flags() -> List[str]:
    return [
        # No -std: torch's cpp_extension adds the standard its headers need (C++17 or C++20).
        "-O3", "--use_fast_math",
        # torch's headers disable the half/bf16 operators by default; we convert explicitly anyway.
        "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
        "--threads", "4",  # several architectures compile in parallel inside one nvcc
    ]


def cxx_flags() -> List[str]:
    return ["-O3"]


SOURCES = [
    "csrc/ops.cpp", "csrc/combine.cu", "csrc/transpose.cu",
    "csrc/fwd_fp32.cu", "csrc/fwd_bf16.cu", "csrc/fwd_fp16.cu",
    "csrc/bwd_fp32.cu", "csrc/bwd_bf16.cu", "csrc/bwd_fp16.cu",
]
