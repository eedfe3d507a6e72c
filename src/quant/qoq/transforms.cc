// QoQ weight transformations (see transforms.h; the derivations are in docs/QOQ.md).
#include "quant/qoq/transforms.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"

namespace qs::quant::qoq {
namespace {

bool has(const Tensor* t) { return t != nullptr && t->raw() != nullptr && t->numel() > 0; }

void check_shape(const Tensor* t, const Shape& want, const char* what, int layer) {
  QS_CHECK(t != nullptr) << "QoQ weights: " << what << " of layer " << layer << " is not set";
  QS_CHECK(t->dtype() == DType::F32 && t->shape() == want)
      << "QoQ weights: " << what << " of layer " << layer << " is " << t->desc() << ", expected F32"
      << shape_str(want);
}

// Rows are independent in every helper below: split over threads, the same result for any split.
void scale_rows(Tensor* w, const std::vector<float>& s, bool divide) {
  const int64_t cols = w->numel() / w->dim(0);
  float* p = w->data<float>();
  parallel_for(w->dim(0), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float f = s[size_t(r)];
      for (int64_t j = 0; j < cols; ++j) p[r * cols + j] = divide ? p[r * cols + j] / f : p[r * cols + j] * f;
    }
  }, 16);
}
void scale_cols(Tensor* w, const float* s, bool divide) {
  const int64_t rows = w->dim(0), cols = w->dim(1);
  float* p = w->data<float>();
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < cols; ++j) p[r * cols + j] = divide ? p[r * cols + j] / s[j] : p[r * cols + j] * s[j];
  }, 16);
}

// Rows [row0, row0 + n) of w reordered: new row row0 + i = old row row0 + perm[i]. 1-D tensors (biases) too.
void permute_rows(Tensor* w, int64_t row0, const std::vector<int32_t>& perm) {
  const int64_t cols = w->ndim() == 1 ? 1 : w->dim(1);
  float* p = w->data<float>();
  std::vector<float> old(p + row0 * cols, p + (row0 + int64_t(perm.size())) * cols);
  parallel_for(int64_t(perm.size()), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      std::copy_n(old.data() + int64_t(perm[size_t(i)]) * cols, cols, p + (row0 + i) * cols);
  }, 16);
}
void permute_cols(Tensor* w, int64_t col0, const std::vector<int32_t>& perm) {
  const int64_t rows = w->dim(0), cols = w->dim(1);
  float* p = w->data<float>();
  parallel_for(rows, [&](int64_t r0, int64_t r1) {
    std::vector<float> old(perm.size());
    for (int64_t r = r0; r < r1; ++r) {
      float* row = p + r * cols + col0;
      std::copy_n(row, perm.size(), old.data());
      for (size_t i = 0; i < perm.size(); ++i) row[i] = old[size_t(perm[i])];
    }
  }, 16);
}

void check_perm(const std::vector<int32_t>& perm, int64_t n, const char* what) {
  QS_CHECK(int64_t(perm.size()) == n) << what << ": permutation of " << perm.size() << " entries, expected " << n;
  std::vector<char> seen(size_t(n), 0);
  for (int32_t p : perm) {
    QS_CHECK(p >= 0 && p < n && !seen[size_t(p)]) << what << ": not a permutation of 0.." << n - 1;
    seen[size_t(p)] = 1;
  }
}

template <typename F>
void for_each_layer(ModelWeights& m, F&& f) {
  for (auto& l : m.layers) f(l);
}

}  // namespace

void check_weights(const ModelWeights& m) {
  const auto& c = m.config;
  const int64_t h = c.hidden_size, q = c.q_size(), kv = c.kv_size(), f = c.intermediate_size, v = c.vocab_size;
  QS_CHECK(int(m.layers.size()) == c.num_layers)
      << "QoQ weights: " << m.layers.size() << " layers, config says " << c.num_layers;
  check_shape(m.embed, {v, h}, "embed_tokens", -1);
  check_shape(m.final_norm, {h}, "final norm", -1);
  check_shape(m.lm_head, {v, h}, "lm_head", -1);
  for (int i = 0; i < c.num_layers; ++i) {
    const auto& l = m.layers[size_t(i)];
    check_shape(l.input_norm, {h}, "input_layernorm", i);
    check_shape(l.post_norm, {h}, "post_attention_layernorm", i);
    check_shape(l.q, {q, h}, "q_proj", i);
    check_shape(l.k, {kv, h}, "k_proj", i);
    check_shape(l.v, {kv, h}, "v_proj", i);
    check_shape(l.o, {h, q}, "o_proj", i);
    check_shape(l.gate, {f, h}, "gate_proj", i);
    check_shape(l.up, {f, h}, "up_proj", i);
    check_shape(l.down, {h, f}, "down_proj", i);
    if (has(l.q_bias)) check_shape(l.q_bias, {q}, "q_proj bias", i);
    if (has(l.k_bias)) check_shape(l.k_bias, {kv}, "k_proj bias", i);
    if (has(l.v_bias)) check_shape(l.v_bias, {kv}, "v_proj bias", i);
  }
}

void right_multiply_blocks(Tensor& w, const Hadamard& h) {
  const int64_t n = h.size();
  const int64_t cols = w.ndim() == 1 ? w.dim(0) : w.dim(1);
  QS_CHECK(w.dtype() == DType::F32 && cols % n == 0)
      << "right_multiply_blocks: " << w.desc() << " columns are not a multiple of " << n;
  const int64_t rows = w.numel() / n;
  float* p = w.data<float>();
  parallel_for(rows, [&](int64_t r0, int64_t r1) { h.apply(p + r0 * n, r1 - r0); }, 16);
}

void left_multiply_blocks(Tensor& w, const Hadamard& h) {
  const int64_t n = h.size();
  QS_CHECK(w.dtype() == DType::F32 && w.ndim() == 2 && w.dim(0) % n == 0)
      << "left_multiply_blocks: " << w.desc() << " rows are not a multiple of " << n;
  const int64_t cols = w.dim(1);
  float* p = w.data<float>();
  parallel_for(w.dim(0) / n, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) h.apply_columns(p + b * n * cols, cols);
  });
}

bool untie_embeddings(ModelWeights& m) {
  if (m.lm_head->raw() != m.embed->raw()) return false;
  *m.lm_head = m.lm_head->clone();
  return true;
}

namespace {
void fold_into(Tensor* norm, std::initializer_list<Tensor*> linears) {
  for (Tensor* w : linears) scale_cols(w, norm->data<float>(), false);
  std::fill_n(norm->data<float>(), norm->numel(), 1.0f);
}
bool all_ones(const Tensor* t) {
  const float* p = t->data<float>();
  return std::all_of(p, p + t->numel(), [](float x) { return x == 1.0f; });
}
}  // namespace

void fold_norms_layer(LayerWeights& l) {
  fold_into(l.input_norm, {l.q, l.k, l.v});
  fold_into(l.post_norm, {l.gate, l.up});
}

void fold_norm_head(Tensor* final_norm, Tensor* lm_head) { fold_into(final_norm, {lm_head}); }

void fold_norms(ModelWeights& m) {
  check_weights(m);
  untie_embeddings(m);
  for_each_layer(m, [&](LayerWeights& l) { fold_norms_layer(l); });
  fold_norm_head(m.final_norm, m.lm_head);
}

void rotate_residual_layer(LayerWeights& l, const Hadamard& h) {
  QS_CHECK(all_ones(l.input_norm) && all_ones(l.post_norm))
      << "rotate_residual: fold the RMSNorm weights first (a layer norm is not 1)";
  for (Tensor* w : {l.q, l.k, l.v, l.gate, l.up}) right_multiply_blocks(*w, h);
  for (Tensor* w : {l.o, l.down}) left_multiply_blocks(*w, h);
}

void rotate_residual(ModelWeights& m, const Hadamard& h) {
  check_weights(m);
  QS_CHECK(h.size() == m.config.hidden_size)
      << "rotate_residual: H has order " << h.size() << " but hidden_size is " << m.config.hidden_size;
  QS_CHECK(all_ones(m.final_norm)) << "rotate_residual: fold the RMSNorm weights first (final norm is not 1)";
  untie_embeddings(m);
  right_multiply_blocks(*m.embed, h);
  right_multiply_blocks(*m.lm_head, h);
  for_each_layer(m, [&](LayerWeights& l) { rotate_residual_layer(l, h); });
}

void rotate_value_heads_layer(LayerWeights& l, const Hadamard& hd) {
  left_multiply_blocks(*l.v, hd);
  if (has(l.v_bias)) right_multiply_blocks(*l.v_bias, hd);
  right_multiply_blocks(*l.o, hd);
}

void rotate_value_heads(ModelWeights& m, const Hadamard& hd) {
  check_weights(m);
  QS_CHECK(hd.size() == m.config.head_dim)
      << "rotate_value_heads: Hd has order " << hd.size() << " but head_dim is " << m.config.head_dim;
  for_each_layer(m, [&](LayerWeights& l) { rotate_value_heads_layer(l, hd); });
}

std::vector<int32_t> ascending_order(const float* stat, int64_t n) {
  std::vector<int32_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return stat[a] < stat[b]; });
  return perm;
}

void reorder_down(LayerWeights& l, const std::vector<int32_t>& perm) {
  check_perm(perm, l.down->dim(1), "reorder_down");
  permute_rows(l.gate, 0, perm);
  permute_rows(l.up, 0, perm);
  permute_cols(l.down, 0, perm);
}

void reorder_value_heads(LayerWeights& l, const io::ModelConfig& c, const std::vector<std::vector<int32_t>>& perms) {
  QS_CHECK(int(perms.size()) == c.num_kv_heads)
      << "reorder_value_heads: " << perms.size() << " permutations, expected one per KV head (" << c.num_kv_heads << ")";
  const int64_t d = c.head_dim;
  for (int g = 0; g < c.num_kv_heads; ++g) {
    const auto& p = perms[size_t(g)];
    check_perm(p, d, "reorder_value_heads");
    permute_rows(l.v, g * d, p);
    if (has(l.v_bias)) permute_rows(l.v_bias, g * d, p);
    for (int h = g * c.gqa_ratio(); h < (g + 1) * c.gqa_ratio(); ++h) permute_cols(l.o, h * d, p);
  }
}

std::vector<float> smooth_attention_scales(const std::vector<float>& kmax, const io::ModelConfig& c, float alpha) {
  return smooth_attention_scales(kmax, c, std::vector<float>(size_t(c.num_kv_heads), alpha));
}

std::vector<float> smooth_attention_scales(const std::vector<float>& kmax, const io::ModelConfig& c,
                                           const std::vector<float>& alpha) {
  const int64_t d = c.head_dim, half = d / 2;
  QS_CHECK(int64_t(kmax.size()) == c.kv_size())
      << "smooth_attention_scales: " << kmax.size() << " key maxima, expected " << c.kv_size();
  QS_CHECK(int64_t(alpha.size()) == c.num_kv_heads)
      << "smooth_attention_scales: " << alpha.size() << " exponents, expected one per KV head (" << c.num_kv_heads
      << ")";
  std::vector<float> lambda(kmax.size(), 1.0f);
  for (int64_t g = 0; g < c.num_kv_heads; ++g) {
    const float a_g = alpha[size_t(g)];
    QS_CHECK(a_g >= 0.0f && a_g <= 1.0f) << "SmoothAttention alpha " << a_g << " outside [0, 1]";
    for (int64_t j = 0; j < half; ++j) {
      const int64_t a = g * d + j, b = a + half;
      const float mx = std::max(kmax[size_t(a)], kmax[size_t(b)]);
      QS_CHECK(std::isfinite(mx)) << "SmoothAttention: non-finite key maximum in KV head " << g;
      const float s = mx > 0.0f ? std::clamp(std::pow(mx, a_g), 1e-5f, 1e5f) : 1.0f;
      lambda[size_t(a)] = lambda[size_t(b)] = s;
    }
  }
  return lambda;
}

void apply_smooth_attention(LayerWeights& l, const io::ModelConfig& c, const std::vector<float>& lambda) {
  QS_CHECK(int64_t(lambda.size()) == c.kv_size()) << "apply_smooth_attention: " << lambda.size()
                                                  << " scales, expected " << c.kv_size();
  std::vector<float> qs(size_t(c.q_size()));
  const int64_t d = c.head_dim;
  for (int64_t h = 0; h < c.num_heads; ++h)
    for (int64_t j = 0; j < d; ++j) qs[size_t(h * d + j)] = lambda[size_t((h / c.gqa_ratio()) * d + j)];
  scale_rows(l.q, qs, false);
  if (has(l.q_bias)) scale_rows(l.q_bias, qs, false);
  scale_rows(l.k, lambda, true);
  if (has(l.k_bias)) scale_rows(l.k_bias, lambda, true);
}

std::vector<float> smooth_down_scales(const std::vector<float>& xmax, const Tensor& down, float a, float b) {
  const int64_t rows = down.dim(0), cols = down.dim(1);
  QS_CHECK(int64_t(xmax.size()) == cols) << "smooth_down_scales: " << xmax.size() << " activation maxima, expected "
                                         << cols;
  std::vector<float> wmax(size_t(cols), 0.0f);
  const float* p = down.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) wmax[size_t(j)] = std::max(wmax[size_t(j)], std::fabs(p[r * cols + j]));
  std::vector<float> s(size_t(cols), 1.0f);
  for (int64_t j = 0; j < cols; ++j) {
    const float x = xmax[size_t(j)], w = wmax[size_t(j)];
    QS_CHECK(std::isfinite(x)) << "smooth_down_scales: non-finite activation maximum at channel " << j;
    if (x > 0.0f && w > 0.0f)
      s[size_t(j)] = std::clamp(float(std::pow(double(x), a) / std::pow(double(w), b)), 1e-5f, 1e5f);
  }
  return s;
}

void apply_smooth_down(LayerWeights& l, const std::vector<float>& s) {
  QS_CHECK(int64_t(s.size()) == l.down->dim(1))
      << "apply_smooth_down: " << s.size() << " scales, expected " << l.down->dim(1);
  scale_rows(l.up, s, true);
  scale_cols(l.down, s.data(), false);
}

}  // namespace qs::quant::qoq
