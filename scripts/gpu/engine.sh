#!/usr/bin/env bash
# Device-side script of the GPU model runner (issue 8): unpacks gpu-pack/engine (binaries + qs-llama-tiny + the
# fixtures, packed here by `scripts/gpu/engine.sh pack`), makes the quantized test checkpoints with
# `qserve quantize` (16 cores: seconds), runs the engine GPU tests, then the requested benchmarks. Logs in $OUT.
#   here:    scripts/gpu/engine.sh pack            (build first: cmake --build build --target qserve_cli
#                                                   test_engine_cuda_executor_gpu_test test_engine_weight_fusion_test)
#   device:  run(command="bash gpu-pack/engine/engine.sh tests quick", carry=["gpu-pack/engine"])
# Steps (any order, several allowed): tests | fp8tests | kernels (the kernel GPU tests) | quick (llama-3-8b at batch <= 128, w4a8kv4 + fp16, breakdown) |
# final (llama-3-8b largest batch w4a8kv4,fp8,fp16 + breakdown; llama-2-70b w4a8kv4).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = pack ]; then
  ROOT=$(cd "$HERE/../.." && pwd)
  DEST=${ENGINE_PACK_DEST:-/work/main/gpu-pack/engine}
  DATA=${QSERVE_DATA:-$ROOT/../shared/data}
  rm -rf "$DEST"; mkdir -p "$DEST/data/models" "$DEST/data/fixtures" "$DEST/data/text" /tmp/engine-pack
  rm -rf /tmp/engine-pack/*
  for b in qserve test_engine_cuda_executor_gpu_test test_engine_weight_fusion_test; do
    cp "$ROOT/build/$b" /tmp/engine-pack/ && strip /tmp/engine-pack/$b
  done
  # The kernel tests too when built (step `kernels`: after a change to the kernels' launch code).
  for b in test_kernels_elementwise_gpu_test test_kernels_norm_quant_gpu_test test_kernels_attention_decode_gpu_test \
           test_kernels_attention_prefill_gpu_test test_backends_gemm_w4a8_gpu_test; do
    [ -x "$ROOT/build/$b" ] && cp "$ROOT/build/$b" /tmp/engine-pack/ && strip /tmp/engine-pack/$b
  done
  tar -C /tmp/engine-pack -cf - . | xz -T2 -6 > "$DEST/bin.tar.xz"
  cp -r "$DATA/models/qs-llama-tiny" "$DEST/data/models/"
  cp "$DATA/fixtures/reference_generations.json" "$DATA/fixtures/reference_logits.safetensors" "$DEST/data/fixtures/"
  xz -T2 -c "$DATA/text/calibration.txt" > "$DEST/data/text/calibration.txt.xz"
  xz -T2 -c "$DATA/text/wikitext2_test.txt" > "$DEST/data/text/wikitext2_test.txt.xz"
  cp "$HERE/engine.sh" "$DEST/engine.sh"
  du -sh "$DEST"; exit 0
fi
OUT=${OUT:-out/engine}; mkdir -p "$OUT"
W=/tmp/engine; mkdir -p "$W/bin" "$W/ckpt"
xz -dc "$HERE/bin.tar.xz" | tar -C "$W/bin" -xf -
if [ ! -d "$W/data" ]; then
  cp -r "$HERE/data" "$W/data" && xz -d "$W/data/text/"*.xz
fi
export QSERVE_DATA=$W/data QSERVE_ENGINE_CKPT=$W/ckpt LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export QSERVE_THREADS=$(nproc)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
rc=0
for step in "$@"; do
  case $step in
    tests)
      if [ ! -d "$W/ckpt/tiny-pc" ]; then
        "$W/bin/qserve" quantize --model "$W/data/models/qs-llama-tiny" --out "$W/ckpt/tiny-pc" --variant per-channel \
          --no-gptq --no-clip --calib-samples 8 --calib "$W/data/text/calibration.txt" --quiet > "$OUT/quantize.log" 2>&1 || rc=1
        "$W/bin/qserve" quantize --model "$W/data/models/qs-llama-tiny" --out "$W/ckpt/tiny-g128" --variant g128 \
          --rtn --calib "$W/data/text/calibration.txt" --quiet >> "$OUT/quantize.log" 2>&1 || rc=1
      fi
      for t in test_engine_weight_fusion_test test_engine_cuda_executor_gpu_test; do
        timeout 300 "$W/bin/$t" 2>&1 | tee "$OUT/$t.log" | grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|error|agrees|fp16 greedy|perplexity|Expected|Which is|actual" | head -60 || rc=1
      done
      ;;
    kernels)
      for t in test_kernels_elementwise_gpu_test test_kernels_norm_quant_gpu_test test_kernels_attention_decode_gpu_test \
               test_kernels_attention_prefill_gpu_test test_backends_gemm_w4a8_gpu_test; do
        [ -x "$W/bin/$t" ] || continue
        timeout 150 "$W/bin/$t" > "$OUT/$t.log" 2>&1 || rc=1
        echo "$t: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/$t.log" | tr -s ' ' | tr '\n' ' ')"
      done
      ;;
    quick)
      timeout 400 "$W/bin/qserve" bench --shape llama-3-8b --dtype w4a8kv4,fp16 --input-len 1024 --output-len 512 \
        --max-batch 128 --breakdown --json "$OUT/bench_quick.json" 2>&1 | tee "$OUT/bench_quick.log" | grep -v "decode step\|prefill .*sequences" || rc=1
      ;;
    fp8tests)
      timeout 120 "$W/bin/test_engine_cuda_executor_gpu_test" --gtest_filter='*Fp8*:*RandomWeights*:*BadInput*' 2>&1 \
        | tee "$OUT/fp8_tests.log" | grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|fp8:|Expected|actual" || rc=1
      ;;
    final)
      # fp8 last: were it to fault the device, the other two rows are already measured.
      timeout 480 "$W/bin/qserve" bench --shape llama-3-8b --dtype w4a8kv4,fp16,fp8 --input-len 1024 --output-len 512 \
        --breakdown --json "$OUT/bench_llama3_8b.json" 2>&1 | tee "$OUT/bench_llama3_8b.log" | grep -v "decode step\|prefill .*sequences" || rc=1
      ;;
    final70)
      timeout 400 "$W/bin/qserve" bench --shape llama-2-70b --dtype w4a8kv4 --input-len 1024 --output-len 512 \
        --max-batch ${MAX70:-512} --json "$OUT/bench_llama2_70b.json" 2>&1 | tee "$OUT/bench_llama2_70b.log" | grep -v "decode step\|prefill .*sequences" || rc=1
      ;;
    *) echo "unknown step $step" ;;
  esac
done
exit $rc
