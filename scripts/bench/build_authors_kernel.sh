#!/usr/bin/env bash
# Build the authors' selective_scan_cuda_core (their VMamba "core" scan) for timing against ours.
#
#   bash scripts/bench/build_authors_kernel.sh PATH [OUT_DIR]
#
# PATH: a checkout of github.com/AlphacatPlus/VmambaIR (e.g. .authors/VmambaIR, which .gitignore
# keeps out of git). Their kernel sources (Mamba/kernels/selective_scan/csrc/selective_scan) are
# copied to a temporary folder; only the copy is changed, to compile with CUDA 13's CUB:
#   cub::LaneId()   -> (threadIdx.x & 31)     (the lane of the thread in its warp)
#   cub::CTA_SYNC() -> __syncthreads()        (in reverse_scan.cuh)
# Then their selective_scan.cpp + selective_scan_core_{fwd,bwd}.cu are compiled with their
# setup.py's flags for TORCH_CUDA_ARCH_LIST (default 9.0, H100) into OUT_DIR (default
# .authors/kernel_build), where scripts/bench/authors_code.py looks for it.
# An existing build is kept; REBUILD=1 builds again.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
if [ $# -lt 1 ]; then
    echo "usage: bash scripts/bench/build_authors_kernel.sh PATH_TO_AUTHORS_CHECKOUT [OUT_DIR]" >&2
    exit 2
fi
src="$1/Mamba/kernels/selective_scan/csrc/selective_scan"
out="${2:-$repo/.authors/kernel_build}"
if [ ! -f "$src/reverse_scan.cuh" ] || [ ! -f "$src/cus/selective_scan.cpp" ]; then
    echo "error: $src/reverse_scan.cuh or cus/selective_scan.cpp is missing: PATH must be a checkout of" \
         "https://github.com/AlphacatPlus/VmambaIR (e.g. .authors/VmambaIR)" >&2
    exit 2
fi
if [ -z "${REBUILD:-}" ] && compgen -G "$out/selective_scan_cuda_core*.so" > /dev/null; then
    echo "authors' kernel already built in $out (REBUILD=1 to build again)"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$src" "$tmp/selective_scan"
cuh="$tmp/selective_scan/reverse_scan.cuh"
sed -i -e 's/cub::LaneId()/(threadIdx.x \& 31)/g' -e 's/cub::CTA_SYNC()/__syncthreads()/g' "$cuh"
if grep -q 'cub::LaneId\|cub::CTA_SYNC' "$cuh"; then
    echo "error: the CUDA-13 replacements did not apply to $cuh" >&2
    exit 1
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
python "$here/authors_code.py" build --kernel-src "$tmp/selective_scan" --out "$out" --arch "$TORCH_CUDA_ARCH_LIST"
