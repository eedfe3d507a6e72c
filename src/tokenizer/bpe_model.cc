// BPE merging (see bpe_model.h). The merge loop mirrors HF tokenizers' Word::merge_all: a min-heap of candidate
// merges keyed by (rank, position); a popped candidate is skipped when its left symbol was merged away or its
// pair no longer produces the same piece.
#include "tokenizer/bpe_model.h"

#include <cstdio>
#include <queue>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace qs::tokenizer {

BpeModel::BpeModel(std::unordered_map<std::string, int> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
                   const std::vector<int>& ranks)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  QS_CHECK(ranks.empty() || ranks.size() == merges.size()) << "BPE: " << ranks.size() << " ranks for "
                                                           << merges.size() << " merges";
  lookup_.reserve(vocab_.size());
  for (const auto& [piece, id] : vocab_) lookup_.emplace(piece, id);
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const int ia = piece_to_id(a), ib = piece_to_id(b);
    QS_CHECK(ia >= 0) << "merge #" << rank << " '" << a << " " << b << "': token '" << a
                      << "' is not in the vocabulary";
    QS_CHECK(ib >= 0) << "merge #" << rank << " '" << a << " " << b << "': token '" << b
                      << "' is not in the vocabulary";
    const int merged = piece_to_id(a + b);
    QS_CHECK(merged >= 0) << "merge #" << rank << " '" << a << " " << b << "': merged token '" << a + b
                          << "' is not in the vocabulary";
    // A repeated pair takes its last rank, as HF tokenizers' HashMap collect does.
    merges_.insert_or_assign((uint64_t(uint32_t(ia)) << 32) | uint32_t(ib),
                             std::make_pair(ranks.empty() ? int(rank) : ranks[rank], merged));
  }
  if (options_.unk_token) {
    unk_id_ = piece_to_id(*options_.unk_token);
    QS_CHECK(unk_id_ >= 0) << "unk_token '" << *options_.unk_token << "' is not in the vocabulary";
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    byte_ids_[b] = piece_to_id(name);
  }
  // Chunking is exact only while every symbol's text is the text it covers: not so for byte-fallback and unk
  // symbols, so any merge that involves them turns it off.
  std::unordered_set<int> opaque(byte_ids_, byte_ids_ + 256);
  opaque.insert(unk_id_);
  for (const auto& [key, value] : merges_)
    if (opaque.count(int(key >> 32)) || opaque.count(int(key & 0xFFFFFFFFu))) chunking_ = false;
  for (const auto& [piece, id] : vocab_) {
    uint32_t prev = 0;
    bool first = true;
    for (size_t pos = 0; pos < piece.size();) {
      const Utf8Char c = read_utf8(piece, pos);
      const uint32_t cp = c.kind == Utf8Char::kValid ? c.cp : 0xFFFFFFFFu;  // invalid: never equal to a text char
      if (!first) char_pairs_.insert((uint64_t(prev) << 32) | cp);
      prev = cp, first = false;
      pos += c.len;
    }
  }
}

int BpeModel::piece_to_id(std::string_view piece) const {
  auto it = lookup_.find(piece);
  return it == lookup_.end() ? -1 : it->second;
}

void BpeModel::encode_word(std::string_view word, std::vector<int>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (int id = piece_to_id(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  if (!chunking_ || word.size() <= kMaxCachedWordBytes) {
    encode_chunk(word, out);
    return;
  }
  size_t begin = 0;
  uint32_t prev = 0;
  for (size_t pos = 0; pos < word.size();) {
    const Utf8Char c = read_utf8(word, pos);
    const uint32_t cp = c.kind == Utf8Char::kValid ? c.cp : 0xFFFFFFFFu;
    if (pos > begin && !char_pairs_.count((uint64_t(prev) << 32) | cp)) {
      encode_chunk(word.substr(begin, pos - begin), out);
      begin = pos;
    }
    prev = cp;
    pos += c.len;
  }
  encode_chunk(word.substr(begin), out);
}

void BpeModel::encode_chunk(std::string_view word, std::vector<int>& out) const {
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() < kMaxCacheEntries) cache_.emplace(std::string(word), std::vector<int>(out.begin() + start, out.end()));
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int>& out) const {
  // 1. One symbol per character (or per byte with byte fallback, or an unk).
  struct Symbol {
    int id, prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  auto push = [&](int id) {
    const int n = int(sym.size());
    sym.push_back({id, n - 1, -1, true});
    if (n > 0) sym[n - 1].next = n;
  };
  bool last_unk = false;
  for (size_t pos = 0; pos < word.size();) {
    size_t len = read_utf8(word, pos).len;
    if (pos + len > word.size()) len = word.size() - pos;
    const std::string_view ch = word.substr(pos, len);
    pos += len;
    if (int id = piece_to_id(ch); id >= 0) {
      push(id);
      last_unk = false;
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (char c : ch) all = all && byte_ids_[uint8_t(c)] >= 0;
      if (all) {
        for (char c : ch) push(byte_ids_[uint8_t(c)]);
        last_unk = false;
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (!(options_.fuse_unk && last_unk)) push(unk_id_);
      last_unk = true;
    }
    // Without an unk token, HF tokenizers drops the character; so do we.
  }
  if (sym.empty()) return;

  // 2. Merge by rank.
  struct Candidate {
    int rank, pos, merged;
    bool operator<(const Candidate& o) const {  // std::priority_queue is a max-heap: invert
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  auto pair_of = [&](int left) -> const std::pair<int, int>* {
    const int right = sym[left].next;
    if (right < 0) return nullptr;
    auto it = merges_.find((uint64_t(uint32_t(sym[left].id)) << 32) | uint32_t(sym[right].id));
    return it == merges_.end() ? nullptr : &it->second;
  };
  std::priority_queue<Candidate> heap;
  for (int i = 0; i + 1 < int(sym.size()); ++i)
    if (auto* m = pair_of(i)) heap.push({m->first, i, m->second});
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& left = sym[c.pos];
    if (!left.alive || left.next < 0) continue;
    const auto* m = pair_of(c.pos);
    if (!m || m->second != c.merged) continue;
    Symbol& right = sym[left.next];
    left.id = c.merged;
    right.alive = false;
    left.next = right.next;
    if (left.next >= 0) sym[left.next].prev = c.pos;
    if (left.prev >= 0)
      if (auto* pm = pair_of(left.prev)) heap.push({pm->first, left.prev, pm->second});
    if (auto* nm = pair_of(c.pos)) heap.push({nm->first, c.pos, nm->second});
  }
  for (int i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

}  // namespace qs::tokenizer
