// ForwardBatch: everything one model step needs (vLLM's and SGLang's "input metadata"), the one seam between the
// runtime above (scheduler, engine, server, generate, ppl) and the executors below (the exact CPU reference in
// model/ref, the GPU model runner in engine/). Plain host data; an executor copies what it needs to its device.
//
// Concepts:
//  * A step holds `num_seqs` sequences, each with q_len >= 1 new tokens, stored back to back (token-major): any mix
//    of whole prompts, prefill chunks (the rest of the prompt comes in later steps) and single decode tokens.
//  * Sequence s owns tokens [cu_seqlens[s], cu_seqlens[s+1]). Its new tokens sit at absolute positions
//    prefix_len(s) .. context_lens[s]-1, where prefix_len(s) = context_lens[s] - q_len(s) tokens are already in the
//    KV cache (written by earlier steps, or shared prefix-cache pages).
//  * The paged KV pool belongs to the executor (pages of `page_size` tokens, ids 0 .. num_pages-1); the runtime's
//    block manager hands out page ids. Token at position p of sequence s lives in page
//    block_table[s * block_table_stride + p / page_size], slot p % page_size. The step writes the K/V of every new
//    token into its slot (every page it touches must be listed), then attends over positions 0 .. p (causal).
//  * Outputs: a sequence with need_output[s] gets its last new token sampled (per-sequence SamplingParams, step
//    = how many tokens this request sampled before, so sampling is reproducible whatever the batching); with
//    return_logits the FP32 logits of those rows come back too. all_logits (perplexity) returns the logits of
//    every token instead and samples nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/sampling.h"

namespace qs::model {

struct ForwardBatch {
  std::vector<int32_t> token_ids;     // [num_tokens]
  std::vector<int32_t> positions;     // [num_tokens] absolute position of each token (RoPE and the KV slot)
  std::vector<int32_t> cu_seqlens;    // [num_seqs + 1]; cu_seqlens[0] = 0, cu_seqlens[num_seqs] = num_tokens
  std::vector<int32_t> context_lens;  // [num_seqs] tokens of s in the cache after this step (prefix + new)
  std::vector<int32_t> block_table;   // [num_seqs * block_table_stride] page ids of each sequence, in order
  int32_t block_table_stride = 0;     // >= pages of the longest context

  std::vector<uint8_t> need_output;         // [num_seqs] 1: sample the last new token of s (and its logits)
  std::vector<SamplingParams> sampling;     // [num_seqs] (used where need_output)
  std::vector<uint64_t> sample_step;        // [num_seqs] tokens s sampled before this step (the RNG counter)
  bool return_logits = false;               // return the logits of the output rows too
  bool all_logits = false;                  // return the logits of every token (no sampling)
  // KV4 pools only. false (serving): a sequence with q_len > 1 attends to its own new tokens' K/V unquantized and
  // to its prefix through the quantized cache; a q_len == 1 sequence reads everything from the cache. true
  // (fake-quantized evaluation, the perplexity protocol of QoQ / ACCURACY.md): every sequence reads every key and
  // value from the quantized cache, its own new tokens included. An executor that cannot do it throws.
  bool quantized_self_kv = false;

  int32_t num_seqs() const { return int32_t(context_lens.size()); }
  int32_t num_tokens() const { return int32_t(token_ids.size()); }
  int32_t q_len(int32_t s) const { return cu_seqlens[size_t(s) + 1] - cu_seqlens[size_t(s)]; }
  int32_t prefix_len(int32_t s) const { return context_lens[size_t(s)] - q_len(s); }
  const int32_t* pages(int32_t s) const { return block_table.data() + int64_t(s) * block_table_stride; }
  // Every sequence has exactly one new token (a pure decode step: CUDA-graph eligible).
  bool is_decode() const { return num_tokens() == num_seqs(); }
  int32_t max_context() const;
  int32_t num_output_rows() const;  // sequences with need_output (all tokens when all_logits)

  // Appends one sequence: `ids` are its new tokens, `prefix` the tokens it already has in the cache, `pages` its
  // page ids (at least ceil((prefix + ids.size()) / page_size) of them; the stride grows to fit).
  void add_sequence(const int32_t* ids, int32_t n, int32_t prefix, const std::vector<int32_t>& pages,
                    bool output = true, const SamplingParams& sp = {}, uint64_t step = 0);

  // Throws qs::Error naming the first inconsistency: sizes, cu_seqlens order, positions != prefix + i, a
  // context over max_context, a page id outside [0, num_pages), too few pages, a token id outside [0, vocab),
  // invalid sampling parameters.
  void validate(int32_t page_size, int64_t num_pages, int64_t vocab, int64_t max_context) const;
};

}  // namespace qs::model
