// Loading FP and quantized checkpoints into runnable models (see load.h).
#include "model/checkpoint/load.h"

#include <filesystem>
#include <set>

#include "backends/ref_cpu/ops.h"
#include "core/error.h"
#include "core/file_io.h"
#include "io/model_config.h"
#include "model/quantized/quantized_linear.h"
#include "model/checkpoint/quantized_checkpoint.h"

namespace qs::model {

namespace {

WeightFormat gemm_variant(WeightFormat v) {
  switch (v) {
    case WeightFormat::kW4A8PerChannel: return WeightFormat::kW4A8PerChannel;
    case WeightFormat::kW4A8G128: return WeightFormat::kW4A8G128;
    case WeightFormat::kW8A8: return WeightFormat::kW8A8;
  }
  QS_FAIL() << "unknown weight variant";
  return WeightFormat::kW8A8;
}

std::unique_ptr<Linear> make_linear(const QuantizedCheckpoint& ck, const std::string& name,
                                           ActMode act, const backends::Backend& be) {
  const StoredLinear s = ck.linear(name);
  QuantizedWeights w;
  w.variant = gemm_variant(s.variant);
  w.qweight = s.qweight;
  w.scale = s.variant == WeightFormat::kW4A8G128 ? s.s1 : s.scale;
  w.szero = s.szero;
  w.s2 = s.s2;
  w.zn = s.zn;
  w.bias = s.bias;
  return std::make_unique<QuantizedLinear>(std::move(w), act, be, name);
}

// An FP tensor of the checkpoint (stored F16) as F32 of the expected shape, all values finite.
Tensor fp_tensor(const QuantizedCheckpoint& ck, const std::string& name, const Shape& shape,
                 std::set<std::string>* used) {
  QS_CHECK(ck.has(name)) << "quantized checkpoint " << ck.store().path() << ": tensor '" << name << "' missing";
  used->insert(name);
  Tensor t = ck.tensor(name).to_f32();
  QS_CHECK(t.shape() == shape) << "quantized checkpoint " << ck.store().path() << ": tensor '" << name << "' is "
                               << t.desc() << ", expected " << shape_str(shape);
  check_finite(t, name, ck.store().path());
  return t;
}

// config.json beside model.safetensors is a convenience copy of the embedded hf_config (the reader trusts only
// the embedded one): when both exist they must agree, so `inspect` and `generate` never describe different models.
void check_config_copy(const std::string& dir, const nlohmann::json& hf_config) {
  const std::filesystem::path p = std::filesystem::path(dir) / "config.json";
  if (!std::filesystem::exists(std::filesystem::symlink_status(p))) return;
  const std::string text = read_file_checked(p.string(), "config file", 64 << 20);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    QS_FAIL() << "config file " << p.string() << " is not valid JSON (" << json_error_text(e) << ")";
  }
  QS_CHECK(j == hf_config) << "quantized checkpoint " << dir << ": config.json differs from the hf_config embedded in "
                           << kCheckpointFileName << " (the model that runs); the folder was edited or mixed up";
}

LoadedModel load_quantized(const std::string& dir, const LoadOptions& opt) {
  const QuantizedCheckpoint ck = QuantizedCheckpoint::open(dir);
  const CheckpointMeta& meta = ck.meta();
  io::ModelConfig c = io::parse_model_config(meta.hf_config);
  check_config_copy(dir, meta.hf_config);
  std::set<std::string> used;
  const backends::Backend& be = backends::ref_cpu_backend();
  const ActMode act = opt.weight_only ? ActMode::kFloat : ActMode::kInt8;
  const int64_t H = c.hidden_size;

  ModelWeights w;
  w.embed_tokens = fp_tensor(ck, "model.embed_tokens.weight", {c.vocab_size, H}, &used);
  w.final_norm = fp_tensor(ck, "model.norm.weight", {H}, &used);
  w.layers.resize(size_t(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    DecoderLayer& l = w.layers[size_t(i)];
    l.input_norm = fp_tensor(ck, p + "input_layernorm.weight", {H}, &used);
    l.post_attn_norm = fp_tensor(ck, p + "post_attention_layernorm.weight", {H}, &used);
    for (int j = 0; j < kNumLayerLinears; ++j) {
      const std::string n = p + kLayerLinearNames[j];
      QS_CHECK(ck.has_linear(n)) << "quantized checkpoint " << dir << ": linear '" << n << "' missing";
      l.linear(j) = make_linear(ck, n, act, be);
    }
  }
  if (ck.has_linear("lm_head")) {
    w.lm_head = make_linear(ck, "lm_head", act, be);
  } else {
    // FP16 lm_head; tied checkpoints (no lm_head.weight) read the embeddings.
    const std::string n = ck.has("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight";
    w.lm_head = std::make_unique<Fp16Linear>(fp_tensor(ck, n, {c.vocab_size, H}, &used), be);
  }
  // Every stored tensor is used: the linears' parts and the FP tensors above (layers beyond num_hidden_layers, or
  // a linear listed in the metadata that the model does not have, are errors).
  for (const std::string& name : ck.linear_names()) {
    if (name != "lm_head" && !(name.rfind("model.layers.", 0) == 0)) continue;
    bool known = name == "lm_head";
    for (int i = 0; !known && i < c.num_layers; ++i)
      for (const char* n : kLayerLinearNames)
        known = known || name == "model.layers." + std::to_string(i) + "." + n;
    if (!known) continue;  // reported by check_all_used below
    for (const char* part : {".qweight", ".scale", ".szero", ".s1", ".s2", ".zn", ".bias"}) used.insert(name + part);
  }
  if (c.tie_word_embeddings) used.insert("lm_head.weight");
  check_all_used(ck.store().names(), used, c.num_layers, dir);

  LoadedModel r;
  r.dir = dir;
  r.quantized = true;
  r.kv_bits = meta.kv_bits;
  r.description = std::string(weight_format_name(meta.variant)) + (opt.weight_only ? " weight-only" : "");
  // The QoQ steps that were on, e.g. "qoq: rotate smooth_attention gptq" (all off: "rtn").
  std::string steps;
  for (const char* k : {"rotate", "smooth_attention", "smooth_down", "reorder", "clip", "gptq"})
    if (meta.qoq.is_object() && meta.qoq.contains(k) && meta.qoq[k].is_boolean() && meta.qoq[k].get<bool>())
      steps += std::string(" ") + k;
  if (meta.qoq.is_object() && !meta.qoq.empty()) r.description += steps.empty() ? ", rtn" : ", qoq:" + steps;
  r.qoq = meta.qoq;
  r.model = std::make_unique<Model>(std::move(c), std::move(w), be);
  // The tokenizer must be in the checkpoint folder (qserve quantize copies it there). The source_model path in the
  // metadata is not followed: it names a folder on the machine that made the checkpoint, which may hold anything.
  if (std::filesystem::exists(dir + "/tokenizer.json") || std::filesystem::exists(dir + "/tokenizer.model"))
    r.tokenizer_dir = dir;
  return r;
}

}  // namespace

bool is_quantized_checkpoint(const std::string& dir) { return QuantizedCheckpoint::is_quantized_checkpoint(dir); }

LoadedModel load_checkpoint(const std::string& dir, const LoadOptions& opt) {
  QS_CHECK(std::filesystem::exists(dir)) << "model directory '" << dir << "' does not exist";
  QS_CHECK(std::filesystem::is_directory(dir))
      << "model '" << dir << "' is a file; give the checkpoint folder (the one holding config.json)";
  if (is_quantized_checkpoint(dir)) return load_quantized(dir, opt);
  LoadedModel r;
  r.dir = dir;
  if (std::filesystem::exists(dir + "/tokenizer.json") || std::filesystem::exists(dir + "/tokenizer.model"))
    r.tokenizer_dir = dir;
  QS_CHECK(!opt.weight_only) << "--weight-only applies to quantized checkpoints; '" << dir << "' is an FP one";
  r.model = Model::load(dir);
  const std::string dt = r.model->config().torch_dtype;
  r.description = "fp32" + (dt.empty() ? std::string() : " (" + dt + " checkpoint)");
  return r;
}

}  // namespace qs::model
