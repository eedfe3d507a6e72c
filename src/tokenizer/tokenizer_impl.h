// Internal state of a Tokenizer (tokenizer.h), shared by the loaders (tokenizer_load.cc: tokenizer.json,
// sentencepiece_load.cc: tokenizer.model -> these structs) and the runtime (tokenizer.cc: encode / decode).
// Not part of the public API.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/bpe_model.h"
#include "tokenizer/regex.h"

namespace qs::tokenizer {

struct AddedToken {
  int id = -1;
  std::string content;
  bool special = false;
  bool normalized = false;  // matched in the normalized text instead of the raw text
  bool lstrip = false, rstrip = false, single_word = false;
};

struct NormalizerStep {
  enum Kind { kPrepend, kReplace, kStrip, kPassThrough } kind;
  std::string content;             // kPrepend: the prefix; kReplace: the replacement
  std::shared_ptr<Regex> pattern;  // kReplace
  bool left = false, right = false;  // kStrip
};

// How a Split keeps its matches (HF SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum Kind { kSplit, kByteLevel, kMetaspace } kind;
  // kSplit (and ByteLevel with use_regex): the pattern and what to do with matches.
  std::shared_ptr<Regex> regex{};
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel: prefix a space to a word that lacks one
  // kMetaspace
  std::string replacement{};
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
  bool split = true;
};

struct DecoderStep {
  enum Kind { kReplace, kByteFallback, kByteLevel } kind;
  std::string pattern, content;  // kReplace
};

// Flags per id.
enum : uint8_t { kTokAdded = 1, kTokSpecial = 2 };

struct TokenizerImpl {
  std::unique_ptr<BpeModel> model;
  std::vector<AddedToken> added;
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::vector<int> prefix_ids, suffix_ids;  // post-processor for a single sequence
  std::vector<DecoderStep> decoder;
  int strip_start = 0;  // Strip decoder: leading `strip_char`s to remove from the decoded text
  char strip_char = ' ';
  std::vector<std::string> id_to_piece;  // "" for holes in the id range
  std::vector<uint8_t> flags;
  int default_bos_id = -1;  // SentencePiece: the model's own bos id, used when no config names one
  int bos_id = -1;
  std::vector<int> eos_ids;
  std::string chat_template;
};

// Reads tokenizer_config.json / generation_config.json (texts, may be empty) into t: bos/eos ids, special flags,
// add_bos_token / add_eos_token (default_add_bos: add BOS when the config does not say), chat_template.
void finish_tokenizer(TokenizerImpl& t, std::string_view config_json, std::string_view generation_json,
                      bool default_add_bos);
std::string read_text_file(const std::string& path);

}  // namespace qs::tokenizer
