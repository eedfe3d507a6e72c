#!/usr/bin/python3
# Fits the sm90 GEMM plan's cost model (src/kernels/gemm_w4a8/qgemm_plan.cc: kUsPerWave, kUsPerKTile,
# kUsPerKTileArea, kSplitCosts, kUsPerLoadedMB) to a `bench_gemm --sweep` table, by least squares on the relative
# error, and reports the fit error and the regret of the plan it implies (the measured time of the candidate the
# model ranks first over the fastest measured candidate), in sample and leaving one shape out.
#   bench/fit_gemm_plan.py [bench/results/gemm-sweep-h200-feb7216.md] [--sms 132]
# Needs numpy (Debian: python3-numpy, for /usr/bin/python3); a developer tool, not run by the tests.
# 4- and 8-way clusters are left out: they were never the fastest, and the plan does not offer them.
import argparse, collections, math, sys
import numpy as np

CFG = {"bn128_bm32": (128, 32), "bn128_bm64": (128, 64), "bn256_bm128": (256, 128), "bn128_bm128": (128, 128),
       "bn128_bm256": (128, 256)}
SPLITS = [(2, "cluster"), (2, "global"), (4, "global"), (8, "global")]
NAMES = ["kUsPerKTile", "kUsPerKTileArea", "kUsPerWave", "split 2 cluster", "split 2 global", "split 4 global",
         "split 8 global", "kUsPerLoadedMB"]


def cdiv(a, b):
    return -(-a // b)


def load(path):
    pts = []
    for line in open(path):
        if not line.startswith("| ") or line.startswith("| N"):
            continue
        r = [x.strip() for x in line.strip().strip("|").split("|")]
        try:
            n, k, m = int(r[0]), int(r[1]), int(r[2])
        except ValueError:
            continue
        sp = r[4].split()
        s = int(sp[0])
        mode = sp[1] if len(sp) > 1 else ("-" if s == 1 else "plan")
        if mode == "plan" or (mode == "cluster" and s > 2) or r[3].replace("sm90_", "") not in CFG:
            continue
        pts.append((n, k, m, r[3].replace("sm90_", ""), s, mode, float(r[5])))
    return pts


def features(n, k, m, cfg, s, mode, sms):
    bn, bm = CFG[cfg]
    kgs = k // 128
    tps = cdiv(kgs, s)
    s = cdiv(kgs, tps)
    ctas = cdiv(n, bn) * cdiv(m, bm) * s
    slots = sms
    if s > 1 and mode == "cluster":
        slots = max(s, min(sms, int(math.floor(sms / 8.0 / s)) * s * 8))
    waves = cdiv(ctas, slots)
    area = bm * bn / 16384.0
    x = [waves * tps, waves * tps * area, waves, 0, 0, 0, 0, ctas * tps * (bn * 64 + min(bm, m) * 128) / 1e6]
    if s > 1:
        x[3 + SPLITS.index((s, mode))] = waves * area
    return x


def fit(pts, sms):
    x = np.array([features(*p[:6], sms) for p in pts])
    y = np.array([p[6] for p in pts])
    return np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)[0]


def regret(coef, pts, sms, verbose=False):
    by = collections.defaultdict(list)
    for p in pts:
        by[p[:3]].append((float(np.dot(features(*p[:6], sms), coef)), p[6], p[3:6]))
    best_sum = pick_sum = 0.0
    for shape in sorted(by):
        best = min(by[shape], key=lambda t: t[1])
        pick = min(by[shape], key=lambda t: t[0])
        best_sum += best[1]
        pick_sum += pick[1]
        if verbose:
            print(f"  {shape}: pick {pick[2]} {pick[1]:.1f} us, fastest {best[2]} {best[1]:.1f} us")
    return pick_sum / best_sum


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("table", nargs="?", default="bench/results/gemm-sweep-h200-feb7216.md")
    ap.add_argument("--sms", type=int, default=132)
    a = ap.parse_args()
    pts = load(a.table)
    if not pts:
        sys.exit(f"fit_gemm_plan: no sweep rows in {a.table}")
    coef = fit(pts, a.sms)
    for name, c in zip(NAMES, coef):
        print(f"{name:18s} {c:.4f}")
    x = np.array([features(*p[:6], a.sms) for p in pts])
    y = np.array([p[6] for p in pts])
    rel = np.abs(x @ coef - y) / y
    print(f"{len(pts)} timings: median relative error {np.median(rel):.3f}, 90th percentile {np.percentile(rel, 90):.3f}")
    print(f"in sample: the plan's total time / the fastest candidates' total = {regret(coef, pts, a.sms, True):.3f}")
    for shape in sorted({p[:3] for p in pts}):
        c = fit([p for p in pts if p[:3] != shape], a.sms)
        print(f"leave {shape} out: {regret(c, [p for p in pts if p[:3] == shape], a.sms):.3f}")


if __name__ == "__main__":
    main()
