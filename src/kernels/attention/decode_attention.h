// Decode attention over the paged KV cache (KV4, FP16 or FP8; layout in kv_cache/kv_cache_params.h), with a host
// plan and a launch-only run (STYLE.md #9). One warp streams a range of one sequence's cache for one KV head and
// serves every query head of its GQA group (up to 16) with FP16 tensor-core mma; KV4 is converted with lop3 +
// 0x6400 and one hfma2 per pair for scale/zero, FP8 with cvt.rn.f16x2.e4m3x2 (exact), both with the per-token
// scales applied in fp32 outside the mma (one template, a Loader per cache dtype). The plan splits the batch's
// tokens evenly among one resident wave of warps (flash-decoding with a stream-K cut: a sequence may be split
// among several warps, a warp may cover several sequences); a second kernel merges the pieces.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "core/status.h"
#include "kernels/attention/attention_params.h"

namespace qs::kernels {

// Two ways to split the work among warps. Chunk split (warps == 0): one warp per (sequence, KV head, chunk of
// chunk_tokens). Balanced split (warps > 0): the batch's (sequence, KV head) items laid end to end in 16-token
// tiles and cut into `warps` equal ranges (stream-K; at least min_tiles per warp), whatever the context lengths;
// the pieces of an item cut between warps are merged by a second kernel.
struct DecodePlan {
  int32_t chunk_tokens = 0;    // chunk split: tokens per chunk (multiple of 16)
  int32_t max_chunks = 1;      // chunk split: chunks of the longest context; 1 = no split (no workspace, no merge)
  size_t workspace_bytes = 0;  // device workspace run_decode needs (0 for an unsplit chunk plan)
  int32_t warps = 0;           // > 0: balanced split over this many warps (a multiple of 4: the grid's warps)
  int32_t min_tiles = 4;       // balanced split: fewest 16-token tiles per warp
};

// The plan for `batch` sequences of at most `max_context` tokens: the balanced split over one resident wave of
// warps. num_sms: the device's SM count. Throws qs::Error on an unsupported shape (head_dim, page size, GQA ratio
// > 16).
DecodePlan plan_decode(int32_t batch, int32_t num_q_heads, const KvCacheLayout& layout, int32_t max_context,
                       int32_t num_sms);

// The balanced split over `warps` warps (a multiple of 4) with at least min_tiles tiles each; plan_decode's
// choice goes through it, tests and benchmarks use it to reach every piece pattern.
DecodePlan plan_decode_balanced(int32_t batch, int32_t num_q_heads, const KvCacheLayout& layout, int32_t max_context,
                                int32_t warps, int32_t min_tiles);

// The plan that splits contexts of at most `max_context` tokens into `chunks` chunks (chunk length rounded up to a
// multiple of 16, at least 64 tokens; 1 chunk = no split). plan_decode's choice goes through it; benchmarks use it
// to time every split, and as the unsplit reference.
DecodePlan plan_decode_chunks(int32_t batch, int32_t num_q_heads, const KvCacheLayout& layout, int32_t max_context,
                              int64_t chunks);

// Launches only (no allocation, no sync): every context_lens[b] must be in [1, the plan's max_context].
Status run_decode(const DecodeParams& p, const DecodePlan& plan, void* workspace, cudaStream_t stream);

}  // namespace qs::kernels
