// The reference CPU backend's FP32 ops (see backends/backend.h for the contract of each op): naive scalar loops,
// parallel over independent output rows/elements with qs::parallel_for, no cross-thread reductions, so results
// are bit-identical from run to run and independent of the thread count and of the batch composition.
// Precision policy: every reduction accumulates in double except linear's dot product, which sums blocks of 64
// products in eight fp32 lanes (8 products per lane) and adds the block sums in double: relative error per
// block ~8 * 2^-24, far below the 1e-4 golden tolerance, and 3-4x faster than all-double accumulation.
// Softmax, RMSNorm statistics, RoPE angles and SiLU are computed in double and rounded once to fp32.
#pragma once

#include <cstdint>

#include "backends/backend.h"

namespace qs::backends::ref_cpu {

// Free functions (usable directly by tests and other references); the Backend object below forwards to them.
void linear(const float* x, const float* w, const float* bias, int64_t m, int64_t k, int64_t n, float* y);
void rmsnorm(const float* x, const float* w, int64_t m, int64_t d, double eps, float* y);
void rope(float* x, int64_t m, int64_t num_heads, int64_t head_dim, const int64_t* positions,
          const double* inv_freq);
void attention(const AttentionArgs& a);
// Throws qs::Error unless the heads, positions and lengths of `a` are consistent (shared by every attention op).
void check_attention_args(const AttentionArgs& a);
void silu_mul(const float* gate, const float* up, int64_t n, float* y);
void embedding(const int32_t* ids, int64_t m, const float* table, int64_t vocab, int64_t d, float* y);
void add(const float* a, const float* b, int64_t n, float* y);

// The dot product linear uses (exposed so that other references can accumulate the same way).
double dot(const float* a, const float* b, int64_t k);

}  // namespace qs::backends::ref_cpu

namespace qs::backends {
// The process-wide reference backend (stateless).
const Backend& ref_cpu_backend();
}  // namespace qs::backends
