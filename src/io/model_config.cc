// config.json parsing for the Llama family and RoPE frequency computation (see model_config.h).
#include "io/model_config.h"

#include <climits>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <numbers>

#include "core/error.h"
#include "core/file_io.h"

namespace qs::io {
namespace {

using json = nlohmann::json;

// A JSON value for a message: its type, or the value itself when short (never a long dump of the input).
std::string brief(const json& v) {
  const std::string d = v.dump();
  return d.size() <= 40 ? d : std::string(v.type_name()) + " (" + std::to_string(d.size()) + " characters)";
}

// Integers are range-checked before conversion: 4294967808 must not become 512.
int get_int(const json& j, const char* key, int fallback, bool required, long long lo = INT32_MIN,
            long long hi = INT32_MAX) {
  if (!j.contains(key) || j[key].is_null()) {
    QS_CHECK(!required) << "config.json: required field '" << key << "' is missing";
    return fallback;
  }
  const json& v = j[key];
  QS_CHECK(v.is_number_integer()) << "config.json: field '" << key << "' must be an integer, got " << brief(v);
  const bool fits = v.is_number_unsigned()
                        ? v.get<uint64_t>() <= uint64_t(hi) && (long long)v.get<uint64_t>() >= lo
                        : v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
  QS_CHECK(fits) << "config.json: field '" << key << "' = " << brief(v) << " is out of range [" << lo << ", " << hi
                 << "]";
  return int(v.get<int64_t>());
}

double get_num(const json& j, const char* key, double fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QS_CHECK(j[key].is_number()) << "config.json: field '" << key << "' must be a number, got " << brief(j[key]);
  const double d = j[key].get<double>();
  QS_CHECK(std::isfinite(d)) << "config.json: field '" << key << "' must be finite, got " << brief(j[key]);
  return d;
}

double get_positive(const json& j, const char* key, double fallback, const char* where = "") {
  const double d = get_num(j, key, fallback);
  QS_CHECK(d > 0) << "config.json: " << where << "field '" << key << "' must be positive, got " << d;
  return d;
}

std::string get_str(const json& j, const char* key, const std::string& fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QS_CHECK(j[key].is_string()) << "config.json: field '" << key << "' must be a string, got " << brief(j[key]);
  return j[key].get<std::string>();
}

bool get_bool(const json& j, const char* key, bool fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  QS_CHECK(j[key].is_boolean()) << "config.json: field '" << key << "' must be true or false";
  return j[key].get<bool>();
}

std::vector<int> get_ids(const json& j, const char* key) {
  std::vector<int> ids;
  if (!j.contains(key) || j[key].is_null()) return ids;
  auto one = [&](const json& v) {
    QS_CHECK(v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > INT32_MAX) &&
             v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX)
        << "config.json: '" << key << "' must be a token id (an integer from 0 to 2^31-1), got " << brief(v);
    ids.push_back(int(v.get<int64_t>()));
  };
  if (j[key].is_number_integer()) {
    one(j[key]);
    return ids;
  }
  QS_CHECK(j[key].is_array()) << "config.json: '" << key << "' must be an integer or a list of integers";
  for (const auto& v : j[key]) one(v);
  return ids;
}

// Reads a rope dictionary: transformers-4 `rope_scaling` or transformers-5 `rope_parameters` (which also
// carries rope_theta).
void parse_rope(const json& r, const char* field, ModelConfig* c) {
  QS_CHECK(r.is_object()) << "config.json: '" << field << "' must be an object";
  if (r.contains("rope_theta")) c->rope_theta = get_positive(r, "rope_theta", c->rope_theta, field);
  std::string type = "default";
  if (r.contains("rope_type")) type = get_str(r, "rope_type", "default");
  else if (r.contains("type")) type = get_str(r, "type", "default");
  RopeScaling& s = c->rope_scaling;
  s.type = type;
  if (type == "default") return;
  if (type == "linear") {
    s.factor = get_positive(r, "factor", 1.0, field);
    return;
  }
  if (type == "llama3") {
    s.factor = get_positive(r, "factor", 8.0, field);
    s.low_freq_factor = get_positive(r, "low_freq_factor", 1.0, field);
    s.high_freq_factor = get_positive(r, "high_freq_factor", 4.0, field);
    s.original_max_position_embeddings = get_int(r, "original_max_position_embeddings", 8192, false, 1);
    QS_CHECK(s.high_freq_factor > s.low_freq_factor) << "config.json: llama3 rope needs high_freq_factor > low_freq_factor";
    return;
  }
  QS_FAIL() << "config.json: rope scaling type '" << type << "' in '" << field
            << "' is not supported (supported: default, linear, llama3)";
}

}  // namespace

ModelConfig parse_model_config(const json& j) {
  QS_CHECK(j.is_object()) << "config.json: not a JSON object";
  ModelConfig c;
  QS_CHECK(j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty())
      << "config.json: 'architectures' is missing";
  QS_CHECK(j["architectures"][0].is_string()) << "config.json: field 'architectures' must be a list of strings";
  c.architecture = j["architectures"][0].get<std::string>();
  c.model_type = get_str(j, "model_type", "");
  static const char* kSupported[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};
  bool ok = false;
  for (const char* a : kSupported) ok |= c.architecture == a;
  QS_CHECK(ok) << "unsupported architecture '" << c.architecture
               << "' (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)";
  if (j.contains("hidden_act")) {
    const std::string act = get_str(j, "hidden_act", "silu");
    QS_CHECK(act == "silu" || act == "swish") << "config.json: hidden_act '" << act << "' is not supported (silu only)";
  }
  // Sizes: positive and bounded so that every product the model forms (hidden x vocab, heads x head_dim, ...)
  // fits 64-bit arithmetic and every size fits int (kMaxDim is 16M, far above any real model).
  constexpr long long kMaxDim = 1 << 24;
  c.hidden_size = get_int(j, "hidden_size", 0, true, 1, kMaxDim);
  c.intermediate_size = get_int(j, "intermediate_size", 0, true, 1, kMaxDim);
  c.num_layers = get_int(j, "num_hidden_layers", 0, true, 1, 100000);
  c.num_heads = get_int(j, "num_attention_heads", 0, true, 1, 1 << 16);
  c.num_kv_heads = get_int(j, "num_key_value_heads", c.num_heads, false, 1, 1 << 16);
  c.vocab_size = get_int(j, "vocab_size", 0, true, 1, kMaxDim);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", 2048, false, 1, 1 << 30);
  QS_CHECK(c.num_heads % c.num_kv_heads == 0) << "config.json: num_attention_heads (" << c.num_heads
                                             << ") is not a multiple of num_key_value_heads (" << c.num_kv_heads << ")";
  c.head_dim = get_int(j, "head_dim", 0, false, 0, 1 << 16);
  if (c.head_dim == 0) {
    QS_CHECK(c.hidden_size % c.num_heads == 0) << "config.json: hidden_size is not a multiple of num_attention_heads";
    c.head_dim = c.hidden_size / c.num_heads;
  }
  QS_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0) << "config.json: head_dim must be even for rotate-half RoPE";
  QS_CHECK((long long)c.num_heads * c.head_dim <= kMaxDim)
      << "config.json: num_attention_heads x head_dim = " << (long long)c.num_heads * c.head_dim << " is over "
      << kMaxDim;
  c.rms_norm_eps = get_positive(j, "rms_norm_eps", 1e-6);
  c.rope_theta = get_positive(j, "rope_theta", 10000.0);
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) parse_rope(j["rope_parameters"], "rope_parameters", &c);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) parse_rope(j["rope_scaling"], "rope_scaling", &c);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false);
  c.attention_bias = c.architecture == "Qwen2ForCausalLM" ? true : get_bool(j, "attention_bias", false);
  QS_CHECK(!get_bool(j, "mlp_bias", false)) << "config.json: mlp_bias=true is not supported";
  if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    // Qwen2 carries a sliding_window value that applies only with use_sliding_window=true.
    const bool use = c.architecture != "Qwen2ForCausalLM" || get_bool(j, "use_sliding_window", false);
    if (use) c.sliding_window = get_int(j, "sliding_window", 0, false, 0);
  }
  c.bos_token_ids = get_ids(j, "bos_token_id");
  c.eos_token_ids = get_ids(j, "eos_token_id");
  c.torch_dtype = get_str(j, "torch_dtype", get_str(j, "dtype", ""));
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path p(path);
  if (fs::is_directory(p)) p /= "config.json";
  QS_CHECK(fs::exists(p)) << "config file " << p.string() << " does not exist";
  const std::string text = read_file_checked(p.string(), "config file", 64 << 20);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    QS_FAIL() << "config file " << p.string() << " is not valid JSON (" << json_error_text(e) << ")";
  }
  ModelConfig c;
  try {
    c = parse_model_config(j);
  } catch (const json::exception& e) {  // a field of the wrong JSON type (the checks above should catch all)
    QS_FAIL() << "config file " << p.string() << ": " << json_error_text(e);
  } catch (const Error& e) {  // name the file: "config.json: ..." alone does not say which one
    QS_FAIL() << p.string() << ": " << e.what();
  }
  return c;
}

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<double> f(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) f[size_t(i)] = 1.0 / std::pow(c.rope_theta, double(2 * i) / c.head_dim);
  const RopeScaling& s = c.rope_scaling;
  if (s.type == "linear") {
    for (auto& x : f) x /= s.factor;
  } else if (s.type == "llama3") {
    const double old_ctx = s.original_max_position_embeddings;
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    for (auto& x : f) {
      const double wavelen = 2 * std::numbers::pi / x;
      if (wavelen > low_wavelen) {
        x = x / s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        x = (1 - smooth) * x / s.factor + smooth * x;
      }
    }
  }
  return f;
}

}  // namespace qs::io
