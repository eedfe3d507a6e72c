#!/usr/bin/python3
"""Checks decode attention's split rule against a `bench_attention --plan-sweep` file (JSON lines: per shape the
time of every split of 1..8 chunks and the plan's own choice).

The rule of plan_decode (KV4, head_dim 128): chunks = max(1, round(W x SMs / (batch x KV heads))), W warps per SM
(8). For W in 6..12 (round and floor) it prints the mean and worst loss of the rule's split against the best
measured split, plus the plan that produced the file; --table prints the shapes for W = 8.
Usage: bench/fit_decode_plan.py SWEEP.jsonl [--table]   (data: bench/results/decode-plan-sweep-*.jsonl)
"""
import json
import math
import sys


def max_chunks(ctx, c):  # plan_decode_chunks: chunk length rounded up to 16, at least 64 tokens
    chunk = max(64, ((ctx + c - 1) // c + 15) // 16 * 16)
    return 1 if chunk >= ctx else (ctx + chunk - 1) // chunk


def evaluate(rows, choose):
    losses = []
    for r in rows:
        c = choose(r)
        same = [k for k in range(1, 9) if max_chunks(r["ctx"], k) == max_chunks(r["ctx"], c)]
        t = r["us"][same[0] - 1] if same else r["plan_us"]
        losses.append((t / min(r["us"]) - 1, r, c))
    return losses


def main():
    lines = [json.loads(l) for l in open(sys.argv[1])]
    head, rows = lines[0], lines[1:]
    sms = head.get("sms", 132)
    print(f"{sys.argv[1]}: {head['device']}, {sms} SMs, {len(rows)} shapes")
    for name, choose in [("plan in the file", lambda r: r["plan_chunks"])] + [
        (f"{rnd.__name__}(W={w} x SMs / pairs)",
         (lambda w, rnd: lambda r: max(1, int(rnd(w * sms / (r["batch"] * 8)))))(w, rnd))
        for w in (6, 7, 8, 9, 10, 12) for rnd in (round, math.floor)]:
        ls = [x[0] for x in evaluate(rows, choose)]
        print(f"  {name:28} mean loss {100 * sum(ls) / len(ls):5.1f}%  worst {100 * max(ls):5.1f}%")
    if "--table" in sys.argv:
        for loss, r, c in evaluate(rows, lambda r: max(1, round(8 * sms / (r["batch"] * 8)))):
            best = r["us"].index(min(r["us"])) + 1
            print(f"  {r['model']:7} {r['batch']:4} x {r['ctx']:5}: rule {c}, best {best}, loss {100 * loss:4.0f}%")


if __name__ == "__main__":
    main()
