#!/usr/bin/env python3
"""PyTorch SDPA baselines for bench_attention, run on the GPU machine in the same device call.

Decode: q [B, 32|64, 1, 128] against an FP16 KV cache k/v [B, 8, ctx, 128] (GQA via enable_gqa), the flash backend
(and cuDNN where available), same batch x context grid as bench_attention (batch x ctx <= 4M). Bandwidth is counted
on the K/V bytes plus q and output, as for our kernels. Prefill: causal, Llama-3-8B heads, 16384 tokens in
sequences of 1024..8192, TFLOP/s with the same FLOP count. Cold L2 before each timed call, made as bench_attention
makes it (bench/bench_timing.cuh): a read pass over 256 MiB (clean lines), or with --flush-dirty the old 256 MiB
fill (dirty lines the timed call must write back). Median of 15.
--decode B:C[,B:C...] times decode at these shapes only (Llama-3-8B heads), as bench_attention --decode does.
Usage: sdpa_baseline.py OUT_DIR [--quick] [--flush-dirty] [--prefill] [--decode B:C,...]
  (prints a table, writes OUT_DIR/sdpa.json as JSON lines)
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


DIRTY = "--flush-dirty" in sys.argv


def time_ms(fn, reps, flush):
    for _ in range(3):
        fn()
    ts = []
    for i in range(reps):
        if DIRTY:
            flush.fill_(i)
        else:
            flush.view(torch.int32).sum()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "."
    quick = "--quick" in sys.argv
    reps = 5 if quick else 15
    dev = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    js = open(f"{out_dir}/sdpa.json", "w")
    name = torch.cuda.get_device_name()
    print(f"device {name}; torch {torch.__version__}; L2 flush {'dirty (fill)' if DIRTY else 'clean (read pass)'}")
    js.write(json.dumps({"device": name, "torch": torch.__version__}) + "\n")
    prefill_only = "--prefill" in sys.argv  # the prefill table only
    batches = [] if prefill_only else [1, 64] if quick else [1, 8, 32, 64, 128, 256]
    ctxs = [1024, 4096] if quick else [512, 1024, 2048, 4096, 8192, 32768]
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]
    shapes = [(m, b, c) for m in (("l3-8b", 32, 8), ("l2-70b", 64, 8)) for b in batches for c in ctxs if b * c <= 4 << 20]
    if "--decode" in sys.argv:  # only these shapes, Llama-3-8B heads; no prefill table
        spec = sys.argv[sys.argv.index("--decode") + 1]
        shapes = [(("l3-8b", 32, 8), int(x.split(":")[0]), int(x.split(":")[1])) for x in spec.split(",")]
    print(f"{'decode':8} {'batch':>5} {'ctx':>6} | {'flash us':>9} {'TB/s':>7} | {'cudnn us':>9} {'TB/s':>7}")
    for (model, hq, hkv), b, c in shapes:
        q = torch.randn(b, hq, 1, 128, device=dev, dtype=torch.float16)
        k = torch.randn(b, hkv, c, 128, device=dev, dtype=torch.float16)
        v = torch.randn(b, hkv, c, 128, device=dev, dtype=torch.float16)
        nbytes = 2.0 * b * hkv * c * 128 * 2 + 2.0 * b * hq * 128 * 2
        row = {"op": "decode", "model": model, "batch": b, "ctx": c}
        cells = []
        for bn, be in backends:
            try:
                with sdpa_kernel(be):
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), reps, flush)
                row[f"{bn}_us"] = ms * 1e3
                row[f"{bn}_tbs"] = nbytes / (ms * 1e-3) / 1e12
                cells.append(f"{ms * 1e3:9.1f} {row[f'{bn}_tbs']:7.3f}")
            except RuntimeError as e:  # backend unavailable for this shape
                row[f"{bn}_error"] = str(e).splitlines()[0][:120]
                cells.append(f"{'n/a':>9} {'':>7}")
        print(f"{model:8} {b:5d} {c:6d} | " + " | ".join(cells), flush=True)
        js.write(json.dumps(row) + "\n")
        del q, k, v
    print(f"\n{'prefill':8} {'len':>6} {'batch':>6} | {'flash us':>9} {'TFLOP/s':>8} | {'cudnn us':>9} {'TFLOP/s':>8}")
    for ln in () if "--decode" in sys.argv else (1024, 2048, 4096, 8192):
        b = 16384 // ln
        q = torch.randn(b, 32, ln, 128, device=dev, dtype=torch.float16)
        k = torch.randn(b, 8, ln, 128, device=dev, dtype=torch.float16)
        v = torch.randn(b, 8, ln, 128, device=dev, dtype=torch.float16)
        flops = 4.0 * b * 32 * 128 * (ln * (ln + 1) / 2)
        row = {"op": "prefill", "len": ln, "batch": b}
        cells = []
        for bn, be in backends:
            try:
                with sdpa_kernel(be):
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                                 reps, flush)
                row[f"{bn}_us"] = ms * 1e3
                row[f"{bn}_tflops"] = flops / (ms * 1e-3) / 1e12
                cells.append(f"{ms * 1e3:9.1f} {row[f'{bn}_tflops']:8.1f}")
            except RuntimeError as e:
                row[f"{bn}_error"] = str(e).splitlines()[0][:120]
                cells.append(f"{'n/a':>9} {'':>8}")
        print(f"{'l3-8b':8} {ln:6d} {b:6d} | " + " | ".join(cells), flush=True)
        js.write(json.dumps(row) + "\n")
    js.close()


if __name__ == "__main__":
    main()
