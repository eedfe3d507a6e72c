#!/usr/bin/env bash
# Device-side script of the GPU model runner (issue 8): unpacks gpu-pack/engine (binaries + qs-llama-tiny + the
# fixtures, packed here by `scripts/gpu/engine.sh pack`), makes the quantized test checkpoints with
# `qserve quantize` (16 cores: seconds), runs the engine GPU tests, then the requested benchmarks. Logs in $OUT.
#   here:    scripts/gpu/engine.sh pack            (build first: cmake --build build --target qserve_cli
#                                                   test_engine_cuda_executor_gpu_test test_engine_weight_fusion_test)
#   device:  run(command="bash gpu-pack/engine/engine.sh tests quick", carry=["gpu-pack/engine"])
# Steps (any order, several allowed): tests | fp8tests | kernels (the kernel GPU tests) | pdl (PDL: the engine's rule, on, off) |
# tune (measured GEMM plans: bench_gemm --tune, qserve bench tuning on vs off) | quick (llama-3-8b at batch <= 128, w4a8kv4 + fp16, breakdown) |
# final (llama-3-8b largest batch w4a8kv4,fp8,fp16 + breakdown; llama-2-70b w4a8kv4) | http (http_bench.sh) |
# accuracy (scripts/accuracy --device cuda: the full 192-window ACCURACY.md tables of both models, KV protocols
# fake-quant then serving).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = pack ]; then
  ROOT=$(cd "$HERE/../.." && pwd)
  DEST=${ENGINE_PACK_DEST:-/work/main/gpu-pack/engine}
  DATA=${QSERVE_DATA:-$ROOT/../shared/data}
  T=${ENGINE_PACK_TMP:-/tmp/engine-pack}
  rm -rf "$DEST"; mkdir -p "$DEST/data/models" "$DEST/data/fixtures" "$DEST/data/text" "$T"
  rm -rf "${T:?}"/*
  for b in qserve test_engine_cuda_executor_gpu_test test_engine_weight_fusion_test; do
    cp "$ROOT/build/$b" "$T"/ && strip "$T"/$b
  done
  # Every other GPU test too when built (step `kernels` runs them all).
  for b in "$ROOT"/build/test_*_gpu_test; do
    [ -x "$b" ] && cp "$b" "$T"/ && strip "$T/$(basename "$b")"
  done
  # bench_gemm for step `tune`, when built.
  [ -x "$ROOT/build/bench_gemm" ] && cp "$ROOT/build/bench_gemm" "$T"/ && strip "$T/bench_gemm"
  # Shared libraries the GPU machine lacks (Debian's cpp-httplib is a shared library; brotli comes with it).
  for l in libcpp-httplib.so.0.11 libbrotlicommon.so.1 libbrotlidec.so.1 libbrotlienc.so.1; do
    cp -L "/usr/lib/x86_64-linux-gnu/$l" "$T"/
  done
  tar -C "$T" -cf - . | xz -T2 -6 > "$DEST/bin.tar.xz"
  cp -r "$DATA/models/qs-llama-tiny" "$DEST/data/models/"
  cp "$DATA/fixtures/reference_generations.json" "$DATA/fixtures/reference_logits.safetensors" "$DEST/data/fixtures/"
  xz -T2 -c "$DATA/text/calibration.txt" > "$DEST/data/text/calibration.txt.xz"
  xz -T2 -c "$DATA/text/wikitext2_test.txt" > "$DEST/data/text/wikitext2_test.txt.xz"
  cp "$HERE/engine.sh" "$HERE/http_bench.sh" "$DEST/"
  # Step `accuracy`: the table script, the outlier-variant generator it runs with python3, the commit of the build.
  cp "$ROOT/scripts/accuracy" "$DEST/accuracy"
  mkdir -p "$DEST/tools" && cp "$DATA/../tools/outlier_variant.py" "$DEST/tools/"
  git -C "$ROOT" rev-parse --short HEAD > "$DEST/COMMIT"
  du -sh "$DEST"; exit 0
fi
OUT=${OUT:-out/engine}; mkdir -p "$OUT"
W=/tmp/engine; mkdir -p "$W/bin" "$W/ckpt"
xz -dc "$HERE/bin.tar.xz" | tar -C "$W/bin" -xf -
if [ ! -d "$W/data" ]; then
  cp -r "$HERE/data" "$W/data" && xz -d "$W/data/text/"*.xz
fi
export QSERVE_DATA=$W/data QSERVE_ENGINE_CKPT=$W/ckpt LD_LIBRARY_PATH=/usr/local/cuda/lib64:$W/bin:${LD_LIBRARY_PATH:-}
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
      # The evaluation tests (device scoring, KV4 read-back, the ablation modes vs the CPU): one log ($OUT keeps <= 8 files).
      for t in test_engine_logit_scores_gpu_test test_engine_kv_readback_gpu_test test_engine_eval_modes_gpu_test; do
        [ -x "$W/bin/$t" ] || continue
        echo "== $t" >> "$OUT/eval_tests.log"
        timeout 200 "$W/bin/$t" 2>&1 | tee -a "$OUT/eval_tests.log" | grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|ppl GPU|fake-quant ppl|Expected|Which is|actual" | head -40 || rc=1
      done
      ;;
    kernels)
      # Every GPU test but the engine's own (step tests), with skips counted as failures (a GPU is required).
      for f in "$W"/bin/test_*_gpu_test; do
        t=$(basename "$f")
        [ "$t" = test_engine_cuda_executor_gpu_test ] && continue
        QSERVE_REQUIRE_GPU=1 timeout 150 "$W/bin/$t" > "$OUT/$t.log" 2>&1 || rc=1
        echo "$t: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/$t.log" | tr -s ' ' | tr '\n' ' ')"
      done
      ;;
    quick)
      timeout 400 "$W/bin/qserve" bench --shape llama-3-8b --dtype w4a8kv4,fp16 --input-len 1024 --output-len 512 \
        --max-batch 128 --breakdown --json "$OUT/bench_quick.json" 2>&1 | tee "$OUT/bench_quick.log" | grep -v "decode step\|prefill .*sequences" || rc=1
      ;;
    pdl)
      # Programmatic dependent launch (kernels/common/pdl.h), same binary, alternating over PDL_MODES (default
      # "auto 1 0": QSERVE_PDL unset = the engine's rule, on for decode steps of <= 32 sequences; 1 = every step;
      # 0 = none): Llama-3-8B w4a8kv4 at PDL_BATCHES, PDL_ROUNDS rounds; other binaries in $W/bin named in PDL_BINS
      # (after qserve) run with QSERVE_PDL=1 in the same rounds. Greedy tokens of the tiny model must not change.
      M="$W/data/models/qs-llama-tiny"
      modes=${PDL_MODES:-auto 1 0}
      pdl_env() { if [ "$1" = auto ]; then env -u QSERVE_PDL "${@:2}"; else env QSERVE_PDL=$1 "${@:2}"; fi; }
      for pdl in $modes; do
        pdl_env $pdl timeout 60 "$W/bin/qserve" generate --device cuda -m "$M" -p "The quick brown fox" -n 48 \
          > "$OUT/pdl_generate_$pdl.txt" 2>/dev/null || rc=1
      done
      for pdl in $modes; do
        cmp -s "$OUT/pdl_generate_$pdl.txt" "$OUT/pdl_generate_0.txt" 2>/dev/null || [ ! -f "$OUT/pdl_generate_0.txt" ] \
          && echo "pdl: greedy text of mode $pdl identical to mode 0 (or no mode 0)" || { echo "pdl: greedy text of mode $pdl DIFFERS"; rc=1; }
      done
      for b in ${PDL_BATCHES:-1024 64 16}; do
        for round in $(seq ${PDL_ROUNDS:-2}); do
          for run in $(for x in $modes; do echo "qserve:$x"; done) $(for x in ${PDL_BINS:-}; do echo "$x:1"; done); do
            bin=${run%:*}; pdl=${run#*:}; tag=${bin}_${b}_${pdl}_$round
            pdl_env $pdl timeout 200 "$W/bin/$bin" bench --shape llama-3-8b --dtype w4a8kv4 --input-len 1024 \
              --output-len 512 --batch $b --json "$OUT/pdl_$tag.json" > "$OUT/pdl_$tag.log" 2>&1 || rc=1
            echo "$bin pdl=$pdl batch=$b round=$round: $(grep -E '^w4a8kv4 ' "$OUT/pdl_$tag.log")"
          done
        done
      done
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
    online)
      # Issue 9 on the GPU: the offline static batch (baseline) vs the serving engine with continuous batching at
      # max concurrency 256, in one call; then TTFT with the prefix cache on vs off; then latency near saturation.
      Q="$W/bin/qserve"
      timeout 200 "$Q" bench --shape llama-3-8b --dtype w4a8kv4 --input-len 1024 --output-len 512 --batch 256 \
        --json "$OUT/online_static256.json" 2>&1 | tee "$OUT/online_static256.log" | grep -v "decode step\|prefill .*sequences" || rc=1
      timeout 200 "$Q" bench --online --shape llama-3-8b --num-prompts 512 --input-len 1024 --output-len 512 \
        --max-concurrency 256 --max-num-seqs 256 --json "$OUT/online_cont256.json" 2>&1 | tee "$OUT/online_cont256.log" || rc=1
      for pc in on off; do
        flag=""; [ $pc = off ] && flag=--no-prefix-caching
        timeout 120 "$Q" bench --online --shape llama-3-8b --num-prompts 128 --shared-prefix-len 1024 --input-len 128 \
          --output-len 64 --request-rate 16 --max-num-seqs 256 $flag --json "$OUT/online_prefix_$pc.json" 2>&1 | tee "$OUT/online_prefix_$pc.log" || rc=1
      done
      timeout 200 "$Q" bench --online --shape llama-3-8b --num-prompts 400 --input-len 1024 --output-len 512 \
        --request-rate ${RATE:-24} --max-num-seqs 512 --json "$OUT/online_rate.json" 2>&1 | tee "$OUT/online_rate.log" || rc=1
      ;;
    ppl)
      # The full 192-window WikiText-2 perplexity on the GPU (serving KV rule) of the tiny model: FP16, and the
      # quantized test checkpoints of step `tests` (per-channel without GPTQ/clip, g128 RTN).
      timeout 300 "$W/bin/qserve" ppl --device cuda --kv-protocol serving --model "$W/data/models/qs-llama-tiny@label=fp16" \
        --model "$W/ckpt/tiny-pc@label=w4a8kv4-per-channel" --model "$W/ckpt/tiny-g128@label=w4a8kv4-g128-rtn" \
        --json "$OUT/ppl_cuda.json" 2>&1 | tee "$OUT/ppl_cuda.log" | grep -v "window " || rc=1
      ;;
    cli)
      # generate and serve on the GPU (the executor factory), end to end.
      Q="$W/bin/qserve"; M="$W/data/models/qs-llama-tiny"
      timeout 60 "$Q" generate --device cuda -m "$M" -p "The quick brown fox" -n 32 2>&1 | tee "$OUT/generate_cuda.log" || rc=1
      timeout 60 "$Q" generate --device cuda -m "$W/ckpt/tiny-g128" -p "The quick brown fox" -n 32 2>&1 | tee -a "$OUT/generate_cuda.log" || rc=1
      if "$Q" serve --help > /dev/null 2>&1; then
        "$Q" serve --device cuda --model "$M" --port 18080 > "$OUT/serve_cuda.log" 2>&1 & SP=$!
        for i in $(seq 60); do curl -sf localhost:18080/health > /dev/null 2>&1 && break; sleep 1; done
        curl -s localhost:18080/v1/completions -H 'Content-Type: application/json' \
          -d '{"model":"qs-llama-tiny","prompt":"The quick brown fox","max_tokens":24}' | tee -a "$OUT/serve_cuda.log"; echo
        curl -sN localhost:18080/v1/chat/completions -H 'Content-Type: application/json' \
          -d '{"model":"qs-llama-tiny","messages":[{"role":"user","content":"Hello"}],"max_tokens":16,"stream":true}' | tail -3 | tee -a "$OUT/serve_cuda.log"
        curl -s localhost:18080/metrics | grep -E "^qserve_(requests|kv)" | head -8 | tee -a "$OUT/serve_cuda.log"
        kill -INT $SP; wait $SP; echo "serve exit $?" | tee -a "$OUT/serve_cuda.log"
      fi
      ;;
    prefix)
      # Prefix caching at a low request rate: TTFT with the cache on vs off (1024 shared + 128 own tokens).
      for pc in on off; do
        flag=""; [ $pc = off ] && flag=--no-prefix-caching
        timeout 120 "$W/bin/qserve" bench --online --shape llama-3-8b --num-prompts 64 --shared-prefix-len 1024 \
          --input-len 128 --output-len 64 --request-rate ${PREFIX_RATE:-4} --max-num-seqs 256 $flag \
          --json "$OUT/online_prefix_${pc}_slow.json" 2>&1 | tee "$OUT/online_prefix_${pc}_slow.log" | grep -E "TTFT|throughput|hit rate" || rc=1
      done
      ;;
    http)
      # Issue 10: the online benchmark through HTTP vs in process, same workload and engine settings.
      OUT="$OUT" bash "$HERE/http_bench.sh" "$W/bin/qserve" || rc=1
      ;;
    accuracy)
      # The full-window accuracy tables: every ablation checkpoint of both models quantized 4 at a time (4 threads
      # each), then one `qserve ppl --device cuda` per model, fake-quant protocol first, then serving (ACC_PROTOCOLS
      # picks; ACC_DEADLINE, epoch seconds, stops in time to pack what is done). Only the
      # results (ppl*.json, rows*.json, the log) come back, in acc.tgz, refreshed after each protocol.
      A=$W/acc; mkdir -p "$A" "$W/tools"; cp "$HERE/tools/outlier_variant.py" "$W/tools/"
      for proto in ${ACC_PROTOCOLS:-fake-quant serving}; do
        # ACC_DEADLINE (epoch seconds, optional): stop in time to pack what is done before the call's limit.
        left=${ACC_TIMEOUT:-280}; [ -n "${ACC_DEADLINE:-}" ] && left=$(( ACC_DEADLINE - $(date +%s) ))
        [ "$left" -lt 20 ] && { echo "accuracy: no time left for $proto"; break; }
        timeout $left python3 "$HERE/accuracy" --device cuda --qserve "$W/bin/qserve" --work "$A" \
          --jobs 4 --threads 4 --kv-protocol $proto --commit "$(cat "$HERE/COMMIT" 2>/dev/null)" --no-render \
          > "$A/accuracy-$proto.log" 2>&1 || rc=1
        grep -hE "^\[accuracy.*(checkpoints in|cached)|rror" "$A/accuracy-$proto.log" | tail -6
        # One line per row: label ppl KL top-1.
        sed -nE 's/^([^ ]+) \[.*\]: ppl ([0-9.]+)(  KL ([0-9.]+)  top1 ([0-9.]+))?.*/\1 \2 \4 \5/p' "$A/accuracy-$proto.log" \
          | sed 's|^.*/||' | sed "s/^/$proto /"
        (cd "$A" && tar -czf "$OUT/acc.tgz" accuracy-*.log */ppl*.json */rows*.json 2>/dev/null)
      done
      ;;
    *) echo "unknown step $step" ;;
  esac
done
# $OUT returns at most 8 files: everything also goes into one archive.
tar -C "$OUT" -czf /tmp/engine-logs.tgz . && mv /tmp/engine-logs.tgz "$OUT/logs.tgz"
exit $rc
