#!/usr/bin/python3
"""Checks decode attention's split rule against a `bench_attention --plan-sweep` file (JSON lines: per shape the
time of every split: "us" = 1..8 chunks of one warp each, "us_w2" / "us_w4" = 1..4 chunks shared by 2 / 4 warps of a
CTA; older files have "us" only; decode-plan-sweep-h200-w3.jsonl also has "us_w3", an experimental 3-warp CTA that
never won and was removed: its times count as candidates for the best split).

The rule of plan_decode (KV4, head_dim 128): n = round(T x SMs / (batch x KV heads)) warps per (sequence, KV head),
T warps per SM; n <= 1: one chunk of one warp (with --tail: of 2 warps when one warp per pair fills 1 to 1.5 waves);
otherwise W = the largest of 1, 2, 4 (the ones the file has) not above n warps share a chunk, chunks = max(1,
round(n / W)). plan_decode is T = 8 with the tail rule. For T in 6..12 it prints the mean and worst loss of the
rule's split against the best measured split, plus the plan that produced the file; --table prints the shapes for
the T given by --t (default 8).
--tail adds the tail-wave rule (one warp per pair filling 1 to 1.5 waves of 12 warps per SM: 2 warps per chunk).
Usage: bench/fit_decode_plan.py SWEEP.jsonl [--table] [--t T] [--tail]   (data: bench/results/decode-plan-sweep-*.jsonl)
"""
import json
import math
import sys


def max_chunks(ctx, c):  # plan_decode_chunks: chunk length rounded up to 16, at least 64 tokens
    chunk = max(64, ((ctx + c - 1) // c + 15) // 16 * 16)
    return 1 if chunk >= ctx else (ctx + chunk - 1) // chunk


def times(r):  # {(chunks, warps): us} of the measured splits
    t = {(c + 1, 1): u for c, u in enumerate(r["us"])}
    for w in (2, 3, 4):
        t.update({(c + 1, w): u for c, u in enumerate(r.get(f"us_w{w}", []))})
    return t


def lookup(r, c, w):  # time of split (c, w): the measured split with the same chunk count after rounding
    t = times(r)
    same = [k for (k, ww) in sorted(t) if ww == w and max_chunks(r["ctx"], k) == max_chunks(r["ctx"], c)]
    return t[(same[0], w)] if same else None


def rule(t_per_sm, sms, warps_avail, tail=False):
    def choose(r):
        pairs = r["batch"] * 8
        n = math.floor(t_per_sm * sms / pairs + 0.5)  # llround
        if n <= 1:
            # tail: one warp per pair fills 1 to 1.5 waves of the 12 resident warps per SM -> 2 warps per chunk
            return (1, 2) if tail and 2 in warps_avail and 1 < pairs / (12 * sms) < 1.5 else (1, 1)
        w = max(x for x in warps_avail if x <= n)
        return max(1, math.floor(n / w + 0.5)), w
    return choose


def evaluate(rows, choose):
    out = []
    for r in rows:
        c, w = choose(r)
        t = lookup(r, c, w)
        if t is None:
            t = r["plan_us"]
        out.append((t / min(times(r).values()) - 1, r, (c, w)))
    return out


def main():
    lines = [json.loads(l) for l in open(sys.argv[1])]
    head, rows = lines[0], lines[1:]
    sms = head.get("sms", 132)
    avail = tuple(w for w in (1, 2, 4) if w == 1 or f"us_w{w}" in rows[0])  # what plan_decode picks from
    print(f"{sys.argv[1]}: {head['device']}, {sms} SMs, {len(rows)} shapes, warps per chunk {avail}")
    rules = [("plan in the file", lambda r: (r["plan_chunks"], r.get("plan_warps", 1)))]
    rules += [(f"T={t}", rule(t, sms, avail)) for t in (6, 7, 8, 9, 10, 12, 14, 16)]
    rules += [(f"T={t}, one warp per chunk", rule(t, sms, (1,))) for t in (8,)]
    rules += [(f"T={t}, 2 warps for a tail wave", rule(t, sms, avail, True)) for t in (7, 8, 9)]
    for name, choose in rules:
        ls = [x[0] for x in evaluate(rows, choose)]
        print(f"  {name:28} mean loss {100 * sum(ls) / len(ls):5.1f}%  worst {100 * max(ls):5.1f}%")
    if "--table" in sys.argv:
        t = float(sys.argv[sys.argv.index("--t") + 1]) if "--t" in sys.argv else 8
        for loss, r, (c, w) in evaluate(rows, rule(t, sms, avail, "--tail" in sys.argv)):
            tm = times(r)
            best = min(tm, key=tm.get)
            print(f"  {r['model']:7} {r['batch']:4} x {r['ctx']:5}: rule {c}x{w}, best {best[0]}x{best[1]} "
                  f"({tm[best]:.1f} us), loss {100 * loss:4.0f}%")


if __name__ == "__main__":
    main()
