// A Hugging Face tokenizer.json tokenizer: byte-level BPE (Llama-3, Qwen2, qs-llama-tiny) and SentencePiece-style
// BPE with byte fallback (Llama-2, Mistral), with added/special tokens, the normalizers, pre-tokenizers,
// post-processors and decoders those files use, and the BOS/EOS/chat-template settings of tokenizer_config.json
// (and eos ids of generation_config.json) found beside it. A SentencePiece tokenizer.model (BPE, identity
// normalizer) loads into the same machinery (sentencepiece_load.cc).
//
// Encoding follows HF tokenizers step by step: added tokens are cut out first (leftmost, longest), the rest is
// normalized, pre-tokenized into words and BPE-encoded per word; add_special_tokens applies the post-processor
// template (e.g. BOS first). Decoding maps every id to bytes through the decoder chain and repairs invalid
// UTF-8 with U+FFFD; IncrementalDecoder (incremental_decoder.h) streams the same bytes.
// Unsupported components (another model type, an unknown pre-tokenizer, ...) are rejected with qs::Error at
// load time, never silently ignored. Known approximation: an NFC normalizer is accepted and passes text
// through unchanged (exact for text already in NFC, which is what such models are fed in practice).
// A Tokenizer is cheap to copy (shared, immutable state) and safe to use from several threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qs::tokenizer {

struct TokenizerImpl;

// Per-stream decoding state: how many leading characters a Strip decoder may still remove.
struct DecodeState {
  int strip_left = -1;  // -1: not started
};

class Tokenizer {
 public:
  // Reads tokenizer.json and, beside it when present, tokenizer_config.json, generation_config.json and
  // chat_template.jinja. Throws qs::Error naming the file and the problem.
  static Tokenizer from_file(const std::string& tokenizer_json_path);
  static Tokenizer from_dir(const std::string& model_dir);  // tokenizer.json, else tokenizer.model
  // A SentencePiece tokenizer.model (BPE models such as Llama-2 / Mistral; identity normalizer). Encodes like
  // the sentencepiece library (merges by piece score), which differs from the tokenizer.json ids on runs of
  // spaces. Reads tokenizer_config.json etc. beside it like from_file; BOS is added unless add_bos_token=false.
  static Tokenizer from_sentencepiece(const std::string& tokenizer_model_path);
  // From JSON text (tests); the optional texts play the role of tokenizer_config.json / generation_config.json.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view tokenizer_config_json = {},
                             std::string_view generation_config_json = {}, std::string chat_template = {});

  // text must be valid UTF-8 (qs::Error otherwise). add_special_tokens applies the post-processor (BOS...).
  std::vector<int> encode(std::string_view text, bool add_special_tokens = true) const;
  // ids -> text; invalid UTF-8 (e.g. a cut multi-byte character) comes out as U+FFFD. Throws on an id out of range.
  std::string decode(const std::vector<int>& ids, bool skip_special_tokens = false) const;

  // The piece as stored in the vocabulary ("Ġworld", "<0x0A>", "<|eot_id|>").
  std::string token_text(int id) const;
  int token_to_id(std::string_view piece) const;  // -1 when absent
  int vocab_size() const;                         // 1 + the largest id
  int bos_id() const;                             // -1 when the model has none
  std::vector<int> eos_ids() const;               // tokenizer_config eos_token, then generation_config ids
  std::string bos_token() const;                  // "" when none
  std::string eos_token() const;                  // "" when none
  bool is_special(int id) const;
  // Whether encode(text, true) puts BOS first.
  bool adds_bos() const;
  // chat_template.jinja, else tokenizer_config.json's chat_template; "" when none.
  const std::string& chat_template() const;

  // Streaming building block: appends the bytes id decodes to (skipped special tokens append nothing).
  void append_token_bytes(int id, bool skip_special_tokens, DecodeState& state, std::string& out) const;

 private:
  explicit Tokenizer(std::shared_ptr<const TokenizerImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const TokenizerImpl> impl_;
};

// Throws unless the tokenizer fits a model with `vocab_size` embeddings: every id it can produce, its EOS ids and
// the model config's BOS / EOS ids are below vocab_size. Call it wherever a model and a tokenizer are loaded
// together; `where` names the model in the message.
void check_fits_model_vocab(const Tokenizer& tok, int64_t vocab_size, const std::vector<int>& config_bos_ids,
                            const std::vector<int>& config_eos_ids, const std::string& where);

}  // namespace qs::tokenizer
