// Tokenizer runtime (see tokenizer.h): encode = added-token split -> normalizer -> pre-tokenizer -> BPE per word
// -> post-processor; decode = decoder chain per token -> bytes -> UTF-8 repair. Loading is in tokenizer_load.cc.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <tuple>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace qs::tokenizer {
namespace {

// A piece of the input: plain text, or an added token already resolved to its id.
struct Piece {
  std::string_view text;
  int added_id;  // -1 for text
  bool at_start;  // the text starts at offset 0 of the input (Metaspace prepend_scheme "first")
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_word_char(char c) { return std::isalnum(uint8_t(c)) || c == '_' || (uint8_t(c) & 0x80); }

// Splits `text` on the added tokens whose `normalized` flag equals `normalized` (leftmost match, longest on a
// tie, honouring lstrip / rstrip / single_word), appending to `out`.
void split_added(const std::vector<AddedToken>& added, bool normalized, std::string_view text, bool at_start,
                 std::vector<Piece>& out) {
  std::vector<const AddedToken*> toks;
  for (const AddedToken& a : added)
    if (a.normalized == normalized) toks.push_back(&a);
  if (toks.empty()) {
    out.push_back({text, -1, at_start});
    return;
  }
  // next[i]: where toks[i] next occurs at or after the scan position (npos when never again).
  std::vector<size_t> next(toks.size(), 0);
  std::vector<bool> fresh(toks.size(), false);
  size_t pos = 0;  // start of the text not yet emitted
  size_t scan = 0;  // where to look for matches
  while (true) {
    size_t best = std::string_view::npos;
    int best_i = -1;
    for (size_t i = 0; i < toks.size(); ++i) {
      if (!fresh[i] || (next[i] != std::string_view::npos && next[i] < scan)) {
        next[i] = text.find(toks[i]->content, scan);
        fresh[i] = true;
      }
      if (next[i] == std::string_view::npos) continue;
      if (next[i] < best || (next[i] == best && toks[i]->content.size() > toks[best_i]->content.size()))
        best = next[i], best_i = int(i);
    }
    if (best_i < 0) break;
    const AddedToken& a = *toks[best_i];
    size_t b = best, e = best + a.content.size();
    if (a.single_word && ((b > 0 && is_word_char(text[b - 1])) || (e < text.size() && is_word_char(text[e])))) {
      scan = best + 1;  // not a word on its own here: look further
      next[best_i] = text.find(a.content, scan);
      continue;
    }
    if (a.lstrip)
      while (b > pos && is_space(text[b - 1])) --b;
    if (a.rstrip)
      while (e < text.size() && is_space(text[e])) ++e;
    if (b > pos) out.push_back({text.substr(pos, b - pos), -1, at_start && pos == 0});
    out.push_back({text.substr(b, e - b), a.id, false});
    pos = scan = e;
  }
  if (pos < text.size()) out.push_back({text.substr(pos), -1, at_start && pos == 0});
}

std::string normalize(const std::vector<NormalizerStep>& steps, std::string_view in) {
  std::string s(in);
  for (const NormalizerStep& n : steps) {
    switch (n.kind) {
      case NormalizerStep::kPrepend:
        if (!s.empty()) s.insert(0, n.content);
        break;
      case NormalizerStep::kReplace: {
        std::string r;
        size_t last = 0;
        for (auto [b, e] : n.pattern->find_all(s)) {
          r.append(s, last, b - last);
          r += n.content;
          last = e;
        }
        r.append(s, last);
        s = std::move(r);
        break;
      }
      case NormalizerStep::kStrip: {
        size_t b = 0, e = s.size();
        if (n.left)
          while (b < e && is_space(s[b])) ++b;
        if (n.right)
          while (e > b && is_space(s[e - 1])) --e;
        s = s.substr(b, e - b);
        break;
      }
      case NormalizerStep::kPassThrough:
        break;
    }
  }
  return s;
}

// One Split over every word (HF pre_tokenizers::split with SplitDelimiterBehavior).
void split_words(const Regex& re, SplitBehavior behavior, bool invert, std::vector<std::string>& words) {
  std::vector<std::string> out;
  for (const std::string& w : words) {
    // (begin, end, is_match) ranges that cover w.
    std::vector<std::tuple<size_t, size_t, bool>> parts;
    size_t last = 0;
    for (auto [b, e] : re.find_all(w)) {
      if (b > last) parts.emplace_back(last, b, invert);
      parts.emplace_back(b, e, !invert);
      last = e;
    }
    if (last < w.size()) parts.emplace_back(last, w.size(), invert);
    std::vector<std::pair<size_t, size_t>> kept;
    bool prev_match = false;
    for (auto [b, e, m] : parts) {
      switch (behavior) {
        case SplitBehavior::kRemoved:
          if (!m) kept.emplace_back(b, e);
          break;
        case SplitBehavior::kIsolated:
          kept.emplace_back(b, e);
          break;
        case SplitBehavior::kMergedWithPrevious:
          if (m && !prev_match && !kept.empty())
            kept.back().second = e;
          else
            kept.emplace_back(b, e);
          break;
        case SplitBehavior::kMergedWithNext:
          if (!m && prev_match && !kept.empty())
            kept.back().second = e;
          else
            kept.emplace_back(b, e);
          break;
        case SplitBehavior::kContiguous:
          if (m && prev_match && !kept.empty())
            kept.back().second = e;
          else
            kept.emplace_back(b, e);
          break;
      }
      prev_match = m;
    }
    for (auto [b, e] : kept)
      if (e > b) out.push_back(w.substr(b, e - b));
  }
  words = std::move(out);
}

std::vector<std::string> pre_tokenize(const std::vector<PreTokenizerStep>& steps, std::string text, bool at_start) {
  std::vector<std::string> words;
  words.push_back(std::move(text));
  for (const PreTokenizerStep& p : steps) {
    switch (p.kind) {
      case PreTokenizerStep::kSplit:
        split_words(*p.regex, p.behavior, p.invert, words);
        break;
      case PreTokenizerStep::kByteLevel:
        if (p.add_prefix_space)
          for (std::string& w : words)
            if (!w.empty() && w[0] != ' ') w.insert(0, " ");
        if (p.regex) split_words(*p.regex, SplitBehavior::kIsolated, false, words);
        for (std::string& w : words) {
          std::string m;
          m.reserve(w.size() * 2);
          for (char c : w) append_utf8(m, byte_to_codepoint(uint8_t(c)));
          w = std::move(m);
        }
        break;
      case PreTokenizerStep::kMetaspace: {
        std::vector<std::string> out;
        for (size_t i = 0; i < words.size(); ++i) {
          std::string w;
          for (char c : words[i]) c == ' ' ? w += p.replacement : w += c;
          const bool prepend = p.prepend == PreTokenizerStep::kAlways ||
                               (p.prepend == PreTokenizerStep::kFirst && at_start && i == 0);
          if (prepend && w.compare(0, p.replacement.size(), p.replacement) != 0) w.insert(0, p.replacement);
          if (!p.split) {
            out.push_back(std::move(w));
            continue;
          }
          // Split before every replacement character (MergedWithNext).
          size_t b = 0;
          for (size_t at = w.find(p.replacement, 1); at != std::string::npos; at = w.find(p.replacement, at + 1)) {
            out.push_back(w.substr(b, at - b));
            b = at;
          }
          out.push_back(w.substr(b));
        }
        words = std::move(out);
        break;
      }
    }
  }
  return words;
}

}  // namespace

std::vector<int> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const TokenizerImpl& t = *impl_;
  size_t bad = 0;
  QS_CHECK(is_valid_utf8(text, &bad)) << "input text is not valid UTF-8 (byte offset " << bad << ")";
  std::vector<int> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids = t.prefix_ids;
  std::vector<Piece> raw;
  split_added(t.added, /*normalized=*/false, text, true, raw);
  for (const Piece& r : raw) {
    if (r.added_id >= 0) {
      ids.push_back(r.added_id);
      continue;
    }
    const std::string norm = normalize(t.normalizer, r.text);
    std::vector<Piece> pieces;
    split_added(t.added, /*normalized=*/true, norm, r.at_start, pieces);
    for (const Piece& p : pieces) {
      if (p.added_id >= 0) {
        ids.push_back(p.added_id);
        continue;
      }
      for (const std::string& w : pre_tokenize(t.pre_tokenizer, std::string(p.text), p.at_start))
        t.model->encode_word(w, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), t.suffix_ids.begin(), t.suffix_ids.end());
  return ids;
}

void Tokenizer::append_token_bytes(int id, bool skip_special_tokens, DecodeState& state, std::string& out) const {
  const TokenizerImpl& t = *impl_;
  QS_CHECK(id >= 0 && size_t(id) < t.id_to_piece.size() && !t.id_to_piece[id].empty())
      << "token id " << id << " is out of range (vocabulary of " << t.id_to_piece.size() << ")";
  if (skip_special_tokens && (t.flags[id] & kTokSpecial)) return;
  std::string s = t.id_to_piece[id];
  if (!(t.flags[id] & kTokAdded)) {  // added tokens are their content as written
    for (const DecoderStep& d : t.decoder) {
      switch (d.kind) {
        case DecoderStep::kReplace: {
          std::string r;
          size_t last = 0;
          for (size_t at = s.find(d.pattern); at != std::string::npos; at = s.find(d.pattern, last)) {
            r.append(s, last, at - last);
            r += d.content;
            last = at + d.pattern.size();
          }
          r.append(s, last);
          s = std::move(r);
          break;
        }
        case DecoderStep::kByteFallback:
          if (s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>' && std::isxdigit(uint8_t(s[3])) &&
              std::isxdigit(uint8_t(s[4])))
            s = std::string(1, char(std::stoi(s.substr(3, 2), nullptr, 16)));
          break;
        case DecoderStep::kByteLevel: {
          // Every character maps back to its byte; a token with a character outside the alphabet stays as is.
          std::string b;
          bool ok = true;
          for (size_t pos = 0; pos < s.size() && ok;) {
            const Utf8Char c = read_utf8(s, pos);
            const int byte = c.kind == Utf8Char::kValid ? codepoint_to_byte(c.cp) : -1;
            ok = byte >= 0;
            b += char(byte);
            pos += c.len;
          }
          if (ok) s = std::move(b);
          break;
        }
      }
    }
  }
  if (state.strip_left < 0) state.strip_left = t.strip_start;
  size_t cut = 0;
  while (state.strip_left > 0 && cut < s.size()) {
    if (s[cut] != t.strip_char) {
      state.strip_left = 0;
      break;
    }
    ++cut, --state.strip_left;
  }
  out.append(s, cut);
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special_tokens) const {
  std::string bytes;
  DecodeState state;
  for (int id : ids) append_token_bytes(id, skip_special_tokens, state, bytes);
  return repair_utf8(bytes);
}

std::string Tokenizer::token_text(int id) const {
  QS_CHECK(id >= 0 && size_t(id) < impl_->id_to_piece.size()) << "token id " << id << " is out of range";
  return impl_->id_to_piece[id];
}

int Tokenizer::token_to_id(std::string_view piece) const {
  for (const AddedToken& a : impl_->added)
    if (a.content == piece) return a.id;
  return impl_->model->piece_to_id(piece);
}

int Tokenizer::vocab_size() const { return int(impl_->id_to_piece.size()); }
int Tokenizer::bos_id() const { return impl_->bos_id; }
std::vector<int> Tokenizer::eos_ids() const { return impl_->eos_ids; }
std::string Tokenizer::bos_token() const { return impl_->bos_id >= 0 ? impl_->id_to_piece[impl_->bos_id] : ""; }
std::string Tokenizer::eos_token() const {
  return impl_->eos_ids.empty() ? "" : impl_->id_to_piece[impl_->eos_ids.front()];
}
bool Tokenizer::is_special(int id) const {
  return id >= 0 && size_t(id) < impl_->flags.size() && (impl_->flags[id] & kTokSpecial);
}
bool Tokenizer::adds_bos() const {
  return impl_->bos_id >= 0 && !impl_->prefix_ids.empty() && impl_->prefix_ids.front() == impl_->bos_id;
}
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

void check_fits_model_vocab(const Tokenizer& tok, int64_t vocab_size, const std::vector<int>& config_bos_ids,
                            const std::vector<int>& config_eos_ids, const std::string& where) {
  QS_CHECK(tok.vocab_size() <= vocab_size)
      << where << ": the tokenizer has ids up to " << tok.vocab_size() - 1 << " but the model's vocab_size is "
      << vocab_size << " (a tokenizer of another model?)";
  for (int id : config_bos_ids)
    QS_CHECK(id < vocab_size) << where << ": bos_token_id " << id << " is outside the vocabulary (" << vocab_size << ")";
  for (int id : config_eos_ids)
    QS_CHECK(id < vocab_size) << where << ": eos_token_id " << id << " is outside the vocabulary (" << vocab_size << ")";
  for (int id : tok.eos_ids())
    QS_CHECK(id < vocab_size) << where << ": the tokenizer's eos id " << id << " is outside the model's vocabulary ("
                              << vocab_size << ")";
}

}  // namespace qs::tokenizer
