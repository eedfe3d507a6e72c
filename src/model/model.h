// The decoder-only transformer of the Llama family (Llama, Mistral, Qwen2) on a Backend: weights, a batched
// forward pass over per-sequence KV caches, and the pieces of that pass (embed, one decoder layer, final norm +
// lm_head) for layer-by-layer calibration.
//
// Forward: a batch is a list of sequences, each with its new tokens and its own KvCache (any mix of prefill
// chunks and single decode tokens). The new tokens of all sequences are stacked into one [M, hidden] matrix, so
// every linear sees the whole batch; attention runs per sequence. Row results do not depend on the batch
// composition, so batched == one by one, bit for bit.
//
// Extension points for quantization:
//  * every linear is a std::unique_ptr<Linear> (model/linear.h) reachable by its Hugging Face name through
//    linear_slot("model.layers.3.mlp.down_proj") / linear_slot("lm_head"): replace it with a W4A8 implementation;
//  * an ActivationObserver sees the input of every linear during forward (name, x [m, in]); q/k/v (and gate/up)
//    are reported separately with the same input;
//  * norms and embeddings are plain F32 tensors in ModelWeights, mutable for offline folding (rotation,
//    smoothing);
//  * KV4: create the caches with KvMode::kKv4 (model/kv_cache.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "core/tensor.h"
#include "io/model_config.h"
#include "model/kv_cache.h"
#include "model/linear.h"

namespace qs::model {

// The linears of a decoder layer in forward order, by their Hugging Face names below "model.layers.{i}.": the one
// list that the model, the loaders and the QoQ pipeline iterate (DecoderLayer::linear(j) is the j-th's slot).
inline constexpr int kNumLayerLinears = 7;
inline constexpr const char* kLayerLinearNames[kNumLayerLinears] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

struct DecoderLayer {
  Tensor input_norm;      // F32 [hidden]   (input_layernorm.weight)
  Tensor post_attn_norm;  // F32 [hidden]   (post_attention_layernorm.weight)
  std::unique_ptr<Linear> q_proj, k_proj, v_proj, o_proj;  // self_attn.*
  std::unique_ptr<Linear> gate_proj, up_proj, down_proj;   // mlp.*

  // The slot of kLayerLinearNames[j] (0 <= j < kNumLayerLinears).
  std::unique_ptr<Linear>& linear(int j) {
    std::unique_ptr<Linear>* slots[kNumLayerLinears] = {&q_proj, &k_proj, &v_proj, &o_proj,
                                                        &gate_proj, &up_proj, &down_proj};
    return *slots[j];
  }
};

struct ModelWeights {
  Tensor embed_tokens;               // F32 [vocab, hidden]
  Tensor final_norm;                 // F32 [hidden]  (model.norm.weight)
  std::unique_ptr<Linear> lm_head;   // [hidden] -> [vocab]; shares embed_tokens' storage when tied
  std::vector<DecoderLayer> layers;
};

// New tokens of one sequence in a forward call. Their positions are cache->length() + [0, n).
// fp_self_kv (matters only for a KV4 cache): the new tokens attend to each other's K/V unquantized and to earlier
// positions through the quantized cache, as the serving engine's prefill kernel does; by default (false) every
// key and value is read back from the cache, i.e. quantized (fake-quantized evaluation; engine decode steps).
struct SeqInput {
  const int32_t* ids = nullptr;
  int64_t n = 0;
  KvCache* cache = nullptr;
  bool fp_self_kv = false;
  bool logits = true;  // LogitsMode::kLast: false leaves this sequence out of the logits (no head computed)
};

// Rows [offset, offset + n) of a hidden-state matrix belong to one sequence (positions cache->length() + i).
struct SeqSlice {
  int64_t offset = 0;
  int64_t n = 0;
  KvCache* cache = nullptr;
  bool fp_self_kv = false;  // as in SeqInput
};

enum class LogitsMode {
  kAll,   // [sum of n, vocab]: every new position, sequences back to back (perplexity, golden tests)
  kLast,  // [sequences with SeqInput::logits, vocab]: the last new position of each (generation)
  kNone,  // no logits (fill caches only)
};

using ActivationObserver =
    std::function<void(const std::string& linear_name, const float* x, int64_t m, int64_t in_features)>;

class Model {
 public:
  Model(io::ModelConfig config, ModelWeights weights, const backends::Backend& backend);

  // Loads a Hugging Face checkpoint folder (config.json + safetensors) into F32 on the given backend
  // (default: ref_cpu). Unsupported architectures, missing tensors and wrong shapes throw qs::Error naming them.
  static std::unique_ptr<Model> load(const std::string& dir);
  static std::unique_ptr<Model> load(const std::string& dir, const backends::Backend& backend);

  const io::ModelConfig& config() const { return config_; }
  const backends::Backend& backend() const { return *backend_; }
  ModelWeights& weights() { return weights_; }
  const ModelWeights& weights() const { return weights_; }
  int64_t num_parameters() const;

  // A cache shaped for this model.
  KvCache new_cache(KvMode mode = KvMode::kFp32) const { return KvCache(config_, mode); }

  // Runs the new tokens of every sequence through the model, writes their K/V into the caches and advances each
  // cache's length by its n. Returns F32 logits as selected by `mode` (an undefined Tensor for kNone,
  // and for kLast when no sequence has SeqInput::logits).
  // Every sequence needs n >= 1 and its own cache.
  Tensor forward(const std::vector<SeqInput>& batch, LogitsMode mode);

  // ---- the pieces of forward (calibration runs them layer by layer) ----
  // hidden [m, hidden_size] = embedding rows of ids.
  void embed(const int32_t* ids, int64_t m, float* hidden) const;
  // One decoder layer in place on hidden [rows, hidden_size]; writes the layer's K/V of each slice at
  // [cache->length(), cache->length() + n) without advancing the length (forward() does that after the last
  // layer), so with fresh caches a caller can run layer 0, 1, 2, ... on the same caches.
  void forward_layer(int layer, float* hidden, const std::vector<SeqSlice>& seqs) const;
  // out [m, hidden_size] = final RMSNorm(hidden).
  void final_norm(const float* hidden, int64_t m, float* out) const;
  // logits [m, vocab] = lm_head(final RMSNorm(hidden)).
  void head(const float* hidden, int64_t m, float* logits) const;

  // ---- linears by Hugging Face name ----
  // All names in forward order: model.layers.{i}.self_attn.{q,k,v,o}_proj, model.layers.{i}.mlp.{gate,up,down}_proj
  // for each layer, then lm_head.
  std::vector<std::string> linear_names() const;
  // The slot holding the named linear (replace it to swap implementations). Unknown names throw.
  std::unique_ptr<Linear>& linear_slot(const std::string& name);
  const Linear& linear(const std::string& name) const;

  // Observer of every linear's input during forward (empty function: none).
  void set_observer(ActivationObserver obs) { observer_ = std::move(obs); }

 private:
  void run_linear(const Linear& lin, int layer, const char* name, const float* x, int64_t m, float* y) const;

  io::ModelConfig config_;
  ModelWeights weights_;
  const backends::Backend* backend_;
  std::vector<double> inv_freq_;
  ActivationObserver observer_;
};

// Load-time checks of untrusted checkpoints (llama.cc): every value of an F32 tensor is finite (the error names
// the tensor, `where` and the first bad element); every stored tensor is among `used` (layers beyond num_layers
// and unknown tensors are errors).
void check_finite(const Tensor& t, const std::string& name, const std::string& where);
void check_all_used(const std::vector<std::string>& names, const std::set<std::string>& used, int num_layers,
                    const std::string& where);

// Architecture loaders (one per family; model.cc dispatches on config.architecture).
// llama.cc: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (differences are flags: q/k/v bias, sliding
// window, tied embeddings).
ModelWeights load_llama_family_weights(const io::ModelConfig& config, const std::string& dir,
                                       const backends::Backend& backend);

}  // namespace qs::model
