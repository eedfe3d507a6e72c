// Model tests on small random checkpoints written to a temp folder: the forward pass of Llama / Mistral (sliding
// window) / Qwen2 (q/k/v bias) / untied lm_head against a plain double-precision forward (fake_checkpoint.h),
// the KV4 cache path, chunked prefill == whole prefill, the activation observer, swapping a Linear, and clear
// errors for a missing tensor, a wrong shape, a wrong dtype and an unknown architecture.
// Tolerance: the model computes in fp32 (products rounded, blocked sums) against a double reference on dims
// <= 19: relative error ~1e-7 per op, amplified by at most a few through 2 layers -> 1e-5 normalized.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include <cstring>
#include <map>

#include "common/test_util.h"
#include "model/fake_checkpoint.h"
#include "model/model.h"

namespace qs::model {
namespace {

using ::testing::HasSubstr;
using qs::test::FakeSpec;

constexpr double kFwdTol = 1e-5;

double nerr(const Tensor& out, const std::vector<double>& ref) {
  std::vector<float> r(ref.begin(), ref.end());
  EXPECT_EQ(size_t(out.numel()), r.size());
  return qs::test::normalized_error(out.data<float>(), r.data(), r.size());
}

std::vector<int32_t> prompt(int n, int vocab, int seed) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(int32_t((i * 7 + seed * 3 + 1) % vocab));
  return ids;
}

using ::qs::test::error_of;

struct ArchCase {
  const char* name;
  FakeSpec spec;
};

class ForwardVsNaive : public ::testing::TestWithParam<ArchCase> {};

TEST_P(ForwardVsNaive, AllPositionLogitsMatchDoubleReference) {
  const FakeSpec s = GetParam().spec;
  const auto w = qs::test::fake_weights(s);
  const std::string dir = qs::test::temp_dir(GetParam().name);
  qs::test::write_checkpoint(dir, qs::test::fake_config(s), w);
  auto m = Model::load(dir);
  for (int n : {1, 3, 17}) {
    const auto ids = prompt(n, s.vocab, n);
    KvCache cache = m->new_cache();
    Tensor logits = m->forward({{ids.data(), n, &cache}}, LogitsMode::kAll);
    EXPECT_LE(nerr(logits, qs::test::naive_forward(s, w, ids)), kFwdTol) << GetParam().name << " n=" << n;
  }
  std::filesystem::remove_all(dir);
}

FakeSpec spec_with(std::string arch, int window, bool tie, bool bias, int heads, int kv_heads) {
  FakeSpec s;
  s.arch = std::move(arch);
  s.sliding_window = window;
  s.tie = tie;
  s.bias = bias;
  s.heads = heads;
  s.kv_heads = kv_heads;
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Archs, ForwardVsNaive,
    ::testing::Values(ArchCase{"llama_gqa2", spec_with("LlamaForCausalLM", 0, true, false, 4, 2)},
                      ArchCase{"llama_mha_untied", spec_with("LlamaForCausalLM", 0, false, false, 3, 3)},
                      ArchCase{"llama_bias_gqa3", spec_with("LlamaForCausalLM", 0, true, true, 3, 1)},
                      ArchCase{"mistral_window3", spec_with("MistralForCausalLM", 3, false, false, 4, 1)},
                      ArchCase{"qwen2_gqa7", spec_with("Qwen2ForCausalLM", 0, true, true, 7, 1)}),
    [](const auto& info) { return std::string(info.param.name); });

class TinyModel : public ::testing::Test {
 protected:
  void SetUp() override {
    w_ = qs::test::fake_weights(s_);
    dir_ = qs::test::temp_dir("tiny");
    qs::test::write_checkpoint(dir_, qs::test::fake_config(s_), w_);
    m_ = Model::load(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  FakeSpec s_;
  qs::test::FakeWeights w_;
  std::string dir_;
  std::unique_ptr<Model> m_;
};

TEST_F(TinyModel, LoadsBf16WeightsExactlyAndTiesLmHead) {
  const auto& e = w_.at("model.embed_tokens.weight").second;
  ASSERT_EQ(m_->weights().embed_tokens.numel(), int64_t(e.size()));
  EXPECT_EQ(std::memcmp(m_->weights().embed_tokens.raw(), e.data(), e.size() * 4), 0);
  const auto* head = dynamic_cast<const FpLinear*>(&m_->linear("lm_head"));
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->weight().raw(), m_->weights().embed_tokens.raw()) << "tied lm_head must share the embedding";
  const auto& down = dynamic_cast<const FpLinear&>(m_->linear("model.layers.1.mlp.down_proj"));
  EXPECT_EQ(down.weight().shape(), Shape({s_.hidden, s_.intermediate}));
  const auto& dw = w_.at("model.layers.1.mlp.down_proj.weight").second;
  EXPECT_EQ(std::memcmp(down.weight().raw(), dw.data(), dw.size() * 4), 0);
  // embed + final norm + per layer (2 norms + 7 linears); tied head not counted twice.
  const int64_t q = s_.heads * s_.head_dim, kv = s_.kv_heads * s_.head_dim;
  const int64_t per_layer = 2 * s_.hidden + s_.hidden * (q + 2 * kv) + q * s_.hidden + 3 * s_.hidden * s_.intermediate;
  EXPECT_EQ(m_->num_parameters(), s_.vocab * s_.hidden + s_.hidden + s_.layers * per_layer);
}

TEST_F(TinyModel, ChunkedPrefillAndDecodeEqualWholePrefillBitForBit) {
  const auto ids = prompt(11, s_.vocab, 2);
  KvCache whole = m_->new_cache();
  Tensor ref = m_->forward({{ids.data(), 11, &whole}}, LogitsMode::kAll);
  KvCache chunked = m_->new_cache();
  std::vector<float> got;
  for (auto [b, e] : {std::pair{0, 4}, std::pair{4, 5}, std::pair{5, 11}}) {
    Tensor l = m_->forward({{ids.data() + b, e - b, &chunked}}, LogitsMode::kAll);
    got.insert(got.end(), l.data<float>(), l.data<float>() + l.numel());
  }
  EXPECT_EQ(chunked.length(), 11);
  ASSERT_EQ(got.size(), size_t(ref.numel()));
  EXPECT_EQ(std::memcmp(got.data(), ref.raw(), got.size() * 4), 0);
  // kLast returns the last row of each sequence.
  KvCache c2 = m_->new_cache();
  Tensor last = m_->forward({{ids.data(), 11, &c2}}, LogitsMode::kLast);
  EXPECT_EQ(std::memcmp(last.raw(), ref.data<float>() + 10 * s_.vocab, size_t(s_.vocab) * 4), 0);
}

TEST_F(TinyModel, LayerByLayerPiecesEqualForwardBitForBit) {
  // The calibration protocol: embed, then forward_layer for each layer on the same fresh caches (their length
  // stays 0, each layer writes its own K/V), then head. Two sequences of different lengths in one matrix.
  const auto a = prompt(5, s_.vocab, 1), b = prompt(8, s_.vocab, 2);
  KvCache ca = m_->new_cache(), cb = m_->new_cache();
  Tensor ref = m_->forward({{a.data(), 5, &ca}, {b.data(), 8, &cb}}, LogitsMode::kAll);
  std::vector<int32_t> ids(a);
  ids.insert(ids.end(), b.begin(), b.end());
  std::vector<float> hidden(size_t(13 * s_.hidden)), logits(size_t(13 * s_.vocab));
  m_->embed(ids.data(), 13, hidden.data());
  KvCache fa = m_->new_cache(), fb = m_->new_cache();
  for (int l = 0; l < s_.layers; ++l) m_->forward_layer(l, hidden.data(), {{0, 5, &fa}, {5, 8, &fb}});
  EXPECT_EQ(fa.length(), 0);
  m_->head(hidden.data(), 13, logits.data());
  EXPECT_EQ(std::memcmp(logits.data(), ref.raw(), ref.nbytes()), 0);
  // The caches hold the same keys as forward's (after RoPE).
  for (int l = 0; l < s_.layers; ++l)
    EXPECT_EQ(std::memcmp(fb.k(l), cb.k(l), size_t(8 * s_.kv_heads * s_.head_dim) * 4), 0) << "layer " << l;
}

TEST_F(TinyModel, Kv4CacheQuantizesEveryKeyAndValueExactlyAsFormatsSays) {
  const auto ids = prompt(9, s_.vocab, 4);
  KvCache fp = m_->new_cache(KvMode::kFp32), q4 = m_->new_cache(KvMode::kKv4);
  Tensor lf = m_->forward({{ids.data(), 9, &fp}}, LogitsMode::kAll);
  Tensor l4 = m_->forward({{ids.data(), 9, &q4}}, LogitsMode::kAll);
  // Layer 0 sees identical inputs in both modes: the KV4 cache must hold exactly quantize_kv4_group of the FP32
  // keys/values (packed nibbles, fp16 scale/zero) and their dequantized values.
  const int D = s_.head_dim;
  for (int t = 0; t < 9; ++t)
    for (int h = 0; h < s_.kv_heads; ++h) {
      const size_t g = size_t(t * s_.kv_heads + h);
      for (int which = 0; which < 2; ++which) {
        const float* x = (which ? fp.v(0) : fp.k(0)) + g * size_t(D);
        std::vector<uint8_t> packed(size_t(D / 2), 0);
        const auto p = fmt4::quantize_kv4_group(x, D, packed.data());
        const auto got = (which ? q4.v4_params(0) : q4.k4_params(0))[g];
        ASSERT_EQ(got.scale, p.scale);
        ASSERT_EQ(got.zero, p.zero);
        ASSERT_EQ(std::memcmp((which ? q4.v4(0) : q4.k4(0)) + g * size_t(D / 2), packed.data(), size_t(D / 2)), 0);
        for (int e = 0; e < D; ++e)
          ASSERT_EQ((which ? q4.v(0) : q4.k(0))[g * size_t(D) + size_t(e)],
                    fmt4::dequantize_kv4(fmt4::get_nibble(packed.data(), e), p));
      }
    }
  // End to end: close to a double forward with the same fake quantization (a value sitting on a rounding
  // boundary may round to the neighbouring 4-bit level: allow 1e-3), and measurably different from FP32 KV.
  const double e4 = nerr(l4, qs::test::naive_forward(s_, w_, ids, /*kv4=*/true));
  const double ef = nerr(l4, qs::test::naive_forward(s_, w_, ids, /*kv4=*/false));
  EXPECT_LE(e4, 1e-3);
  EXPECT_GT(ef, 10 * e4) << "KV4 mode should change the logits";
  EXPECT_LE(nerr(lf, qs::test::naive_forward(s_, w_, ids)), kFwdTol);
}

TEST_F(TinyModel, Kv4PrefillCanReadItsOwnKeysUnquantizedLikeTheEngine) {
  const auto ids = prompt(10, s_.vocab, 6);
  KvCache fp = m_->new_cache(KvMode::kFp32), mixed = m_->new_cache(KvMode::kKv4), quant = m_->new_cache(KvMode::kKv4);
  Tensor lf = m_->forward({{ids.data(), 7, &fp}}, LogitsMode::kAll);
  Tensor lm = m_->forward({{ids.data(), 7, &mixed, /*fp_self_kv=*/true}}, LogitsMode::kAll);
  Tensor lq = m_->forward({{ids.data(), 7, &quant}}, LogitsMode::kAll);
  // First chunk on an empty cache: nothing is read back quantized, so it is exactly the FP32 model ...
  EXPECT_EQ(std::memcmp(lf.raw(), lm.raw(), lf.nbytes()), 0);
  EXPECT_NE(std::memcmp(lq.raw(), lm.raw(), lf.nbytes()), 0);
  // ... while the cache it leaves holds, in every layer, the KV4 quantization of the FP32 model's keys/values.
  const int D = s_.head_dim;
  for (int l = 0; l < s_.layers; ++l)
    for (int g = 0; g < 7 * s_.kv_heads; ++g)
      for (int which = 0; which < 2; ++which) {
        std::vector<uint8_t> packed(size_t(D / 2), 0);
        const auto p = fmt4::quantize_kv4_group((which ? fp.v(l) : fp.k(l)) + g * D, D, packed.data());
        ASSERT_EQ(std::memcmp((which ? mixed.v4(l) : mixed.k4(l)) + g * D / 2, packed.data(), size_t(D / 2)), 0);
        ASSERT_EQ((which ? mixed.v4_params(l) : mixed.k4_params(l))[g].scale, p.scale);
      }
  // Next chunk: earlier positions come from the quantized cache, so it differs from FP32.
  Tensor nf = m_->forward({{ids.data() + 7, 3, &fp}}, LogitsMode::kAll);
  Tensor nm = m_->forward({{ids.data() + 7, 3, &mixed, true}}, LogitsMode::kAll);
  EXPECT_NE(std::memcmp(nf.raw(), nm.raw(), nf.nbytes()), 0);
  EXPECT_LE(qs::test::normalized_error(nm.data<float>(), nf.data<float>(), size_t(nf.numel())), 0.1);
}

TEST_F(TinyModel, ObserverSeesEveryLinearInputInForwardOrder) {
  std::vector<std::string> names;
  std::map<std::string, std::vector<float>> first_input;
  m_->set_observer([&](const std::string& name, const float* x, int64_t m, int64_t in) {
    names.push_back(name);
    EXPECT_EQ(m, 7) << name;
    EXPECT_EQ(in, m_->linear(name).in) << name;
    first_input[name].assign(x, x + m * in);
  });
  const auto ids = prompt(7, s_.vocab, 1);
  KvCache c = m_->new_cache();
  m_->forward({{ids.data(), 7, &c}}, LogitsMode::kAll);
  EXPECT_EQ(names, m_->linear_names());
  EXPECT_EQ(first_input["model.layers.1.self_attn.q_proj"], first_input["model.layers.1.self_attn.v_proj"]);
  EXPECT_EQ(first_input["model.layers.0.mlp.gate_proj"], first_input["model.layers.0.mlp.up_proj"]);
  EXPECT_NE(first_input["model.layers.0.self_attn.q_proj"], first_input["model.layers.0.mlp.up_proj"]);
  m_->set_observer(nullptr);
  names.clear();
  KvCache c2 = m_->new_cache();
  m_->forward({{ids.data(), 7, &c2}}, LogitsMode::kLast);
  EXPECT_TRUE(names.empty());
}

// A Linear that delegates and counts calls: what a quantized implementation plugs into.
class CountingLinear final : public Linear {
 public:
  CountingLinear(std::unique_ptr<Linear> inner, int* calls)
      : Linear(inner->in, inner->out), inner_(std::move(inner)), calls_(calls) {}
  void forward(const float* x, int64_t m, float* y) const override {
    ++*calls_;
    inner_->forward(x, m, y);
    for (int64_t i = 0; i < m * out; ++i) y[i] *= 0.5f;
  }
  std::string kind() const override { return "counting"; }

 private:
  std::unique_ptr<Linear> inner_;
  int* calls_;
};

TEST_F(TinyModel, LinearSlotsCanBeReplaced) {
  const auto ids = prompt(5, s_.vocab, 3);
  KvCache c0 = m_->new_cache();
  Tensor before = m_->forward({{ids.data(), 5, &c0}}, LogitsMode::kAll);
  int calls = 0;
  auto& slot = m_->linear_slot("model.layers.0.mlp.down_proj");
  slot = std::make_unique<CountingLinear>(std::move(slot), &calls);
  EXPECT_EQ(m_->linear("model.layers.0.mlp.down_proj").kind(), "counting");
  KvCache c1 = m_->new_cache();
  Tensor after = m_->forward({{ids.data(), 5, &c1}}, LogitsMode::kAll);
  EXPECT_EQ(calls, 1);
  EXPECT_NE(std::memcmp(before.raw(), after.raw(), before.nbytes()), 0);
  EXPECT_THAT(error_of([&] { m_->linear_slot("model.layers.2.mlp.down_proj"); }),
              HasSubstr("no linear named 'model.layers.2.mlp.down_proj'"));
  EXPECT_THAT(error_of([&] { m_->linear_slot("model.layers.0.mlp.fc1"); }), HasSubstr("no linear named"));
}

TEST_F(TinyModel, ForwardRejectsBadInput) {
  const auto ids = prompt(3, s_.vocab, 0);
  KvCache c = m_->new_cache();
  std::vector<int32_t> bad = {1, s_.vocab};
  EXPECT_THAT(error_of([&] { m_->forward({{bad.data(), 2, &c}}, LogitsMode::kAll); }),
              HasSubstr("token id 19 at index 1 is outside the vocabulary"));
  EXPECT_THAT(error_of([&] { m_->forward({{ids.data(), 3, &c}, {ids.data(), 3, &c}}, LogitsMode::kAll); }),
              HasSubstr("shares its KV cache"));
  EXPECT_THAT(error_of([&] { m_->forward({{ids.data(), 0, &c}}, LogitsMode::kAll); }), HasSubstr("has no tokens"));
  KvCache other(3, 1, 4);
  EXPECT_THAT(error_of([&] { m_->forward({{ids.data(), 3, &other}}, LogitsMode::kAll); }),
              HasSubstr("shaped for another model"));
  std::vector<int32_t> longp(65, 3);
  KvCache c3 = m_->new_cache();
  EXPECT_THAT(error_of([&] { m_->forward({{longp.data(), 65, &c3}}, LogitsMode::kAll); }),
              HasSubstr("beyond max_position_embeddings 64"));
}

class BadCheckpoint : public ::testing::Test {
 protected:
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string load_error(const FakeSpec& s, qs::test::FakeWeights w, nlohmann::json cfg) {
    qs::test::write_checkpoint(dir_, cfg, w);
    return error_of([&] { Model::load(dir_); });
  }
  std::string dir_ = qs::test::temp_dir("bad");
};

TEST_F(BadCheckpoint, MissingTensorIsNamedWithItsExpectedShape) {
  FakeSpec s;
  auto w = qs::test::fake_weights(s);
  w.erase("model.layers.1.mlp.up_proj.weight");
  EXPECT_THAT(load_error(s, w, qs::test::fake_config(s)),
              HasSubstr("tensor 'model.layers.1.mlp.up_proj.weight' is missing (expected shape [12, 8])"));
  // Qwen2 needs its q/k/v biases.
  FakeSpec q;
  q.arch = "Qwen2ForCausalLM";
  auto wq = qs::test::fake_weights(q);
  wq.erase("model.layers.0.self_attn.k_proj.bias");
  EXPECT_THAT(load_error(q, wq, qs::test::fake_config(q)),
              HasSubstr("tensor 'model.layers.0.self_attn.k_proj.bias' is missing (expected shape [12])"));
  // Untied config without lm_head.weight falls back to the embedding (as documented), so it loads.
  FakeSpec u;
  u.tie = true;
  auto wu = qs::test::fake_weights(u);
  auto cu = qs::test::fake_config(u);
  cu["tie_word_embeddings"] = false;
  EXPECT_EQ(load_error(u, wu, cu), "(no error)");
}

TEST_F(BadCheckpoint, WrongShapeNamesTensorAndBothShapes) {
  FakeSpec s;
  auto w = qs::test::fake_weights(s);
  w["model.layers.0.self_attn.k_proj.weight"] = {{8, 8}, std::vector<float>(64, 0.5f)};
  EXPECT_THAT(load_error(s, w, qs::test::fake_config(s)),
              HasSubstr("tensor 'model.layers.0.self_attn.k_proj.weight' has shape [8, 8], expected [12, 8]"));
}

TEST_F(BadCheckpoint, WrongDtypeIsRejected) {
  FakeSpec s;
  qs::test::write_checkpoint(dir_, qs::test::fake_config(s), qs::test::fake_weights(s));
  // Rewrite the checkpoint with one I32 tensor.
  auto store = io::TensorStore::open(dir_);
  io::SafetensorsWriter wr;
  for (const auto& name : store.names()) {
    if (name == "model.norm.weight") {
      wr.add(name, Tensor(DType::I32, {s.hidden}));
    } else {
      wr.add(name, store.get(name).clone());
    }
  }
  wr.write(dir_ + "/model.safetensors.tmp");
  std::filesystem::rename(dir_ + "/model.safetensors.tmp", dir_ + "/model.safetensors");
  EXPECT_THAT(error_of([&] { Model::load(dir_); }),
              HasSubstr("tensor 'model.norm.weight' has dtype I32, expected F32, F16 or BF16"));
}

// Issue 13: a single NaN/inf weight made generate print nothing and exit 0; it is now a load error naming the tensor.
TEST_F(BadCheckpoint, NonFiniteWeightsAreRejectedNamingTheTensor) {
  FakeSpec s;
  auto w = qs::test::fake_weights(s);
  w["model.layers.1.mlp.down_proj.weight"].second[5] = NAN;
  EXPECT_THAT(load_error(s, w, qs::test::fake_config(s)),
              HasSubstr("tensor 'model.layers.1.mlp.down_proj.weight' holds a non-finite value (nan) at element 5"));
  w = qs::test::fake_weights(s);
  w["model.embed_tokens.weight"].second[17] = INFINITY;
  EXPECT_THAT(load_error(s, w, qs::test::fake_config(s)),
              HasSubstr("tensor 'model.embed_tokens.weight' holds a non-finite value (inf) at element 17"));
  w = qs::test::fake_weights(s);
  w["model.norm.weight"].second[0] = -INFINITY;
  EXPECT_THAT(load_error(s, w, qs::test::fake_config(s)), HasSubstr("'model.norm.weight' holds a non-finite value"));
}

// Issue 13: num_hidden_layers smaller than the checkpoint silently dropped layers; unknown tensors were ignored.
TEST_F(BadCheckpoint, EveryTensorMustBeUsed) {
  FakeSpec s;
  s.layers = 3;
  auto w = qs::test::fake_weights(s);
  auto cfg = qs::test::fake_config(s);
  cfg["num_hidden_layers"] = 2;
  EXPECT_THAT(load_error(s, w, cfg), HasSubstr("has tensors for layer 2 ('model.layers.2."));
  EXPECT_THAT(load_error(s, w, cfg), HasSubstr("num_hidden_layers = 2"));
  FakeSpec t;
  auto wt = qs::test::fake_weights(t);
  wt["model.layers.0.mlp.extra_proj.weight"] = {{2, 2}, {1, 2, 3, 4}};
  EXPECT_THAT(load_error(t, wt, qs::test::fake_config(t)),
              HasSubstr("1 tensor(s) this model does not use ('model.layers.0.mlp.extra_proj.weight')"));
  // Missing layers: a config with more layers than the checkpoint names the first missing tensor.
  auto cfg4 = qs::test::fake_config(t);
  cfg4["num_hidden_layers"] = 4;
  EXPECT_THAT(load_error(t, qs::test::fake_weights(t), cfg4), HasSubstr("'model.layers.2.input_layernorm.weight' is missing"));
  // Tolerated: the RoPE buffer older transformers saved, and a tied checkpoint's stored lm_head copy.
  auto wr = qs::test::fake_weights(t);
  wr["model.layers.0.self_attn.rotary_emb.inv_freq"] = {{3}, {1, 0.5f, 0.25f}};
  wr["lm_head.weight"] = wr["model.embed_tokens.weight"];
  EXPECT_EQ(load_error(t, wr, qs::test::fake_config(t)), "(no error)");
}

TEST_F(BadCheckpoint, QuantizedTensorsWithoutMetadataAreNamedAsSuch) {
  FakeSpec s;
  auto w = qs::test::fake_weights(s);
  w.erase("model.layers.0.self_attn.q_proj.weight");
  w["model.layers.0.self_attn.q_proj.qweight"] = {{24, 4}, std::vector<float>(96, 1.0f)};
  EXPECT_THAT(load_error(s, w, qs::test::fake_config(s)), HasSubstr("but no qserve metadata"));
}

TEST_F(BadCheckpoint, UnknownArchitectureIsRejected) {
  FakeSpec s;
  auto cfg = qs::test::fake_config(s);
  cfg["architectures"] = {"GPT2LMHeadModel"};
  EXPECT_THAT(load_error(s, qs::test::fake_weights(s), cfg), HasSubstr("unsupported architecture 'GPT2LMHeadModel'"));
}

}  // namespace
}  // namespace qs::model
