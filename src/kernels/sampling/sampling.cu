// GPU sampling kernel (algorithm and limits in sampling.h). One CTA of 512 threads per row; every pass walks the
// row with a warp-uniform trip count so that the warp collectives (ballot, match_any, shfl) see all 32 lanes.
// Histogram updates are warp-aggregated (match_any on the digit) because the leading digits of real logits fall
// into a handful of buckets.
#include <cfloat>

#include "kernels/common/cuda_check.h"
#include "kernels/sampling/sampling.h"

namespace qs::kernels {
namespace {

using u64 = unsigned long long;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kIdBits = 24;             // ids below 2^24 fit the low bits of the key
constexpr int kKeyBits = 32 + kIdBits;  // 56: seven 8-bit digits
constexpr int32_t kMaxVocab = 1 << 20;  // 2^20 weights of at most 2^43 sum below 2^63
constexpr double kFixedOne = 0x1p43;    // fixed-point weight of probability 1
constexpr u64 kNoLimit = ~0ull;

// The sort key: ascending key = descending logit, then ascending id (the CPU's candidate order). -0 and +0 tie.
__device__ __forceinline__ u64 key_of(float x, int32_t id) {
  uint32_t b = __float_as_uint(x);
  if ((b << 1) == 0) b = 0;
  const uint32_t asc = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (u64(~asc) << kIdBits) | uint32_t(id);
}
__device__ __forceinline__ int32_t id_of(u64 key) { return int32_t(key & ((1u << kIdBits) - 1)); }

struct Temp {
  double inv_t;  // 1 / double(temperature)
  double mx;     // double(max logit) * inv_t
};
// exp(double(l) * inv_t - mx) as the CPU computes it (no contraction), in 2^-43 fixed point.
__device__ __forceinline__ u64 weight_of(float l, const Temp& t) {
  const double p = exp(__dsub_rn(__dmul_rn(double(l), t.inv_t), t.mx));
  return __double2ull_rn(__dmul_rn(p, kFixedOne));
}

// model::sample_uniform (model/sampling.cc), which this must equal bit for bit.
__device__ __forceinline__ double sample_uniform(uint64_t seed, uint64_t step) {
  uint64_t z = seed + (step + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

struct Smem {
  uint32_t hc[256];  // elements per bucket of the current digit
  u64 hw[256];       // fixed-point mass per bucket (weighted selects only)
  u64 red_u[kWarps];
  double red_d[kWarps];
  uint32_t bucket;
  u64 before_c, before_w, bucket_c, bucket_w, found;
};

template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* red) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(~0u, v, o));
  __syncthreads();  // red may still be read by a previous reduction
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = red[0];
  for (int w = 1; w < kWarps; ++w) v = op(v, red[w]);
  return v;
}

// Sum of the fixed-point weights of the elements with key <= limit.
__device__ u64 total_weight(const float* row, int vocab, u64 limit, const Temp& t, Smem& sm) {
  u64 s = 0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float l = row[i];
    if (key_of(l, i) <= limit) s += weight_of(l, t);
  }
  return block_reduce(s, [](u64 a, u64 b) { return a + b; }, sm.red_u);
}

struct Sel {
  u64 key;    // the selected element's key
  u64 cum_w;  // mass of the elements with key' <= key (and <= limit)
};

// Smallest key K among the elements with key <= limit such that the count (by_weight false) or the mass
// (by_weight true) of the elements with key <= K reaches `target` (1 <= target <= the total).
__device__ Sel radix_select(const float* row, int vocab, u64 limit, bool by_weight, u64 target, const Temp& t,
                            Smem& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  u64 prefix = 0, before_c = 0, before_w = 0;
  for (int shift = kKeyBits - 8; shift >= 0; shift -= 8) {
    for (int j = threadIdx.x; j < 256; j += kThreads) sm.hc[j] = 0, sm.hw[j] = 0;
    __syncthreads();
    const u64 hi_mask = ~0ull << (shift + 8);
    for (int base = 0; base < vocab; base += kThreads) {
      const int i = base + threadIdx.x;
      bool in = false;
      uint32_t d = 256;
      u64 w = 0;
      if (i < vocab) {
        const float l = row[i];
        const u64 key = key_of(l, i);
        in = key <= limit && (key & hi_mask) == prefix;
        if (in) {
          d = uint32_t(key >> shift) & 255u;
          if (by_weight) w = weight_of(l, t);
        }
      }
      const unsigned any = __ballot_sync(~0u, in);
      if (!any) continue;
      const unsigned peers = __match_any_sync(~0u, d);
      u64 wsum = 0;
      if (by_weight)
        for (unsigned m = any; m; m &= m - 1) {
          const int j = __ffs(m) - 1;
          const u64 wj = __shfl_sync(~0u, w, j);
          if ((peers >> j) & 1u) wsum += wj;
        }
      if (in && __ffs(peers) - 1 == lane) {
        atomicAdd(&sm.hc[d], uint32_t(__popc(peers)));
        if (by_weight) atomicAdd(&sm.hw[d], wsum);
      }
    }
    __syncthreads();
    if (warp == 0) {  // lane owns buckets 8*lane .. 8*lane+7
      u64 c[8], w[8], sc = 0, sw = 0;
      for (int b = 0; b < 8; ++b) {
        c[b] = sm.hc[8 * lane + b], w[b] = sm.hw[8 * lane + b];
        sc += c[b], sw += w[b];
      }
      u64 ic = sc, iw = sw;  // inclusive scans over lanes
      for (int o = 1; o < 32; o <<= 1) {
        const u64 xc = __shfl_up_sync(~0u, ic, o), xw = __shfl_up_sync(~0u, iw, o);
        if (lane >= o) ic += xc, iw += xw;
      }
      u64 rc = before_c + ic - sc, rw = before_w + iw - sw;  // before this lane's first bucket
      int hit = -1, last = -1;
      u64 hc0 = 0, hw0 = 0, lc0 = 0, lw0 = 0;
      for (int b = 0; b < 8; ++b) {
        if (c[b]) last = b, lc0 = rc, lw0 = rw;
        if (hit < 0 && c[b] && (by_weight ? rw + w[b] : rc + c[b]) >= target) hit = b, hc0 = rc, hw0 = rw;
        rc += c[b], rw += w[b];
      }
      const unsigned hits = __ballot_sync(~0u, hit >= 0), lasts = __ballot_sync(~0u, last >= 0);
      // No hit can only come from non-finite logits: take the last element in play so the token stays valid.
      const int src = hits ? __ffs(hits) - 1 : (lasts ? 31 - __clz(lasts) : 0);
      if (lane == src) {
        const int b = hits ? hit : last < 0 ? 0 : last;
        sm.bucket = uint32_t(8 * lane + b);
        sm.before_c = hits ? hc0 : lc0;
        sm.before_w = hits ? hw0 : lw0;
        sm.bucket_c = c[b];
        sm.bucket_w = w[b];
      }
    }
    __syncthreads();
    prefix |= u64(sm.bucket) << shift;
    before_c = sm.before_c, before_w = sm.before_w;
    const u64 bucket_c = sm.bucket_c, bucket_w = sm.bucket_w;
    if (bucket_c <= 1 || shift == 0) {
      if (shift > 0 && bucket_c == 1) {  // one element left: find it
        const u64 mask = ~0ull << shift;
        for (int i = threadIdx.x; i < vocab; i += kThreads) {
          const u64 key = key_of(row[i], i);
          if (key <= limit && (key & mask) == prefix) sm.found = key;
        }
        __syncthreads();
        prefix = sm.found;
      }
      __syncthreads();  // sm is reused by the caller
      return {prefix, before_w + bucket_w};
    }
  }
  return {prefix, before_w};  // not reached: shift 0 returns above
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const SampleParams p) {
  __shared__ Smem sm;
  const int64_t r = blockIdx.x;
  const int vocab = p.vocab;
  const float* row = p.logits + r * (p.ld ? p.ld : vocab);

  // Pass 1: the smallest key = the largest logit, lowest id on ties (model::argmax).
  u64 mk = kNoLimit;
  for (int i = threadIdx.x; i < vocab; i += kThreads) mk = min(mk, key_of(row[i], i));
  mk = block_reduce(mk, [](u64 a, u64 b) { return a < b ? a : b; }, sm.red_u);
  const int32_t amax = min(id_of(mk), vocab - 1);
  const float temp = p.temperature ? p.temperature[r] : 0.0f;
  const int32_t top_k = p.top_k ? p.top_k[r] : 0;
  int32_t tok = amax;
  if (temp > 0.0f && top_k != 1) {
    Temp t;
    t.inv_t = 1.0 / double(temp);
    t.mx = __dmul_rn(double(row[amax]), t.inv_t);
    u64 limit = kNoLimit;
    if (top_k > 0 && top_k < vocab) limit = radix_select(row, vocab, kNoLimit, false, u64(top_k), t, sm).key;
    u64 mass = total_weight(row, vocab, limit, t, sm);
    const float top_p = p.top_p ? p.top_p[r] : 1.0f;
    if (top_p < 1.0f) {  // smallest prefix with mass >= top_p * kept mass
      const double want = ceil(double(top_p) * double(mass));
      const u64 target = want < 1.0 ? 1ull : want >= double(mass) ? mass : u64(want);
      const Sel s = radix_select(row, vocab, limit, true, target, t, sm);
      limit = s.key, mass = s.cum_w;
    }
    // The CPU picks the first candidate whose cumulative mass exceeds u * mass; for integer sums that is the
    // first whose mass reaches floor(u * mass) + 1.
    const double u = sample_uniform(p.seed[r], p.step[r]);
    u64 target = u64(floor(u * double(mass))) + 1;
    if (target > mass) target = mass;
    tok = min(id_of(radix_select(row, vocab, limit, true, target, t, sm).key), vocab - 1);
  }
  if (p.out_logprob) {
    const double mxl = double(row[amax]);
    double s = 0.0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) s += exp(double(row[i]) - mxl);
    s = block_reduce(s, [](double a, double b) { return a + b; }, sm.red_d);
    if (threadIdx.x == 0) p.out_logprob[r] = float(double(row[tok]) - mxl - log(s));
  }
  if (threadIdx.x == 0) p.out_token[r] = tok;
}

}  // namespace

Status sample(const SampleParams& p, cudaStream_t stream) {
  if (p.rows < 0) return Status::error("sample: rows must be >= 0, got " + std::to_string(p.rows));
  if (p.vocab < 1 || p.vocab > kMaxVocab)
    return Status::error("sample: vocab must be in [1, " + std::to_string(kMaxVocab) + "], got " +
                         std::to_string(p.vocab));
  if (p.ld != 0 && p.ld < p.vocab) return Status::error("sample: ld is smaller than vocab");
  if (!p.logits || !p.out_token) return Status::error("sample: logits and out_token are required");
  if (p.temperature && (!p.seed || !p.step))
    return Status::error("sample: seed and step are required when temperature is given");
  if (p.rows == 0) return Status::ok();
  sample_kernel<<<p.rows, kThreads, 0, stream>>>(p);
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace qs::kernels
