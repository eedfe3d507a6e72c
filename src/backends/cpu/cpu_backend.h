// The optimized CPU backend: the reference backend's ops, except the two that dominate a forward pass (linear
// and attention), which run register-blocked SIMD kernels (AVX2+FMA when the processor has them, selected at
// load time; portable vector code otherwise). Used for perplexity, calibration and generation on machines
// without a GPU; ref_cpu stays the ground truth and tests bound the difference (TESTING.md: 1e-5).
// Determinism: every output element is computed by the same instruction sequence whatever the batch size,
// tile position or thread count (fixed 8-lane fp32 accumulation over k, fixed horizontal sum order), so runs
// are bit-identical and batched == one by one, on a given machine.
#pragma once

#include "backends/backend.h"

namespace qs::backends {

// The process-wide optimized CPU backend (stateless).
const Backend& cpu_backend();

namespace cpu {
// y[m, n] = x[m, k] w[n, k]^T (+ bias[n]), the kernel behind cpu_backend().linear.
void linear(const float* x, const float* w, const float* bias, int64_t m, int64_t k, int64_t n, float* y);
void attention(const AttentionArgs& a);
}  // namespace cpu

}  // namespace qs::backends
