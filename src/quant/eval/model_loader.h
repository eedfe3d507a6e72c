// Loads a checkpoint directory for evaluation, whatever it holds: a Hugging Face FP checkpoint (config.json +
// safetensors; model::Model::load, FP32) or a qserve quantized checkpoint (quant/checkpoint.h), which becomes a
// runnable model::Model on the exact integer reference path: model::QuantizedLinear for every decoder-layer
// linear, the FP16 lm_head (model::Fp16Linear), embeddings and norms from their stored FP16 values.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qs::quant::eval {

struct LoadOptions {
  bool weight_only = false;  // quantized checkpoints: FP32 activations x dequantized weights (W4A16 ablation)
};

struct LoadedModel {
  std::string dir;
  std::unique_ptr<model::Model> model;
  bool quantized = false;
  int kv_bits = 32;           // the KV cache the checkpoint was made for: 4 (KV4), 16 or 32 (FP)
  std::string description;    // "fp32 (bfloat16 checkpoint)", "g128, qoq: rotate smooth_attention gptq"
  std::string tokenizer_dir;  // where tokenizer.json was found ("" when none)
  nlohmann::json qoq;         // quantized checkpoints: the QoQ settings recorded in the metadata
};

// True when `dir` holds a qserve quantized checkpoint.
bool is_quantized_checkpoint(const std::string& dir);

// `dir` must be a folder. Quantized checkpoints: config.json (when present) must equal the embedded hf_config; the
// tokenizer is taken from `dir` only (tokenizer_dir stays "" when it has none). Every tensor must be used and finite.
LoadedModel load_for_eval(const std::string& dir, const LoadOptions& opt);

// Throws unless the tokenizer fits the model: every id it can produce (and the config's and tokenizer's BOS/EOS
// ids) is below the model's vocab_size. Call it wherever a model and a tokenizer are loaded together; `where`
// names the model in the message.
void check_tokenizer_fits_model(const tokenizer::Tokenizer& tok, const io::ModelConfig& c, const std::string& where);

}  // namespace qs::quant::eval
