// OpenAI request parsing and validation (see openai_request.h).
#include "server/openai_request.h"

#include <cmath>
#include <limits>

#include "server/api_error.h"

namespace qs::server {
namespace {

using ojson = nlohmann::ordered_json;

const char* type_name(const ojson& v) {
  switch (v.type()) {
    case ojson::value_t::null: return "null";
    case ojson::value_t::boolean: return "a boolean";
    case ojson::value_t::string: return "a string";
    case ojson::value_t::array: return "an array";
    case ojson::value_t::object: return "an object";
    case ojson::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

// The field when present and not null.
const ojson* field(const ojson& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

bool is_integral(const ojson& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18;
}

int64_t as_int(const ojson& v, const char* key) {
  if (!is_integral(v)) bad_param(key, std::string("'") + key + "' must be an integer, got " + type_name(v) +
                                          (v.is_number() ? " " + v.dump() : ""));
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) return std::numeric_limits<int64_t>::max();
    return int64_t(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  // An integral float (1e30): saturate instead of an undefined conversion; the caller's range check names it.
  const double d = v.get<double>();
  if (d >= 9.2233720368547758e18) return std::numeric_limits<int64_t>::max();
  if (d <= -9.2233720368547758e18) return std::numeric_limits<int64_t>::min();
  return int64_t(d);
}

// `seed`: an integer in [0, 2^64 - 1], exactly (a request's seed picks its random stream: a clamped or wrapped
// seed would silently give another request's tokens).
uint64_t as_seed(const ojson& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return uint64_t(v.get<int64_t>());
  bad_param("seed", "'seed' must be an integer in [0, 18446744073709551615], got " + std::string(type_name(v)) +
                        (v.is_number() ? " " + v.dump() : ""));
  return 0;
}

double as_number(const ojson& v, const char* key) {
  if (!v.is_number()) bad_param(key, std::string("'") + key + "' must be a number, got " + type_name(v));
  const double d = v.get<double>();
  if (!std::isfinite(d)) bad_param(key, std::string("'") + key + "' must be finite");
  return d;
}

bool as_bool(const ojson& v, const char* key) {
  if (!v.is_boolean()) bad_param(key, std::string("'") + key + "' must be a boolean, got " + type_name(v));
  return v.get<bool>();
}

std::string as_string(const ojson& v, const char* key) {
  if (!v.is_string()) bad_param(key, std::string("'") + key + "' must be a string, got " + type_name(v));
  return v.get<std::string>();
}

std::string num_str(double d) {
  ojson j = d;
  return j.dump();
}

// Fields shared by both endpoints.
void parse_common(const ojson& body, OpenAiRequest& r) {
  if (!body.is_object()) throw ApiError(400, std::string("the request body must be a JSON object, got ") + type_name(body));
  const ojson* m = field(body, "model");
  if (!m) bad_param("model", "'model' is required");
  r.model = as_string(*m, "model");

  if (const ojson* v = field(body, "n")) {
    const int64_t n = as_int(*v, "n");
    if (n < 1 || n > kMaxN) bad_param("n", "'n' must be in [1, " + std::to_string(kMaxN) + "], got " + std::to_string(n));
    r.n = int32_t(n);
  }
  if (const ojson* v = field(body, "best_of")) {
    const int64_t b = as_int(*v, "best_of");
    if (b < 1) bad_param("best_of", "'best_of' must be >= 1");
    if (b > r.n) bad_param("best_of", "'best_of' > n is not supported (best_of " + std::to_string(b) + ", n " + std::to_string(r.n) + ")");
  }
  r.sampling.temperature = 1.0f;  // OpenAI's default
  if (const ojson* v = field(body, "temperature")) {
    const double t = as_number(*v, "temperature");
    if (t < 0 || t > 2) bad_param("temperature", "'temperature' must be in [0, 2], got " + num_str(t));
    r.sampling.temperature = float(t);
  }
  if (const ojson* v = field(body, "top_p")) {
    const double p = as_number(*v, "top_p");
    if (!(p > 0 && p <= 1)) bad_param("top_p", "'top_p' must be in (0, 1], got " + num_str(p));
    r.sampling.top_p = float(p);
  }
  if (const ojson* v = field(body, "top_k")) {
    const int64_t k = as_int(*v, "top_k");
    if (k < -1 || k > (int64_t(1) << 30)) bad_param("top_k", "'top_k' must be -1 or 0 (off) or a positive integer, got " + std::to_string(k));
    r.sampling.top_k = k <= 0 ? 0 : int(k);
  }
  if (const ojson* v = field(body, "repetition_penalty")) {
    const double p = as_number(*v, "repetition_penalty");
    if (!(p > 0 && p <= 100)) bad_param("repetition_penalty", "'repetition_penalty' must be in (0, 100], got " + num_str(p));
    r.sampling.repetition_penalty = float(p);
  }
  if (const ojson* v = field(body, "seed")) {
    r.sampling.seed = as_seed(*v);
    r.seed_given = true;
  }
  for (const char* key : {"presence_penalty", "frequency_penalty"}) {
    if (const ojson* v = field(body, key)) {
      const double p = as_number(*v, key);
      if (p < -2 || p > 2) bad_param(key, std::string("'") + key + "' must be in [-2, 2], got " + num_str(p));
      if (p != 0) bad_param(key, std::string("'") + key + "' is not supported (use repetition_penalty)");
    }
  }
  if (const ojson* v = field(body, "logit_bias")) {
    if (!v->is_object()) bad_param("logit_bias", std::string("'logit_bias' must be an object, got ") + type_name(*v));
    if (!v->empty()) bad_param("logit_bias", "'logit_bias' is not supported");
  }
  if (const ojson* v = field(body, "stop")) {
    if (v->is_string()) {
      if (!v->get<std::string>().empty()) r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (const ojson& s : *v) {
        if (!s.is_string()) bad_param("stop", std::string("'stop' entries must be strings, got ") + type_name(s));
        if (!s.get<std::string>().empty()) r.stop.push_back(s.get<std::string>());
      }
      if (r.stop.size() > 64) bad_param("stop", "at most 64 stop strings");
    } else {
      bad_param("stop", std::string("'stop' must be a string or an array of strings, got ") + type_name(*v));
    }
  }
  if (const ojson* v = field(body, "stop_token_ids")) {
    if (!v->is_array()) bad_param("stop_token_ids", "'stop_token_ids' must be an array of integers");
    for (const ojson& t : *v) {
      const int64_t id = as_int(t, "stop_token_ids");
      if (id < 0 || id > std::numeric_limits<int32_t>::max()) bad_param("stop_token_ids", "token id out of range: " + std::to_string(id));
      r.stop_token_ids.push_back(int32_t(id));
    }
  }
  if (const ojson* v = field(body, "ignore_eos")) r.ignore_eos = as_bool(*v, "ignore_eos");
  if (const ojson* v = field(body, "return_token_ids")) r.return_token_ids = as_bool(*v, "return_token_ids");
  if (const ojson* v = field(body, "stream")) r.stream = as_bool(*v, "stream");
  if (const ojson* v = field(body, "stream_options")) {
    if (!v->is_object()) bad_param("stream_options", std::string("'stream_options' must be an object, got ") + type_name(*v));
    if (!r.stream) bad_param("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (const ojson* u = field(*v, "include_usage")) r.include_usage = as_bool(*u, "stream_options.include_usage");
  }
  if (const ojson* v = field(body, "response_format")) {
    if (!v->is_object()) bad_param("response_format", "'response_format' must be an object");
    const ojson* t = field(*v, "type");
    if (!t || !t->is_string() || t->get<std::string>() != "text")
      bad_param("response_format", "only response_format {\"type\": \"text\"} is supported");
  }
  if (const ojson* v = field(body, "tools")) {
    if (!v->is_array()) bad_param("tools", "'tools' must be an array");
    if (!v->empty()) bad_param("tools", "tool calling is not supported");
  }
}

// max_tokens / max_completion_tokens: >= 1 (the context bound is checked after tokenization).
void parse_max_tokens(const ojson& body, const char* key, OpenAiRequest& r) {
  if (const ojson* v = field(body, key)) {
    const int64_t m = as_int(*v, key);
    if (m < 1) bad_param(key, std::string("'") + key + "' must be at least 1, got " + std::to_string(m));
    r.max_tokens = m;
  }
}

std::vector<int32_t> token_array(const ojson& a) {
  if (a.size() > size_t(kMaxPromptTokens))
    bad_param("prompt", "a token-id prompt may have at most " + std::to_string(kMaxPromptTokens) + " ids, got " +
                            std::to_string(a.size()));
  std::vector<int32_t> ids;
  ids.reserve(a.size());
  for (const ojson& t : a) {
    if (!is_integral(t)) bad_param("prompt", std::string("token ids in 'prompt' must be integers, got ") + type_name(t));
    const int64_t id = as_int(t, "prompt");
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) bad_param("prompt", "token id out of range: " + std::to_string(id));
    ids.push_back(int32_t(id));
  }
  if (ids.empty()) bad_param("prompt", "a token-id prompt must not be empty");
  return ids;
}

}  // namespace

OpenAiRequest parse_completion_request(const ojson& body) {
  OpenAiRequest r;
  r.endpoint = Endpoint::kCompletions;
  parse_common(body, r);
  parse_max_tokens(body, "max_tokens", r);
  const ojson* p = field(body, "prompt");
  if (!p) bad_param("prompt", "'prompt' is required");
  if (p->is_string()) {
    r.prompts.push_back({false, p->get<std::string>(), {}});
  } else if (p->is_array()) {
    if (p->empty()) bad_param("prompt", "'prompt' must not be an empty array");
    const ojson& first = (*p)[0];
    if (first.is_string()) {
      for (const ojson& s : *p) {
        if (!s.is_string()) bad_param("prompt", "'prompt' mixes strings and other values");
        r.prompts.push_back({false, s.get<std::string>(), {}});
      }
    } else if (first.is_number()) {
      r.prompts.push_back({true, {}, token_array(*p)});
    } else if (first.is_array()) {
      for (const ojson& a : *p) {
        if (!a.is_array()) bad_param("prompt", "'prompt' mixes token-id arrays and other values");
        r.prompts.push_back({true, {}, token_array(a)});
      }
    } else {
      bad_param("prompt", std::string("'prompt' array entries must be strings, integers or arrays, got ") + type_name(first));
    }
  } else {
    bad_param("prompt", std::string("'prompt' must be a string or an array, got ") + type_name(*p));
  }
  if (int(r.prompts.size()) > kMaxPrompts) bad_param("prompt", "at most " + std::to_string(kMaxPrompts) + " prompts per request");
  if (int(r.prompts.size()) * r.n > kMaxChoices)
    bad_param("n", "prompts x n must be at most " + std::to_string(kMaxChoices));
  if (const ojson* v = field(body, "logprobs")) {
    const int64_t k = as_int(*v, "logprobs");
    if (k < 0 || k > kMaxLogprobs) bad_param("logprobs", "'logprobs' must be in [0, " + std::to_string(kMaxLogprobs) + "], got " + std::to_string(k));
    r.logprobs = int32_t(k);
  }
  if (const ojson* v = field(body, "echo")) r.echo = as_bool(*v, "echo");
  if (r.echo && r.logprobs >= 0) bad_param("echo", "'echo' together with 'logprobs' (prompt logprobs) is not supported");
  if (const ojson* v = field(body, "suffix")) {
    if (!v->is_string()) bad_param("suffix", "'suffix' must be a string");
    if (!v->get<std::string>().empty()) bad_param("suffix", "'suffix' (insertion) is not supported");
  }
  return r;
}

OpenAiRequest parse_chat_request(const ojson& body) {
  OpenAiRequest r;
  r.endpoint = Endpoint::kChat;
  parse_common(body, r);
  parse_max_tokens(body, "max_tokens", r);
  parse_max_tokens(body, "max_completion_tokens", r);  // the newer name wins when both are given
  const ojson* msgs = field(body, "messages");
  if (!msgs) bad_param("messages", "'messages' is required");
  if (!msgs->is_array()) bad_param("messages", std::string("'messages' must be an array, got ") + type_name(*msgs));
  if (msgs->empty()) bad_param("messages", "'messages' must not be empty");
  r.messages = ojson::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const ojson& m = (*msgs)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad_param(where, where + " must be an object, got " + type_name(m));
    const ojson* role = field(m, "role");
    if (!role || !role->is_string()) bad_param(where + ".role", where + ".role must be a string");
    const std::string rs = role->get<std::string>();
    if (rs != "system" && rs != "user" && rs != "assistant" && rs != "tool" && rs != "developer" && rs != "function")
      bad_param(where + ".role", where + ".role '" + rs + "' is not one of system, developer, user, assistant, tool");
    std::string content;
    if (const ojson* c = field(m, "content")) {
      if (c->is_string()) {
        content = c->get<std::string>();
      } else if (c->is_array()) {
        for (const ojson& part : *c) {
          const ojson* type = part.is_object() ? field(part, "type") : nullptr;
          if (!type || !type->is_string() || type->get<std::string>() != "text")
            bad_param(where + ".content", where + ".content: only {\"type\": \"text\"} parts are supported");
          const ojson* text = field(part, "text");
          if (!text || !text->is_string()) bad_param(where + ".content", where + ".content: a text part needs a string 'text'");
          content += text->get<std::string>();
        }
      } else {
        bad_param(where + ".content", where + ".content must be a string or an array of parts, got " + type_name(*c));
      }
    } else if (rs != "assistant") {
      bad_param(where + ".content", where + ".content is required");
    }
    ojson out = ojson::object();
    out["role"] = rs;
    out["content"] = content;
    if (const ojson* name = field(m, "name"); name && name->is_string()) out["name"] = *name;
    r.messages.push_back(std::move(out));
  }
  if (r.n > kMaxChoices) bad_param("n", "'n' too large");
  if (const ojson* v = field(body, "logprobs")) r.logprobs = as_bool(*v, "logprobs") ? 0 : -1;
  if (const ojson* v = field(body, "top_logprobs")) {
    const int64_t k = as_int(*v, "top_logprobs");
    if (k < 0 || k > kMaxLogprobs) bad_param("top_logprobs", "'top_logprobs' must be in [0, " + std::to_string(kMaxLogprobs) + "], got " + std::to_string(k));
    if (r.logprobs < 0 && k > 0) bad_param("top_logprobs", "'top_logprobs' requires 'logprobs': true");
    if (r.logprobs >= 0) r.logprobs = int32_t(k);
  }
  if (const ojson* v = field(body, "add_generation_prompt")) r.add_generation_prompt = as_bool(*v, "add_generation_prompt");
  return r;
}

}  // namespace qs::server
