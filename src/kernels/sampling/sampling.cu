// GPU sampling kernel (algorithm and limits in sampling.h). One CTA of 512 threads per row; radix digits of 11 bits
// (2048-bucket histograms in shared memory, block-wide scan). A select runs on the row in global memory only until
// the bucket in play holds <= 1024 elements; those are gathered (key + fixed-point weight) into shared memory and
// the select finishes there. With top_k <= 1024 the whole kept set is gathered once after the top-k select, so the
// top-p cut and the draw never touch the row again (4 passes over the row in all, none evaluating exp on it).
#include <cfloat>
#include <type_traits>

#include "kernels/common/cuda_check.h"
#include "kernels/common/pdl.h"
#include "kernels/sampling/sampling.h"

namespace qs::kernels {
namespace {

using u64 = unsigned long long;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kIdBits = 23;             // ids below 2^23 fit the low bits of the key
constexpr int kKeyBits = 32 + kIdBits;  // 55: five 11-bit digits
constexpr int kBits = 11;               // radix digit
constexpr int kBins = 1 << kBits;
constexpr int kBinsPerThread = kBins / kThreads;
constexpr int kCap = 1024;              // candidates gathered into shared memory
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
  uint32_t hc[kBins];  // elements per bucket of the current digit
  u64 hw[kBins];       // fixed-point mass per bucket (weighted selects only)
  u64 cand_key[kCap];  // gathered candidates: key and fixed-point weight
  u64 cand_w[kCap];
  u64 red_u[kWarps];
  u64 scan_c[kWarps], scan_w[kWarps];
  double red_d[kWarps];
  uint32_t bucket, count;
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
__device__ u64 add_u64(u64 a, u64 b) { return a + b; }

// The elements a select walks: the row of logits in global memory, or candidates gathered into shared memory.
struct RowSrc {
  const float* row;
  int n;
  Temp t;
  __device__ void load(int i, u64& key, u64& aux) const {
    const float l = row[i];
    key = key_of(l, i);
    aux = __float_as_uint(l);
  }
  __device__ u64 weight(u64 aux) const { return weight_of(__uint_as_float(uint32_t(aux)), t); }
};
struct CandSrc {
  const u64* keys;
  const u64* w;
  int n;
  __device__ void load(int i, u64& key, u64& aux) const { key = keys[i], aux = w[i]; }
  __device__ u64 weight(u64 aux) const { return aux; }
};

struct Sel {
  u64 key;    // the selected element's key
  u64 cum_c;  // elements with key' <= key (and <= limit)
  u64 cum_w;  // their mass (weighted selects; 0 for count selects)
};

// Copies the elements with (key & mask) == prefix and key <= limit into sm.cand_* (the caller knows there are at
// most kCap) with their weights; returns how many.
template <class Src>
__device__ int gather(const Src& src, u64 limit, u64 mask, u64 prefix, Smem& sm) {
  if (threadIdx.x == 0) sm.count = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < src.n; i += kThreads) {
    u64 key, aux;
    src.load(i, key, aux);
    if (key <= limit && (key & mask) == prefix) {
      const uint32_t slot = atomicAdd(&sm.count, 1u);
      if (slot < kCap) {
        sm.cand_key[slot] = key;
        sm.cand_w[slot] = src.weight(aux);
      }
    }
  }
  __syncthreads();
  const int n = int(min(sm.count, uint32_t(kCap)));
  __syncthreads();
  return n;
}

// One radix pass: histogram of digit `shift` over the elements still in play, then the bucket where the running
// count (by_weight false) or mass reaches `target`; results in sm.bucket / before_* / bucket_*.
template <class Src>
__device__ void radix_pass(const Src& src, u64 limit, u64 prefix, int shift, bool by_weight, u64 target, u64 before_c,
                           u64 before_w, Smem& sm) {
  for (int j = threadIdx.x; j < kBins; j += kThreads) sm.hc[j] = 0, sm.hw[j] = 0;
  if (threadIdx.x == 0) sm.bucket = ~0u;
  __syncthreads();
  const u64 hi_mask = ~0ull << (shift + kBits);
  for (int i = threadIdx.x; i < src.n; i += kThreads) {
    u64 key, aux;
    src.load(i, key, aux);
    if (key <= limit && (key & hi_mask) == prefix) {
      const uint32_t d = uint32_t(key >> shift) & (kBins - 1);
      atomicAdd(&sm.hc[d], 1u);
      if (by_weight) atomicAdd(&sm.hw[d], src.weight(aux));
    }
  }
  __syncthreads();
  // Block-wide scan: thread j owns buckets [j * kBinsPerThread, (j + 1) * kBinsPerThread).
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  u64 c[kBinsPerThread], w[kBinsPerThread], sc = 0, sw = 0;
#pragma unroll
  for (int b = 0; b < kBinsPerThread; ++b) {
    c[b] = sm.hc[threadIdx.x * kBinsPerThread + b], w[b] = sm.hw[threadIdx.x * kBinsPerThread + b];
    sc += c[b], sw += w[b];
  }
  u64 ic = sc, iw = sw;
  for (int o = 1; o < 32; o <<= 1) {
    const u64 xc = __shfl_up_sync(~0u, ic, o), xw = __shfl_up_sync(~0u, iw, o);
    if (lane >= o) ic += xc, iw += xw;
  }
  if (lane == 31) sm.scan_c[warp] = ic, sm.scan_w[warp] = iw;
  __syncthreads();
  u64 rc = before_c + ic - sc, rw = before_w + iw - sw;
  for (int v = 0; v < warp; ++v) rc += sm.scan_c[v], rw += sm.scan_w[v];
#pragma unroll
  for (int b = 0; b < kBinsPerThread; ++b) {
    const u64 excl = by_weight ? rw : rc, incl = excl + (by_weight ? w[b] : c[b]);
    if (c[b] && excl < target && incl >= target) {  // exactly one bucket satisfies this
      sm.bucket = uint32_t(threadIdx.x * kBinsPerThread + b);
      sm.before_c = rc, sm.before_w = rw, sm.bucket_c = c[b], sm.bucket_w = w[b];
    }
    rc += c[b], rw += w[b];
  }
  __syncthreads();
}

// Smallest key K among the elements of src with key <= limit such that the count (by_weight false) or the mass
// (by_weight true) of the elements with key <= K reaches `target` (1 <= target <= the total). Starts at digit
// `shift` with the key bits above it fixed to `prefix` and before_* counted below it. As soon as the bucket in
// play holds <= kCap elements (and src is the row), they are gathered into shared memory and the select goes on
// there.
template <class Src>
__device__ Sel radix_select(const Src& src, u64 limit, bool by_weight, u64 target, const Temp& t, Smem& sm,
                            int shift = kKeyBits - kBits, u64 prefix = 0, u64 before_c = 0, u64 before_w = 0) {
  for (; shift >= 0; shift -= kBits) {
    radix_pass(src, limit, prefix, shift, by_weight, target, before_c, before_w, sm);
    const uint32_t bucket = sm.bucket;
    if (bucket == ~0u) {  // only with non-finite logits: no bucket reaches the target
      __syncthreads();
      return {prefix, before_c, before_w};
    }
    prefix |= u64(bucket) << shift;
    before_c = sm.before_c, before_w = sm.before_w;
    const u64 bucket_c = sm.bucket_c, bucket_w = sm.bucket_w;
    __syncthreads();  // sm is rewritten below / by the next pass
    const u64 mask = ~0ull << shift;
    if (shift == 0 || bucket_c == 1) {
      if (shift > 0) {  // one element left: find it
        for (int i = threadIdx.x; i < src.n; i += kThreads) {
          u64 key, aux;
          src.load(i, key, aux);
          if (key <= limit && (key & mask) == prefix) sm.found = key;
        }
        __syncthreads();
        prefix = sm.found;
        __syncthreads();
      }
      return {prefix, before_c + 1, before_w + bucket_w};
    }
    if constexpr (std::is_same_v<Src, RowSrc>) {
      if (bucket_c <= kCap) {
        const int n = gather(src, limit, mask, prefix, sm);
        return radix_select(CandSrc{sm.cand_key, sm.cand_w, n}, limit, by_weight, target, t, sm, shift - kBits,
                            prefix, before_c, before_w);
      }
    }
  }
  return {prefix, before_c, before_w};  // not reached: shift 0 returns above
}

template <class Src>
__device__ u64 total_weight(const Src& src, u64 limit, Smem& sm) {
  u64 s = 0;
  for (int i = threadIdx.x; i < src.n; i += kThreads) {
    u64 key, aux;
    src.load(i, key, aux);
    if (key <= limit) s += src.weight(aux);
  }
  return block_reduce(s, add_u64, sm.red_u);
}

// Top-p cut then the draw over `src` (elements with key <= limit, of mass `mass`). Gathers the nucleus into shared
// memory when it is small enough.
template <class Src>
__device__ int32_t top_p_and_draw(const Src& src, u64 limit, u64 mass, float top_p, double u, const Temp& t,
                                  Smem& sm) {
  u64 kept = kNoLimit;  // elements kept, when known
  if (top_p < 1.0f) {  // smallest prefix with mass >= top_p * kept mass
    const double want = ceil(double(top_p) * double(mass));
    const u64 target = want < 1.0 ? 1ull : want >= double(mass) ? mass : u64(want);
    const Sel s = radix_select(src, limit, true, target, t, sm);
    limit = s.key, mass = s.cum_w, kept = s.cum_c;
  }
  // The CPU picks the first candidate whose cumulative mass exceeds u * mass; for integer sums that is the first
  // whose mass reaches floor(u * mass) + 1.
  u64 target = u64(floor(u * double(mass))) + 1;
  if (target > mass) target = mass;
  (void)kept;
  if constexpr (std::is_same_v<Src, RowSrc>) {
    if (kept <= kCap) {
      const int n = gather(src, limit, 0, 0, sm);
      return id_of(radix_select(CandSrc{sm.cand_key, sm.cand_w, n}, limit, true, target, t, sm).key);
    }
  }
  return id_of(radix_select(src, limit, true, target, t, sm).key);
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const SampleParams p) {
  __shared__ Smem sm;
  pdl_wait();  // launched by launch_pdl (pdl.h)
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
    const RowSrc src{row, vocab, t};
    const float top_p = p.top_p ? p.top_p[r] : 1.0f;
    const double u = sample_uniform(p.seed[r], p.step[r]);
    if (top_k > 0 && top_k < vocab) {
      const u64 limit = radix_select(src, kNoLimit, false, u64(top_k), t, sm).key;
      if (top_k <= kCap) {  // the kept set fits shared memory: everything else happens there
        const int n = gather(src, limit, 0, 0, sm);
        const CandSrc cs{sm.cand_key, sm.cand_w, n};
        tok = top_p_and_draw(cs, limit, total_weight(cs, kNoLimit, sm), top_p, u, t, sm);
      } else {
        tok = top_p_and_draw(src, limit, total_weight(src, limit, sm), top_p, u, t, sm);
      }
    } else {
      tok = top_p_and_draw(src, kNoLimit, total_weight(src, kNoLimit, sm), top_p, u, t, sm);
    }
    tok = min(max(tok, 0), vocab - 1);
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
  QS_CUDA_RETURN(launch_pdl(LaunchShape{dim3(unsigned(p.rows)), dim3(kThreads), 0, stream}, sample_kernel, p));
  QS_CUDA_RETURN(cudaGetLastError());
  return Status::ok();
}

}  // namespace qs::kernels
