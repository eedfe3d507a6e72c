// Model: architecture dispatch, the batched forward pass and its per-layer pieces (see model.h).
#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <tuple>

#include "backends/ref_cpu/ops.h"
#include "core/error.h"

namespace qs::model {
namespace {

inline size_t sz(int64_t n) { return static_cast<size_t>(n); }

std::unique_ptr<Linear>* layer_slot(DecoderLayer& l, const std::string& which) {
  for (int j = 0; j < kNumLayerLinears; ++j)
    if (which == kLayerLinearNames[j]) return &l.linear(j);
  return nullptr;
}

void check_linear(const std::unique_ptr<Linear>& l, const std::string& name, int64_t in, int64_t out) {
  QS_CHECK(l != nullptr) << "model: linear " << name << " is not set";
  QS_CHECK(l->in == in && l->out == out) << "model: linear " << name << " maps " << l->in << " -> " << l->out
                                         << ", expected " << in << " -> " << out;
}

}  // namespace

Model::Model(io::ModelConfig config, ModelWeights weights, const backends::Backend& backend)
    : config_(std::move(config)), weights_(std::move(weights)), backend_(&backend) {
  const auto& c = config_;
  QS_CHECK(c.hidden_size > 0 && c.num_layers > 0 && c.num_heads > 0 && c.num_kv_heads > 0 && c.head_dim > 0 &&
           c.vocab_size > 0 && c.intermediate_size > 0)
      << "model: config has a zero dimension";
  QS_CHECK(c.num_heads % c.num_kv_heads == 0)
      << "model: num_heads " << c.num_heads << " is not a multiple of num_kv_heads " << c.num_kv_heads;
  QS_CHECK(int(weights_.layers.size()) == c.num_layers)
      << "model: " << weights_.layers.size() << " layers given, config says " << c.num_layers;
  const int64_t H = c.hidden_size;
  QS_CHECK(weights_.embed_tokens.dtype() == DType::F32 &&
           weights_.embed_tokens.shape() == Shape({c.vocab_size, H}))
      << "model: embed_tokens must be F32 [" << c.vocab_size << ", " << H << "], got "
      << weights_.embed_tokens.desc();
  QS_CHECK(weights_.final_norm.dtype() == DType::F32 && weights_.final_norm.shape() == Shape({H}))
      << "model: final norm must be F32 [" << H << "], got " << weights_.final_norm.desc();
  check_linear(weights_.lm_head, "lm_head", H, c.vocab_size);
  for (int i = 0; i < c.num_layers; ++i) {
    auto& l = weights_.layers[sz(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    QS_CHECK(l.input_norm.dtype() == DType::F32 && l.input_norm.shape() == Shape({H}))
        << "model: " << p << "input_layernorm must be F32 [" << H << "], got " << l.input_norm.desc();
    QS_CHECK(l.post_attn_norm.dtype() == DType::F32 && l.post_attn_norm.shape() == Shape({H}))
        << "model: " << p << "post_attention_layernorm must be F32 [" << H << "], got " << l.post_attn_norm.desc();
    check_linear(l.q_proj, p + "self_attn.q_proj", H, c.q_size());
    check_linear(l.k_proj, p + "self_attn.k_proj", H, c.kv_size());
    check_linear(l.v_proj, p + "self_attn.v_proj", H, c.kv_size());
    check_linear(l.o_proj, p + "self_attn.o_proj", c.q_size(), H);
    check_linear(l.gate_proj, p + "mlp.gate_proj", H, c.intermediate_size);
    check_linear(l.up_proj, p + "mlp.up_proj", H, c.intermediate_size);
    check_linear(l.down_proj, p + "mlp.down_proj", c.intermediate_size, H);
  }
  inv_freq_ = io::rope_inv_freq(c);
  QS_CHECK(int64_t(inv_freq_.size()) == c.head_dim / 2) << "model: rope_inv_freq returned " << inv_freq_.size()
                                                        << " values for head_dim " << c.head_dim;
}

std::unique_ptr<Model> Model::load(const std::string& dir) { return load(dir, backends::ref_cpu_backend()); }

std::unique_ptr<Model> Model::load(const std::string& dir, const backends::Backend& backend) {
  io::ModelConfig c = io::load_model_config(dir);
  if (c.architecture == "LlamaForCausalLM" || c.architecture == "MistralForCausalLM" ||
      c.architecture == "Qwen2ForCausalLM") {
    ModelWeights w = load_llama_family_weights(c, dir, backend);
    return std::make_unique<Model>(std::move(c), std::move(w), backend);
  }
  QS_FAIL() << "model: unsupported architecture '" << c.architecture << "' in " << dir;
  return nullptr;
}

int64_t Model::num_parameters() const {
  int64_t n = weights_.embed_tokens.numel() + weights_.final_norm.numel();
  auto lin = [](const Linear& l) { return l.in * l.out; };
  const auto* fp_head = dynamic_cast<const FpLinear*>(weights_.lm_head.get());
  const bool tied = fp_head && fp_head->weight().raw() == weights_.embed_tokens.raw();
  if (!tied) n += lin(*weights_.lm_head);
  for (const auto& l : weights_.layers) {
    n += l.input_norm.numel() + l.post_attn_norm.numel();
    for (const Linear* p : {l.q_proj.get(), l.k_proj.get(), l.v_proj.get(), l.o_proj.get(), l.gate_proj.get(),
                            l.up_proj.get(), l.down_proj.get()}) {
      n += lin(*p);
      if (const auto* f = dynamic_cast<const FpLinear*>(p); f && f->has_bias()) n += f->bias().numel();
    }
  }
  return n;
}

void Model::run_linear(const Linear& lin, int layer, const char* name, const float* x, int64_t m, float* y) const {
  if (observer_) {
    const std::string full = layer < 0 ? std::string(name) : "model.layers." + std::to_string(layer) + "." + name;
    observer_(full, x, m, lin.in);
  }
  lin.forward(x, m, y);
}

void Model::embed(const int32_t* ids, int64_t m, float* hidden) const {
  backend_->embedding(ids, m, weights_.embed_tokens.data<float>(), config_.vocab_size, config_.hidden_size, hidden);
}

void Model::forward_layer(int layer, float* hidden, const std::vector<SeqSlice>& seqs) const {
  QS_CHECK(layer >= 0 && layer < config_.num_layers) << "model: layer " << layer << " out of range";
  const auto& c = config_;
  const DecoderLayer& L = weights_.layers[sz(layer)];
  const int64_t H = c.hidden_size, Q = c.q_size(), KV = c.kv_size(), I = c.intermediate_size;
  int64_t M = 0;
  for (const auto& s : seqs) {
    QS_CHECK(s.cache != nullptr && s.n >= 1 && s.offset >= 0) << "model: bad sequence slice (offset " << s.offset
                                                              << ", n " << s.n << ")";
    M = std::max(M, s.offset + s.n);
  }
  if (M == 0) return;

  std::vector<float> xn(sz(M * H)), q(sz(M * Q)), k(sz(M * KV)), v(sz(M * KV));
  std::vector<float> attn(sz(M * Q)), tmp(sz(M * H));
  std::vector<int64_t> positions(sz(M), 0);
  for (const auto& s : seqs)
    for (int64_t i = 0; i < s.n; ++i) positions[sz(s.offset + i)] = s.cache->length() + i;

  // Attention block.
  backend_->rmsnorm(hidden, L.input_norm.data<float>(), M, H, c.rms_norm_eps, xn.data());
  run_linear(*L.q_proj, layer, "self_attn.q_proj", xn.data(), M, q.data());
  run_linear(*L.k_proj, layer, "self_attn.k_proj", xn.data(), M, k.data());
  run_linear(*L.v_proj, layer, "self_attn.v_proj", xn.data(), M, v.data());
  backend_->rope(q.data(), M, c.num_heads, c.head_dim, positions.data(), inv_freq_.data());
  backend_->rope(k.data(), M, c.num_kv_heads, c.head_dim, positions.data(), inv_freq_.data());
  for (const auto& s : seqs) {
    const int64_t pos0 = s.cache->length();
    s.cache->write(layer, pos0, k.data() + s.offset * KV, v.data() + s.offset * KV, s.n);
    backends::AttentionArgs a;
    a.q = q.data() + s.offset * Q;
    a.k = s.cache->k(layer);
    a.v = s.cache->v(layer);
    std::vector<float> mixed_k, mixed_v;
    if (s.fp_self_kv && s.cache->mode() == KvMode::kKv4) {
      // Earlier positions from the (quantized) cache, this chunk's own keys/values unquantized.
      for (auto [dst, cached, fresh] : {std::tuple{&mixed_k, a.k, k.data()}, std::tuple{&mixed_v, a.v, v.data()}}) {
        dst->assign(cached, cached + pos0 * KV);
        dst->insert(dst->end(), fresh + s.offset * KV, fresh + (s.offset + s.n) * KV);
      }
      a.k = mixed_k.data();
      a.v = mixed_v.data();
    }
    a.out = attn.data() + s.offset * Q;
    a.m = s.n;
    a.kv_len = pos0 + s.n;
    a.q_pos0 = pos0;
    a.num_heads = c.num_heads;
    a.num_kv_heads = c.num_kv_heads;
    a.head_dim = c.head_dim;
    a.sliding_window = c.sliding_window;
    a.scale = 1.0 / std::sqrt(double(c.head_dim));
    backend_->attention(a);
  }
  run_linear(*L.o_proj, layer, "self_attn.o_proj", attn.data(), M, tmp.data());
  backend_->add(hidden, tmp.data(), M * H, hidden);

  // MLP block.
  backend_->rmsnorm(hidden, L.post_attn_norm.data<float>(), M, H, c.rms_norm_eps, xn.data());
  std::vector<float> gate(sz(M * I)), up(sz(M * I));
  run_linear(*L.gate_proj, layer, "mlp.gate_proj", xn.data(), M, gate.data());
  run_linear(*L.up_proj, layer, "mlp.up_proj", xn.data(), M, up.data());
  backend_->silu_mul(gate.data(), up.data(), M * I, gate.data());
  run_linear(*L.down_proj, layer, "mlp.down_proj", gate.data(), M, tmp.data());
  backend_->add(hidden, tmp.data(), M * H, hidden);
}

void Model::final_norm(const float* hidden, int64_t m, float* out) const {
  backend_->rmsnorm(hidden, weights_.final_norm.data<float>(), m, config_.hidden_size, config_.rms_norm_eps, out);
}

void Model::head(const float* hidden, int64_t m, float* logits) const {
  std::vector<float> xn(sz(m * config_.hidden_size));
  final_norm(hidden, m, xn.data());
  run_linear(*weights_.lm_head, -1, "lm_head", xn.data(), m, logits);
}

Tensor Model::forward(const std::vector<SeqInput>& batch, LogitsMode mode) {
  QS_CHECK(!batch.empty()) << "model: forward needs at least one sequence";
  std::set<const KvCache*> seen;
  std::vector<SeqSlice> slices;
  int64_t M = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    const SeqInput& s = batch[b];
    QS_CHECK(s.cache != nullptr) << "model: sequence " << b << " has no KV cache";
    QS_CHECK(s.n >= 1 && s.ids != nullptr) << "model: sequence " << b << " has no tokens";
    QS_CHECK(seen.insert(s.cache).second) << "model: sequence " << b << " shares its KV cache with another one";
    QS_CHECK(s.cache->num_layers() == config_.num_layers && s.cache->num_kv_heads() == config_.num_kv_heads &&
             s.cache->head_dim() == config_.head_dim)
        << "model: sequence " << b << "'s KV cache is shaped for another model";
    if (config_.max_position_embeddings > 0) {
      QS_CHECK(s.cache->length() + s.n <= config_.max_position_embeddings)
          << "model: sequence " << b << " would reach " << s.cache->length() + s.n
          << " positions, beyond max_position_embeddings " << config_.max_position_embeddings;
    }
    slices.push_back({M, s.n, s.cache, s.fp_self_kv});
    M += s.n;
  }
  const int64_t H = config_.hidden_size, V = config_.vocab_size;
  std::vector<int32_t> ids(sz(M));
  for (size_t b = 0; b < batch.size(); ++b) {
    std::copy(batch[b].ids, batch[b].ids + batch[b].n, ids.begin() + slices[b].offset);
    batch[b].cache->reserve(batch[b].cache->length() + batch[b].n);
  }
  std::vector<float> hidden(sz(M * H));
  embed(ids.data(), M, hidden.data());
  for (int l = 0; l < config_.num_layers; ++l) forward_layer(l, hidden.data(), slices);
  for (const auto& s : slices) s.cache->set_length(s.cache->length() + s.n);

  if (mode == LogitsMode::kNone) return Tensor();
  if (mode == LogitsMode::kAll) {
    Tensor logits(DType::F32, {M, V});
    head(hidden.data(), M, logits.data<float>());
    return logits;
  }
  std::vector<float> last;
  for (size_t b = 0; b < batch.size(); ++b) {
    if (!batch[b].logits) continue;
    const SeqSlice& s = slices[b];
    last.insert(last.end(), hidden.data() + (s.offset + s.n - 1) * H, hidden.data() + (s.offset + s.n) * H);
  }
  const int64_t B = int64_t(last.size()) / H;
  if (B == 0) return Tensor();
  Tensor logits(DType::F32, {B, V});
  head(last.data(), B, logits.data<float>());
  return logits;
}

std::vector<std::string> Model::linear_names() const {
  std::vector<std::string> names;
  for (int i = 0; i < config_.num_layers; ++i)
    for (const char* n : kLayerLinearNames) names.push_back("model.layers." + std::to_string(i) + "." + n);
  names.push_back("lm_head");
  return names;
}

std::unique_ptr<Linear>& Model::linear_slot(const std::string& name) {
  if (name == "lm_head") return weights_.lm_head;
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) == 0) {
    const size_t dot = name.find('.', prefix.size());
    if (dot != std::string::npos) {
      const std::string idx = name.substr(prefix.size(), dot - prefix.size());
      if (!idx.empty() && idx.size() < 9 && std::all_of(idx.begin(), idx.end(), ::isdigit)) {
        const int layer = std::stoi(idx);
        if (layer < config_.num_layers)
          if (auto* slot = layer_slot(weights_.layers[sz(layer)], name.substr(dot + 1))) return *slot;
      }
    }
  }
  QS_FAIL() << "model: no linear named '" << name << "'";
  return weights_.lm_head;  // unreachable
}

const Linear& Model::linear(const std::string& name) const {
  return *const_cast<Model*>(this)->linear_slot(name);
}

}  // namespace qs::model
