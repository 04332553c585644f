#!/usr/bin/env bash
# Build, test and benchmark on a GPU machine, in stages, logs into $LOGS (default: gpu_logs/).
#
#   bash scripts/bench/gpu_suite.sh build test scan model        # one GPU
#   bash scripts/bench/gpu_suite.sh ddp                          # needs 2 or 4 GPUs
#
# Stages:
#   build  pip-install our extension (kernels/selective_scan) against the installed torch; when
#          $MAMBA_SRC names an unpacked mamba-ssm sdist, also build its selective_scan_cuda into
#          $MAMBA_BUILD (kernels/selective_scan/tools/build_mamba_reference.py) for the comparison
#   test   pytest -m cuda (kernel against the PyTorch reference, every dtype; network fast path)
# Every tool writes a JSON record under benchmarks/data/ (then: python scripts/bench/report.py).
#   scan   scripts/bench/bench_scan.py      -> gpu_scan (eager op time) and
#          gpu_scan_kernel_time (GPU time of the ops' kernels, --kernel-time), and
#          gpu_scan_fused_{staged,transposed,mixed} (the fused op with each column mode,
#          plus fused vs unfused inference from 64x64 to 2048x2048), and
#          fused_vs_unfused (fused vs unfused at training batches, fwd + bwd)
#   segments  scripts/bench/sweep_segments.py -> scan_segments (forced segment counts)
#   model  scripts/bench/bench_model.py (compiled, graphed paths) for the real-world x4 and
#          deraining networks, and the deraining step with each activation_checkpointing mode
#          -> model_* (about 8 minutes; the authors' code beside ours: scripts/bench/authors_suite.sh)
#   ddp    scripts/bench/bench_ddp.py: 1 GPU against 2 (and 4, 8 when present) GPUs, training as the recipes
#          do (train.compile and train.cuda_graph; override with DDP_ARGS) -> ddp_scaling
set -uo pipefail
cd "$(dirname "$0")/../.."
LOGS=${LOGS:-gpu_logs}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
MAMBA_BUILD=${MAMBA_BUILD:-/tmp/build_mamba}
PY=${PYTHON:-python3}
ngpu=$($PY -c "import torch; print(torch.cuda.device_count())")

for stage in "$@"; do
  echo "=== $stage ($(date -u +%H:%M:%S))"
  case $stage in
    build)
      if [ -n "${MAMBA_SRC:-}" ]; then
        ( $PY kernels/selective_scan/tools/build_mamba_reference.py "$MAMBA_SRC" --out "$MAMBA_BUILD" \
            > "$LOGS/mamba_build.log" 2>&1; echo "mamba build rc=$?" >> "$LOGS/mamba_build.log" ) &
      fi
      t0=$SECONDS
      $PY -m pip install --no-build-isolation --no-deps -v ./kernels/selective_scan > "$LOGS/build.log" 2>&1 \
          || { tail -60 "$LOGS/build.log"; exit 1; }
      echo "extension built and installed in $((SECONDS - t0)) s"
      wait
      if [ -f "$LOGS/mamba_build.log" ]; then tail -3 "$LOGS/mamba_build.log"; fi  # (not &&: the stage must not fail without it)
      ;;
    test)
      $PY -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee "$LOGS/cuda_tests.log" | tail -40
      ;;
    scan)
      PYTHONPATH="${PYTHONPATH:-}:$MAMBA_BUILD" $PY scripts/bench/bench_scan.py ${SCAN_ARGS:-} 2>&1 | tee "$LOGS/scan.log" | tail -60
      PYTHONPATH="${PYTHONPATH:-}:$MAMBA_BUILD" $PY scripts/bench/bench_scan.py --no-torch --kernel-time --reps 20 \
          --id gpu_scan_kernel_time 2>&1 | tee "$LOGS/scan_kernel_time.log" | tail -30
      for cols in staged transposed mixed; do
        VMAMBAIR_SCAN_COLUMNS=$cols PYTHONPATH="${PYTHONPATH:-}:$MAMBA_BUILD" $PY scripts/bench/bench_scan.py --no-torch \
            --kernel-time --reps 20 --fused-only --omni-sweep 64,128,256,512,1024,2048 \
            --id "gpu_scan_fused_$cols" 2>&1 | tee "$LOGS/scan_fused_$cols.log" | tail -20
      done
      PYTHONPATH="${PYTHONPATH:-}:$MAMBA_BUILD" $PY scripts/bench/bench_scan.py --no-torch --kernel-time --reps 10 \
          --fused-only --omni-sweep 256,1024,2048 --omni-train 8x48x128,8x96x128,8x96x64,9x96x64,8x192x32 \
          --id fused_vs_unfused 2>&1 | tee "$LOGS/fused_vs_unfused.log" | tail -20
      ;;
    segments)
      $PY scripts/bench/sweep_segments.py --id scan_segments 2>&1 | tee "$LOGS/segments.log" | tail -20
      ;;
    model)
      bench="env PYTHONPATH=${PYTHONPATH:-}:$MAMBA_BUILD $PY scripts/bench/bench_model.py"
      $bench -opt options/realsr_x4_gan.yml --paths compiled graphed --train-batch 9 --train-size 64 \
          --infer-sizes 256 1024 --id model_realsr_x4 2>&1 | tee "$LOGS/model_realsr.log"
      $bench -opt options/derain.yml --paths compiled graphed --train-batch 8 --train-size 128 \
          --infer-sizes 256 512 1024 2048 --id model_derain 2>&1 | tee "$LOGS/model_derain.log"
      $bench -opt options/derain.yml --paths graphed --checkpointing none ffn block --train-batch 8 --train-size 128 \
          --infer-sizes --id model_derain_checkpointing 2>&1 | tee "$LOGS/model_derain_ckpt.log"
      ;;
    ddp)
      counts=""
      for n in 2 4 8; do [ "$ngpu" -ge "$n" ] && counts="$counts $n"; done
      [ -n "$counts" ] || { echo "ddp: needs at least 2 GPUs, this machine has $ngpu"; exit 1; }
      $PY scripts/bench/bench_ddp.py --gpus $counts ${DDP_ARGS:---compile --cuda-graph --agree-steps 0 --profile} \
          --id ddp_scaling 2>&1 | tee "$LOGS/ddp.log" | tail -30
      ;;
    *) echo "unknown stage $stage (build test scan segments model ddp)"; exit 2 ;;
  esac
done
