// Causal prefill attention (FlashAttention-3 style on Hopper: warp-specialized persistent CTAs, TMA, wgmma with
// fp32 accumulation, ping-pong softmax) over packed variable-length sequences, with optional earlier context read
// from the paged KV cache (chunked prefill; KV4 / FP8 dequantized per formats.h while staging into shared memory).
// Parameters in attention_params.h.
#pragma once

#include <cuda_runtime.h>

#include "core/status.h"
#include "kernels/attention/attention_params.h"

namespace qs::kernels {

// Launch only (the first call per head_dim raises the kernel's dynamic shared-memory limit).
Status run_prefill(const PrefillParams& p, cudaStream_t stream);

}  // namespace qs::kernels
