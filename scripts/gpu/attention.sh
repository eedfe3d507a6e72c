#!/usr/bin/env bash
# Device-side script for the KV cache / attention / fused quantization kernels (issue 5). Run on the GPU machine
# from the repo root with the binaries built here and copied to gpu-pack/attn/ (see the pack step below), or
# under scripts/gpu-check (binaries in $QSERVE_GPU_PACK, tests already run there).
# Runs the GPU tests, a SASS summary (HMMA count, local memory) of the kernels, bench_attention, bench_fused and
# the PyTorch SDPA baseline (bench/sdpa_baseline.py) in the same call. Everything goes to stdout and, as ONE file
# (the device returns at most 8), to $OUT/attention_results.tgz (logs + JSON lines); $OUT = $1, $OUT or ./out.
#   pack here:  for t in test_kernels_attention_decode_gpu_test test_kernels_attention_prefill_gpu_test \
#                 test_kernels_norm_quant_gpu_test bench_attention bench_fused; do cp build-attn/$t gpu-pack/attn/; done
#   scripts/gpu/attention.sh [OUT_DIR] [--quick] [--no-tests] [--no-bench]
set -uo pipefail
OUT=${OUT:-out}
QUICK=""; BENCH=1; TESTS=1
for a in "$@"; do
  case $a in --quick) QUICK=--quick ;; --no-bench) BENCH=0 ;; --no-tests) TESTS=0 ;; -*) ;; *) OUT=$a ;; esac
done
if [ -n "${QSERVE_GPU_PACK:-}" ]; then BIN=$QSERVE_GPU_PACK; TESTS=0; else BIN=${ATTN_BIN:-gpu-pack/attn}; fi
mkdir -p "$OUT"
FINAL=$OUT
OUT=$(mktemp -d /tmp/attn_out.XXXX)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/attn_device.txt"
rc=0
if [ $TESTS = 1 ]; then
  for t in test_kernels_attention_decode_gpu_test test_kernels_attention_prefill_gpu_test \
           test_kernels_norm_quant_gpu_test; do
    "$BIN/$t" > /tmp/$t.log 2>&1 || rc=1
    { echo "=== $t"; cat /tmp/$t.log; } >> "$OUT/attn_tests.log"
    echo "$t: $(grep -E '^\[  (PASSED|FAILED) ' /tmp/$t.log | tr '\n' ' ')"
    grep -E "^(d=|prefill d=)|Failure|FAILED|error" /tmp/$t.log | head -n 40
  done
fi
if command -v cuobjdump > /dev/null; then
  cuobjdump -sass "$BIN/bench_attention" > /tmp/attn.sass 2>&1
  awk '/Function :/ {f=$3} /HMMA|LDL|STL|LOP3|PRMT/ {for (i = 1; i <= NF; ++i) if ($i ~ /^(HMMA|LDL|STL|LOP3|PRMT)/) {split($i, a, "."); c[f" "a[1]]++}}
       END {for (k in c) print c[k], k}' /tmp/attn.sass | sort -k2 | sed 's/_ZN2qs7kernels[^ ]*decode_kernel/decode_kernel/' \
       > "$OUT/attn_sass_summary.txt"
  echo "--- SASS summary (count, kernel, instruction)"; cut -c1-160 "$OUT/attn_sass_summary.txt" | head -n 40
fi
if [ $BENCH = 1 ]; then
  "$BIN/bench_fused" "$OUT" $QUICK 2>&1 | tee "$OUT/fused_bench.log" || rc=1
  "$BIN/bench_attention" "$OUT" $QUICK 2>&1 | tee "$OUT/attention_bench.log" || rc=1
  PYTHONUNBUFFERED=1 python3 bench/sdpa_baseline.py "$OUT" $QUICK 2>&1 | tee "$OUT/sdpa_bench.log" || rc=1
fi
tar czf "$FINAL/attention_results.tgz" -C "$OUT" . && echo "results: $FINAL/attention_results.tgz"
exit $rc
