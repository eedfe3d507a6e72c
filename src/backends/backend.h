// The op interface that both backends implement (ref_cpu: naive scalar loops, the ground truth; cuda: kernels).
// Every op works on raw float pointers in the backend's memory (host for ref_cpu), row-major, no strides: a
// "[m, k]" argument is m rows of k contiguous values. Ops never allocate on the caller's behalf and are
// deterministic: the same inputs give bit-identical outputs whatever the thread count, and a row's result never
// depends on which other rows are in the same call (so batched == one by one, bit for bit).
// Conventions follow Hugging Face Llama: linear is y = x W^T (+ b) with W stored [out, in]; RoPE is rotate-half
// (pairs (j, j + head_dim/2)); attention is causal with grouped-query heads (query head h reads KV head
// h / (num_heads / num_kv_heads)) and an optional sliding window (key j visible from position p iff
// p - window < j <= p).
#pragma once

#include <cstdint>
#include <string>

namespace qs::backends {

// Causal attention of one sequence against its (contiguous) KV cache.
struct AttentionArgs {
  const float* q = nullptr;  // [m, num_heads, head_dim]: query i sits at absolute position q_pos0 + i
  const float* k = nullptr;  // [kv_len, num_kv_heads, head_dim]: keys of positions 0 .. kv_len-1 (after RoPE)
  const float* v = nullptr;  // [kv_len, num_kv_heads, head_dim]: values of positions 0 .. kv_len-1
  float* out = nullptr;      // [m, num_heads, head_dim]
  int64_t m = 0;             // number of queries
  int64_t kv_len = 0;        // keys available; must be >= q_pos0 + m
  int64_t q_pos0 = 0;        // absolute position of query 0
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // divides num_heads
  int64_t head_dim = 0;
  int64_t sliding_window = 0;  // 0: full causal attention
  double scale = 0.0;          // softmax scale (1/sqrt(head_dim) for Llama)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // y[i, o] = sum_j x[i, j] * w[o, j] (+ bias[o] when bias != nullptr).  x [m, k], w [n, k], bias [n], y [m, n].
  virtual void linear(const float* x, const float* w, const float* bias, int64_t m, int64_t k, int64_t n,
                      float* y) const = 0;
  // y[i, :] = x[i, :] / sqrt(mean_j x[i, j]^2 + eps) * w.  x, y [m, d] (y may alias x), w [d].
  virtual void rmsnorm(const float* x, const float* w, int64_t m, int64_t d, double eps, float* y) const = 0;
  // In-place rotate-half RoPE on x [m, num_heads, head_dim]; row i is at position positions[i];
  // inv_freq [head_dim / 2] (qs::io::rope_inv_freq, scaling applied). For j < head_dim/2, angle = pos*inv_freq[j]:
  //   x'[j] = x[j] cos - x[j + d/2] sin,   x'[j + d/2] = x[j + d/2] cos + x[j] sin.
  virtual void rope(float* x, int64_t m, int64_t num_heads, int64_t head_dim, const int64_t* positions,
                    const double* inv_freq) const = 0;
  virtual void attention(const AttentionArgs& a) const = 0;
  // y[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).  y may alias gate or up.
  virtual void silu_mul(const float* gate, const float* up, int64_t n, float* y) const = 0;
  // y[i, :] = table[ids[i], :].  table [vocab, d], y [m, d]; an id outside [0, vocab) throws qs::Error.
  virtual void embedding(const int32_t* ids, int64_t m, const float* table, int64_t vocab, int64_t d,
                         float* y) const = 0;
  // y[i] = a[i] + b[i].  y may alias a or b.
  virtual void add(const float* a, const float* b, int64_t n, float* y) const = 0;
};

}  // namespace qs::backends
