// The exact CPU reference executor over a host paged KV pool (see ref_executor.h).
#include "model/ref/ref_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "core/error.h"
#include "model/quantized/quantized_linear.h"

namespace qs::model {

namespace {

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

}  // namespace

RefExecutor::RefExecutor(std::unique_ptr<Model> model, const RefExecutorOptions& opt)
    : owned_(std::move(model)), model_(owned_.get()), opt_(opt) {
  init();
}

RefExecutor::RefExecutor(Model& model, const RefExecutorOptions& opt) : model_(&model), opt_(opt) { init(); }

void RefExecutor::init() {
  QS_CHECK(model_ != nullptr) << "RefExecutor: no model";
  const auto& c = model_->config();
  QS_CHECK(opt_.kv_dtype == KvDType::kFp32 || opt_.kv_dtype == KvDType::kKv4)
      << "RefExecutor: KV dtype " << kv_dtype_name(opt_.kv_dtype)
      << " is not supported by the CPU reference (fp32 or kv4)";
  QS_CHECK(opt_.page_size >= 16 && opt_.page_size % 16 == 0)
      << "RefExecutor: page_size " << opt_.page_size << " must be a positive multiple of 16";
  QS_CHECK(opt_.num_pages >= 1) << "RefExecutor: num_pages " << opt_.num_pages << " must be at least 1";
  QS_CHECK(opt_.max_batch_tokens >= 1 && opt_.max_batch_seqs >= 1)
      << "RefExecutor: max_batch_tokens " << opt_.max_batch_tokens << " and max_batch_seqs " << opt_.max_batch_seqs
      << " must be at least 1";
  QS_CHECK(opt_.kv_dtype != KvDType::kKv4 || c.head_dim % 2 == 0)
      << "RefExecutor: a KV4 pool needs an even head_dim, the model has " << c.head_dim;
  layout_.page_size = opt_.page_size;
  layout_.num_kv_heads = int32_t(c.num_kv_heads);
  layout_.head_dim = int32_t(c.head_dim);
  layout_.dtype = opt_.kv_dtype;
  const int64_t bytes = layer_pool_bytes();
  QS_CHECK(bytes / layout_.page_bytes() == opt_.num_pages && bytes < (int64_t(1) << 40))
      << "RefExecutor: a pool of " << opt_.num_pages << " pages of " << layout_.page_bytes()
      << " bytes per layer is too large";
  // 0xFF: FP32 NaN and KV4 scale NaN, so a slot read before it was written poisons the logits.
  k_pool_.assign(sz(c.num_layers), std::vector<uint8_t>(sz(bytes), 0xFF));
  v_pool_.assign(sz(c.num_layers), std::vector<uint8_t>(sz(bytes), 0xFF));
}

std::string RefExecutor::name() const {
  const bool quantized =
      dynamic_cast<const QuantizedLinear*>(&model_->linear("model.layers.0.self_attn.q_proj")) != nullptr;
  return std::string("cpu-ref ") + (quantized ? "quantized" : "fp32") + " weights, kv " +
         kv_dtype_name(opt_.kv_dtype);
}

KvPoolInfo RefExecutor::pool() const {
  KvPoolInfo p;
  p.page_size = opt_.page_size;
  p.num_pages = opt_.num_pages;
  p.dtype = opt_.kv_dtype;
  p.bytes_per_page = 2 * int64_t(model_->config().num_layers) * layout_.page_bytes();
  return p;
}

int64_t RefExecutor::max_context() const {
  const int64_t pool_tokens = opt_.num_pages * opt_.page_size;
  const int64_t mpe = model_->config().max_position_embeddings;
  return mpe > 0 ? std::min(mpe, pool_tokens) : pool_tokens;
}

void RefExecutor::check_batch(const ForwardBatch& b) const {
  b.validate(opt_.page_size, opt_.num_pages, model_->config().vocab_size, max_context());
  QS_CHECK(b.num_tokens() <= opt_.max_batch_tokens)
      << "RefExecutor: the batch has " << b.num_tokens() << " tokens, more than max_batch_tokens "
      << opt_.max_batch_tokens;
  QS_CHECK(b.num_seqs() <= opt_.max_batch_seqs)
      << "RefExecutor: the batch has " << b.num_seqs() << " sequences, more than max_batch_seqs "
      << opt_.max_batch_seqs;
  const int32_t ps = opt_.page_size;
  for (int32_t s = 0; s < b.num_seqs(); ++s)
    QS_CHECK(!b.need_output[sz(s)] || b.all_logits || b.sampling[sz(s)].repetition_penalty == 1.0f)
        << "RefExecutor: sequence " << s << " asks for repetition_penalty "
        << b.sampling[sz(s)].repetition_penalty
        << ", but a ForwardBatch carries no token history: apply it above the executor (return_logits)";
  // Every slot is written at most once per step, and never both written and read (as a prefix) in one step: the
  // GPU runner writes and reads the pool concurrently, so such a batch has no defined result.
  std::unordered_map<int64_t, int32_t> written;  // slot -> sequence
  for (int32_t s = 0; s < b.num_seqs(); ++s)
    for (int32_t pos = b.prefix_len(s); pos < b.context_lens[sz(s)]; ++pos) {
      const int32_t page = b.pages(s)[pos / ps];
      const auto [it, fresh] = written.emplace(int64_t(page) * ps + pos % ps, s);
      QS_CHECK(fresh) << "RefExecutor: sequence " << s << " position " << pos << " writes page " << page
                      << " slot " << pos % ps << ", which sequence " << it->second
                      << " also writes in this batch";
    }
  for (int32_t s = 0; s < b.num_seqs(); ++s)
    for (int32_t pos = 0; pos < b.prefix_len(s); ++pos) {
      const int32_t page = b.pages(s)[pos / ps];
      const auto it = written.find(int64_t(page) * ps + pos % ps);
      QS_CHECK(it == written.end()) << "RefExecutor: sequence " << s << " reads cached position " << pos
                                    << " from page " << page << " slot " << pos % ps << ", which sequence "
                                    << it->second << " writes in this batch";
    }
}

void RefExecutor::gather(const ForwardBatch& b, int32_t s, KvCache& cache) const {
  const int64_t P = b.prefix_len(s);
  if (P == 0) return;
  const int32_t ps = opt_.page_size, kvh = layout_.num_kv_heads, D = layout_.head_dim;
  const int32_t* pages = b.pages(s);
  const int L = model_->config().num_layers;
  if (opt_.kv_dtype == KvDType::kFp32) {
    std::vector<float> k(sz(P * kvh * D)), v(k.size());
    for (int l = 0; l < L; ++l) {
      for (int64_t pos = 0; pos < P; ++pos)
        for (int32_t h = 0; h < kvh; ++h) {
          const int64_t off = layout_.block_offset(pages[pos / ps], h) + layout_.data_offset(int32_t(pos % ps));
          const size_t dst = sz((pos * kvh + h) * D) * sizeof(float);
          std::memcpy(reinterpret_cast<uint8_t*>(k.data()) + dst, k_pool_[sz(l)].data() + off, sz(D) * 4);
          std::memcpy(reinterpret_cast<uint8_t*>(v.data()) + dst, v_pool_[sz(l)].data() + off, sz(D) * 4);
        }
      cache.write(l, 0, k.data(), v.data(), P);
    }
  } else {
    std::vector<uint8_t> k4(sz(P * kvh * D / 2)), v4(k4.size());
    std::vector<fmt4::Kv4Params> kp(sz(P * kvh)), vp(kp.size());
    for (int l = 0; l < L; ++l) {
      for (int64_t pos = 0; pos < P; ++pos)
        for (int32_t h = 0; h < kvh; ++h) {
          const int32_t tok = int32_t(pos % ps);
          const int64_t blk = layout_.block_offset(pages[pos / ps], h);
          const size_t g = sz(pos * kvh + h);
          for (int which = 0; which < 2; ++which) {
            const uint8_t* src = (which ? v_pool_ : k_pool_)[sz(l)].data() + blk;
            std::memcpy((which ? v4 : k4).data() + g * sz(D / 2), src + layout_.data_offset(tok), sz(D / 2));
            fmt4::Kv4Params& p = (which ? vp : kp)[g];
            std::memcpy(&p.scale, src + layout_.scale_offset(tok), 2);
            std::memcpy(&p.zero, src + layout_.zero_offset(tok), 2);
          }
        }
      cache.write_packed(l, 0, k4.data(), kp.data(), v4.data(), vp.data(), P);
    }
  }
  cache.set_length(P);
}

void RefExecutor::scatter(const ForwardBatch& b, int32_t s, const KvCache& cache) {
  const int32_t ps = opt_.page_size, kvh = layout_.num_kv_heads, D = layout_.head_dim;
  const int32_t* pages = b.pages(s);
  const int L = model_->config().num_layers;
  for (int l = 0; l < L; ++l)
    for (int64_t pos = b.prefix_len(s); pos < b.context_lens[sz(s)]; ++pos)
      for (int32_t h = 0; h < kvh; ++h) {
        const int32_t tok = int32_t(pos % ps);
        const int64_t blk = layout_.block_offset(pages[pos / ps], h);
        const size_t g = sz(pos * kvh + h);
        for (int which = 0; which < 2; ++which) {
          uint8_t* dst = (which ? v_pool_ : k_pool_)[sz(l)].data() + blk;
          if (opt_.kv_dtype == KvDType::kFp32) {
            const float* src = (which ? cache.v(l) : cache.k(l)) + g * sz(D);
            std::memcpy(dst + layout_.data_offset(tok), src, sz(D) * sizeof(float));
          } else {
            const uint8_t* codes = (which ? cache.v4(l) : cache.k4(l)) + g * sz(D / 2);
            const fmt4::Kv4Params p = (which ? cache.v4_params(l) : cache.k4_params(l))[g];
            std::memcpy(dst + layout_.data_offset(tok), codes, sz(D / 2));
            std::memcpy(dst + layout_.scale_offset(tok), &p.scale, 2);
            std::memcpy(dst + layout_.zero_offset(tok), &p.zero, 2);
          }
        }
      }
}

ForwardResult RefExecutor::execute(const ForwardBatch& b) {
  check_batch(b);
  const int32_t ns = b.num_seqs();
  const KvMode mode = opt_.kv_dtype == KvDType::kKv4 ? KvMode::kKv4 : KvMode::kFp32;
  std::vector<KvCache> caches;
  caches.reserve(sz(ns));
  std::vector<SeqInput> in(sz(ns));
  for (int32_t s = 0; s < ns; ++s) {
    caches.emplace_back(model_->config(), mode);
    KvCache& cache = caches.back();
    cache.reserve(b.context_lens[sz(s)]);
    gather(b, s, cache);
    SeqInput& si = in[sz(s)];
    si.ids = b.token_ids.data() + b.cu_seqlens[sz(s)];
    si.n = b.q_len(s);
    si.cache = &cache;
    si.fp_self_kv = si.n > 1 && !b.quantized_self_kv;  // the KV4 rule of executor.h (no effect on FP32)
    si.logits = b.need_output[sz(s)] != 0;
  }
  const int32_t rows = b.num_output_rows();
  const LogitsMode lm = b.all_logits ? LogitsMode::kAll : rows > 0 ? LogitsMode::kLast : LogitsMode::kNone;
  Tensor logits = model_->forward(in, lm);

  // Row r of the logits belongs to sequence row_seq[r].
  std::vector<int32_t> row_seq;
  for (int32_t s = 0; s < ns; ++s) {
    if (b.all_logits)
      row_seq.insert(row_seq.end(), sz(b.q_len(s)), s);
    else if (b.need_output[sz(s)])
      row_seq.push_back(s);
  }
  const int64_t V = model_->config().vocab_size;
  if (!row_seq.empty()) {
    QS_CHECK(logits.shape() == Shape({int64_t(row_seq.size()), V}))
        << "RefExecutor: the model returned logits " << logits.desc() << " for " << row_seq.size() << " rows";
    const float* lg = logits.data<float>();
    for (size_t r = 0; r < row_seq.size(); ++r)
      for (int64_t v = 0; v < V; ++v)
        QS_CHECK(std::isfinite(lg[int64_t(r) * V + v]))
            << "RefExecutor: sequence " << row_seq[r] << " produced a non-finite logit (row " << r << ", token "
            << v << ")";
  }

  ForwardResult res;
  res.tokens.assign(sz(ns), -1);
  if (!b.all_logits)
    for (size_t r = 0; r < row_seq.size(); ++r) {
      const int32_t s = row_seq[r];
      res.tokens[sz(s)] =
          Sampler(b.sampling[sz(s)]).sample_at(logits.data<float>() + int64_t(r) * V, V, {}, b.sample_step[sz(s)]);
    }
  if (b.all_logits || b.return_logits) res.logits = logits;
  for (int32_t s = 0; s < ns; ++s) scatter(b, s, caches[sz(s)]);
  return res;
}

}  // namespace qs::model
