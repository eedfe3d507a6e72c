// Test helper: writes small random Llama-family checkpoints (config.json + model.safetensors) into a temporary
// folder, and an independent, deliberately plain double-precision forward pass to check the model against.
// Header-only so any test folder can include it.
#pragma once

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "formats/formats.h"

namespace qs::test {

inline size_t zu(int64_t n) { return static_cast<size_t>(n); }

struct FakeSpec {
  std::string arch = "LlamaForCausalLM";
  int hidden = 8, intermediate = 12, layers = 2, heads = 4, kv_heads = 2, head_dim = 6, vocab = 19;
  int sliding_window = 0;  // Mistral only
  bool tie = true;         // write no lm_head.weight
  bool bias = false;       // q/k/v bias (Qwen2 always)
  double rope_theta = 10000.0;
  uint64_t seed = 5;
};

// name -> (shape, values already rounded to BF16, as the loader will see them)
using FakeWeights = std::map<std::string, std::pair<Shape, std::vector<float>>>;

inline FakeWeights fake_weights(const FakeSpec& s) {
  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> nd(0.0f, 0.4f);
  FakeWeights w;
  auto add = [&](const std::string& name, Shape shape, float mean = 0.0f) {
    std::vector<float> v(zu(shape_numel(shape)));
    for (auto& x : v) x = round_bf16(mean + nd(rng));
    w[name] = {shape, v};
  };
  const int q = s.heads * s.head_dim, kv = s.kv_heads * s.head_dim;
  add("model.embed_tokens.weight", {s.vocab, s.hidden});
  add("model.norm.weight", {s.hidden}, 1.0f);
  if (!s.tie) add("lm_head.weight", {s.vocab, s.hidden});
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {s.hidden}, 1.0f);
    add(p + "post_attention_layernorm.weight", {s.hidden}, 1.0f);
    add(p + "self_attn.q_proj.weight", {q, s.hidden});
    add(p + "self_attn.k_proj.weight", {kv, s.hidden});
    add(p + "self_attn.v_proj.weight", {kv, s.hidden});
    add(p + "self_attn.o_proj.weight", {s.hidden, q});
    add(p + "mlp.gate_proj.weight", {s.intermediate, s.hidden});
    add(p + "mlp.up_proj.weight", {s.intermediate, s.hidden});
    add(p + "mlp.down_proj.weight", {s.hidden, s.intermediate});
    if (s.bias || s.arch == "Qwen2ForCausalLM") {
      add(p + "self_attn.q_proj.bias", {q});
      add(p + "self_attn.k_proj.bias", {kv});
      add(p + "self_attn.v_proj.bias", {kv});
    }
  }
  return w;
}

inline nlohmann::json fake_config(const FakeSpec& s) {
  nlohmann::json j = {{"architectures", {s.arch}},
                      {"hidden_size", s.hidden},
                      {"intermediate_size", s.intermediate},
                      {"num_hidden_layers", s.layers},
                      {"num_attention_heads", s.heads},
                      {"num_key_value_heads", s.kv_heads},
                      {"head_dim", s.head_dim},
                      {"vocab_size", s.vocab},
                      {"max_position_embeddings", 64},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", s.rope_theta},
                      {"tie_word_embeddings", s.tie},
                      {"attention_bias", s.bias},
                      {"bos_token_id", 1},
                      {"eos_token_id", 2}};
  if (s.sliding_window) j["sliding_window"] = s.sliding_window;
  return j;
}

// Writes `w` (as BF16) and `config` into `dir` (created fresh).
inline void write_checkpoint(const std::string& dir, const nlohmann::json& config, const FakeWeights& w) {
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << config.dump(2);
  io::SafetensorsWriter wr;
  for (const auto& [name, sv] : w) {
    Tensor t(DType::BF16, sv.first);
    auto* p = t.data<uint16_t>();
    for (size_t i = 0; i < sv.second.size(); ++i) p[i] = float_to_bf16(sv.second[i]);
    wr.add(name, t);
  }
  wr.write(dir + "/model.safetensors");
}

inline std::string temp_dir(const std::string& tag) {
  return (std::filesystem::temp_directory_path() / ("qs_model_test_" + tag + "_" + std::to_string(::getpid())))
      .string();
}

// Plain double-precision forward of one sequence from position 0: logits [n, vocab]. `kv4` fake-quantizes every
// K and V vector (per token, per KV head, after RoPE) with formats.h, as the KV4 reference path must.
inline std::vector<double> naive_forward(const FakeSpec& s, const FakeWeights& w, const std::vector<int32_t>& ids,
                                         bool kv4 = false) {
  const int H = s.hidden, D = s.head_dim, NH = s.heads, NKV = s.kv_heads, I = s.intermediate;
  const int n = int(ids.size());
  const bool bias = s.bias || s.arch == "Qwen2ForCausalLM";
  auto W = [&](const std::string& name) -> const std::vector<float>& { return w.at(name).second; };
  auto matvec = [](const std::vector<float>& m, const std::vector<double>& x, int out, int in) {
    std::vector<double> y(zu(out), 0.0);
    for (int o = 0; o < out; ++o)
      for (int i = 0; i < in; ++i) y[zu(o)] += double(m[zu(o * in + i)]) * x[zu(i)];
    return y;
  };
  auto rms = [&](const std::vector<double>& x, const std::vector<float>& g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double r = 1.0 / std::sqrt(ss / H + 1e-5);
    std::vector<double> y(x.size());
    for (int i = 0; i < H; ++i) y[zu(i)] = x[zu(i)] * r * g[zu(i)];
    return y;
  };
  auto rope = [&](std::vector<double>& x, int heads, int pos) {
    for (int h = 0; h < heads; ++h)
      for (int j = 0; j < D / 2; ++j) {
        const double ang = pos * std::pow(s.rope_theta, -2.0 * j / D);
        double& a = x[zu(h * D + j)];
        double& b = x[zu(h * D + j + D / 2)];
        const double na = a * std::cos(ang) - b * std::sin(ang), nb = b * std::cos(ang) + a * std::sin(ang);
        a = na;
        b = nb;
      }
  };
  std::vector<std::vector<double>> x(zu(n));
  for (int t = 0; t < n; ++t) {
    const auto& e = W("model.embed_tokens.weight");
    x[zu(t)].assign(e.begin() + ids[zu(t)] * H, e.begin() + (ids[zu(t)] + 1) * H);
  }
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<std::vector<double>> K(zu(n)), Vv(zu(n)), Qs(zu(n));
    for (int t = 0; t < n; ++t) {
      auto xn = rms(x[zu(t)], W(p + "input_layernorm.weight"));
      Qs[zu(t)] = matvec(W(p + "self_attn.q_proj.weight"), xn, NH * D, H);
      K[zu(t)] = matvec(W(p + "self_attn.k_proj.weight"), xn, NKV * D, H);
      Vv[zu(t)] = matvec(W(p + "self_attn.v_proj.weight"), xn, NKV * D, H);
      if (bias) {
        for (int i = 0; i < NH * D; ++i) Qs[zu(t)][zu(i)] += W(p + "self_attn.q_proj.bias")[zu(i)];
        for (int i = 0; i < NKV * D; ++i) {
          K[zu(t)][zu(i)] += W(p + "self_attn.k_proj.bias")[zu(i)];
          Vv[zu(t)][zu(i)] += W(p + "self_attn.v_proj.bias")[zu(i)];
        }
      }
      rope(Qs[zu(t)], NH, t);
      rope(K[zu(t)], NKV, t);
      if (kv4) {
        for (auto* vec : {&K[zu(t)], &Vv[zu(t)]})
          for (int h = 0; h < NKV; ++h) {
            std::vector<float> f(zu(D));
            for (int e = 0; e < D; ++e) f[zu(e)] = float((*vec)[zu(h * D + e)]);
            std::vector<uint8_t> packed(zu(D / 2), 0);
            const auto prm = fmt4::quantize_kv4_group(f.data(), D, packed.data());
            for (int e = 0; e < D; ++e)
              (*vec)[zu(h * D + e)] = fmt4::dequantize_kv4(fmt4::get_nibble(packed.data(), e), prm);
          }
      }
    }
    for (int t = 0; t < n; ++t) {
      std::vector<double> att(zu(NH * D), 0.0);
      for (int h = 0; h < NH; ++h) {
        const int kh = h / (NH / NKV);
        std::vector<double> sc;
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          const bool visible = s.sliding_window == 0 || t - j < s.sliding_window;
          double d = 0;
          for (int e = 0; e < D; ++e) d += Qs[zu(t)][zu(h * D + e)] * K[zu(j)][zu(kh * D + e)];
          sc.push_back(visible ? d / std::sqrt(double(D)) : -INFINITY);
          mx = std::max(mx, sc.back());
        }
        double z = 0;
        for (auto& v : sc) z += (v = std::exp(v - mx));
        for (int j = 0; j <= t; ++j)
          for (int e = 0; e < D; ++e) att[zu(h * D + e)] += sc[zu(j)] / z * Vv[zu(j)][zu(kh * D + e)];
      }
      auto o = matvec(W(p + "self_attn.o_proj.weight"), att, H, NH * D);
      for (int i = 0; i < H; ++i) x[zu(t)][zu(i)] += o[zu(i)];
      auto xn = rms(x[zu(t)], W(p + "post_attention_layernorm.weight"));
      auto g = matvec(W(p + "mlp.gate_proj.weight"), xn, I, H);
      auto u = matvec(W(p + "mlp.up_proj.weight"), xn, I, H);
      for (int i = 0; i < I; ++i) g[zu(i)] = g[zu(i)] / (1 + std::exp(-g[zu(i)])) * u[zu(i)];
      auto d = matvec(W(p + "mlp.down_proj.weight"), g, H, I);
      for (int i = 0; i < H; ++i) x[zu(t)][zu(i)] += d[zu(i)];
    }
  }
  std::vector<double> logits;
  const auto& head = s.tie ? W("model.embed_tokens.weight") : W("lm_head.weight");
  for (int t = 0; t < n; ++t) {
    auto y = matvec(head, rms(x[zu(t)], W("model.norm.weight")), s.vocab, H);
    logits.insert(logits.end(), y.begin(), y.end());
  }
  return logits;
}

}  // namespace qs::test
