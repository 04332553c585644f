"""Build and install VmambaIR's CUDA selective scan:  pip install ./kernels/selective_scan

Finds CUDA by itself (CUDA_HOME / CUDA_PATH, nvcc on PATH, /usr/local/cuda*), builds for
TORCH_CUDA_ARCH_LIST when set, else for the visible GPUs, else for sm_80 and sm_90. MAX_JOBS
bounds the parallel compile jobs (default: all cores). It must be built against the PyTorch it
will run with; pip's build isolation is bypassed for that (see _build_backend.py).
"""
import os
import sys

from setuptools import setup

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import build_config  # noqa: E402

try:
    cuda_home = build_config.find_cuda_home()
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported: set it first.
    os.environ["CUDA_HOME"] = cuda_home
    build_config.check_torch_matches(cuda_home)
    os.environ["TORCH_CUDA_ARCH_LIST"] = build_config.arch_list()
except build_config.BuildError as e:
    sys.exit(f"error: cannot build vmambair-scan-cuda: {e}")
except ImportError as e:
    sys.exit(f"error: cannot build vmambair-scan-cuda: PyTorch is not importable ({e}). Install torch first; "
             "the extension is compiled against the installed PyTorch.")

from torch.utils.cpp_extension import BuildExtension, CUDAExtension  # noqa: E402

print(f"vmambair-scan-cuda: CUDA at {cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}, "
      f"MAX_JOBS={os.environ.get('MAX_JOBS', 'all cores')}", flush=True)

setup(
    name="vmambair-scan-cuda",
    version="0.1.0",
    description="CUDA selective scan (plain and fused planar omni scan) for VmambaIR",
    packages=["vmambair_scan_cuda"],
    ext_modules=[
        CUDAExtension(
            name="vmambair_scan_cuda._C",
            sources=[os.path.join(here, s) for s in build_config.SOURCES],
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args={"cxx": build_config.cxx_flags(), "nvcc": build_config.nvcc_flags()},
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    zip_safe=False,
)
