// Weight loading for the Llama family from a Hugging Face checkpoint folder: LlamaForCausalLM,
// MistralForCausalLM and Qwen2ForCausalLM share one layout; their differences are flags of the config
// (q/k/v bias: Qwen2 / attention_bias; sliding window: Mistral; tied embeddings), so one loader covers all three.
// Every tensor is checked by name, dtype (F32/F16/BF16) and shape, and converted to F32. The lm_head shares the
// embedding's storage when tie_word_embeddings is set or lm_head.weight is absent.
#include <string>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/model.h"

namespace qs::model {
namespace {

Tensor load_f32(const io::TensorStore& store, const std::string& name, const Shape& expected) {
  if (!store.has(name))
    QS_FAIL() << "checkpoint " << store.path() << ": tensor '" << name << "' is missing (expected shape "
              << shape_str(expected) << ")";
  const io::TensorInfo& info = store.info(name);
  QS_CHECK(info.shape == expected) << "checkpoint " << store.path() << ": tensor '" << name << "' has shape "
                                   << shape_str(info.shape) << ", expected " << shape_str(expected);
  QS_CHECK(info.dtype == DType::F32 || info.dtype == DType::F16 || info.dtype == DType::BF16)
      << "checkpoint " << store.path() << ": tensor '" << name << "' has dtype " << dtype_name(info.dtype)
      << ", expected F32, F16 or BF16";
  return store.get(name).to_f32();
}

std::unique_ptr<Linear> load_linear(const io::TensorStore& store, const std::string& name, int64_t in, int64_t out,
                                    bool bias, const backends::Backend& backend) {
  Tensor w = load_f32(store, name + ".weight", {out, in});
  Tensor b = bias ? load_f32(store, name + ".bias", {out}) : Tensor();
  return std::make_unique<FpLinear>(std::move(w), std::move(b), backend);
}

}  // namespace

ModelWeights load_llama_family_weights(const io::ModelConfig& c, const std::string& dir,
                                       const backends::Backend& backend) {
  const io::TensorStore store = io::TensorStore::open(dir);
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_size(), KV = c.kv_size();
  ModelWeights w;
  w.embed_tokens = load_f32(store, "model.embed_tokens.weight", {c.vocab_size, H});
  w.final_norm = load_f32(store, "model.norm.weight", {H});
  if (c.tie_word_embeddings || !store.has("lm_head.weight")) {
    w.lm_head = std::make_unique<FpLinear>(w.embed_tokens, Tensor(), backend);
  } else {
    w.lm_head = load_linear(store, "lm_head", H, c.vocab_size, false, backend);
  }
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    DecoderLayer l;
    l.input_norm = load_f32(store, p + "input_layernorm.weight", {H});
    l.post_attn_norm = load_f32(store, p + "post_attention_layernorm.weight", {H});
    l.q_proj = load_linear(store, p + "self_attn.q_proj", H, Q, c.attention_bias, backend);
    l.k_proj = load_linear(store, p + "self_attn.k_proj", H, KV, c.attention_bias, backend);
    l.v_proj = load_linear(store, p + "self_attn.v_proj", H, KV, c.attention_bias, backend);
    l.o_proj = load_linear(store, p + "self_attn.o_proj", Q, H, false, backend);
    l.gate_proj = load_linear(store, p + "mlp.gate_proj", H, I, false, backend);
    l.up_proj = load_linear(store, p + "mlp.up_proj", H, I, false, backend);
    l.down_proj = load_linear(store, p + "mlp.down_proj", I, H, false, backend);
    w.layers.push_back(std::move(l));
  }
  return w;
}

}  // namespace qs::model
