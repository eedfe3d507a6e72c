#!/usr/bin/env bash
# Device-side script for the quantized GEMMs (issue 4). Run on the GPU machine from the repo root with the
# binaries built here and copied to gpu-pack/gemm/ (test_kernels_gemm_repack_test,
# test_backends_gemm_w4a8_gpu_test, bench_gemm). Runs the tests, dumps a SASS summary (tensor-core instruction
# counts per kernel), runs the benchmark, and leaves logs and results in $OUT (or ./out).
#   scripts/gpu/gemm.sh [--quick] [--no-bench] [--no-tests]
set -uo pipefail
BIN=${GEMM_BIN:-${QSERVE_GPU_PACK:-gpu-pack/gemm}}
OUT=${OUT:-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
QUICK=""; BENCH=1; TESTS=1
for a in "$@"; do
  case $a in --quick) QUICK=--quick ;; --no-bench) BENCH=0 ;; --no-tests) TESTS=0 ;; esac
done
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
rc=0
if [ $TESTS = 1 ]; then
  for t in test_kernels_gemm_repack_test test_backends_gemm_w4a8_gpu_test; do
    QSERVE_THREADS=$(nproc) timeout ${GEMM_TEST_TIMEOUT:-240} "$BIN/$t" --gtest_brief=1 2>&1 | tee -a "$OUT/gemm_tests.log" | tail -n 40 || rc=1
  done
fi
# SASS: tensor-core instructions per kernel (IMMA = mma.sync INT8, IGMMA = wgmma INT8) and local memory use.
if command -v cuobjdump > /dev/null; then
  cuobjdump -sass "$BIN/bench_gemm" > /tmp/gemm.sass 2>&1
  awk '/Function :/ {f=$3} /IMMA|IGMMA|HGMMA|LDL|STL/ {split($0,a,/ +/); for(i in a) if (a[i] ~ /^(IMMA|IGMMA|HGMMA|LDL|STL)/) c[f" "a[i]]++}
       END {for (k in c) print c[k], k}' /tmp/gemm.sass | sort -k2 > "$OUT/gemm_sass_summary.txt"
  grep -m 5 -E "IMMA|IGMMA" /tmp/gemm.sass >> "$OUT/gemm_sass_summary.txt"
  echo "--- SASS summary (count, kernel, instruction)"; head -n 40 "$OUT/gemm_sass_summary.txt"
fi
if [ $BENCH = 1 ] && [ $rc = 0 ]; then  # nothing is timed that has not passed its tests
  timeout ${GEMM_BENCH_TIMEOUT:-400} "$BIN/bench_gemm" "$OUT" $QUICK 2>&1 | tee "$OUT/gemm_bench.log" || rc=1
elif [ $BENCH = 1 ]; then
  echo "tests failed: benchmark not run"
fi
exit $rc
