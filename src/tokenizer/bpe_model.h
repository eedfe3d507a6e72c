// The BPE model of a Hugging Face tokenizer.json ("model": {"type": "BPE"}): vocabulary, merges by rank,
// byte fallback (<0xXX> pieces), unknown-token handling and ignore_merges, with the exact merge order of HF
// tokenizers (lowest rank first, leftmost first among equal ranks) computed with a priority queue over a linked
// list of symbols, independent chunks of long words encoded separately, and a bounded cache of encoded words (thread-safe) so that repeated words cost one lookup.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace qs::tokenizer {

struct BpeOptions {
  bool byte_fallback = false;  // characters outside the vocabulary become <0xXX> byte pieces
  std::optional<std::string> unk_token;
  bool fuse_unk = false;       // consecutive unknown characters become one unk
  bool ignore_merges = false;  // a word that is itself in the vocabulary is emitted as is
};

class BpeModel {
 public:
  // merges[i] has priority ranks[i] (lower first; equal ranks go leftmost first), or i when `ranks` is empty.
  // Throws qs::Error when a merge names a piece that is not in the vocabulary, when the merged piece is not in
  // it, or when unk_token is not in it.
  BpeModel(std::unordered_map<std::string, int> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           BpeOptions options, const std::vector<int>& ranks = {});
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // Appends the ids of one pre-tokenized word (valid UTF-8, already in the model's alphabet).
  void encode_word(std::string_view word, std::vector<int>& out) const;

  // Id of a piece, or -1.
  int piece_to_id(std::string_view piece) const;
  const std::unordered_map<std::string, int>& vocab() const { return vocab_; }
  size_t num_merges() const { return merges_.size(); }

 private:
  void merge_word(std::string_view word, std::vector<int>& out) const;
  void encode_chunk(std::string_view chunk, std::vector<int>& out) const;  // through the cache

  struct StrHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int, StrHash, std::equal_to<>> lookup_;
  std::unordered_map<std::string, int> vocab_;
  // (left id << 32 | right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int, int>> merges_;
  BpeOptions options_;
  int unk_id_ = -1;
  int byte_ids_[256];  // id of <0xXX>, or -1
  // Pairs of adjacent characters (code points a << 32 | b) that occur inside some piece. Where two neighbouring
  // characters of a word form no such pair, no merge can ever join them, so the word is encoded as independent
  // chunks (exactly the same result, and long unsplit words such as a whole text under a SentencePiece-style
  // tokenizer become cacheable and fast). Disabled when a merge involves a byte-fallback or unk piece.
  std::unordered_set<uint64_t> char_pairs_;
  bool chunking_ = true;

  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kMaxCacheEntries = 1 << 18;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int>, StrHash, std::equal_to<>> cache_;
};

}  // namespace qs::tokenizer
