#!/usr/bin/env bash
# Device-side script for quantization at scale (issue 12): the GPU calibration test (GPU required), then
# `qserve quantize` (full QoQ g128, GPU calibration, default calibration) of a random-weight checkpoint in a real
# shape, timed with /usr/bin/time -v; the per-layer lines (phases, searches, report) and the totals in $OUT.
#   here:    cmake --build build --target qserve_cli test_quant_gpu_calibration_gpu_test && scripts/gpu/quantize.sh pack
#   device:  run(command="bash gpu-pack/quantize/quantize.sh", carry=["gpu-pack/quantize"])
#   device options: SHAPE (llama-3-8b), LAYERS (all; e.g. 4 for a per-layer timing), VARIANT (g128)
# A full Llama-3-8B run takes ~8 minutes of device time; LAYERS=4 about 1.5.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = pack ]; then
  ROOT=$(cd "$HERE/../.." && pwd)
  DEST=${QUANTIZE_PACK_DEST:-$ROOT/gpu-pack/quantize}
  DATA=${QSERVE_DATA:-$ROOT/../shared/data}
  T=$(mktemp -d)
  rm -rf "$DEST"; mkdir -p "$DEST/data/text" "$DEST/data/models"
  for b in qserve test_quant_gpu_calibration_gpu_test; do cp "$ROOT/build/$b" "$T/" && strip "$T/$b"; done
  for l in libcpp-httplib.so.0.11 libbrotlicommon.so.1 libbrotlidec.so.1 libbrotlienc.so.1; do
    cp -L "/usr/lib/x86_64-linux-gnu/$l" "$T/"
  done
  tar -C "$T" -cf - . | xz -T2 -6 > "$DEST/bin.tar.xz"; rm -rf "$T"
  cp -r "$DATA/configs" "$DEST/data/" && cp -r "$DATA/models/qs-llama-tiny" "$DEST/data/models/"
  for f in calibration.txt wikitext2_test.txt; do xz -T2 -c "$DATA/text/$f" > "$DEST/data/text/$f.xz"; done
  cp "$HERE/quantize.sh" "$DEST/"; git -C "$ROOT" rev-parse --short HEAD > "$DEST/COMMIT"
  du -sh "$DEST"; exit 0
fi
OUT=${OUT:-out/quantize}; mkdir -p "$OUT"
S=$(date +%s); W=/tmp/qs-quantize; mkdir -p "$W/bin"
xz -dc "$HERE/bin.tar.xz" | tar -C "$W/bin" -xf -
[ -d "$W/data" ] || { cp -r "$HERE/data" "$W/data" && xz -d "$W/data/text/"*.xz; }
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$W/bin:${LD_LIBRARY_PATH:-} QSERVE_DATA=$W/data QSERVE_THREADS=$(nproc)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
echo "commit $(cat "$HERE/COMMIT" 2>/dev/null)"
rc=0
QSERVE_REQUIRE_GPU=1 timeout 120 "$W/bin/test_quant_gpu_calibration_gpu_test" > "$OUT/gpu_calibration.log" 2>&1 || rc=1
echo "gpu calibration test: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/gpu_calibration.log" | tr -s ' ' | tr '\n' ' ')"
LAYERS_FLAG=""; [ -n "${LAYERS:-}" ] && LAYERS_FLAG="--layers $LAYERS"
rm -rf "$W/src" "$W/out"
"$W/bin/qserve" make-random --shape "${SHAPE:-llama-3-8b}" $LAYERS_FLAG --out "$W/src" 2>&1 | tail -1
/usr/bin/time -v "$W/bin/qserve" quantize --model "$W/src" --out "$W/out" --variant "${VARIANT:-g128}" --device cuda \
  --calib "$W/data/text/calibration.txt" > "$OUT/quantize.log" 2>&1 || rc=1
grep -E "layer [0-9]+/|Elapsed|Maximum resident|peak|User time|Percent|error" "$OUT/quantize.log" | tail -40
echo "total $(( $(date +%s) - S )) s"
exit $rc
