// Loading a Tokenizer: tokenizer.json (model, added tokens, normalizer, pre-tokenizer, post-processor,
// decoder) into TokenizerImpl, then tokenizer_config.json (bos/eos tokens, add_bos_token/add_eos_token,
// chat_template), generation_config.json (eos ids) and chat_template.jinja. Every unsupported or malformed
// part is a qs::Error that names the JSON path of the problem.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/file_io.h"
#include "core/logging.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"

namespace qs::tokenizer {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// GPT-2's pre-tokenizer regex (ByteLevel with use_regex).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A regular file only (a FIFO or a directory is an error naming it, never a hang), at most 1 GiB.
std::string read_text(const fs::path& p) { return read_file_checked(p.string(), "tokenizer file"); }

json parse_json(std::string_view text, const std::string& what) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    QS_FAIL() << what << ": invalid JSON (" << json_error_text(e) << ")";  // never quotes the input
  }
  return json();
}

// Token ids index tables sized by the largest id, so they are bounded by the number of entries in the file
// (vocab + added tokens, with room for gaps): one id of 200,000,000 must not allocate gigabytes.
thread_local int g_max_token_id = 0;  // set by build() / finish_tokenizer() for the file being parsed
struct MaxIdScope {
  explicit MaxIdScope(int max_id) : prev(g_max_token_id) { g_max_token_id = max_id; }
  ~MaxIdScope() { g_max_token_id = prev; }
  int prev;
};

int parse_token_id(const json& v, const std::string& where) {
  QS_CHECK(v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(g_max_token_id)) &&
           v.get<int64_t>() >= 0 && v.get<int64_t>() <= g_max_token_id)
      << where << ": token id " << v.dump().substr(0, 24) << " is not an integer from 0 to " << g_max_token_id
      << " (ids are bounded by the number of vocabulary entries)";
  return int(v.get<int64_t>());
}

const json& field(const json& j, const char* key, const std::string& where) {
  QS_CHECK(j.is_object() && j.contains(key)) << where << "." << key << " is missing";
  return j.at(key);
}

std::string get_string(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  QS_CHECK(v.is_string()) << where << "." << key << " must be a string";
  return v.get<std::string>();
}

bool get_bool(const json& j, const char* key, bool dflt) {
  if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return dflt;
  QS_CHECK(j.at(key).is_boolean()) << key << " must be true or false";
  return j.at(key).get<bool>();
}

std::string type_of(const json& j, const std::string& where) {
  QS_CHECK(j.is_object()) << where << " must be an object";
  return get_string(j, "type", where);
}

// {"String": "x"} or {"Regex": "x"}.
std::shared_ptr<Regex> parse_pattern(const json& j, const std::string& where) {
  const json& p = field(j, "pattern", where);
  if (p.is_object() && p.contains("String") && p["String"].is_string())
    return std::make_shared<Regex>(p["String"].get<std::string>(), /*literal=*/true, where);
  if (p.is_object() && p.contains("Regex") && p["Regex"].is_string())
    return std::make_shared<Regex>(p["Regex"].get<std::string>(), /*literal=*/false, where);
  QS_FAIL() << where << ".pattern must be {\"String\": ...} or {\"Regex\": ...}";
  return nullptr;
}

void parse_normalizer(const json& j, const std::string& where, std::vector<NormalizerStep>& out) {
  if (j.is_null()) return;
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const json& list = field(j, "normalizers", where);
    QS_CHECK(list.is_array()) << where << ".normalizers must be an array";
    for (size_t i = 0; i < list.size(); ++i)
      parse_normalizer(list[i], where + ".normalizers[" + std::to_string(i) + "]", out);
  } else if (type == "Prepend") {
    out.push_back({NormalizerStep::kPrepend, get_string(j, "prepend", where), nullptr});
  } else if (type == "Replace") {
    out.push_back({NormalizerStep::kReplace, get_string(j, "content", where), parse_pattern(j, where)});
  } else if (type == "Strip") {
    NormalizerStep s{NormalizerStep::kStrip, "", nullptr};
    s.left = get_bool(j, "strip_left", false);
    s.right = get_bool(j, "strip_right", false);
    out.push_back(s);
  } else if (type == "NFC") {
    QS_LOG(DEBUG) << "tokenizer: NFC normalizer passes text through unchanged (input assumed to be NFC)";
    out.push_back({NormalizerStep::kPassThrough, "", nullptr});
  } else {
    QS_FAIL() << where << ": unsupported normalizer type '" << type << "'";
  }
}

SplitBehavior parse_behavior(const json& j, const std::string& where) {
  const std::string b = get_string(j, "behavior", where);
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  QS_FAIL() << where << ": unknown split behavior '" << b << "'";
  return SplitBehavior::kIsolated;
}

PreTokenizerStep split_step(const std::string& pattern, SplitBehavior behavior, bool invert,
                            const std::string& where) {
  PreTokenizerStep s{PreTokenizerStep::kSplit};
  s.regex = std::make_shared<Regex>(pattern, false, where);
  s.behavior = behavior;
  s.invert = invert;
  return s;
}

PreTokenizerStep::Prepend parse_prepend_scheme(const json& j, const std::string& where) {
  if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
    const std::string p = j["prepend_scheme"].get<std::string>();
    if (p == "always") return PreTokenizerStep::kAlways;
    if (p == "first") return PreTokenizerStep::kFirst;
    if (p == "never") return PreTokenizerStep::kNever;
    QS_FAIL() << where << ": unknown prepend_scheme '" << p << "'";
  }
  return get_bool(j, "add_prefix_space", true) ? PreTokenizerStep::kAlways : PreTokenizerStep::kNever;
}

void parse_pre_tokenizer(const json& j, const std::string& where, std::vector<PreTokenizerStep>& out) {
  if (j.is_null()) return;
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const json& list = field(j, "pretokenizers", where);
    QS_CHECK(list.is_array()) << where << ".pretokenizers must be an array";
    for (size_t i = 0; i < list.size(); ++i)
      parse_pre_tokenizer(list[i], where + ".pretokenizers[" + std::to_string(i) + "]", out);
  } else if (type == "Split") {
    PreTokenizerStep s{PreTokenizerStep::kSplit};
    s.regex = parse_pattern(j, where);
    s.behavior = parse_behavior(j, where);
    s.invert = get_bool(j, "invert", false);
    out.push_back(std::move(s));
  } else if (type == "ByteLevel") {
    PreTokenizerStep s{PreTokenizerStep::kByteLevel};
    s.add_prefix_space = get_bool(j, "add_prefix_space", true);
    if (get_bool(j, "use_regex", true)) s.regex = std::make_shared<Regex>(kGpt2Pattern, false, where);
    out.push_back(std::move(s));
  } else if (type == "Metaspace") {
    PreTokenizerStep s{PreTokenizerStep::kMetaspace};
    s.replacement = j.contains("replacement") ? get_string(j, "replacement", where) : "\xE2\x96\x81";
    s.prepend = parse_prepend_scheme(j, where);
    s.split = get_bool(j, "split", true);
    out.push_back(std::move(s));
  } else if (type == "Digits") {
    out.push_back(split_step(get_bool(j, "individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)",
                             SplitBehavior::kIsolated, false, where));
  } else if (type == "Whitespace") {
    out.push_back(split_step(R"(\w+|[^\w\s]+)", SplitBehavior::kRemoved, true, where));
  } else if (type == "WhitespaceSplit") {
    out.push_back(split_step(R"(\s+)", SplitBehavior::kRemoved, false, where));
  } else {
    QS_FAIL() << where << ": unsupported pre_tokenizer type '" << type << "'";
  }
}

void parse_decoder(const json& j, const std::string& where, TokenizerImpl& t) {
  if (j.is_null()) return;
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const json& list = field(j, "decoders", where);
    QS_CHECK(list.is_array()) << where << ".decoders must be an array";
    for (size_t i = 0; i < list.size(); ++i)
      parse_decoder(list[i], where + ".decoders[" + std::to_string(i) + "]", t);
  } else if (type == "ByteLevel") {
    t.decoder.push_back({DecoderStep::kByteLevel, "", ""});
  } else if (type == "ByteFallback") {
    t.decoder.push_back({DecoderStep::kByteFallback, "", ""});
  } else if (type == "Fuse") {
    // Concatenation: what decoding does anyway.
  } else if (type == "Replace") {
    const json& p = field(j, "pattern", where);
    QS_CHECK(p.is_object() && p.contains("String") && p["String"].is_string())
        << where << ": only a {\"String\": ...} pattern is supported in a Replace decoder";
    t.decoder.push_back({DecoderStep::kReplace, p["String"].get<std::string>(), get_string(j, "content", where)});
  } else if (type == "Strip") {
    const std::string content = get_string(j, "content", where);
    QS_CHECK(content.size() == 1) << where << ": Strip content must be one ASCII character";
    const json& stop = field(j, "stop", where);
    QS_CHECK(stop.is_number_integer() && stop.get<int>() == 0)
        << where << ": a Strip decoder with stop > 0 is not supported";
    const json& start = field(j, "start", where);
    QS_CHECK(start.is_number_integer() && start.get<int>() >= 0) << where << ".start must be an integer >= 0";
    t.strip_char = content[0];
    t.strip_start = start.get<int>();
  } else if (type == "Metaspace") {
    const std::string rep = j.contains("replacement") ? get_string(j, "replacement", where) : "\xE2\x96\x81";
    t.decoder.push_back({DecoderStep::kReplace, rep, " "});
    if (parse_prepend_scheme(j, where) != PreTokenizerStep::kNever) t.strip_start = 1, t.strip_char = ' ';
  } else {
    QS_FAIL() << where << ": unsupported decoder type '" << type << "'";
  }
}

// Special token ids of a TemplateProcessing "special_tokens" entry.
std::vector<int> template_special_ids(const json& specials, const std::string& name, const std::string& where) {
  QS_CHECK(specials.is_object() && specials.contains(name))
      << where << ": special token '" << name << "' is not listed in special_tokens";
  const json& ids = field(specials[name], "ids", where + ".special_tokens." + name);
  QS_CHECK(ids.is_array()) << where << ".special_tokens." << name << ".ids must be an array";
  std::vector<int> out;
  for (const json& id : ids) {
    out.push_back(parse_token_id(id, where + ": special token " + name));
  }
  return out;
}

void parse_post_processor(const json& j, const std::string& where, TokenizerImpl& t) {
  if (j.is_null()) return;
  const std::string type = type_of(j, where);
  if (type == "Sequence") {
    const json& list = field(j, "processors", where);
    QS_CHECK(list.is_array()) << where << ".processors must be an array";
    for (size_t i = 0; i < list.size(); ++i)
      parse_post_processor(list[i], where + ".processors[" + std::to_string(i) + "]", t);
  } else if (type == "ByteLevel") {
    // Only adjusts offsets: ids are unchanged.
  } else if (type == "TemplateProcessing") {
    const json& single = field(j, "single", where);
    QS_CHECK(single.is_array()) << where << ".single must be an array";
    const json& specials = j.contains("special_tokens") ? j["special_tokens"] : json::object();
    bool seen_a = false;
    std::vector<int> prefix, suffix;
    for (const json& item : single) {
      if (item.contains("Sequence")) {
        QS_CHECK(!seen_a) << where << ".single: more than one sequence";
        seen_a = true;
      } else if (item.contains("SpecialToken")) {
        const std::vector<int> ids =
            template_special_ids(specials, get_string(item["SpecialToken"], "id", where + ".single"), where);
        (seen_a ? suffix : prefix).insert((seen_a ? suffix : prefix).end(), ids.begin(), ids.end());
      } else {
        QS_FAIL() << where << ".single: items must be SpecialToken or Sequence";
      }
    }
    QS_CHECK(seen_a) << where << ".single has no Sequence";
    t.prefix_ids.insert(t.prefix_ids.end(), prefix.begin(), prefix.end());
    t.suffix_ids.insert(t.suffix_ids.begin(), suffix.begin(), suffix.end());
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    const json& cls = field(j, "cls", where);
    const json& sep = field(j, "sep", where);
    QS_CHECK(cls.is_array() && cls.size() == 2 && cls[1].is_number_integer()) << where << ".cls must be [token, id]";
    QS_CHECK(sep.is_array() && sep.size() == 2 && sep[1].is_number_integer()) << where << ".sep must be [token, id]";
    t.prefix_ids.push_back(parse_token_id(cls[1], where + ".cls"));
    t.suffix_ids.push_back(parse_token_id(sep[1], where + ".sep"));
  } else {
    QS_FAIL() << where << ": unsupported post_processor type '" << type << "'";
  }
}

void parse_model(const json& m, TokenizerImpl& t) {
  QS_CHECK(m.is_object()) << "model must be an object";
  std::string type;
  if (m.contains("type")) {
    type = get_string(m, "type", "model");
  } else {
    QS_CHECK(m.contains("merges")) << "model.type is missing";
    type = "BPE";
  }
  QS_CHECK(type == "BPE") << "unsupported model type '" << type << "' (only BPE is supported)";
  const json& vocab = field(m, "vocab", "model");
  QS_CHECK(vocab.is_object()) << "model.vocab must be an object {piece: id}";
  const json& merges = field(m, "merges", "model");
  QS_CHECK(merges.is_array()) << "model.merges must be an array";
  QS_CHECK(!m.contains("dropout") || m["dropout"].is_null() ||
           (m["dropout"].is_number() && m["dropout"].get<double>() == 0.0))
      << "model.dropout (BPE dropout) is not supported";
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    QS_CHECK(!m.contains(key) || m[key].is_null() || (m[key].is_string() && m[key].get<std::string>().empty()))
        << "model." << key << " is not supported";

  std::unordered_map<std::string, int> v;
  v.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int id = parse_token_id(it.value(), "model.vocab['" + it.key().substr(0, 64) + "']");
    if (size_t(id) >= t.id_to_piece.size()) t.id_to_piece.resize(id + 1), t.flags.resize(id + 1, 0);
    QS_CHECK(t.id_to_piece[id].empty()) << "model.vocab: id " << id << " is used by both '" << t.id_to_piece[id]
                                        << "' and '" << it.key() << "'";
    t.id_to_piece[id] = it.key();
    v.emplace(it.key(), id);
  }
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const json& e = merges[i];
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      QS_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos)
          << "model.merges[" << i << "] '" << s << "' must be two tokens separated by one space";
      pairs.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else {
      QS_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string())
          << "model.merges[" << i << "] must be \"a b\" or [\"a\", \"b\"]";
      pairs.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    }
  }
  BpeOptions o;
  o.byte_fallback = get_bool(m, "byte_fallback", false);
  o.fuse_unk = get_bool(m, "fuse_unk", false);
  o.ignore_merges = get_bool(m, "ignore_merges", false);
  if (m.contains("unk_token") && !m["unk_token"].is_null()) o.unk_token = get_string(m, "unk_token", "model");
  try {
    t.model = std::make_unique<BpeModel>(std::move(v), pairs, o);
  } catch (const Error& e) {
    QS_FAIL() << "model: " << e.what();
  }
}

void parse_added_tokens(const json& j, TokenizerImpl& t) {
  if (j.is_null()) return;
  QS_CHECK(j.is_array()) << "added_tokens must be an array";
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    const json& id = field(j[i], "id", where);
    AddedToken a;
    a.id = parse_token_id(id, where + ".id");
    a.content = get_string(j[i], "content", where);
    QS_CHECK(!a.content.empty()) << where << ".content is empty";
    a.special = get_bool(j[i], "special", false);
    a.normalized = get_bool(j[i], "normalized", !a.special);
    a.lstrip = get_bool(j[i], "lstrip", false);
    a.rstrip = get_bool(j[i], "rstrip", false);
    a.single_word = get_bool(j[i], "single_word", false);
    if (size_t(a.id) >= t.id_to_piece.size()) t.id_to_piece.resize(a.id + 1), t.flags.resize(a.id + 1, 0);
    t.id_to_piece[a.id] = a.content;
    t.flags[a.id] |= kTokAdded | (a.special ? kTokSpecial : 0);
    t.added.push_back(std::move(a));
  }
}

// "<s>", {"content": "<s>", ...} or null.
std::string config_token(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key) || cfg[key].is_null()) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  QS_CHECK(v.is_object() && v.contains("content") && v["content"].is_string())
      << "tokenizer_config.json: " << key << " must be a string or {\"content\": ...}";
  return v["content"].get<std::string>();
}

int lookup(const TokenizerImpl& t, const std::string& piece) {
  for (const AddedToken& a : t.added)
    if (a.content == piece) return a.id;
  return t.model->piece_to_id(piece);
}

void check_id(const TokenizerImpl& t, int id, const std::string& what) {
  QS_CHECK(id >= 0 && size_t(id) < t.id_to_piece.size() && !t.id_to_piece[id].empty())
      << what << ": token id " << id << " is not in the vocabulary";
}

void apply_configs(TokenizerImpl& t, const json& cfg, const json& gen, bool default_add_bos) {
  for (int id : t.prefix_ids) check_id(t, id, "post_processor");
  for (int id : t.suffix_ids) check_id(t, id, "post_processor");
  for (int id : t.prefix_ids) t.flags[id] |= kTokSpecial;
  for (int id : t.suffix_ids) t.flags[id] |= kTokSpecial;

  auto token_id = [&](const char* key) {
    const std::string tok = config_token(cfg, key);
    if (tok.empty()) return -1;
    const int id = lookup(t, tok);
    QS_CHECK(id >= 0) << "tokenizer_config.json: " << key << " '" << tok << "' is not in the vocabulary";
    t.flags[id] |= kTokSpecial;
    return id;
  };
  t.bos_id = token_id("bos_token");
  const int eos = token_id("eos_token");
  token_id("unk_token");
  token_id("pad_token");
  if (eos >= 0) t.eos_ids.push_back(eos);
  if (t.bos_id < 0 && !t.prefix_ids.empty()) t.bos_id = t.prefix_ids.front();
  if (t.bos_id < 0) t.bos_id = t.default_bos_id;

  auto config_bool = [&](const char* key) -> int {  // -1 absent, 0 false, 1 true
    if (!cfg.is_object() || !cfg.contains(key) || cfg[key].is_null()) return -1;
    QS_CHECK(cfg[key].is_boolean()) << "tokenizer_config.json: " << key << " must be true or false";
    return cfg[key].get<bool>() ? 1 : 0;
  };
  // transformers (LlamaTokenizerFast) rebuilds the post-processor from add_bos_token / add_eos_token.
  if (const int add_bos = config_bool("add_bos_token") >= 0 ? config_bool("add_bos_token") : default_add_bos ? 1 : -1;
      add_bos >= 0 && t.bos_id >= 0) {
    std::erase(t.prefix_ids, t.bos_id);
    if (add_bos) t.prefix_ids.insert(t.prefix_ids.begin(), t.bos_id);
  }
  if (const int add_eos = config_bool("add_eos_token"); add_eos >= 0 && eos >= 0) {
    std::erase(t.suffix_ids, eos);
    if (add_eos) t.suffix_ids.push_back(eos);
  }
  if (t.chat_template.empty() && cfg.is_object() && cfg.contains("chat_template")) {
    const json& ct = cfg["chat_template"];
    if (ct.is_string()) {
      t.chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const json& e : ct)
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
          t.chat_template = e["template"].get<std::string>();
      if (t.chat_template.empty() && !ct.empty() && ct[0].is_object() && ct[0].contains("template") &&
          ct[0]["template"].is_string())
        t.chat_template = ct[0]["template"].get<std::string>();
    }
  }
  if (gen.is_object()) {
    auto add_eos_id = [&](const json& v) {
      QS_CHECK(v.is_number_integer()) << "generation_config.json: eos_token_id must be an integer or a list";
      const int id = parse_token_id(v, "generation_config.json eos_token_id");
      check_id(t, id, "generation_config.json eos_token_id");
      t.flags[id] |= kTokSpecial;
      if (std::find(t.eos_ids.begin(), t.eos_ids.end(), id) == t.eos_ids.end()) t.eos_ids.push_back(id);
    };
    if (gen.contains("eos_token_id") && !gen["eos_token_id"].is_null()) {
      if (gen["eos_token_id"].is_array())
        for (const json& v : gen["eos_token_id"]) add_eos_id(v);
      else
        add_eos_id(gen["eos_token_id"]);
    }
    if (t.bos_id < 0 && gen.contains("bos_token_id") && gen["bos_token_id"].is_number_integer()) {
      t.bos_id = parse_token_id(gen["bos_token_id"], "generation_config.json bos_token_id");
      check_id(t, t.bos_id, "generation_config.json bos_token_id");
    }
  }
}

std::shared_ptr<const TokenizerImpl> build(std::string_view tokenizer_json, std::string_view config_json,
                                           std::string_view generation_json, std::string chat_template) {
  const json j = parse_json(tokenizer_json, "tokenizer.json");
  QS_CHECK(j.is_object()) << "tokenizer.json: the top level must be an object";
  auto t = std::make_shared<TokenizerImpl>();
  t->chat_template = std::move(chat_template);
  // The id bound: twice the entries plus 1024 leaves room for sparse ids while keeping tables O(file size).
  size_t entries = 0;
  if (j.contains("model") && j["model"].is_object() && j["model"].contains("vocab")) entries += j["model"]["vocab"].size();
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) entries += j["added_tokens"].size();
  const MaxIdScope bound(int(std::min<size_t>(2 * entries + 1024, size_t(1) << 30)));
  try {
    parse_model(field(j, "model", "tokenizer.json"), *t);
    parse_added_tokens(j.value("added_tokens", json()), *t);
    parse_normalizer(j.value("normalizer", json()), "normalizer", t->normalizer);
    parse_pre_tokenizer(j.value("pre_tokenizer", json()), "pre_tokenizer", t->pre_tokenizer);
    parse_post_processor(j.value("post_processor", json()), "post_processor", *t);
    parse_decoder(j.value("decoder", json()), "decoder", *t);
  } catch (const json::exception& e) {
    QS_FAIL() << "tokenizer.json: " << json_error_text(e);
  }
  finish_tokenizer(*t, config_json, generation_json, /*default_add_bos=*/false);
  return t;
}

}  // namespace

void finish_tokenizer(TokenizerImpl& t, std::string_view config_json, std::string_view generation_json,
                      bool default_add_bos) {
  const MaxIdScope bound(int(std::max<size_t>(t.id_to_piece.size(), 1)) - 1);  // ids named here must exist
  const json cfg = config_json.empty() ? json() : parse_json(config_json, "tokenizer_config.json");
  const json gen = generation_json.empty() ? json() : parse_json(generation_json, "generation_config.json");
  try {
    apply_configs(t, cfg, gen, default_add_bos);
  } catch (const json::exception& e) {  // a field of the wrong type
    QS_FAIL() << "tokenizer_config.json / generation_config.json: " << json_error_text(e);
  }
}

std::string read_text_file(const std::string& path) { return read_text(path); }

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view tokenizer_config_json,
                               std::string_view generation_config_json, std::string chat_template) {
  return Tokenizer(build(tokenizer_json, tokenizer_config_json, generation_config_json, std::move(chat_template)));
}

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json_path) {
  const fs::path p(tokenizer_json_path);
  QS_CHECK(fs::exists(p)) << "tokenizer file not found: " << p.string();
  check_regular_file(p.string(), "tokenizer file");
  if (p.extension() == ".model") return from_sentencepiece(p.string());
  const fs::path dir = p.parent_path();
  auto optional_text = [&](const char* name) {
    const fs::path f = dir / name;
    return fs::is_regular_file(f) ? read_text(f) : std::string();
  };
  try {
    return from_json(read_text(p), optional_text("tokenizer_config.json"), optional_text("generation_config.json"),
                     optional_text("chat_template.jinja"));
  } catch (const Error& e) {
    QS_FAIL() << p.string() << ": " << e.what();
  }
  return Tokenizer(nullptr);  // unreachable
}

Tokenizer Tokenizer::from_dir(const std::string& model_dir) {
  const fs::path json_path = fs::path(model_dir) / "tokenizer.json", sp_path = fs::path(model_dir) / "tokenizer.model";
  if (!fs::exists(json_path) && fs::exists(sp_path)) return from_sentencepiece(sp_path.string());
  return from_file(json_path.string());
}

}  // namespace qs::tokenizer
