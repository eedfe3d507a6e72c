// The qserve quantized checkpoint (QoQ W4A8KV4, and W8A8 for baselines): one `model.safetensors` in a directory,
// readable by any safetensors tool. Per quantized linear `<name>` (the HF module name, e.g.
// "model.layers.0.self_attn.q_proj"), in the canonical layouts of formats/formats.h:
//   per-channel W4: <name>.qweight U8 [N, K/2], <name>.scale F16 [N], <name>.szero F16 [N]
//   g128 W4:        <name>.qweight U8 [N, K/2], <name>.s1 F16 [N], <name>.s2 U8 [N, K/128], <name>.zn I8 [N, K/128]
//   W8A8:           <name>.qweight I8 [N, K],   <name>.scale F16 [N]
//   optional bias:  <name>.bias F16 [N]
// plus the FP tensors under their HF names in F16 (embeddings, norms, lm_head). The safetensors metadata key
// "qserve" holds a JSON object: format ("qserve-quantized"), format_version, variant ("per-channel", "g128",
// "w8a8"), weight/activation/KV bits, group_size (128 or 0 = per channel), protective_range (g128), qoq
// (the QoQ settings used, free-form), source_model, hf_config (the source config.json, with the tied
// embeddings untied if the pipeline did so) and linears ({name: [N, K]}).
//
// This file is the format and its reader (what serving needs); the writer is the quantizer's
// (quant/checkpoint.h). Atomicity: the single file is written to a temporary name, fsynced and renamed (io::SafetensorsWriter), so a
// checkpoint is either complete or absent; a convenience copy of hf_config is then written as config.json the
// same way. The reader trusts only the metadata inside model.safetensors.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "formats/kinds.h"
#include "io/safetensors.h"

namespace qs::model {

constexpr int kCheckpointFormatVersion = 1;
constexpr const char* kCheckpointFormatName = "qserve-quantized";
constexpr const char* kCheckpointMetadataKey = "qserve";
constexpr const char* kCheckpointFileName = "model.safetensors";


struct CheckpointMeta {
  int format_version = kCheckpointFormatVersion;
  WeightFormat variant = WeightFormat::kW4A8G128;
  int group_size = 0;        // 128 for g128, 0 otherwise (derived from variant when writing)
  int protective_range = 0;  // g128 only (fmt4::kProtectiveRange), 0 otherwise
  int kv_bits = 4;           // 4: KV4 cache; 16: FP16 KV (ablations)
  nlohmann::json qoq = nlohmann::json::object();        // QoQ settings used (free-form)
  std::string source_model;                             // where the FP model came from
  nlohmann::json hf_config = nlohmann::json::object();  // the model's config.json
  std::map<std::string, std::vector<int64_t>> linears;  // name -> {N, K} (filled by the writer)
};

// One stored quantized linear. Unused fields are undefined Tensors.
struct StoredLinear {
  WeightFormat variant = WeightFormat::kW4A8G128;
  int64_t n = 0, k = 0;
  Tensor qweight;  // U8 [N, K/2] (W4) or I8 [N, K] (W8A8)
  Tensor scale;    // F16 [N]: per-channel W4 and W8A8
  Tensor szero;    // F16 [N]: per-channel W4
  Tensor s1;       // F16 [N]: g128
  Tensor s2;       // U8 [N, K/128]: g128
  Tensor zn;       // I8 [N, K/128]: g128
  Tensor bias;     // F16 [N] or undefined
};

// The metadata object stored under kCheckpointMetadataKey (the writer's side of checkpoint_meta_from_json).
nlohmann::json checkpoint_meta_to_json(const CheckpointMeta& m);
// Parses and validates the metadata JSON text; `where` names the file in errors.
CheckpointMeta checkpoint_meta_from_json(const std::string& text, const std::string& where);

class QuantizedCheckpoint {
 public:
  // `path`: the checkpoint directory (or its model.safetensors). Throws if it is not a qserve quantized
  // checkpoint, has an unsupported format version, or a listed linear is missing or malformed.
  static QuantizedCheckpoint open(const std::string& path);
  static bool is_quantized_checkpoint(const std::string& path);  // has model.safetensors with "qserve" metadata

  const CheckpointMeta& meta() const { return meta_; }
  bool has_linear(const std::string& name) const { return meta_.linears.count(name) != 0; }
  std::vector<std::string> linear_names() const;
  StoredLinear linear(const std::string& name) const;  // validated: dtypes, shapes, s2 >= 1, zn = -(z * s2)
  bool has(const std::string& name) const { return store_.has(name); }
  Tensor tensor(const std::string& name) const { return store_.get(name); }  // any stored tensor, as stored
  const io::TensorStore& store() const { return store_; }

 private:
  CheckpointMeta meta_;
  io::TensorStore store_;
};

}  // namespace qs::model
