#!/usr/bin/env bash
# Build our extension and the authors' kernel, then time the authors' code against ours on one GPU
# (issue 20's table: real-world x4 train step b9 x 64 and restore 1024 -> 4096; deraining train
# step b8 x 128 with the recipe's ffn recompute and restores 256 / 1024 / 2048; one step per
# progressive stage for time_to_train.py), then the time to train. JSON records go to $OUT
# (default benchmarks/data); copy them into benchmarks/data and run scripts/bench/report.py.
#
#   OUT=/some/folder bash scripts/bench/authors_suite.sh [AUTHORS_CHECKOUT]   # default .authors/VmambaIR
#
# ITERS / WARMUP override the timed iterations (default 6 / 2); PATHS the paths beside the
# authors' (default "graphed"). BUILD_ONLY=1 stops after the builds; SKIP_BUILD=1 skips
# them (both builds are kept: our extension installed, theirs in .authors/kernel_build).
set -uo pipefail
cd "$(dirname "$0")/../.."
orig="${1:-.authors/VmambaIR}"
out="${OUT:-benchmarks/data}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
t0=$(date +%s)
# The two builds in parallel (each uses several cores).
if [ -z "${SKIP_BUILD:-}" ]; then
    ( python -m pip install --no-build-isolation --no-deps ./kernels/selective_scan > "$out/build_ours.log" 2>&1; echo "ours: rc $?" >> "$out/build_ours.log" ) &
    ( bash scripts/bench/build_authors_kernel.sh "$orig" > "$out/build_authors.log" 2>&1
      echo "authors: rc $?" >> "$out/build_authors.log" ) &
    wait
    tail -n 2 "$out/build_ours.log" "$out/build_authors.log"
    echo "builds: $(( $(date +%s) - t0 )) s"
    [ -n "${BUILD_ONLY:-}" ] && exit 0
fi
common=(--original "$orig" --paths authors ${PATHS:-graphed} --stages --stage-paths authors graphed
        --warmup "${WARMUP:-2}" --iters "${ITERS:-6}" --json "$out/")
python scripts/bench/bench_model.py -opt options/realsr_x4_psnr.yml "${common[@]}" --id model_realsr_x4_vs_authors \
    --train-batch 9 --train-size 64 --infer-sizes 1024 2>&1 | tee "$out/bench_realsr.log"
echo "real-world x4 done: $(( $(date +%s) - t0 )) s"
python scripts/bench/bench_model.py -opt options/derain.yml "${common[@]}" --id model_derain_vs_authors --checkpointing ffn \
    --train-batch 8 --train-size 128 --infer-sizes 256 1024 2048 2>&1 | tee "$out/bench_derain.log"
echo "deraining done: $(( $(date +%s) - t0 )) s"
python scripts/bench/time_to_train.py "$out"/model_realsr_x4_vs_authors.json "$out"/model_derain_vs_authors.json \
    --json "$out/time_to_train.json" 2>&1 | tee "$out/time_to_train.log"
echo "total: $(( $(date +%s) - t0 )) s"
