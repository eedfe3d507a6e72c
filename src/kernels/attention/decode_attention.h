// Decode attention over the paged KV cache (KV4, FP16 or FP8; layout in kv_cache/kv_cache_params.h), with a host
// plan and a launch-only run (STYLE.md #9). One warp streams a chunk of one sequence's cache for one KV head and
// serves every query head of its GQA group (up to 16) with FP16 tensor-core mma; KV4 is converted with lop3 +
// 0x6400 and one hfma2 per pair for scale/zero, FP8 with cvt.rn.f16x2.e4m3x2 (exact), both with the per-token
// scales applied in fp32 outside the mma (one template, a Loader per cache dtype). When batch x KV heads cannot fill
// the GPU, contexts are split into chunks (flash-decoding) whose partial results a second kernel merges, and / or
// (KV4) a chunk is shared by 2 or 4 warps of a CTA that merge in shared memory.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "core/status.h"
#include "kernels/attention/attention_params.h"

namespace qs::kernels {

struct DecodePlan {
  int32_t chunk_tokens = 0;    // tokens per chunk (multiple of 16)
  int32_t max_chunks = 1;      // chunks of the longest context; 1 = no split (no workspace, no merge)
  size_t workspace_bytes = 0;  // device workspace run_decode needs (0 when max_chunks == 1)
  // Warps of a CTA that share one chunk, each taking a range of it, merged in shared memory (no workspace): 1, or
  // 2 / 4 for the KV4 head_dim 128 kernel only (run_decode rejects other combinations).
  int32_t warps_per_chunk = 1;
};

// Chooses the split for `batch` sequences of at most `max_context` tokens. num_sms: the device's SM count.
// Throws qs::Error on an unsupported shape (head_dim, page size, GQA ratio > 16).
DecodePlan plan_decode(int32_t batch, int32_t num_q_heads, const KvCacheLayout& layout, int32_t max_context,
                       int32_t num_sms);

// The plan that splits contexts of at most `max_context` tokens into `chunks` chunks (chunk length rounded up to a
// multiple of 16, at least 64 tokens; 1 chunk = no split), each shared by `warps` warps (1, 2 or 4; more than 1
// only for KV4 with head_dim 128). plan_decode's choice goes through it; benchmarks use it to time every split.
DecodePlan plan_decode_chunks(int32_t batch, int32_t num_q_heads, const KvCacheLayout& layout, int32_t max_context,
                              int64_t chunks, int32_t warps = 1);

// Launches only (no allocation, no sync): every context_lens[b] must be <= the plan's max_context.
Status run_decode(const DecodeParams& p, const DecodePlan& plan, void* workspace, cudaStream_t stream);

}  // namespace qs::kernels
