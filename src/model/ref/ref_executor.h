// The exact CPU reference executor (model/executor.h): runs a ForwardBatch through model::Model (FP32 weights, or
// the bit-level W4A8KV4 integer path of model/quantized) over a HOST paged KV pool whose bytes have exactly the
// layout of the GPU pool (kernels::KvCacheLayout, kernels/kv_cache/kv_cache_params.h), so a GPU pool can be
// compared with it byte for byte, and every GPU step has an oracle fed the same batch.
//
// One step (execute):
//  1. validate the whole batch (ForwardBatch::validate, this executor's limits, no KV slot written twice or both
//     written and read in one step, no repetition penalty: a batch carries no history); a bad batch throws
//     qs::Error before anything is touched;
//  2. gather: for each sequence, its prefix_len cached tokens are copied from its pages into a temporary
//     model::KvCache (FP32: the floats; KV4: the packed codes and FP16 scale/zero via KvCache::write_packed, which
//     rebuilds exactly what KvCache::write stored). This costs O(context) per sequence per step: acceptable for a
//     reference, never the way a fast engine works;
//  3. one Model::forward over all sequences at once (rows are independent, so batched == alone, bit for bit),
//     with SeqInput::fp_self_kv = (q_len > 1) unless the batch asks for quantized_self_kv (executor.h: the KV4
//     rule); logits only where needed (LogitsMode::kAll for all_logits, kLast restricted to need_output rows);
//  4. non-finite logits throw naming the sequence (the pool is still untouched); need_output rows are sampled
//     with Sampler::sample_at(row, vocab, {}, sample_step[s]) (counter-based, stateless);
//  5. scatter: the K/V of every new token go from the temporary cache into its slot (page = block-table row
//     [pos / page_size], offset pos % page_size), exact bytes.
// The pool starts filled with 0xFF bytes (FP32 NaN, KV4 scale NaN), so reading a slot nobody wrote shows up as
// non-finite logits instead of silently plausible numbers.
// Pool dtypes: kFp32 (FP32 block, host only) and kKv4. kFp16 / kFp8 are GPU-runner pools; constructing this
// executor with them throws.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kv_cache/kv_cache_params.h"
#include "model/executor.h"
#include "model/model.h"

namespace qs::model {

struct RefExecutorOptions {
  KvDType kv_dtype = KvDType::kFp32;  // kFp32 (FP models) or kKv4 (the W4A8KV4 path; also KV4 alone on FP32)
  int64_t num_pages = 64;             // page ids 0 .. num_pages-1
  int32_t page_size = 64;             // tokens per page, a multiple of 16
  int32_t max_batch_tokens = 8192;    // most tokens one execute() accepts
  int32_t max_batch_seqs = 256;       // most sequences one execute() accepts
};

class RefExecutor final : public Executor {
 public:
  // Owns the model.
  RefExecutor(std::unique_ptr<Model> model, const RefExecutorOptions& opt);
  // Borrows the model (it must outlive the executor): tests compare the executor with the model's own forward.
  RefExecutor(Model& model, const RefExecutorOptions& opt);

  std::string name() const override;  // "cpu-ref fp32 weights, kv fp32", "cpu-ref quantized weights, kv kv4"
  const io::ModelConfig& config() const override { return model_->config(); }
  KvPoolInfo pool() const override;
  // min(max_position_embeddings (when the config gives one), num_pages * page_size)
  int64_t max_context() const override;
  int32_t max_batch_tokens() const override { return opt_.max_batch_tokens; }
  int32_t max_batch_seqs() const override { return opt_.max_batch_seqs; }
  ForwardResult execute(const ForwardBatch& batch) override;

  Model& model() { return *model_; }
  const kernels::KvCacheLayout& layout() const { return layout_; }
  // The K / V pool of one layer: [num_pages][layout().page_bytes()] bytes (kernels::KvCacheLayout).
  const uint8_t* k_pool(int layer) const { return k_pool_.at(size_t(layer)).data(); }
  const uint8_t* v_pool(int layer) const { return v_pool_.at(size_t(layer)).data(); }
  int64_t layer_pool_bytes() const { return opt_.num_pages * layout_.page_bytes(); }

 private:
  void init();
  void check_batch(const ForwardBatch& b) const;
  void gather(const ForwardBatch& b, int32_t s, KvCache& cache) const;
  void scatter(const ForwardBatch& b, int32_t s, const KvCache& cache);

  std::unique_ptr<Model> owned_;
  Model* model_ = nullptr;
  RefExecutorOptions opt_;
  kernels::KvCacheLayout layout_;
  std::vector<std::vector<uint8_t>> k_pool_, v_pool_;  // per layer
};

}  // namespace qs::model
