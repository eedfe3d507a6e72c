// Loads a checkpoint directory, whatever it holds, for every executor (serving, generate, ppl): a Hugging Face FP
// checkpoint (config.json + safetensors; model::Model::load, FP32) or a qserve quantized checkpoint
// (model/checkpoint/quantized_checkpoint.h), which becomes a
// runnable model::Model on the exact integer reference path: model::QuantizedLinear for every decoder-layer
// linear, the FP16 lm_head (model::Fp16Linear), embeddings and norms from their stored FP16 values.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "model/model.h"

namespace qs::model {

struct LoadOptions {
  bool weight_only = false;  // quantized checkpoints: FP32 activations x dequantized weights (W4A16 ablation)
};

struct LoadedModel {
  std::string dir;
  std::unique_ptr<Model> model;
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
LoadedModel load_checkpoint(const std::string& dir, const LoadOptions& opt = {});


}  // namespace qs::model
