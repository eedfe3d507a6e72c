#!/usr/bin/env bash
# Device-side script for the quantized GEMMs (issues 4, 8, 11), packed here and run on the GPU machine:
#   here:    scripts/gpu/gemm.sh pack   (build first: cmake --build build --target bench_gemm
#            test_backends_gemm_w4a8_gpu_test test_kernels_gemm_repack_test test_kernels_gemm_plan_test);
#            copies stripped binaries (xz) and this script to
#            /work/main/gpu-pack/gemm (GEMM_PACK_DEST)
#   device:  run(command="bash gpu-pack/gemm/gemm.sh", carry=["gpu-pack/gemm"], timeout_s=300)
# On the device: the GEMM tests with a GPU required (QSERVE_REQUIRE_GPU=1: a skip fails; the GEMMs inside the
# engine are scripts/gpu/engine.sh's job, which carries the data its tests read), then bench_gemm --fast on the
# Llama-3-8B / Llama-2-70B linears at M 64..4096 with cuBLASLt FP8 in the same process, the gate_up + SiLU*up
# epilogue-fusion pair, and the config x split sweep. Files in $OUT: tests.log, bench.log, gemm.md, gemm.json,
# gemm_silu.md, gemm_sweep.md.
#   device options: GEMM_MS (default 64,128,256,512,1024,4096), GEMM_NO_SWEEP=1, GEMM_NO_BENCH=1 (tests only),
#   GEMM_EXTRA (more bench_gemm flags)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = pack ]; then
  ROOT=$(cd "$HERE/../.." && pwd)
  DEST=${GEMM_PACK_DEST:-/work/main/gpu-pack/gemm}
  rm -rf "$DEST" /tmp/gemm-pack; mkdir -p "$DEST" /tmp/gemm-pack
  for b in bench_gemm test_backends_gemm_w4a8_gpu_test test_kernels_gemm_repack_test test_kernels_gemm_plan_test; do
    cp "$ROOT/build/$b" /tmp/gemm-pack/ && strip "/tmp/gemm-pack/$b"
  done
  tar -C /tmp/gemm-pack -cf - . | xz -T2 -6 > "$DEST/bin.tar.xz"
  cp "$HERE/gemm.sh" "$DEST/gemm.sh"
  du -sh "$DEST"; exit 0
fi
OUT=${OUT:-out/gemm}; mkdir -p "$OUT"
W=/tmp/gemm-bin; mkdir -p "$W"
xz -dc "$HERE/bin.tar.xz" | tar -C "$W" -xf -
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$W:${LD_LIBRARY_PATH:-}
export QSERVE_THREADS=$(nproc)
LOG=$OUT/tests.log
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$LOG"
rc=0
for t in test_kernels_gemm_plan_test test_kernels_gemm_repack_test test_backends_gemm_w4a8_gpu_test; do
  s=$(date +%s)
  QSERVE_REQUIRE_GPU=1 timeout ${GEMM_TEST_TIMEOUT:-150} "$W/$t" > /tmp/$t.log 2>&1; r=$?
  [ $r = 0 ] || rc=1
  echo "== $t rc=$r ($(( $(date +%s) - s )) s): $(grep -E '^\[  PASSED  \]|FAILED TESTS|^\[  SKIPPED \] [0-9]' /tmp/$t.log | tr -s ' ' | tr '\n' ' ')" | tee -a "$LOG"
  grep -E "^\[  FAILED  \] [A-Za-z].*\(|Failure|mismatch|Which is|Expected|error" /tmp/$t.log | head -40 | tee -a "$LOG"
done
[ $rc = 0 ] || echo "TESTS FAILED: the numbers of a failing config are not valid" | tee -a "$LOG"
[ "${GEMM_NO_BENCH:-0}" = 1 ] && exit $rc
SWEEP=--sweep; [ "${GEMM_NO_SWEEP:-0}" = 1 ] && SWEEP=""
timeout ${GEMM_BENCH_TIMEOUT:-200} "$W/bench_gemm" "$OUT" --fast --ms "${GEMM_MS:-64,128,256,512,1024,4096}" $SWEEP ${GEMM_EXTRA:-} \
  > "$OUT/bench.log" 2>&1 || rc=1
grep -A 20 "layer linears summed" "$OUT/bench.log"
grep -A 14 "gate_up + SiLU" "$OUT/bench.log"
exit $rc
