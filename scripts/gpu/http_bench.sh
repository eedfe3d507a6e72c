#!/usr/bin/env bash
# Issue 10's last "Must show": the online benchmark through HTTP reaches >= 85% of the engine's in-process online
# throughput at the same concurrency. Runs, with the same workload and engine settings:
#   1. `qserve bench --online` in process (Llama-3-8B shape, random weights, W4A8KV4 on the GPU runner);
#   2. `qserve serve` on the same shape/weights/settings (port 0: the port is read from its log), waits for /health;
#   3. `qserve bench --online --url` against it (streaming completions, token-id prompts, one connection per
#      in-flight request); then SIGINT to the server (SIGKILL after 30 s);
# and prints both output throughputs and their ratio. Logs and JSON in $OUT (http_*.log / http_*.json).
# Exit status: 0 when both runs completed every request with the same token totals (and, on the GPU, the ratio
# is >= HTTP_BENCH_TARGET), 1 otherwise, with a line saying which step failed; 77 (skip) in local mode without data.
# ctest runs the local mode (server/http_bench_script).
#   device:  bash http_bench.sh /path/to/qserve           (engine.sh step `http` calls it this way)
#   here:    HTTP_BENCH_LOCAL=1 scripts/gpu/http_bench.sh build/qserve
#            (the logic on the CPU: qs-llama-tiny from $QSERVE_DATA, --device cpu, tiny lengths)
# Knobs (env): NUM_PROMPTS, CONCURRENCY, INPUT_LEN, OUTPUT_LEN, MAX_NUM_SEQS, MAX_BATCHED_TOKENS, SHAPE,
# HTTP_BENCH_TARGET (0.85), RUN_TIMEOUT (s per benchmark run), UP_TIMEOUT (s for the server to come up).
set -uo pipefail
Q=${1:-${QSERVE:-build/qserve}}
OUT=${OUT:-out/http}
mkdir -p "$OUT"
[ -x "$Q" ] || { echo "http_bench: FAILED: no qserve binary at $Q"; exit 1; }

if [ "${HTTP_BENCH_LOCAL:-0}" = 1 ]; then
  DATA=${QSERVE_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}
  [ -d "$DATA/models/qs-llama-tiny" ] || { echo "http_bench: skipped: no $DATA/models/qs-llama-tiny"; exit 77; }
  SRC=(--model "$DATA/models/qs-llama-tiny"); EXEC=(--device cpu)
  : "${NUM_PROMPTS:=8}" "${CONCURRENCY:=4}" "${INPUT_LEN:=24}" "${OUTPUT_LEN:=8}" "${MAX_NUM_SEQS:=4}"
  : "${RUN_TIMEOUT:=300}" "${UP_TIMEOUT:=120}"
  TARGET_CHECK=0
else
  SRC=(--shape "${SHAPE:-llama-3-8b}"); EXEC=(--dtype w4a8kv4)
  # ~35 s per run on the H200 at ~14k output tok/s (BENCHMARKS.md, issue 9), plus weights and graph capture.
  : "${NUM_PROMPTS:=1024}" "${CONCURRENCY:=256}" "${INPUT_LEN:=1024}" "${OUTPUT_LEN:=512}" "${MAX_NUM_SEQS:=256}"
  : "${RUN_TIMEOUT:=200}" "${UP_TIMEOUT:=150}"
  TARGET_CHECK=1
fi
: "${MAX_BATCHED_TOKENS:=8192}" "${HTTP_BENCH_TARGET:=0.85}"
MAX_CONTEXT=$((INPUT_LEN + OUTPUT_LEN + 2))
WORK=(--num-prompts "$NUM_PROMPTS" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN"
      --max-concurrency "$CONCURRENCY" --seed 1)
echo "http_bench: ${SRC[*]}, $NUM_PROMPTS requests of $INPUT_LEN in / $OUTPUT_LEN out, concurrency $CONCURRENCY," \
     "max-num-seqs $MAX_NUM_SEQS, max batched tokens $MAX_BATCHED_TOKENS, max context $MAX_CONTEXT"

fail() { echo "http_bench: FAILED: $*"; exit 1; }
json_num() { sed -n "s/.*\"$2\": *\([0-9.eE+-]*\).*/\1/p" "$1" | head -1; }

# 1. In process.
t0=$(date +%s)
timeout "$RUN_TIMEOUT" "$Q" bench --online "${SRC[@]}" "${EXEC[@]}" "${WORK[@]}" --max-num-seqs "$MAX_NUM_SEQS" \
  --max-batch-tokens "$MAX_BATCHED_TOKENS" --max-context "$MAX_CONTEXT" --json "$OUT/http_inproc.json" \
  > "$OUT/http_inproc.log" 2>&1
rc=$?
echo "http_bench: in-process run: exit $rc in $(( $(date +%s) - t0 )) s"
[ $rc -eq 0 ] || { tail -20 "$OUT/http_inproc.log"; fail "the in-process benchmark (exit $rc; 124 = timeout $RUN_TIMEOUT s)"; }

# 2. The server, same weights (same seed) and engine settings.
"$Q" serve "${SRC[@]}" "${EXEC[@]}" --port 0 --served-model-name bench --max-num-seqs "$MAX_NUM_SEQS" \
  --max-num-batched-tokens "$MAX_BATCHED_TOKENS" --max-context "$MAX_CONTEXT" --max-queue $((NUM_PROMPTS + 64)) \
  --seed 1 > "$OUT/http_serve.log" 2>&1 &
SP=$!
stop_server() {
  kill -0 "$SP" 2>/dev/null || return 0
  kill -INT "$SP"
  for _ in $(seq 60); do kill -0 "$SP" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$SP" 2>/dev/null && { echo "http_bench: the server ignored SIGINT for 30 s: SIGKILL"; kill -9 "$SP"; }
  wait "$SP" 2>/dev/null
}
trap stop_server EXIT
health() {  # GET /health on 127.0.0.1:$1 -> 0 when it answers 200
  if command -v curl > /dev/null; then curl -sf -m 2 "http://127.0.0.1:$1/health" > /dev/null; return; fi
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
  head -1 <&3 | grep -q " 200 "; local r=$?; exec 3<&-; return $r
}
PORT=""
t0=$(date +%s)
while [ $(( $(date +%s) - t0 )) -lt "$UP_TIMEOUT" ]; do
  kill -0 "$SP" 2>/dev/null || { tail -20 "$OUT/http_serve.log"; fail "qserve serve exited while starting"; }
  [ -z "$PORT" ] && PORT=$(sed -n 's|.* on http://[^ ]*:\([0-9][0-9]*\)/v1.*|\1|p' "$OUT/http_serve.log" | head -1)
  if [ -n "$PORT" ] && health "$PORT"; then break; fi
  sleep 1
done
{ [ -n "$PORT" ] && health "$PORT"; } || { tail -20 "$OUT/http_serve.log"; fail "qserve serve not healthy after $UP_TIMEOUT s"; }
echo "http_bench: server up on port $PORT after $(( $(date +%s) - t0 )) s"

# 3. Through HTTP, the same requests (the same vocabulary and seed).
t0=$(date +%s)
timeout "$RUN_TIMEOUT" "$Q" bench --online --url "http://127.0.0.1:$PORT" --served-model-name bench "${SRC[@]}" \
  "${WORK[@]}" --json "$OUT/http_http.json" > "$OUT/http_http.log" 2>&1
rc=$?
echo "http_bench: HTTP run: exit $rc in $(( $(date +%s) - t0 )) s"
stop_server
trap - EXIT
grep -E "^\[qserve\] (stopped|SIG)" "$OUT/http_serve.log" | tail -2
[ $rc -eq 0 ] || { tail -20 "$OUT/http_http.log"; fail "the HTTP benchmark (exit $rc; 124 = timeout $RUN_TIMEOUT s)"; }

a=$(json_num "$OUT/http_inproc.json" output_throughput)
h=$(json_num "$OUT/http_http.json" output_throughput)
[ -n "$a" ] && [ -n "$h" ] || fail "no output_throughput in $OUT/http_inproc.json / http_http.json"
for f in inproc http; do
  echo "  $f: $(grep -E "Output token throughput|Mean TTFT|Median TPOT|Median ITL" "$OUT/http_$f.log" | tr -s ' ' | tr '\n' ';')"
done
for k in total_input_tokens total_output_tokens completed; do  # the same requests, every token delivered
  x=$(json_num "$OUT/http_inproc.json" $k); y=$(json_num "$OUT/http_http.json" $k)
  [ "$x" = "$y" ] || fail "$k differs: in process $x, through HTTP $y"
done
ratio=$(awk -v a="$a" -v h="$h" 'BEGIN { printf "%.3f", h / a }')
ok=$(awk -v r="$ratio" -v t="$HTTP_BENCH_TARGET" 'BEGIN { print (r >= t) ? 1 : 0 }')
echo "http_bench: output tok/s in process $a, through HTTP $h, ratio $ratio (target >= $HTTP_BENCH_TARGET:" \
     "$([ "$ok" = 1 ] && echo met || echo MISSED))"
echo "{\"in_process_output_throughput\": $a, \"http_output_throughput\": $h, \"ratio\": $ratio}" > "$OUT/http_ratio.json"
[ "$TARGET_CHECK" = 0 ] || [ "$ok" = 1 ] || exit 1
exit 0
