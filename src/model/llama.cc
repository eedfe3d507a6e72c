// Weight loading for the Llama family from a Hugging Face checkpoint folder: LlamaForCausalLM,
// MistralForCausalLM and Qwen2ForCausalLM share one layout; their differences are flags of the config
// (q/k/v bias: Qwen2 / attention_bias; sliding window: Mistral; tied embeddings), so one loader covers all three.
// Every tensor is checked by name, dtype (F32/F16/BF16) and shape, and converted to F32. The lm_head shares the
// embedding's storage when tie_word_embeddings is set or lm_head.weight is absent.
// Untrusted-checkpoint checks (issue 13): every value must be finite (one NaN weight would make every output NaN),
// and every tensor of the checkpoint must be used: extra layers (num_hidden_layers smaller than the checkpoint) or
// unknown tensors are errors, not silently dropped; a folder of qserve-quantized tensors without the qserve
// metadata is named as such.
#include <cmath>
#include <set>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace qs::model {

void check_finite(const Tensor& t, const std::string& name, const std::string& where) {
  QS_CHECK(t.dtype() == DType::F32) << "check_finite: tensor '" << name << "' is " << t.desc();
  const float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i)
    QS_CHECK(std::isfinite(p[i])) << "checkpoint " << where << ": tensor '" << name << "' holds a non-finite value ("
                                  << p[i] << ") at element " << i;
}

namespace {

Tensor load_f32(const io::TensorStore& store, const std::string& name, const Shape& expected,
               std::set<std::string>* used) {
  if (!store.has(name)) {
    const std::string base = name.size() > 7 ? name.substr(0, name.size() - 7) : name;  // drop ".weight"
    QS_CHECK(!store.has(base + ".qweight"))
        << "checkpoint " << store.path() << " holds quantized tensors ('" << base
        << ".qweight') but no qserve metadata: it is not a complete qserve quantized checkpoint (re-create it with "
           "`qserve quantize`)";
    QS_FAIL() << "checkpoint " << store.path() << ": tensor '" << name << "' is missing (expected shape "
              << shape_str(expected) << ")";
  }
  used->insert(name);
  const io::TensorInfo& info = store.info(name);
  QS_CHECK(info.shape == expected) << "checkpoint " << store.path() << ": tensor '" << name << "' has shape "
                                   << shape_str(info.shape) << ", expected " << shape_str(expected);
  QS_CHECK(info.dtype == DType::F32 || info.dtype == DType::F16 || info.dtype == DType::BF16)
      << "checkpoint " << store.path() << ": tensor '" << name << "' has dtype " << dtype_name(info.dtype)
      << ", expected F32, F16 or BF16";
  Tensor t = store.get(name).to_f32();
  check_finite(t, name, store.path());
  return t;
}

std::unique_ptr<Linear> load_linear(const io::TensorStore& store, const std::string& name, int64_t in, int64_t out,
                                    bool bias, const backends::Backend& backend, std::set<std::string>* used) {
  Tensor w = load_f32(store, name + ".weight", {out, in}, used);
  Tensor b = bias ? load_f32(store, name + ".bias", {out}, used) : Tensor();
  return std::make_unique<FpLinear>(std::move(w), std::move(b), backend);
}

}  // namespace

void check_all_used(const std::vector<std::string>& names, const std::set<std::string>& used, int num_layers,
                    const std::string& where) {
  std::vector<std::string> unused;
  for (const std::string& n : names) {
    if (used.count(n)) continue;
    // Older transformers saved the RoPE table as a buffer; it is recomputed from the config.
    if (n.ends_with(".self_attn.rotary_emb.inv_freq")) continue;
    const std::string pre = "model.layers.";
    if (n.rfind(pre, 0) == 0) {
      const size_t dot = n.find('.', pre.size());
      const std::string idx = n.substr(pre.size(), dot == std::string::npos ? std::string::npos : dot - pre.size());
      if (!idx.empty() && idx.size() < 9 && idx.find_first_not_of("0123456789") == std::string::npos &&
          std::stoi(idx) >= num_layers)
        QS_FAIL() << "checkpoint " << where << " has tensors for layer " << idx << " ('" << n
                  << "') but config.json says num_hidden_layers = " << num_layers
                  << ": the config does not describe this checkpoint";
    }
    unused.push_back(n);
  }
  if (unused.empty()) return;
  std::string list;
  for (size_t i = 0; i < unused.size() && i < 5; ++i) list += (i ? ", '" : "'") + unused[i] + "'";
  QS_FAIL() << "checkpoint " << where << " has " << unused.size() << " tensor(s) this model does not use (" << list
            << (unused.size() > 5 ? ", ..." : "") << "): not a checkpoint of this architecture, or a config mismatch";
}

ModelWeights load_llama_family_weights(const io::ModelConfig& c, const std::string& dir,
                                       const backends::Backend& backend) {
  const io::TensorStore store = io::TensorStore::open(dir);
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_size(), KV = c.kv_size();
  ModelWeights w;
  std::set<std::string> used;
  w.embed_tokens = load_f32(store, "model.embed_tokens.weight", {c.vocab_size, H}, &used);
  w.final_norm = load_f32(store, "model.norm.weight", {H}, &used);
  if (c.tie_word_embeddings || !store.has("lm_head.weight")) {
    w.lm_head = std::make_unique<FpLinear>(w.embed_tokens, Tensor(), backend);
    used.insert("lm_head.weight");  // a tied checkpoint may still store the copy transformers saved
  } else {
    w.lm_head = load_linear(store, "lm_head", H, c.vocab_size, false, backend, &used);
  }
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    DecoderLayer l;
    l.input_norm = load_f32(store, p + "input_layernorm.weight", {H}, &used);
    l.post_attn_norm = load_f32(store, p + "post_attention_layernorm.weight", {H}, &used);
    l.q_proj = load_linear(store, p + "self_attn.q_proj", H, Q, c.attention_bias, backend, &used);
    l.k_proj = load_linear(store, p + "self_attn.k_proj", H, KV, c.attention_bias, backend, &used);
    l.v_proj = load_linear(store, p + "self_attn.v_proj", H, KV, c.attention_bias, backend, &used);
    l.o_proj = load_linear(store, p + "self_attn.o_proj", Q, H, false, backend, &used);
    l.gate_proj = load_linear(store, p + "mlp.gate_proj", H, I, false, backend, &used);
    l.up_proj = load_linear(store, p + "mlp.up_proj", H, I, false, backend, &used);
    l.down_proj = load_linear(store, p + "mlp.down_proj", I, H, false, backend, &used);
    w.layers.push_back(std::move(l));
  }
  check_all_used(store.names(), used, c.num_layers, store.path());
  return w;
}

}  // namespace qs::model
