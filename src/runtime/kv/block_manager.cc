// Paged KV block manager with prefix caching (see block_manager.h for the contract).
#include "runtime/kv/block_manager.h"

#include <algorithm>
#include <unordered_set>

#include "core/error.h"

namespace qs::runtime {

namespace {

constexpr uint64_t kRootHash = 0x6a09e667f3bcc908ull;  // h_{-1}

inline uint64_t mix64(uint64_t z) {  // splitmix64 finalizer (a bijection with full avalanche)
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

uint64_t page_hash(uint64_t parent, const int32_t* tokens, int32_t n) {
  uint64_t h = mix64(parent ^ 0x9E3779B97F4A7C15ull) + uint64_t(n);
  for (int32_t i = 0; i < n; ++i) h = mix64(h ^ (uint64_t(uint32_t(tokens[i])) * 0xff51afd7ed558ccdull)) + 0x9E3779B97F4A7C15ull;
  return mix64(h);
}

BlockManager::BlockManager(int32_t page_size, int64_t num_pages, bool enable_prefix_caching)
    : page_size_(page_size), caching_(enable_prefix_caching) {
  QS_CHECK(page_size >= 1) << "BlockManager: page size must be >= 1, got " << page_size;
  QS_CHECK(num_pages >= 1 && num_pages < (int64_t(1) << 31)) << "BlockManager: bad page count " << num_pages;
  pages_.resize(size_t(num_pages));
  free_.reserve(size_t(num_pages));
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(int32_t(p));  // page 0 handed out first
}

PrefixMatch BlockManager::match_prefix(const int32_t* tokens, int32_t n) const {
  PrefixMatch m;
  m.page_size = page_size_;
  if (!caching_ || n <= 1) return m;
  const int32_t full = (n - 1) / page_size_;  // never the page holding the last token
  uint64_t parent = kRootHash;
  for (int32_t i = 0; i < full; ++i) {
    const int32_t* t = tokens + int64_t(i) * page_size_;
    const uint64_t h = page_hash(parent, t, page_size_);
    auto it = table_.find(h);
    if (it == table_.end()) break;
    const Page& pg = pages_[size_t(it->second)];
    if (pg.parent_hash != parent || !std::equal(pg.tokens.begin(), pg.tokens.end(), t)) break;  // a collision
    m.pages.push_back(it->second);
    m.hashes.push_back(h);
    parent = h;
  }
  return m;
}

const std::vector<int32_t>& BlockManager::pages_of(uint64_t seq) const {
  auto it = seqs_.find(seq);
  QS_CHECK(it != seqs_.end()) << "BlockManager: sequence " << seq << " holds no pages";
  return it->second.pages;
}

bool BlockManager::allocate(uint64_t seq, int32_t num_tokens, const PrefixMatch* hit) {
  QS_CHECK(num_tokens >= 0) << "BlockManager: negative token count " << num_tokens;
  auto it = seqs_.find(seq);
  const bool fresh = it == seqs_.end();
  QS_CHECK(fresh || hit == nullptr || hit->pages.empty())
      << "BlockManager: sequence " << seq << " already holds pages; a prefix hit only applies to a new sequence";
  const int64_t have = fresh ? (hit ? int64_t(hit->pages.size()) : 0) : int64_t(it->second.pages.size());
  const int64_t need = std::max<int64_t>(0, pages_needed(num_tokens) - have);
  // Evictable pages reused by the hit stop being available for fresh allocation.
  int64_t hit_evictable = 0;
  if (fresh && hit)
    for (int32_t p : hit->pages) hit_evictable += pages_[size_t(p)].ref == 0 ? 1 : 0;
  if (need > num_free() + num_evictable() - hit_evictable) return false;

  Seq& s = seqs_[seq];
  if (fresh && hit) {
    for (size_t i = 0; i < hit->pages.size(); ++i) {
      const Page& pg = pages_[size_t(hit->pages[i])];
      QS_CHECK(pg.cached && pg.hash == hit->hashes[i]) << "BlockManager: stale prefix match for sequence " << seq;
      ref_page(hit->pages[i]);
      s.pages.push_back(hit->pages[i]);
      s.hashes.push_back(hit->hashes[i]);
    }
  }
  for (int64_t i = 0; i < need; ++i) s.pages.push_back(take_page());
  return true;
}

void BlockManager::commit(uint64_t seq, const int32_t* tokens, int32_t num_computed) {
  if (!caching_) return;
  auto it = seqs_.find(seq);
  QS_CHECK(it != seqs_.end()) << "BlockManager: commit of unknown sequence " << seq;
  Seq& s = it->second;
  const size_t full = std::min(size_t(num_computed / page_size_), s.pages.size());
  while (s.hashes.size() < full) {
    const size_t i = s.hashes.size();
    const uint64_t parent = i == 0 ? kRootHash : s.hashes[i - 1];
    const int32_t* t = tokens + int64_t(i) * page_size_;
    const uint64_t h = page_hash(parent, t, page_size_);
    const int32_t p = s.pages[i];
    Page& pg = pages_[size_t(p)];
    s.hashes.push_back(h);
    if (pg.cached) continue;  // (only a shared hit page is already cached, and those are in hashes already)
    auto found = table_.find(h);
    if (found != table_.end()) continue;  // same content cached in another page (or a collision): keep that one
    pg.cached = true;
    pg.hash = h;
    pg.parent_hash = parent;
    pg.tokens.assign(t, t + page_size_);
    table_.emplace(h, p);
  }
}

void BlockManager::free(uint64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  // Tail first: the end of a sequence is evicted before its (more shareable) beginning.
  for (auto p = it->second.pages.rbegin(); p != it->second.pages.rend(); ++p) unref_page(*p);
  seqs_.erase(it);
}

int32_t BlockManager::take_page() {
  int32_t p;
  if (!free_.empty()) {
    p = free_.back();
    free_.pop_back();
  } else {
    QS_CHECK(!lru_.empty()) << "BlockManager: out of pages (internal: allocate checked availability)";
    p = lru_.front();
    lru_.pop_front();
    Page& pg = pages_[size_t(p)];
    table_.erase(pg.hash);
    pg.cached = false;
    pg.tokens.clear();
    ++evictions_;
  }
  pages_[size_t(p)].ref = 1;
  return p;
}

void BlockManager::ref_page(int32_t p) {
  Page& pg = pages_[size_t(p)];
  if (pg.ref == 0) lru_.erase(pg.lru_it);  // evictable -> in use
  ++pg.ref;
}

void BlockManager::unref_page(int32_t p) {
  Page& pg = pages_[size_t(p)];
  QS_CHECK(pg.ref >= 1) << "BlockManager: page " << p << " released more often than taken";
  if (--pg.ref > 0) return;
  if (pg.cached) {
    pg.lru_it = lru_.insert(lru_.end(), p);
  } else {
    free_.push_back(p);
  }
}

void BlockManager::check_invariants() const {
  const int64_t n = num_pages();
  std::vector<int32_t> refs(size_t(n), 0);
  for (const auto& [id, s] : seqs_) {
    std::unordered_set<int32_t> seen;
    for (int32_t p : s.pages) {
      QS_CHECK(p >= 0 && p < n) << "invariant: sequence " << id << " lists page " << p << " outside the pool";
      QS_CHECK(seen.insert(p).second) << "invariant: sequence " << id << " lists page " << p << " twice";
      ++refs[size_t(p)];
    }
    QS_CHECK(s.hashes.size() <= s.pages.size()) << "invariant: sequence " << id << " has more hashes than pages";
    if (caching_) {
      // A registered page is cached under that hash, unless an identical page was cached first (then the table
      // names the other page).
      for (size_t i = 0; i < s.hashes.size(); ++i) {
        const Page& pg = pages_[size_t(s.pages[i])];
        QS_CHECK(!pg.cached || pg.hash == s.hashes[i])
            << "invariant: sequence " << id << " page " << i << " is cached under another hash";
      }
    }
  }
  std::vector<uint8_t> state(size_t(n), 0);  // 1 free, 2 evictable
  for (int32_t p : free_) {
    QS_CHECK(state[size_t(p)] == 0) << "invariant: page " << p << " is on the free list twice";
    state[size_t(p)] = 1;
  }
  for (int32_t p : lru_) {
    QS_CHECK(state[size_t(p)] == 0) << "invariant: page " << p << " is both free and evictable (or twice in LRU)";
    state[size_t(p)] = 2;
  }
  int64_t cached = 0;
  for (int64_t p = 0; p < n; ++p) {
    const Page& pg = pages_[size_t(p)];
    QS_CHECK(pg.ref == refs[size_t(p)]) << "invariant: page " << p << " has ref " << pg.ref << " but "
                                        << refs[size_t(p)] << " sequences list it";
    const uint8_t st = state[size_t(p)];
    QS_CHECK(st != 1 || (pg.ref == 0 && !pg.cached)) << "invariant: free page " << p << " is referenced or cached";
    QS_CHECK(st != 2 || (pg.ref == 0 && pg.cached)) << "invariant: evictable page " << p << " is referenced or uncached";
    QS_CHECK(st != 0 || pg.ref >= 1) << "invariant: page " << p << " is lost (no state, ref 0)";
    if (pg.cached) {
      ++cached;
      auto it = table_.find(pg.hash);
      QS_CHECK(it != table_.end() && it->second == p) << "invariant: cached page " << p << " is not in the table";
      QS_CHECK(int32_t(pg.tokens.size()) == page_size_) << "invariant: cached page " << p << " lacks its tokens";
      QS_CHECK(page_hash(pg.parent_hash, pg.tokens.data(), page_size_) == pg.hash)
          << "invariant: cached page " << p << " hash does not match its tokens";
    }
  }
  QS_CHECK(cached == int64_t(table_.size())) << "invariant: the hash table has " << table_.size()
                                             << " entries for " << cached << " cached pages";
  QS_CHECK(caching_ || table_.empty()) << "invariant: pages cached with prefix caching off";
}

}  // namespace qs::runtime
