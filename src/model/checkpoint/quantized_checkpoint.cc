// The qserve quantized checkpoint format and its reader (see quantized_checkpoint.h).
#include "model/checkpoint/quantized_checkpoint.h"

#include <climits>
#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/file_io.h"
#include "formats/formats.h"

namespace qs::model {

namespace fs = std::filesystem;

namespace {

void expect_tensor(const Tensor& t, DType dt, const Shape& shape, const std::string& what) {
  QS_CHECK(t.dtype() == dt && t.shape() == shape)
      << "tensor '" << what << "' is " << t.desc() << ", expected " << dtype_name(dt) << shape_str(shape);
}

}  // namespace

nlohmann::json checkpoint_meta_to_json(const CheckpointMeta& m) {
  nlohmann::json linears = nlohmann::json::object();
  for (const auto& [name, shape] : m.linears) linears[name] = shape;
  const bool w4 = m.variant != WeightFormat::kW8A8;
  return {{"format", kCheckpointFormatName},
          {"format_version", m.format_version},
          {"variant", weight_format_name(m.variant)},
          {"weight_bits", w4 ? 4 : 8},
          {"activation_bits", 8},
          {"kv_bits", m.kv_bits},
          {"group_size", m.group_size},
          {"protective_range", m.protective_range},
          {"qoq", m.qoq},
          {"source_model", m.source_model},
          {"hf_config", m.hf_config},
          {"linears", linears}};
}

CheckpointMeta checkpoint_meta_from_json(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    QS_FAIL() << where << ": metadata '" << kCheckpointMetadataKey << "' is not valid JSON (" << json_error_text(e)
              << ")";
  }
  CheckpointMeta m;
  QS_CHECK(j.is_object()) << where << ": metadata '" << kCheckpointMetadataKey << "' is not a JSON object";
  // Each field is checked for presence and type first, so an error names it (and the file).
  auto need = [&](const char* key, bool (nlohmann::json::*is)() const noexcept, const char* type) -> const nlohmann::json& {
    QS_CHECK(j.contains(key)) << where << ": metadata field '" << key << "' is missing";
    QS_CHECK((j[key].*is)()) << where << ": metadata field '" << key << "' must be " << type << ", got "
                             << j[key].type_name();
    return j[key];
  };
  need("format", &nlohmann::json::is_string, "a string");
  for (const char* k : {"format_version", "group_size", "protective_range", "kv_bits"})
    QS_CHECK(need(k, &nlohmann::json::is_number_integer, "an integer").get<int64_t>() >= INT32_MIN &&
             j[k].get<int64_t>() <= INT32_MAX)
        << where << ": metadata field '" << k << "' is out of range";
  need("variant", &nlohmann::json::is_string, "a string");
  need("source_model", &nlohmann::json::is_string, "a string");
  need("hf_config", &nlohmann::json::is_object, "an object");
  need("linears", &nlohmann::json::is_object, "an object");
  for (auto it = j["linears"].begin(); it != j["linears"].end(); ++it) {
    const auto& v = it.value();
    bool ok = v.is_array() && v.size() == 2;
    for (size_t i = 0; ok && i < 2; ++i)
      ok = v[i].is_number_integer() && v[i].get<int64_t>() > 0 && v[i].get<int64_t>() <= (int64_t(1) << 24);
    QS_CHECK(ok) << where << ": metadata linears['" << it.key() << "'] must be [N, K] with 1 <= N, K <= 2^24";
  }
  try {
    QS_CHECK(j.value("format", "") == kCheckpointFormatName)
        << where << ": metadata format is '" << j.value("format", "") << "', expected " << kCheckpointFormatName;
    m.format_version = j.at("format_version").get<int>();
    QS_CHECK(m.format_version == kCheckpointFormatVersion)
        << where << ": unsupported format version " << m.format_version << " (this build reads version "
        << kCheckpointFormatVersion << ")";
    m.variant = parse_weight_format(j.at("variant").get<std::string>());
    m.group_size = j.at("group_size").get<int>();
    m.protective_range = j.at("protective_range").get<int>();
    m.kv_bits = j.at("kv_bits").get<int>();
    m.qoq = j.at("qoq");
    m.source_model = j.at("source_model").get<std::string>();
    m.hf_config = j.at("hf_config");
    for (auto it = j.at("linears").begin(); it != j.at("linears").end(); ++it)
      m.linears[it.key()] = it.value().get<std::vector<int64_t>>();
  } catch (const nlohmann::json::exception& e) {
    QS_FAIL() << where << ": malformed metadata (" << json_error_text(e) << ")";
  }
  const bool g128 = m.variant == WeightFormat::kW4A8G128;
  QS_CHECK(m.group_size == (g128 ? fmt4::kGroupSize : 0))
      << where << ": group size " << m.group_size << " does not match variant " << weight_format_name(m.variant);
  QS_CHECK(!g128 || (m.protective_range >= 1 && m.protective_range <= fmt4::kProtectiveRange))
      << where << ": protective range " << m.protective_range << " is not in [1, " << fmt4::kProtectiveRange
      << "]: its weights could overflow INT8 when dequantized";
  QS_CHECK(m.kv_bits == 4 || m.kv_bits == 16) << where << ": kv_bits " << m.kv_bits << " is not 4 or 16";
  return m;
}

// ------------------------------------------------------------------------------------------------- reader

bool QuantizedCheckpoint::is_quantized_checkpoint(const std::string& path) {
  const fs::path file = fs::is_directory(path) ? fs::path(path) / kCheckpointFileName : fs::path(path);
  if (!fs::exists(file)) return false;
  try {
    return io::SafetensorsFile::open(file.string())->metadata().count(kCheckpointMetadataKey) != 0;
  } catch (const Error&) {
    return false;
  }
}

QuantizedCheckpoint QuantizedCheckpoint::open(const std::string& path) {
  const fs::path file = fs::is_directory(path) ? fs::path(path) / kCheckpointFileName : fs::path(path);
  QS_CHECK(fs::exists(file)) << "no quantized checkpoint at " << path << ": " << file.string() << " does not exist";
  QuantizedCheckpoint c;
  c.store_ = io::TensorStore::open(file.string());
  const auto& md = c.store_.metadata();
  const auto it = md.find(kCheckpointMetadataKey);
  QS_CHECK(it != md.end()) << file.string() << " is not a qserve quantized checkpoint (no '"
                           << kCheckpointMetadataKey << "' metadata; quantize it with `qserve quantize`)";
  c.meta_ = checkpoint_meta_from_json(it->second, file.string());
  for (const auto& [name, shape] : c.meta_.linears) c.linear(name);  // validates every listed linear
  return c;
}

std::vector<std::string> QuantizedCheckpoint::linear_names() const {
  std::vector<std::string> names;
  for (const auto& [name, shape] : meta_.linears) names.push_back(name);
  return names;
}

StoredLinear QuantizedCheckpoint::linear(const std::string& name) const {
  const auto it = meta_.linears.find(name);
  QS_CHECK(it != meta_.linears.end()) << "linear '" << name << "' is not in the quantized checkpoint "
                                      << store_.path();
  QS_CHECK(it->second.size() == 2 && it->second[0] > 0 && it->second[1] > 0)
      << "linear '" << name << "': bad shape in metadata";
  StoredLinear l;
  l.variant = meta_.variant;
  l.n = it->second[0];
  l.k = it->second[1];
  const int64_t n = l.n, k = l.k;
  auto get = [&](const char* suffix) {
    const std::string full = name + suffix;
    QS_CHECK(store_.has(full)) << "quantized checkpoint " << store_.path() << ": tensor '" << full << "' is missing";
    return store_.get(full);
  };
  switch (l.variant) {
    case WeightFormat::kW4A8PerChannel:
      QS_CHECK(k % 2 == 0) << "linear '" << name << "': K = " << k << " is odd";
      l.qweight = get(".qweight");
      expect_tensor(l.qweight, DType::U8, {n, k / 2}, name + ".qweight");
      l.scale = get(".scale");
      expect_tensor(l.scale, DType::F16, {n}, name + ".scale");
      l.szero = get(".szero");
      expect_tensor(l.szero, DType::F16, {n}, name + ".szero");
      for (int64_t i = 0; i < n; ++i)
        QS_CHECK(std::isfinite(fp16_to_float(l.scale.data<uint16_t>()[i])) &&
                 std::isfinite(fp16_to_float(l.szero.data<uint16_t>()[i])))
            << "linear '" << name << "': non-finite scale or zero for channel " << i;
      break;
    case WeightFormat::kW4A8G128: {
      QS_CHECK(k % fmt4::kGroupSize == 0) << "linear '" << name << "': K = " << k << " is not a multiple of 128";
      const int64_t ng = k / fmt4::kGroupSize;
      l.qweight = get(".qweight");
      expect_tensor(l.qweight, DType::U8, {n, k / 2}, name + ".qweight");
      l.s1 = get(".s1");
      expect_tensor(l.s1, DType::F16, {n}, name + ".s1");
      l.s2 = get(".s2");
      expect_tensor(l.s2, DType::U8, {n, ng}, name + ".s2");
      l.zn = get(".zn");
      expect_tensor(l.zn, DType::I8, {n, ng}, name + ".zn");
      for (int64_t i = 0; i < n * ng; ++i) {
        const int s2 = l.s2.data<uint8_t>()[i], zn = l.zn.data<int8_t>()[i];
        QS_CHECK(s2 >= 1 && zn <= 0 && -zn % s2 == 0 && -zn / s2 <= 15)
            << "linear '" << name << "': group " << i << " has s2 = " << s2 << ", zn = " << zn
            << " (need s2 >= 1 and zn = -(z * s2) with z in 0..15)";
      }
      for (int64_t i = 0; i < n; ++i)
        QS_CHECK(std::isfinite(fp16_to_float(l.s1.data<uint16_t>()[i])))
            << "linear '" << name << "': non-finite s1 for channel " << i;
      break;
    }
    case WeightFormat::kW8A8:
      l.qweight = get(".qweight");
      expect_tensor(l.qweight, DType::I8, {n, k}, name + ".qweight");
      l.scale = get(".scale");
      expect_tensor(l.scale, DType::F16, {n}, name + ".scale");
      for (int64_t i = 0; i < n; ++i)
        QS_CHECK(std::isfinite(fp16_to_float(l.scale.data<uint16_t>()[i])))
            << "linear '" << name << "': non-finite scale for channel " << i;
      break;
  }
  if (store_.has(name + ".bias")) {
    l.bias = store_.get(name + ".bias");
    expect_tensor(l.bias, DType::F16, {n}, name + ".bias");
    for (int64_t i = 0; i < n; ++i)
      QS_CHECK(std::isfinite(fp16_to_float(l.bias.data<uint16_t>()[i])))
          << "linear '" << name << "': non-finite bias for channel " << i;
  }
  return l;
}

}  // namespace qs::model
