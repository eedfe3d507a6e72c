// ForwardBatch (the executor seam): add_sequence builds consistent metadata (cu_seqlens, positions, context
// lengths, a block table widened as sequences with more pages arrive), and validate() names every kind of
// inconsistency an executor must refuse before touching its KV pool.
#include "model/forward_batch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/test_util.h"

namespace qs::model {
namespace {

using ::testing::HasSubstr;

ForwardBatch two_sequences() {
  ForwardBatch b;
  const int32_t prompt[5] = {1, 2, 3, 4, 5};
  b.add_sequence(prompt, 5, 0, {7});             // a 5-token prefill into page 7
  const int32_t tok = 9;
  b.add_sequence(&tok, 1, 16, {0, 3});           // a decode at position 16: page 3 slot 0
  return b;
}

TEST(ForwardBatch, AddSequenceBuildsMetadata) {
  const ForwardBatch b = two_sequences();
  EXPECT_EQ(b.num_seqs(), 2);
  EXPECT_EQ(b.num_tokens(), 6);
  EXPECT_EQ(b.cu_seqlens, (std::vector<int32_t>{0, 5, 6}));
  EXPECT_EQ(b.positions, (std::vector<int32_t>{0, 1, 2, 3, 4, 16}));
  EXPECT_EQ(b.context_lens, (std::vector<int32_t>{5, 17}));
  EXPECT_EQ(b.block_table_stride, 2);
  EXPECT_EQ(b.block_table, (std::vector<int32_t>{7, -1, 0, 3}));  // row 0 widened when row 1 came
  EXPECT_EQ(b.prefix_len(1), 16);
  EXPECT_EQ(b.max_context(), 17);
  EXPECT_EQ(b.num_output_rows(), 2);
  EXPECT_FALSE(b.is_decode());
  b.validate(16, 8, 10, 2048);  // page size 16, 8 pages, vocab 10
}

TEST(ForwardBatch, ValidateNamesTheProblem) {
  using qs::test::error_of;
  auto check = [](auto mutate, const char* what) {
    ForwardBatch b = two_sequences();
    mutate(b);
    EXPECT_THAT(error_of([&] { b.validate(16, 8, 10, 2048); }), HasSubstr(what));
  };
  check([](ForwardBatch& b) { b.block_table[3] = 8; }, "outside the pool [0, 8)");
  check([](ForwardBatch& b) { b.positions[5] = 15; }, "has position 15, expected 16");
  check([](ForwardBatch& b) { b.token_ids[0] = 10; }, "outside the vocabulary [0, 10)");
  check([](ForwardBatch& b) { b.context_lens[1] = 40, b.positions[5] = 39; }, "needs 3 pages");
  check([](ForwardBatch& b) { b.cu_seqlens.pop_back(); }, "cu_seqlens has 2 entries for 2 sequences");
  check([](ForwardBatch& b) { b.sampling[0].top_p = 0.0f; }, "top_p must be in (0, 1]");
  ForwardBatch b = two_sequences();
  EXPECT_THAT(error_of([&] { b.validate(16, 8, 10, 10); }), HasSubstr("sequence 1 context 17 is outside [1, max context 10]"));
  EXPECT_THAT(error_of([] { ForwardBatch().validate(16, 8, 10, 10); }), HasSubstr("no sequences"));
}

}  // namespace
}  // namespace qs::model
