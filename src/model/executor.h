// The executor interface: runs one ForwardBatch (model/forward_batch.h) through the model and returns sampled
// tokens and/or logits. Two implementations: the exact CPU reference (model/ref/ref_executor.h: today's CPU
// forward, FP32 or the bit-level W4A8KV4 integer path, over a host paged KV pool with the GPU pool's byte layout)
// and the GPU model runner (engine/). Everything above (runtime scheduler and engine, server, generate, ppl,
// bench) is written once against this interface.
//
// Contract:
//  * The executor owns the paged KV pool (KvPoolInfo); it never allocates or frees pages: the caller (the runtime's
//    block manager) decides which pages a sequence uses and lists them in the batch. Page contents persist
//    between steps; a page is written only at the slots of the tokens of a batch.
//  * execute() is synchronous and not thread-safe (one thread owns an executor). It validates the batch first
//    (ForwardBatch::validate against pool(), vocab and max_context) and throws qs::Error on a bad batch without
//    touching the pool; a device failure also throws, and the executor is then unusable.
//  * KV4 attention rule (what the GPU runner's kernels do, and the reference reproduces bit for bit): a sequence
//    with q_len > 1 (a prefill chunk) attends to its own new tokens' K/V unquantized (as computed, after RoPE)
//    and to its prefix through the quantized cache; a sequence with q_len == 1 (decode) reads every key and value,
//    its own included, from the quantized cache. So a prompt prefilled in chunks is not bit-identical to the same
//    prompt in one chunk under KV4 (the chunk boundary decides which keys a query sees quantized); it is identical
//    to Model::forward over a KV4 KvCache with the same chunks and SeqInput::fp_self_kv = (q_len > 1).
//    ForwardBatch::quantized_self_kv = true switches every sequence to "read everything from the cache"
//    (perplexity protocol). An FP32 pool stores K/V as computed, so there the rule changes nothing (an FP16 pool
//    follows the same rule with FP16 rounding in place of KV4 quantization).
//  * Results do not depend on the batch composition beyond floating-point reduction order: the reference is
//    bit-identical batched vs alone; the GPU runner within the tolerance its tests state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "formats/kinds.h"
#include "io/model_config.h"
#include "model/forward_batch.h"

namespace qs::model {

struct KvPoolInfo {
  int32_t page_size = 64;
  int64_t num_pages = 0;  // usable page ids: 0 .. num_pages-1
  KvDType dtype = KvDType::kKv4;
  int64_t bytes_per_page = 0;  // all layers, K and V
};

struct ForwardResult {
  std::vector<int32_t> tokens;  // [num_seqs]: the sampled token of each need_output sequence, -1 elsewhere
  Tensor logits;  // F32 [rows, vocab] when return_logits (rows: need_output sequences in order) or all_logits
                  // (rows: every token); undefined otherwise
};

class Executor {
 public:
  virtual ~Executor() = default;
  virtual std::string name() const = 0;  // e.g. "cpu-ref fp32", "cuda w4a8kv4 g128 (NVIDIA H200)"
  virtual const io::ModelConfig& config() const = 0;
  virtual KvPoolInfo pool() const = 0;
  virtual int64_t max_context() const = 0;      // longest context a sequence may reach
  virtual int32_t max_batch_tokens() const = 0;  // most tokens one execute() accepts
  virtual int32_t max_batch_seqs() const = 0;    // most sequences one execute() accepts
  virtual ForwardResult execute(const ForwardBatch& batch) = 0;
};

}  // namespace qs::model
