"""Build mamba-ssm's ``selective_scan_cuda`` (only) from its source, for benchmarking against it.

For machines where ``pip install mamba-ssm`` cannot fetch a wheel (offline GPU boxes). Get the
sdist where there is network, unpack it, and carry the tree over:

    pip download --no-deps --no-build-isolation --no-binary :all: mamba-ssm==2.3.2.post1
    tar xzf mamba_ssm-2.3.2.post1.tar.gz

then, on the GPU machine:

    TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 python kernels/selective_scan/tools/build_mamba_reference.py \
        mamba_ssm-2.3.2.post1 --out build_mamba
    PYTHONPATH=build_mamba python scripts/bench/bench_scan.py

Only the real-weight kernels the benchmark uses are compiled (forward fp32/bf16, backward
fp32/bf16); the other template instantiations that mamba's C++ entry points reference are
stubs that raise. Nothing of mamba-ssm is copied into this repository.
"""
import argparse
import os
import sys
import time

STUB = r"""
// Instantiations not compiled in this benchmark build: they raise if called.
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/complex.h>
#include <cuda_runtime.h>
#include "selective_scan.h"

template <typename input_t, typename weight_t> void selective_scan_fwd_cuda(SSMParamsBase&, cudaStream_t);
template <typename input_t, typename weight_t> void selective_scan_bwd_cuda(SSMParamsBwd&, cudaStream_t);

#define VSS_STUB(FN, P, I, W) \
    template <> void FN<I, W>(P&, cudaStream_t) { TORCH_CHECK(false, #FN " <" #I ", " #W "> not built (benchmark build)"); }

VSS_STUB(selective_scan_fwd_cuda, SSMParamsBase, at::Half, float)
VSS_STUB(selective_scan_fwd_cuda, SSMParamsBase, at::Half, c10::complex<float>)
VSS_STUB(selective_scan_bwd_cuda, SSMParamsBwd, at::Half, float)
VSS_STUB(selective_scan_bwd_cuda, SSMParamsBwd, at::Half, c10::complex<float>)
VSS_STUB(selective_scan_bwd_cuda, SSMParamsBwd, float, c10::complex<float>)
VSS_STUB(selective_scan_bwd_cuda, SSMParamsBwd, at::BFloat16, c10::complex<float>)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="unpacked mamba-ssm source tree (contains csrc/selective_scan)")
    ap.add_argument("--out", default="build_mamba", help="folder that receives selective_scan_cuda*.so")
    args = ap.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(here))
    import build_config

    os.environ["CUDA_HOME"] = build_config.find_cuda_home()
    os.environ["TORCH_CUDA_ARCH_LIST"] = build_config.arch_list()
    from torch.utils.cpp_extension import load

    csrc = os.path.join(os.path.abspath(args.src), "csrc", "selective_scan")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    stub = os.path.join(out, "stubs.cu")
    with open(stub, "w") as f:
        f.write(STUB)
    names = ["selective_scan.cpp", "selective_scan_fwd_fp32.cu", "selective_scan_fwd_bf16.cu",
             "selective_scan_bwd_fp32_real.cu", "selective_scan_bwd_bf16_real.cu"]
    t0 = time.time()
    load(name="selective_scan_cuda", sources=[os.path.join(csrc, n) for n in names] + [stub],
         extra_include_paths=[csrc], build_directory=out, verbose=False,
         extra_cflags=["-O3"],
         extra_cuda_cflags=["-O3", "--use_fast_math", "--expt-relaxed-constexpr", "--expt-extended-lambda",
                            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                            "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                            "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__"])
    print(f"built selective_scan_cuda in {out} in {time.time() - t0:.0f} s "
          f"(TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})", flush=True)


if __name__ == "__main__":
    main()
