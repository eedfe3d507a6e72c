// ForwardBatch helpers (see forward_batch.h).
#include "model/forward_batch.h"

#include <algorithm>

namespace qs::model {

int32_t ForwardBatch::max_context() const {
  int32_t m = 0;
  for (int32_t c : context_lens) m = std::max(m, c);
  return m;
}

int32_t ForwardBatch::num_output_rows() const {
  if (all_logits) return num_tokens();
  int32_t n = 0;
  for (uint8_t o : need_output) n += o ? 1 : 0;
  return n;
}

void ForwardBatch::add_sequence(const int32_t* ids, int32_t n, int32_t prefix, const std::vector<int32_t>& pg,
                                bool output, const SamplingParams& sp, uint64_t step) {
  QS_CHECK(n >= 1) << "ForwardBatch: a sequence needs at least one new token";
  QS_CHECK(prefix >= 0) << "ForwardBatch: negative prefix " << prefix;
  if (cu_seqlens.empty()) cu_seqlens.push_back(0);
  const int32_t stride = std::max<int32_t>(block_table_stride, int32_t(pg.size()));
  if (stride != block_table_stride) {  // widen every existing row
    std::vector<int32_t> t(size_t(num_seqs()) * size_t(stride), -1);
    for (int32_t s = 0; s < num_seqs(); ++s)
      std::copy_n(block_table.begin() + int64_t(s) * block_table_stride, block_table_stride,
                  t.begin() + int64_t(s) * stride);
    block_table = std::move(t);
    block_table_stride = stride;
  }
  for (int32_t i = 0; i < n; ++i) {
    token_ids.push_back(ids[i]);
    positions.push_back(prefix + i);
  }
  cu_seqlens.push_back(cu_seqlens.back() + n);
  context_lens.push_back(prefix + n);
  const size_t row = block_table.size();
  block_table.resize(row + size_t(block_table_stride), -1);
  std::copy(pg.begin(), pg.end(), block_table.begin() + int64_t(row));
  need_output.push_back(output ? 1 : 0);
  sampling.push_back(sp);
  sample_step.push_back(step);
}

void ForwardBatch::validate(int32_t page_size, int64_t num_pages, int64_t vocab, int64_t max_ctx) const {
  const int32_t ns = num_seqs();
  QS_CHECK(ns >= 1) << "ForwardBatch: no sequences";
  QS_CHECK(cu_seqlens.size() == size_t(ns) + 1) << "ForwardBatch: cu_seqlens has " << cu_seqlens.size()
                                                 << " entries for " << ns << " sequences (needs " << ns + 1 << ")";
  QS_CHECK(cu_seqlens.front() == 0 && cu_seqlens.back() == num_tokens())
      << "ForwardBatch: cu_seqlens must run from 0 to num_tokens (" << num_tokens() << ")";
  QS_CHECK(positions.size() == token_ids.size()) << "ForwardBatch: " << positions.size() << " positions for "
                                                  << token_ids.size() << " tokens";
  QS_CHECK(need_output.size() == size_t(ns) && sampling.size() == size_t(ns) && sample_step.size() == size_t(ns))
      << "ForwardBatch: need_output / sampling / sample_step must have one entry per sequence";
  QS_CHECK(block_table_stride >= 1 && block_table.size() == size_t(ns) * size_t(block_table_stride))
      << "ForwardBatch: block_table has " << block_table.size() << " entries, expected " << ns << " x stride "
      << block_table_stride;
  for (int32_t s = 0; s < ns; ++s) {
    const int32_t q = q_len(s);
    QS_CHECK(q >= 1) << "ForwardBatch: sequence " << s << " has " << q << " new tokens (needs >= 1)";
    const int32_t ctx = context_lens[size_t(s)];
    QS_CHECK(ctx >= q && ctx <= max_ctx) << "ForwardBatch: sequence " << s << " context " << ctx
                                         << " is outside [" << q << ", max context " << max_ctx << "]";
    for (int32_t i = 0; i < q; ++i) {
      const int32_t t = cu_seqlens[size_t(s)] + i;
      QS_CHECK(positions[size_t(t)] == ctx - q + i)
          << "ForwardBatch: token " << t << " of sequence " << s << " has position " << positions[size_t(t)]
          << ", expected " << ctx - q + i;
      QS_CHECK(token_ids[size_t(t)] >= 0 && token_ids[size_t(t)] < vocab)
          << "ForwardBatch: token id " << token_ids[size_t(t)] << " is outside the vocabulary [0, " << vocab << ")";
    }
    const int32_t npages = (ctx + page_size - 1) / page_size;
    QS_CHECK(npages <= block_table_stride) << "ForwardBatch: sequence " << s << " needs " << npages
                                           << " pages, the block table has room for " << block_table_stride;
    for (int32_t p = 0; p < npages; ++p) {
      const int32_t id = pages(s)[p];
      QS_CHECK(id >= 0 && id < num_pages) << "ForwardBatch: sequence " << s << " page " << p << " is " << id
                                          << ", outside the pool [0, " << num_pages << ")";
    }
    if (need_output[size_t(s)] && !all_logits) model::validate(sampling[size_t(s)]);
  }
}

}  // namespace qs::model
