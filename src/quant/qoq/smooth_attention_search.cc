// SmoothAttention strength search (see smooth_attention_search.h).
#include "quant/qoq/smooth_attention_search.h"

#include <algorithm>
#include <cmath>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/formats.h"
#include "quant/qoq/transforms.h"

namespace qs::quant::qoq {
namespace {

void check_sample(const AttentionSample& s, const io::ModelConfig& c) {
  QS_CHECK(s.windows > 0 && s.len > 0 && s.nq() > 0) << "SmoothAttention search: empty attention sample";
  QS_CHECK(int64_t(s.q.size()) == s.windows * s.nq() * c.q_size() &&
           int64_t(s.k.size()) == s.windows * s.len * c.kv_size() && s.v.size() == s.k.size())
      << "SmoothAttention search: attention sample sizes do not match the config (" << s.windows << " windows x "
      << s.len << " positions, " << s.nq() << " queries)";
  for (int64_t p : s.q_pos) QS_CHECK(p >= 0 && p < s.len) << "SmoothAttention search: query position " << p;
  QS_CHECK(c.head_dim % 2 == 0) << "SmoothAttention search: odd head_dim " << c.head_dim;
}

// x [len, kv_size] column block of KV head g -> out [len, D]: out = f * q(x / f) with q = KV4 round trip when
// `quant` (f empty: 1).
void kv_head_block(const float* x, int64_t len, int64_t kv, int64_t g, int64_t d, bool quant, const float* f,
                   float* out) {
  std::vector<float> row(size_t(d), 0.0f);
  std::vector<uint8_t> packed(size_t(d / 2));
  for (int64_t t = 0; t < len; ++t) {
    const float* src = x + t * kv + g * d;
    for (int64_t j = 0; j < d; ++j) row[size_t(j)] = f ? src[j] / f[g * d + j] : src[j];
    if (quant) {
      const fmt4::Kv4Params p = fmt4::quantize_kv4_group(row.data(), d, packed.data());
      for (int64_t j = 0; j < d; ++j) row[size_t(j)] = fmt4::dequantize_kv4(fmt4::get_nibble(packed.data(), j), p);
    }
    for (int64_t j = 0; j < d; ++j) out[t * d + j] = f ? row[size_t(j)] * f[g * d + j] : row[size_t(j)];
  }
}

// GCC vector extensions of the native SSE width: each lane runs exactly the scalar operation sequence (separate
// IEEE multiply and add, no reassociation, no contraction: the build targets baseline x86-64 without FMA), so the
// loops below give bit-identical results to plain per-element loops, only several positions / channels at a time
// and with independent accumulators in registers.
typedef float f4 __attribute__((vector_size(16)));
typedef float f2 __attribute__((vector_size(8)));
typedef double d2 __attribute__((vector_size(16)));
constexpr int64_t kTBlock = 16;  // key positions per score block (4 x f4)
constexpr int64_t kJBlock = 16;  // value channels per accumulation block (8 x d2)

// Row pitch of the transposed keys: len rounded up to kTBlock, plus one block, so that a score block starting at
// any position below len stays inside the (zero-padded) row.
int64_t key_stride(int64_t len) { return (len + kTBlock - 1) / kTBlock * kTBlock + kTBlock; }

// Keys of one head transposed for the score loop: kt[j * stride + t] = kb[t * d + j].
void transpose_keys(const float* kb, int64_t len, int64_t d, int64_t stride, float* kt) {
  for (int64_t t = 0; t < len; ++t)
    for (int64_t j = 0; j < d; ++j) kt[j * stride + t] = kb[t * d + j];
}

f4 load4(const float* p) {
  f4 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
// Four floats widened to two pairs of doubles (exact).
void load4d(const float* p, d2& lo, d2& hi) {
#if defined(__SSE2__)
  const __m128 x = _mm_loadu_ps(p);
  lo = d2(_mm_cvtps_pd(x));
  hi = d2(_mm_cvtps_pd(_mm_movehl_ps(x, x)));
#else
  f2 a, b;
  __builtin_memcpy(&a, p, sizeof(a));
  __builtin_memcpy(&b, p + 2, sizeof(b));
  lo = __builtin_convertvector(a, d2);
  hi = __builtin_convertvector(b, d2);
#endif
}

// Causal attention of the sampled queries of window w, query heads of KV head g, against keys kt (transposed by
// transpose_keys, `stride` = key_stride(len)) and values vb [len, D] of that head. out [gqa, nq, D].
// Per query: scores in float (q . k summed over j in order), softmax weights and the value sums in double (each
// channel summed over positions in order).
void attend(const AttentionSample& s, const io::ModelConfig& c, int64_t w, int64_t g, const float* kt,
            int64_t stride, const float* vb, float* out) {
  const int64_t d = c.head_dim, nq = s.nq(), qsz = c.q_size(), r = c.gqa_ratio();
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> p(size_t(s.len));
  for (int64_t hh = 0; hh < r; ++hh) {
    const int64_t h = g * r + hh;
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t pos = s.q_pos[size_t(i)];
      const int64_t t0 = c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
      const float* q = s.q.data() + (w * nq + i) * qsz + h * d;
      double mx = -INFINITY;
      int64_t t = t0;
      // Whole blocks of kTBlock positions; lanes past `pos` (later positions, or the zero padding of kt) are
      // computed and dropped: lanes are independent, so the kept ones are unaffected.
      for (; t <= pos; t += kTBlock) {
        f4 a0 = {0, 0, 0, 0}, a1 = a0, a2 = a0, a3 = a0;
        for (int64_t j = 0; j < d; ++j) {
          const float* kj = kt + j * stride + t;
          const float qj = q[j];
          a0 += qj * load4(kj);
          a1 += qj * load4(kj + 4);
          a2 += qj * load4(kj + 8);
          a3 += qj * load4(kj + 12);
        }
        const f4 acc[4] = {a0, a1, a2, a3};
        for (int64_t l = 0; l < kTBlock && t + l <= pos; ++l) p[size_t(t + l)] = double(acc[l / 4][l % 4]) * scale;
      }
      for (t = t0; t <= pos; ++t) mx = std::max(mx, p[size_t(t)]);
      double sum = 0.0;
      for (t = t0; t <= pos; ++t) {
        p[size_t(t)] = std::exp(p[size_t(t)] - mx);
        sum += p[size_t(t)];
      }
      float* o = out + (hh * nq + i) * d;
      int64_t j0 = 0;
      for (; j0 + kJBlock <= d; j0 += kJBlock) {
        d2 c0 = {0, 0}, c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        for (t = t0; t <= pos; ++t) {
          const double e = p[size_t(t)];
          const float* v = vb + t * d + j0;
          d2 x0, x1, x2, x3, x4, x5, x6, x7;
          load4d(v, x0, x1);
          load4d(v + 4, x2, x3);
          load4d(v + 8, x4, x5);
          load4d(v + 12, x6, x7);
          c0 += e * x0;
          c1 += e * x1;
          c2 += e * x2;
          c3 += e * x3;
          c4 += e * x4;
          c5 += e * x5;
          c6 += e * x6;
          c7 += e * x7;
        }
        const d2 cs[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
        for (int64_t l = 0; l < kJBlock; ++l) o[j0 + l] = float(cs[l / 2][l % 2] / sum);
      }
      for (int64_t j = j0; j < d; ++j) {
        double a = 0.0;
        for (t = t0; t <= pos; ++t) a += p[size_t(t)] * double(vb[t * d + j]);
        o[j] = float(a / sum);
      }
    }
  }
}

// FP attention outputs of every (window, KV head): [windows * num_kv_heads][gqa * nq * D].
std::vector<std::vector<float>> fp_outputs(const AttentionSample& s, const io::ModelConfig& c) {
  const int64_t d = c.head_dim, kv = c.kv_size(), nkv = c.num_kv_heads;
  const int64_t stride = key_stride(s.len);
  std::vector<std::vector<float>> out(size_t(s.windows * nkv));
  parallel_for(s.windows * nkv, [&](int64_t b0, int64_t b1) {
    std::vector<float> kb(size_t(s.len * d)), vb(size_t(s.len * d)), kt(size_t(d * stride));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t w = b / nkv, g = b % nkv;
      kv_head_block(s.k.data() + w * s.len * kv, s.len, kv, g, d, false, nullptr, kb.data());
      kv_head_block(s.v.data() + w * s.len * kv, s.len, kv, g, d, false, nullptr, vb.data());
      transpose_keys(kb.data(), s.len, d, stride, kt.data());
      out[size_t(b)].resize(size_t(c.gqa_ratio() * s.nq() * d));
      attend(s, c, w, g, kt.data(), stride, vb.data(), out[size_t(b)].data());
    }
  });
  return out;
}

// Squared error of the attention outputs against `ref` per KV head, for each key scaling of `lambdas` (each
// empty or [kv_size]); keys / values through the KV4 round trip when quant_keys / quant_values. One parallel
// region over (scaling, window, KV head); the values of a (window, head) do not depend on the key scaling and are
// prepared once. Every sum runs in a fixed order: the result does not depend on the thread count.
std::vector<std::vector<double>> errors_vs(const AttentionSample& s, const io::ModelConfig& c,
                                           const std::vector<std::vector<float>>& ref,
                                           const std::vector<std::vector<float>>& lambdas, bool quant_keys,
                                           bool quant_values, const std::vector<float>& value_scale) {
  const int64_t d = c.head_dim, kv = c.kv_size(), nkv = c.num_kv_heads, nb = s.windows * nkv;
  const int64_t nl = int64_t(lambdas.size());
  for (const auto& lambda : lambdas)
    QS_CHECK(lambda.empty() || int64_t(lambda.size()) == kv)
        << "kv4_attention_error: " << lambda.size() << " scales, expected " << kv;
  QS_CHECK(value_scale.empty() || int64_t(value_scale.size()) == kv)
      << "kv4_attention_error: " << value_scale.size() << " value scales, expected " << kv;
  std::vector<std::vector<float>> vbs(static_cast<size_t>(nb));
  parallel_for(nb, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      vbs[size_t(b)].resize(size_t(s.len * d));
      kv_head_block(s.v.data() + (b / nkv) * s.len * kv, s.len, kv, b % nkv, d, quant_values,
                    value_scale.empty() ? nullptr : value_scale.data(), vbs[size_t(b)].data());
    }
  });
  const int64_t stride = key_stride(s.len);
  std::vector<double> err_b(size_t(nl * nb), 0.0);
  parallel_for(nl * nb, [&](int64_t b0, int64_t b1) {
    std::vector<float> kb(size_t(s.len * d)), o(size_t(c.gqa_ratio() * s.nq() * d));
    std::vector<float> kt(size_t(d * stride));
    for (int64_t lb = b0; lb < b1; ++lb) {
      const int64_t li = lb / nb, b = lb % nb, w = b / nkv, g = b % nkv;
      const auto& lambda = lambdas[size_t(li)];
      kv_head_block(s.k.data() + w * s.len * kv, s.len, kv, g, d, quant_keys,
                    lambda.empty() ? nullptr : lambda.data(), kb.data());
      transpose_keys(kb.data(), s.len, d, stride, kt.data());
      attend(s, c, w, g, kt.data(), stride, vbs[size_t(b)].data(), o.data());
      double e = 0.0;
      const auto& r = ref[size_t(b)];
      for (size_t i = 0; i < o.size(); ++i) e += (double(o[i]) - double(r[i])) * (double(o[i]) - double(r[i]));
      err_b[size_t(lb)] = e;
    }
  });
  std::vector<std::vector<double>> err(size_t(nl), std::vector<double>(size_t(nkv), 0.0));
  for (int64_t li = 0; li < nl; ++li)
    for (int64_t b = 0; b < nb; ++b) err[size_t(li)][size_t(b % nkv)] += err_b[size_t(li * nb + b)];  // fixed order
  return err;
}

}  // namespace

std::vector<double> kv4_attention_error(const AttentionSample& s, const io::ModelConfig& c,
                                        const std::vector<float>& lambda, bool quant_keys, bool quant_values,
                                        const std::vector<float>& value_scale) {
  check_sample(s, c);
  return errors_vs(s, c, fp_outputs(s, c), {lambda}, quant_keys, quant_values, value_scale)[0];
}

std::vector<std::vector<double>> kv4_attention_errors(const AttentionSample& s, const io::ModelConfig& c,
                                                      const std::vector<Kv4AttentionProbe>& probes) {
  check_sample(s, c);
  const auto ref = fp_outputs(s, c);
  std::vector<std::vector<double>> out;
  for (const Kv4AttentionProbe& p : probes)
    out.push_back(errors_vs(s, c, ref, {p.lambda}, p.quant_keys, p.quant_values, p.value_scale)[0]);
  return out;
}

std::vector<double> fp_attention_norm(const AttentionSample& s, const io::ModelConfig& c) {
  check_sample(s, c);
  const auto ref = fp_outputs(s, c);
  std::vector<double> n(size_t(c.num_kv_heads), 0.0);
  for (size_t b = 0; b < ref.size(); ++b)
    for (float x : ref[b]) n[b % size_t(c.num_kv_heads)] += double(x) * double(x);
  return n;
}

std::vector<float> default_alpha_grid() {
  std::vector<float> g;
  for (int i = 0; i <= 20; ++i) g.push_back(float(i) / 20.0f);
  return g;
}

SmoothAttentionChoice search_smooth_attention(const AttentionSample& s, const std::vector<float>& kmax,
                                              const io::ModelConfig& c, const std::vector<float>& grid,
                                              bool per_head) {
  check_sample(s, c);
  QS_CHECK(!grid.empty()) << "SmoothAttention search: empty alpha grid";
  const int64_t nkv = c.num_kv_heads;
  const auto ref = fp_outputs(s, c);
  SmoothAttentionChoice ch;
  for (const auto& r : ref)
    for (float x : r) ch.fp_norm += double(x) * double(x);
  std::vector<std::vector<float>> lambdas;
  for (float a : grid) lambdas.push_back(smooth_attention_scales(kmax, c, a));
  ch.err = errors_vs(s, c, ref, lambdas, true, true, {});
  ch.alpha.assign(size_t(nkv), grid[0]);
  if (per_head) {
    for (int64_t g = 0; g < nkv; ++g) {
      size_t best = 0;
      for (size_t i = 1; i < grid.size(); ++i)
        if (ch.err[i][size_t(g)] < ch.err[best][size_t(g)]) best = i;
      ch.alpha[size_t(g)] = grid[best];
      ch.chosen_err += ch.err[best][size_t(g)];
    }
  } else {
    size_t best = 0;
    double best_err = INFINITY;
    for (size_t i = 0; i < grid.size(); ++i) {
      double e = 0.0;
      for (double x : ch.err[i]) e += x;
      if (e < best_err) best_err = e, best = i;
    }
    ch.alpha.assign(size_t(nkv), grid[best]);
    ch.chosen_err = best_err;
  }
  ch.lambda = smooth_attention_scales(kmax, c, ch.alpha);
  return ch;
}

}  // namespace qs::quant::qoq
