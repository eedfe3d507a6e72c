// SmoothAttention strength search (see smooth_attention_search.h).
#include "quant/qoq/smooth_attention_search.h"

#include <algorithm>
#include <cmath>

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

// Causal attention of the sampled queries of window w, query heads of KV head g, against keys/values kb/vb
// [len, D] of that head. out [gqa, nq, D].
void attend(const AttentionSample& s, const io::ModelConfig& c, int64_t w, int64_t g, const float* kb,
            const float* vb, float* out) {
  const int64_t d = c.head_dim, nq = s.nq(), qsz = c.q_size(), r = c.gqa_ratio();
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> p(size_t(s.len));
  std::vector<double> acc(static_cast<size_t>(d));
  for (int64_t hh = 0; hh < r; ++hh) {
    const int64_t h = g * r + hh;
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t pos = s.q_pos[size_t(i)];
      const int64_t t0 = c.sliding_window > 0 ? std::max<int64_t>(0, pos - c.sliding_window + 1) : 0;
      const float* q = s.q.data() + (w * nq + i) * qsz + h * d;
      double mx = -INFINITY;
      for (int64_t t = t0; t <= pos; ++t) {
        const float* k = kb + t * d;
        float dot = 0.0f;
        for (int64_t j = 0; j < d; ++j) dot += q[j] * k[j];
        p[size_t(t)] = double(dot) * scale;
        mx = std::max(mx, p[size_t(t)]);
      }
      double sum = 0.0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = t0; t <= pos; ++t) {
        const double e = std::exp(p[size_t(t)] - mx);
        sum += e;
        const float* v = vb + t * d;
        for (int64_t j = 0; j < d; ++j) acc[size_t(j)] += e * double(v[j]);
      }
      float* o = out + (hh * nq + i) * d;
      for (int64_t j = 0; j < d; ++j) o[j] = float(acc[size_t(j)] / sum);
    }
  }
}

// FP attention outputs of every (window, KV head): [windows * num_kv_heads][gqa * nq * D].
std::vector<std::vector<float>> fp_outputs(const AttentionSample& s, const io::ModelConfig& c) {
  const int64_t d = c.head_dim, kv = c.kv_size(), nkv = c.num_kv_heads;
  std::vector<std::vector<float>> out(size_t(s.windows * nkv));
  parallel_for(s.windows * nkv, [&](int64_t b0, int64_t b1) {
    std::vector<float> kb(size_t(s.len * d)), vb(size_t(s.len * d));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t w = b / nkv, g = b % nkv;
      kv_head_block(s.k.data() + w * s.len * kv, s.len, kv, g, d, false, nullptr, kb.data());
      kv_head_block(s.v.data() + w * s.len * kv, s.len, kv, g, d, false, nullptr, vb.data());
      out[size_t(b)].resize(size_t(c.gqa_ratio() * s.nq() * d));
      attend(s, c, w, g, kb.data(), vb.data(), out[size_t(b)].data());
    }
  });
  return out;
}

std::vector<double> error_vs(const AttentionSample& s, const io::ModelConfig& c,
                             const std::vector<std::vector<float>>& ref, const std::vector<float>& lambda,
                             bool quant_keys, bool quant_values, const std::vector<float>& value_scale) {
  const int64_t d = c.head_dim, kv = c.kv_size(), nkv = c.num_kv_heads;
  QS_CHECK(lambda.empty() || int64_t(lambda.size()) == kv)
      << "kv4_attention_error: " << lambda.size() << " scales, expected " << kv;
  QS_CHECK(value_scale.empty() || int64_t(value_scale.size()) == kv)
      << "kv4_attention_error: " << value_scale.size() << " value scales, expected " << kv;
  std::vector<double> err_b(size_t(s.windows * nkv), 0.0);
  parallel_for(s.windows * nkv, [&](int64_t b0, int64_t b1) {
    std::vector<float> kb(size_t(s.len * d)), vb(size_t(s.len * d)), o(size_t(c.gqa_ratio() * s.nq() * d));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t w = b / nkv, g = b % nkv;
      kv_head_block(s.k.data() + w * s.len * kv, s.len, kv, g, d, quant_keys,
                    lambda.empty() ? nullptr : lambda.data(), kb.data());
      kv_head_block(s.v.data() + w * s.len * kv, s.len, kv, g, d, quant_values,
                    value_scale.empty() ? nullptr : value_scale.data(), vb.data());
      attend(s, c, w, g, kb.data(), vb.data(), o.data());
      double e = 0.0;
      const auto& r = ref[size_t(b)];
      for (size_t i = 0; i < o.size(); ++i) e += (double(o[i]) - double(r[i])) * (double(o[i]) - double(r[i]));
      err_b[size_t(b)] = e;
    }
  });
  std::vector<double> err(size_t(nkv), 0.0);
  for (int64_t b = 0; b < s.windows * nkv; ++b) err[size_t(b % nkv)] += err_b[size_t(b)];  // fixed order
  return err;
}

}  // namespace

std::vector<double> kv4_attention_error(const AttentionSample& s, const io::ModelConfig& c,
                                        const std::vector<float>& lambda, bool quant_keys, bool quant_values,
                                        const std::vector<float>& value_scale) {
  check_sample(s, c);
  return error_vs(s, c, fp_outputs(s, c), lambda, quant_keys, quant_values, value_scale);
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
  for (float a : grid)
    ch.err.push_back(error_vs(s, c, ref, smooth_attention_scales(kmax, c, a), true, true, {}));
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
