// The device-scoring path of quant::eval::evaluate (model/window_scorer.h: executors that score their own windows,
// the reference's logits kept where they were computed) tested on the CPU with a host WindowScorer that wraps the
// exact reference executor and scores with the same host functions: evaluate() must give bit-identical results
// with device_scores on and off (same per-position math, same summation order), the reference's kept logits must
// reach every model, and a scorer's errors must name the model and the window. The GPU scorer itself is tested
// against these host functions in tests/engine/logit_scores_gpu_test and eval_modes_gpu_test.
#include <gtest/gtest.h>

#include <string>

#include "common/test_util.h"
#include "model/ref/ref_executor.h"
#include "model/window_scorer.h"
#include "quant/eval/perplexity.h"
#include "quant/eval/rtn_model.h"
#include "tokenizer/tokenizer.h"

namespace qs {
namespace {

namespace ev = quant::eval;

// A RefExecutor that is also a WindowScorer, scoring on the host.
class HostScorer final : public model::Executor, public model::WindowScorer {
 public:
  explicit HostScorer(model::Executor& ex) : ex_(ex) {}
  std::string name() const override { return "host scorer over " + ex_.name(); }
  const io::ModelConfig& config() const override { return ex_.config(); }
  model::KvPoolInfo pool() const override { return ex_.pool(); }
  int64_t max_context() const override { return ex_.max_context(); }
  int32_t max_batch_tokens() const override { return ex_.max_batch_tokens(); }
  int32_t max_batch_seqs() const override { return ex_.max_batch_seqs(); }
  model::ForwardResult execute(const model::ForwardBatch& b) override { return ex_.execute(b); }

  model::WindowScores score_window(const model::ForwardBatch& b, const std::vector<int32_t>& labels,
                                   const model::KeptLogits* ref, bool keep) override {
    ++calls;
    if (fail_at_call == calls) QS_FAIL() << "planted failure";
    Tensor lg = ex_.execute(b).logits;
    const int64_t V = lg.dim(1);
    model::WindowScores s;
    for (size_t r = 0; r < labels.size(); ++r) {
      const float* row = lg.data<float>() + int64_t(r) * V;
      s.nll.push_back(ev::token_nll(row, V, labels[r]));
      if (ref) {
        EXPECT_EQ(ref->owner == this, false);
        const float* rr = ref->data + int64_t(r) * V;
        s.kl.push_back(ev::kl_divergence(rr, row, V));
        s.top1.push_back(ev::argmax(rr, V) == ev::argmax(row, V));
      }
    }
    if (keep) kept_ = lg;
    return s;
  }
  model::KeptLogits kept_logits() const override {
    model::KeptLogits k;
    if (!kept_.raw()) return k;
    k.owner = this;
    k.data = kept_.data<float>();
    k.rows = kept_.dim(0);
    k.vocab = kept_.dim(1);
    return k;
  }
  int calls = 0, fail_at_call = -1;

 private:
  model::Executor& ex_;
  Tensor kept_;
};

TEST(DeviceScoring, EvaluateGivesTheSameResultsWithDeviceScoresOnAndOff) {
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  const auto tok = tokenizer::Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  const std::vector<int32_t> ids = ev::tokenize_dataset(tok, std::string(
      "The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest structure in "
      "Paris. Its base is square, measuring 125 metres on each side. During its construction, the Eiffel Tower "
      "surpassed the Washington Monument to become the tallest man-made structure in the world, a title it held for "
      "41 years until the Chrysler Building in New York City was finished in 1930."));
  const int64_t L = 33;  // awkward: not a page multiple; 2 windows
  ASSERT_GE(int64_t(ids.size()), 2 * L);
  auto fp = model::Model::load(test::data_path("models/qs-llama-tiny"));
  auto q = model::Model::load(test::data_path("models/qs-llama-tiny"));
  ev::apply_rtn(*q, ev::RtnScheme::kW4A8G128);
  model::RefExecutor ref_ex(*fp, ev::window_executor_options(KvDType::kFp32, L));
  model::RefExecutor q_ex(*q, ev::window_executor_options(KvDType::kKv4, L));
  model::RefExecutor q_ex2(*q, ev::window_executor_options(KvDType::kFp32, L));
  HostScorer ref_s(ref_ex), q_s(q_ex), q_s2(q_ex2);
  const ev::EvalModel ref{"fp32", &ref_s};
  const std::vector<ev::EvalModel> models = {{"w4a8kv4", &q_s}, {"w4a8 fp kv", &q_s2}};
  ev::EvalOptions opt;
  opt.seq_len = L;
  opt.max_windows = 2;
  const auto on = ev::evaluate(ids, models, &ref, opt);
  EXPECT_EQ(q_s.calls, 2);    // the scorer path was taken: one call per window
  EXPECT_EQ(ref_s.calls, 2);
  opt.device_scores = false;
  const auto off = ev::evaluate(ids, models, &ref, opt);
  EXPECT_EQ(q_s.calls, 2);    // and not here
  ASSERT_EQ(on.size(), 3u);
  for (size_t i = 0; i < on.size(); ++i) {
    EXPECT_EQ(on[i].label, off[i].label);
    EXPECT_EQ(on[i].windows, 2);
    EXPECT_EQ(on[i].tokens, 2 * (L - 1));
    EXPECT_EQ(on[i].nll_sum, off[i].nll_sum) << on[i].label;
    EXPECT_EQ(on[i].ppl, off[i].ppl) << on[i].label;
    EXPECT_EQ(on[i].has_reference, off[i].has_reference);
    EXPECT_EQ(on[i].kl_sum, off[i].kl_sum) << on[i].label;
    EXPECT_EQ(on[i].top1_agree, off[i].top1_agree) << on[i].label;
  }
  EXPECT_GT(on[0].kl_mean, 0.0);          // a quantized model differs from the reference
  EXPECT_FALSE(on[2].has_reference);      // the reference's own row

  // Errors name the model and the window.
  q_s2.fail_at_call = q_s2.calls + 2;  // its second window
  opt.device_scores = true;
  const std::string e = test::error_of([&] { ev::evaluate(ids, models, &ref, opt); });
  EXPECT_NE(e.find("w4a8 fp kv"), std::string::npos) << e;
  EXPECT_NE(e.find("window 1"), std::string::npos) << e;
  EXPECT_NE(e.find("planted failure"), std::string::npos) << e;
}

}  // namespace
}  // namespace qs
