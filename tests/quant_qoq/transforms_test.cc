// QoQ transformations are output-preserving: each one, applied to qs-llama-tiny (tied embeddings) and to its
// untied copy, leaves the FP32 logits unchanged within 1e-5 normalized error (TESTING.md: exact in real
// arithmetic; only fp32 re-association remains). Negative controls show the check can fail (a SmoothAttention
// scale that breaks the rotate-half pairing, folding without untying), and bad arguments give clear errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <random>

#include "common/test_util.h"
#include "backends/ref_cpu/ops.h"
#include "quant/qoq/model_view.h"

namespace qs::quant::qoq {
namespace {

using ::testing::HasSubstr;
constexpr const char* kModel = "models/qs-llama-tiny";
constexpr double kTol = 1e-5;

std::vector<int32_t> prompt_ids(int n, uint64_t seed, int vocab) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& t : ids) t = int32_t(rng() % uint64_t(vocab));
  ids[0] = 0;  // BOS
  return ids;
}

std::vector<float> logits_of(model::Model& m, const std::vector<int32_t>& ids) {
  auto cache = m.new_cache();
  Tensor t = m.forward({{ids.data(), int64_t(ids.size()), &cache}}, model::LogitsMode::kAll);
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

std::vector<float> positive_random(size_t n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(std::log(lo), std::log(hi));
  std::vector<float> v(n);
  for (auto& x : v) x = std::exp(d(rng));
  return v;
}

std::vector<int32_t> random_perm(int64_t n, uint64_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  std::shuffle(p.begin(), p.end(), std::mt19937_64(seed));
  return p;
}

class TransformsTest : public ::testing::TestWithParam<bool> {  // param: untie before transforming
 protected:
  void SetUp() override {
    if (!qs::test::data_available(kModel)) GTEST_SKIP() << "test data not found: " << qs::test::data_path(kModel);
    model_ = model::Model::load(qs::test::data_path(kModel));
    ASSERT_TRUE(model_->config().tie_word_embeddings);
    ids_ = prompt_ids(67, 7, model_->config().vocab_size);
    ref_ = logits_of(*model_, ids_);
    w_ = weights_view(*model_);
    if (GetParam()) ASSERT_TRUE(untie_embeddings(w_));
  }
  double error() { return qs::test::normalized_error(logits_of(*model_, ids_), ref_); }
  const io::ModelConfig& cfg() const { return model_->config(); }

  std::unique_ptr<model::Model> model_;
  std::vector<int32_t> ids_;
  std::vector<float> ref_;
  ModelWeights w_;
};

TEST_P(TransformsTest, FoldNorms) {
  const Tensor embed_before = w_.embed->clone();
  fold_norms(w_);
  EXPECT_LE(error(), kTol);
  for (const auto& l : w_.layers) EXPECT_EQ(l.input_norm->data<float>()[5], 1.0f);
  EXPECT_NE(w_.lm_head->raw(), w_.embed->raw());
  // The embeddings themselves are untouched (folding the final norm went into the untied lm_head only).
  EXPECT_EQ(std::memcmp(embed_before.raw(), w_.embed->raw(), embed_before.nbytes()), 0);
}

TEST_P(TransformsTest, FoldAndRotateResidual) {
  const Tensor q_before = w_.layers[1].q->clone();
  fold_norms(w_);
  rotate_residual(w_, Hadamard(cfg().hidden_size));
  EXPECT_LE(error(), kTol);
  // The weights really changed (a rotation that did nothing would also pass the logits check).
  EXPECT_GT(qs::test::normalized_error(w_.layers[1].q->data<float>(), q_before.data<float>(), q_before.numel()), 0.5);
}

TEST_P(TransformsTest, RotateValueHeads) {
  rotate_value_heads(w_, Hadamard(cfg().head_dim));
  EXPECT_LE(error(), kTol);
}

TEST_P(TransformsTest, SmoothAttention) {
  const auto kmax = positive_random(size_t(cfg().kv_size()), 11, 0.05f, 40.0f);
  const auto lambda = smooth_attention_scales(kmax, cfg(), 0.5f);
  const int64_t d = cfg().head_dim;
  for (int64_t j = 0; j < d / 2; ++j) {  // rotate-half pairs share lambda = sqrt(max of the pair)
    EXPECT_EQ(lambda[size_t(d + j)], lambda[size_t(d + j + d / 2)]);
    EXPECT_FLOAT_EQ(lambda[size_t(j)], std::sqrt(std::max(kmax[size_t(j)], kmax[size_t(j + d / 2)])));
  }
  const Tensor q_before = w_.layers[0].q->clone(), k_before = w_.layers[0].k->clone();
  for (auto& l : w_.layers) apply_smooth_attention(l, cfg(), lambda);
  EXPECT_LE(error(), kTol);
  // The intended effect (issue 13: a transform that does nothing would pass the logits check): key channel j is
  // divided by lambda_j, the matching query channel of every head in the group multiplied by it, so the key range
  // kmax_j / lambda_j = kmax_j^(1 - alpha) (for the pair's maximum) shrinks from max(kmax) = 40-ish to its root.
  const int64_t h = cfg().hidden_size;
  for (int64_t j : {int64_t(0), d / 2 + 3, int64_t(cfg().kv_size()) - 1}) {
    const float lam = lambda[size_t(j)];
    EXPECT_NE(lam, 1.0f);
    for (int64_t c : {int64_t(0), h / 3, h - 1}) {
      EXPECT_FLOAT_EQ(w_.layers[0].k->data<float>()[j * h + c], k_before.data<float>()[j * h + c] / lam);
      const int64_t qrow = (j / d) * cfg().gqa_ratio() * d + j % d;  // first query head of the group
      EXPECT_FLOAT_EQ(w_.layers[0].q->data<float>()[qrow * h + c], q_before.data<float>()[qrow * h + c] * lam);
    }
  }
  float range_before = 0, range_after = 0;
  for (size_t j = 0; j < kmax.size(); ++j) {
    range_before = std::max(range_before, kmax[j]);
    range_after = std::max(range_after, kmax[j] / lambda[j]);
  }
  EXPECT_LT(range_after, 0.25f * range_before) << "SmoothAttention must shrink the key outlier range";
}

TEST_P(TransformsTest, SmoothAttentionWithoutPairingChangesTheOutput) {
  // Negative control: independent scales for j and j + D/2 do not commute with RoPE.
  const auto lambda = positive_random(size_t(cfg().kv_size()), 12, 0.2f, 5.0f);
  for (auto& l : w_.layers) apply_smooth_attention(l, cfg(), lambda);
  EXPECT_GT(error(), 1e-3);
}

TEST_P(TransformsTest, SmoothDown) {
  for (size_t i = 0; i < w_.layers.size(); ++i) {
    auto& l = w_.layers[i];
    const auto xmax = positive_random(size_t(cfg().intermediate_size), 20 + i, 0.01f, 50.0f);
    const Tensor down_before = l.down->clone(), up_before = l.up->clone();
    const auto s = smooth_down_scales(xmax, *l.down, 0.3f, 0.7f);
    // The formula as written: s_j = xmax_j^a / wmax_j^b, wmax_j = max_o |down[o, j]|.
    const int64_t rows = l.down->dim(0), inter = l.down->dim(1), hid = l.up->dim(1);
    for (int64_t j : {int64_t(0), inter / 2, inter - 1}) {
      float wmax = 0;
      for (int64_t o = 0; o < rows; ++o) wmax = std::max(wmax, std::fabs(down_before.data<float>()[o * inter + j]));
      EXPECT_NEAR(s[size_t(j)], std::pow(xmax[size_t(j)], 0.3f) / std::pow(wmax, 0.7f), 1e-5f * s[size_t(j)]);
    }
    apply_smooth_down(l, s);
    // The intended effect: down columns times s, up rows divided by s; the activation range xmax / s is flatter.
    for (int64_t j : {int64_t(1), inter - 2}) {
      EXPECT_FLOAT_EQ(l.down->data<float>()[3 * inter + j], down_before.data<float>()[3 * inter + j] * s[size_t(j)]);
      EXPECT_FLOAT_EQ(l.up->data<float>()[j * hid + 5], up_before.data<float>()[j * hid + 5] / s[size_t(j)]);
    }
    float lo = 1e30f, hi = 0, lo_s = 1e30f, hi_s = 0;
    for (size_t j = 0; j < xmax.size(); ++j) {
      lo = std::min(lo, xmax[j]), hi = std::max(hi, xmax[j]);
      lo_s = std::min(lo_s, xmax[j] / s[j]), hi_s = std::max(hi_s, xmax[j] / s[j]);
    }
    EXPECT_LT(hi_s / lo_s, 0.5f * (hi / lo)) << "layer " << i << ": smoothing must flatten the activation range";
  }
  EXPECT_LE(error(), kTol);
}

TEST_P(TransformsTest, Reorder) {
  for (size_t i = 0; i < w_.layers.size(); ++i) {
    auto& l = w_.layers[i];
    const Tensor down_before = l.down->clone(), gate_before = l.gate->clone();
    const auto perm = random_perm(cfg().intermediate_size, 30 + i);
    reorder_down(l, perm);
    // The intended effect: new channel j is old channel perm[j] (down columns, gate/up rows), and it moved.
    const int64_t inter = l.down->dim(1), hid = l.gate->dim(1);
    int64_t moved = 0;
    for (int64_t j = 0; j < inter; ++j) {
      moved += perm[size_t(j)] != j;
      ASSERT_EQ(l.down->data<float>()[2 * inter + j], down_before.data<float>()[2 * inter + perm[size_t(j)]]);
      ASSERT_EQ(l.gate->data<float>()[j * hid + 1], gate_before.data<float>()[perm[size_t(j)] * hid + 1]);
    }
    EXPECT_GT(moved, inter / 2);
    std::vector<std::vector<int32_t>> perms;
    for (int g = 0; g < cfg().num_kv_heads; ++g) perms.push_back(random_perm(cfg().head_dim, 40 + 10 * i + g));
    reorder_value_heads(l, cfg(), perms);
  }
  EXPECT_LE(error(), kTol);
}

TEST_P(TransformsTest, AllTogether) {
  fold_norms(w_);
  rotate_residual(w_, Hadamard(cfg().hidden_size));
  rotate_value_heads(w_, Hadamard(cfg().head_dim));
  for (size_t i = 0; i < w_.layers.size(); ++i) {
    auto& l = w_.layers[i];
    std::vector<std::vector<int32_t>> perms;
    for (int g = 0; g < cfg().num_kv_heads; ++g) perms.push_back(random_perm(cfg().head_dim, 50 + 10 * i + g));
    reorder_value_heads(l, cfg(), perms);
    reorder_down(l, random_perm(cfg().intermediate_size, 60 + i));
    apply_smooth_attention(l, cfg(), smooth_attention_scales(positive_random(size_t(cfg().kv_size()), 70 + i, 0.1f, 20.0f), cfg(), 0.5f));
    apply_smooth_down(l, smooth_down_scales(positive_random(size_t(cfg().intermediate_size), 80 + i, 0.01f, 30.0f), *l.down, 0.1f, 0.9f));
  }
  EXPECT_LE(error(), kTol);
}

INSTANTIATE_TEST_SUITE_P(Embeddings, TransformsTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? std::string("Untied") : std::string("Tied"); });


// A random Qwen2-style model: q/k/v biases, GQA ratio 7, untied embeddings, hidden 224 = 28 x 8 (a Paley-based
// Hadamard, not a power of two) and head_dim 32. Every transformation together keeps its logits.
std::unique_ptr<model::Model> random_qwen2_like() {
  io::ModelConfig c;
  c.architecture = "Qwen2ForCausalLM";
  c.model_type = "qwen2";
  c.hidden_size = 224;
  c.intermediate_size = 96;
  c.num_layers = 2;
  c.num_heads = 7;
  c.num_kv_heads = 1;
  c.head_dim = 32;
  c.vocab_size = 100;
  c.max_position_embeddings = 512;
  c.rope_theta = 10000.0;
  c.attention_bias = true;
  const auto& be = backends::ref_cpu_backend();
  uint64_t seed = 100;
  auto rnd = [&](Shape s, float sd, float mean = 0.0f) {
    Tensor t(DType::F32, s);
    const auto v = qs::test::random_normal(size_t(t.numel()), seed++, sd);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = mean + v[size_t(i)];
    return t;
  };
  auto lin = [&](int64_t out, int64_t in, bool bias) {
    return std::make_unique<model::FpLinear>(rnd({out, in}, 0.08f), bias ? rnd({out}, 0.3f) : Tensor(), be);
  };
  model::ModelWeights w;
  w.embed_tokens = rnd({c.vocab_size, c.hidden_size}, 1.0f);
  w.final_norm = rnd({c.hidden_size}, 0.2f, 1.0f);
  w.lm_head = lin(c.vocab_size, c.hidden_size, false);
  for (int l = 0; l < c.num_layers; ++l) {
    model::DecoderLayer d;
    d.input_norm = rnd({c.hidden_size}, 0.2f, 1.0f);
    d.post_attn_norm = rnd({c.hidden_size}, 0.2f, 1.0f);
    d.q_proj = lin(c.q_size(), c.hidden_size, true);
    d.k_proj = lin(c.kv_size(), c.hidden_size, true);
    d.v_proj = lin(c.kv_size(), c.hidden_size, true);
    d.o_proj = lin(c.hidden_size, c.q_size(), false);
    d.gate_proj = lin(c.intermediate_size, c.hidden_size, false);
    d.up_proj = lin(c.intermediate_size, c.hidden_size, false);
    d.down_proj = lin(c.hidden_size, c.intermediate_size, false);
    w.layers.push_back(std::move(d));
  }
  return std::make_unique<model::Model>(c, std::move(w), be);
}

TEST(TransformsQwen2Like, BiasesGqa7AndNonPowerOfTwoHidden) {
  auto m = random_qwen2_like();
  const auto& cfg = m->config();
  const auto ids = prompt_ids(17, 9, cfg.vocab_size);
  const auto ref = logits_of(*m, ids);
  ModelWeights w = weights_view(*m);
  EXPECT_FALSE(untie_embeddings(w));  // already untied
  const Tensor qb = w.layers[0].q_bias->clone();
  fold_norms(w);
  rotate_residual(w, Hadamard(cfg.hidden_size));
  rotate_value_heads(w, Hadamard(cfg.head_dim));
  for (size_t i = 0; i < w.layers.size(); ++i) {
    auto& l = w.layers[i];
    reorder_value_heads(l, cfg, {random_perm(cfg.head_dim, 90 + i)});
    reorder_down(l, random_perm(cfg.intermediate_size, 95 + i));
    apply_smooth_attention(l, cfg, smooth_attention_scales(positive_random(size_t(cfg.kv_size()), 97 + i, 0.1f, 20.0f), cfg, 0.5f));
    apply_smooth_down(l, smooth_down_scales(positive_random(size_t(cfg.intermediate_size), 99 + i, 0.01f, 30.0f), *l.down, 0.2f, 0.8f));
  }
  EXPECT_LE(qs::test::normalized_error(logits_of(*m, ids), ref), kTol);
  // The q bias was scaled by SmoothAttention (it must be, for q = x W^T + b to scale as a whole).
  EXPECT_GT(qs::test::normalized_error(w.layers[0].q_bias->data<float>(), qb.data<float>(), qb.numel()), 0.1);
}

TEST(TransformsBadInput, RotateBeforeFoldingThrows) {
  QS_REQUIRE_DATA(kModel);
  auto m = model::Model::load(qs::test::data_path(kModel));
  auto w = weights_view(*m);
  try {
    rotate_residual(w, Hadamard(m->config().hidden_size));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("fold the RMSNorm weights first"));
  }
  try {
    rotate_value_heads(w, Hadamard(64));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("head_dim is 128"));
  }
  auto bad = random_perm(m->config().intermediate_size, 1);
  bad[3] = bad[4];
  try {
    reorder_down(w.layers[0], bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("not a permutation"));
  }
}

}  // namespace
}  // namespace qs::quant::qoq
