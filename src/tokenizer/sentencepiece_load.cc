// Loading a SentencePiece tokenizer.model (protobuf ModelProto) as a Tokenizer. Only BPE models with the identity
// normalizer (Llama-2, Mistral) are accepted. SentencePiece BPE merges the adjacent pair whose concatenation is the
// highest-scoring piece (leftmost on a tie); that is expressed exactly as ranked merges for BpeModel: every split
// of a piece into two pieces is a merge, ranked by the piece's score (equal scores share a rank). Whitespace
// becomes U+2581 with a dummy prefix (normalizer steps), control pieces (<s>, </s>) are special, unknown
// characters fall back to <0xXX> byte pieces, and decoding maps U+2581 back to spaces minus the first one.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace qs::tokenizer {
namespace {

namespace fs = std::filesystem;

// A minimal protobuf wire-format reader: enough for ModelProto.
class ProtoReader {
 public:
  ProtoReader(std::string_view data, std::string what) : d_(data), what_(std::move(what)) {}
  bool done() const { return p_ >= d_.size(); }
  // Next field: its number and wire type; the value is read with one of the getters below.
  std::pair<int, int> next() {
    const uint64_t key = varint();
    return {int(key >> 3), int(key & 7)};
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      QS_CHECK(p_ < d_.size()) << what_ << ": truncated varint";
      const uint8_t b = uint8_t(d_[p_++]);
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    QS_FAIL() << what_ << ": malformed varint";
    return 0;
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    QS_CHECK(n <= d_.size() - p_) << what_ << ": field length " << n << " runs past the end";
    std::string_view v = d_.substr(p_, n);
    p_ += n;
    return v;
  }
  float fixed32() {
    QS_CHECK(d_.size() - p_ >= 4) << what_ << ": truncated fixed32";
    float f;
    std::memcpy(&f, d_.data() + p_, 4);
    p_ += 4;
    return f;
  }
  void skip(int wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: QS_CHECK(d_.size() - p_ >= 8) << what_ << ": truncated"; p_ += 8; break;
      case 2: bytes(); break;
      case 5: fixed32(); break;
      default: QS_FAIL() << what_ << ": unsupported protobuf wire type " << wire << " (not a SentencePiece model?)";
    }
  }

 private:
  std::string_view d_;
  std::string what_;
  size_t p_ = 0;
};

struct SpPiece {
  std::string piece;
  float score = 0;
  int type = 1;  // NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6
};

struct SpModel {
  std::vector<SpPiece> pieces;
  int model_type = 1;  // UNIGRAM=1, BPE=2, WORD=3, CHAR=4
  bool byte_fallback = false, treat_whitespace_as_suffix = false;
  int64_t unk_id = 0, bos_id = 1, eos_id = 2;
  std::string normalizer_name;
  bool has_charsmap = false, add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

SpModel parse_model_proto(std::string_view data) {
  SpModel m;
  ProtoReader r(data, "tokenizer.model");
  while (!r.done()) {
    const auto [field, wire] = r.next();
    if (field == 1 && wire == 2) {  // SentencePiece
      ProtoReader pr(r.bytes(), "tokenizer.model piece");
      SpPiece p;
      while (!pr.done()) {
        const auto [f, w] = pr.next();
        if (f == 1 && w == 2) p.piece = std::string(pr.bytes());
        else if (f == 2 && w == 5) p.score = pr.fixed32();
        else if (f == 3 && w == 0) p.type = int(pr.varint());
        else pr.skip(w);
      }
      m.pieces.push_back(std::move(p));
    } else if (field == 2 && wire == 2) {  // TrainerSpec
      ProtoReader tr(r.bytes(), "tokenizer.model trainer_spec");
      while (!tr.done()) {
        const auto [f, w] = tr.next();
        if (w != 0) {
          tr.skip(w);
          continue;
        }
        const int64_t v = int64_t(tr.varint());
        if (f == 3) m.model_type = int(v);
        else if (f == 24) m.treat_whitespace_as_suffix = v != 0;
        else if (f == 35) m.byte_fallback = v != 0;
        else if (f == 40) m.unk_id = v;
        else if (f == 41) m.bos_id = v;
        else if (f == 42) m.eos_id = v;
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec
      ProtoReader nr(r.bytes(), "tokenizer.model normalizer_spec");
      while (!nr.done()) {
        const auto [f, w] = nr.next();
        if (f == 1 && w == 2) m.normalizer_name = std::string(nr.bytes());
        else if (f == 2 && w == 2) m.has_charsmap = !nr.bytes().empty();
        else if (f == 3 && w == 0) m.add_dummy_prefix = nr.varint() != 0;
        else if (f == 4 && w == 0) m.remove_extra_whitespaces = nr.varint() != 0;
        else if (f == 5 && w == 0) m.escape_whitespaces = nr.varint() != 0;
        else nr.skip(w);
      }
    } else {
      r.skip(wire);
    }
  }
  return m;
}

void build_sentencepiece(const SpModel& m, TokenizerImpl& t) {
  static const char* kTypes[] = {"", "unigram", "bpe", "word", "char"};
  QS_CHECK(m.model_type == 2) << "SentencePiece model type "
                              << (m.model_type >= 1 && m.model_type <= 4 ? kTypes[m.model_type] : "?")
                              << " is not supported (only BPE)";
  QS_CHECK(!m.pieces.empty()) << "tokenizer.model has no pieces";
  QS_CHECK(!m.has_charsmap) << "SentencePiece normalizer '" << m.normalizer_name
                            << "' (a precompiled character map) is not supported; only 'identity'";
  QS_CHECK(!m.treat_whitespace_as_suffix) << "SentencePiece treat_whitespace_as_suffix is not supported";
  const std::string kSpace = "\xE2\x96\x81";  // U+2581

  std::unordered_map<std::string, int> vocab;
  t.id_to_piece.resize(m.pieces.size());
  t.flags.assign(m.pieces.size(), 0);
  for (size_t id = 0; id < m.pieces.size(); ++id) {
    const SpPiece& p = m.pieces[id];
    QS_CHECK(!p.piece.empty() && vocab.emplace(p.piece, int(id)).second)
        << "tokenizer.model: piece " << id << " ('" << p.piece << "') is empty or repeated";
    t.id_to_piece[id] = p.piece;
    if (p.type == 2 || p.type == 3) t.flags[id] |= kTokSpecial;  // unknown, control
    if (p.type == 4) {  // user-defined: matched whole in the (normalized) text
      AddedToken a;
      a.id = int(id), a.content = p.piece, a.normalized = true;
      t.added.push_back(a);
    }
  }
  // Merges: every way to split a NORMAL / USER_DEFINED piece into two pieces, ranked by descending score.
  std::vector<float> scores;
  for (const SpPiece& p : m.pieces)
    if (p.type == 1 || p.type == 4) scores.push_back(p.score);
  std::sort(scores.begin(), scores.end(), std::greater<float>());
  scores.erase(std::unique(scores.begin(), scores.end()), scores.end());
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<int> ranks;
  for (const SpPiece& p : m.pieces) {
    if (p.type != 1 && p.type != 4) continue;
    const int rank = int(std::lower_bound(scores.begin(), scores.end(), p.score, std::greater<float>()) - scores.begin());
    for (size_t cut = read_utf8(p.piece, 0).len; cut < p.piece.size(); cut += read_utf8(p.piece, cut).len) {
      const std::string a = p.piece.substr(0, cut), b = p.piece.substr(cut);
      if (vocab.count(a) && vocab.count(b)) merges.emplace_back(a, b), ranks.push_back(rank);
    }
  }
  BpeOptions o;
  o.byte_fallback = m.byte_fallback;
  o.fuse_unk = true;  // SentencePiece merges a run of unknown pieces into one
  QS_CHECK(m.unk_id >= 0 && size_t(m.unk_id) < m.pieces.size()) << "tokenizer.model: bad unk_id " << m.unk_id;
  o.unk_token = m.pieces[size_t(m.unk_id)].piece;
  t.model = std::make_unique<BpeModel>(std::move(vocab), merges, o, ranks);

  // Normalizer: collapse spaces (when asked), dummy prefix, spaces -> U+2581.
  if (m.remove_extra_whitespaces) {
    t.normalizer.push_back({NormalizerStep::kReplace, "", std::make_shared<Regex>("^ +| +$", false, "normalizer")});
    t.normalizer.push_back({NormalizerStep::kReplace, " ", std::make_shared<Regex>(" {2,}", false, "normalizer")});
  }
  if (m.add_dummy_prefix) t.normalizer.push_back({NormalizerStep::kPrepend, " ", nullptr});
  if (m.escape_whitespaces)
    t.normalizer.push_back({NormalizerStep::kReplace, kSpace, std::make_shared<Regex>(" ", true, "normalizer")});
  // Decoder: U+2581 -> space, byte pieces -> bytes, no leading space from the dummy prefix.
  t.decoder.push_back({DecoderStep::kReplace, kSpace, " "});
  t.decoder.push_back({DecoderStep::kByteFallback, "", ""});
  if (m.add_dummy_prefix) t.strip_start = 1, t.strip_char = ' ';
  if (m.bos_id >= 0 && size_t(m.bos_id) < m.pieces.size()) t.default_bos_id = int(m.bos_id);
  if (m.eos_id >= 0 && size_t(m.eos_id) < m.pieces.size()) {
    t.eos_ids.push_back(int(m.eos_id));
    t.flags[size_t(m.eos_id)] |= kTokSpecial;
  }
}

}  // namespace

Tokenizer Tokenizer::from_sentencepiece(const std::string& tokenizer_model_path) {
  const fs::path p(tokenizer_model_path);
  QS_CHECK(fs::is_regular_file(p)) << "tokenizer file not found: " << p.string();
  auto optional_text = [&](const char* name) {
    const fs::path f = p.parent_path() / name;
    return fs::is_regular_file(f) ? read_text_file(f.string()) : std::string();
  };
  try {
    auto t = std::make_shared<TokenizerImpl>();
    t->chat_template = optional_text("chat_template.jinja");
    build_sentencepiece(parse_model_proto(read_text_file(p.string())), *t);
    const std::vector<int> model_eos = std::exchange(t->eos_ids, {});
    finish_tokenizer(*t, optional_text("tokenizer_config.json"), optional_text("generation_config.json"),
                     /*default_add_bos=*/true);
    // A config's eos_token comes first; the model's own eos id stays in the list.
    for (int id : model_eos)
      if (std::find(t->eos_ids.begin(), t->eos_ids.end(), id) == t->eos_ids.end()) t->eos_ids.push_back(id);
    return Tokenizer(std::move(t));
  } catch (const Error& e) {
    QS_FAIL() << p.string() << ": " << e.what();
  }
  return Tokenizer(nullptr);  // unreachable
}

}  // namespace qs::tokenizer
