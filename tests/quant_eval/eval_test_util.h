// Helpers for the quant_eval tests: a small random Llama-shaped model built in memory (awkward sizes, GQA 2,
// random norms) so the evaluation logic can be tested fast, independently of the shared data.
#pragma once

#include <memory>
#include <vector>

#include "backends/ref_cpu/ops.h"
#include "common/test_util.h"
#include "model/model.h"

namespace qs::test {

inline Tensor random_tensor(Shape shape, uint64_t seed, float stddev, float mean = 0.0f) {
  std::vector<float> v = random_normal(size_t(shape_numel(shape)), seed, stddev);
  for (auto& x : v) x += mean;
  return Tensor::from_floats(shape, v.data());
}

// hidden 256 (two g128 groups), 2 layers, 4 heads x 32, 2 KV heads, SwiGLU 384, vocab 101, untied lm_head.
inline std::unique_ptr<model::Model> tiny_random_model(uint64_t seed) {
  io::ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.hidden_size = 256;
  c.intermediate_size = 384;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.vocab_size = 101;
  c.max_position_embeddings = 1024;
  c.rope_theta = 10000.0;
  const auto& be = backends::ref_cpu_backend();
  auto lin = [&](int64_t out, int64_t in, uint64_t s) {
    return std::make_unique<model::FpLinear>(random_tensor({out, in}, s, 1.0f / std::sqrt(float(in))), Tensor(),
                                             be);
  };
  model::ModelWeights w;
  w.embed_tokens = random_tensor({c.vocab_size, c.hidden_size}, seed + 1, 1.0f);
  w.final_norm = random_tensor({c.hidden_size}, seed + 2, 0.1f, 1.0f);
  w.lm_head = lin(c.vocab_size, c.hidden_size, seed + 3);
  for (int i = 0; i < c.num_layers; ++i) {
    model::DecoderLayer l;
    const uint64_t s = seed + 100 * uint64_t(i + 1);
    l.input_norm = random_tensor({c.hidden_size}, s, 0.1f, 1.0f);
    l.post_attn_norm = random_tensor({c.hidden_size}, s + 1, 0.1f, 1.0f);
    l.q_proj = lin(c.q_size(), c.hidden_size, s + 2);
    l.k_proj = lin(c.kv_size(), c.hidden_size, s + 3);
    l.v_proj = lin(c.kv_size(), c.hidden_size, s + 4);
    l.o_proj = lin(c.hidden_size, c.q_size(), s + 5);
    l.gate_proj = lin(c.intermediate_size, c.hidden_size, s + 6);
    l.up_proj = lin(c.intermediate_size, c.hidden_size, s + 7);
    l.down_proj = lin(c.hidden_size, c.intermediate_size, s + 8);
    w.layers.push_back(std::move(l));
  }
  return std::make_unique<model::Model>(c, std::move(w), be);
}

// Deterministic token ids in [0, vocab).
inline std::vector<int32_t> random_tokens(int64_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(rng() % uint64_t(vocab));
  return t;
}

}  // namespace qs::test
