// The paged KV block manager: which pages of the executor's KV pool (model/executor.h KvPoolInfo) each sequence
// uses, with reference counts and vLLM-style automatic prefix caching. Host-only bookkeeping: it never touches
// page contents (the executor writes them when a ForwardBatch lists the pages).
//
// Contract
//  * Concepts. The pool has `num_pages` pages of `page_size` token slots, ids 0 .. num_pages-1. A sequence (an id
//    chosen by the caller) holds an ordered list of pages: token at position p lives in pages[p / page_size].
//    A page is FULL when all its page_size slots hold computed tokens. A full page may be CACHED: it is then
//    content-addressed by a chained 64-bit hash h_i = H(h_{i-1}, tokens of page i) (h_{-1} = a fixed seed) and
//    can be shared by every sequence whose first (i+1)*page_size tokens are the same.
//  * Ownership. Each page is in exactly one of three states:
//      free       ref == 0, not cached: on the free list, content meaningless;
//      evictable  ref == 0, cached: on the LRU list, content valid, reusable by a prefix hit until evicted;
//      in use     ref >= 1 (cached or not): listed by `ref` sequences, never reallocated.
//    allocate() takes fresh pages from the free list first, then evicts the least recently freed evictable page
//    (dropping its hash). free() returns a sequence's pages; cached ones become evictable (tail pages first in
//    the LRU, so a shared prefix outlives its suffixes), uncached ones free.
//  * Prefix hits. match_prefix() looks up full pages of a token list from the start and stops at the first miss;
//    a hit is verified by comparing the page's stored token ids and parent hash, so a 64-bit collision can only
//    cause a miss, never a wrong page. It matches at most len-1 tokens (`floor((len-1)/page_size)` pages): a
//    fully cached prompt still recomputes its last token so that logits exist, and that token never lands in a
//    shared page. Shared pages are read-only: a sequence only writes slots at or after its first unshared page.
//  * commit() registers the pages that became full after a step (their K/V are then written); pages are never
//    registered before their content exists, so a hit never reads unwritten slots.
//  * Invariants (check_invariants() throws qs::Error naming the first violation):
//      free + evictable + in-use == num_pages, each page in exactly one state;
//      ref(page) == the number of (sequence, slot) entries listing it;
//      a cached page's hash maps back to it in the hash table, and every table entry is a cached page;
//      no page appears twice in one sequence;
//      a sequence's registered (hashed) pages are a prefix of its page list and are all cached.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace qs::runtime {

// The cached prefix of a token list found by BlockManager::match_prefix.
struct PrefixMatch {
  std::vector<int32_t> pages;    // full cached pages, in order
  std::vector<uint64_t> hashes;  // their chained hashes
  int32_t num_tokens() const { return int32_t(pages.size()) * page_size; }
  int32_t page_size = 0;
};

class BlockManager {
 public:
  BlockManager(int32_t page_size, int64_t num_pages, bool enable_prefix_caching);

  int32_t page_size() const { return page_size_; }
  int64_t num_pages() const { return int64_t(pages_.size()); }
  bool prefix_caching() const { return caching_; }
  int64_t pages_needed(int64_t num_tokens) const { return (num_tokens + page_size_ - 1) / page_size_; }

  // Longest cached prefix of tokens[0 .. n-2] in whole pages (empty when caching is off). Read-only.
  PrefixMatch match_prefix(const int32_t* tokens, int32_t n) const;

  // Makes sequence `seq` hold pages for its first `num_tokens` tokens. A new sequence first takes the pages of
  // `hit` (a match_prefix result, pages shared and marked in use); then fresh pages are appended as needed. All
  // or nothing: returns false (and changes nothing) when the free + evictable pages do not suffice.
  bool allocate(uint64_t seq, int32_t num_tokens, const PrefixMatch* hit = nullptr);
  // Registers the full pages among the first `num_computed` tokens of `seq` (tokens[0 .. num_computed-1] are
  // computed and in the pool) in the prefix cache. No-op when caching is off.
  void commit(uint64_t seq, const int32_t* tokens, int32_t num_computed);
  // Releases every page of `seq` (unknown ids are ignored).
  void free(uint64_t seq);

  bool has(uint64_t seq) const { return seqs_.count(seq) != 0; }
  const std::vector<int32_t>& pages_of(uint64_t seq) const;
  // Whether `n` more fresh pages could be handed out now.
  bool can_take(int64_t n) const { return n <= num_free() + num_evictable(); }

  int64_t num_free() const { return int64_t(free_.size()); }
  int64_t num_evictable() const { return int64_t(lru_.size()); }
  int64_t num_used() const { return num_pages() - num_free() - num_evictable(); }
  int64_t num_cached() const { return int64_t(table_.size()); }  // cached pages, in use or evictable
  int64_t num_sequences() const { return int64_t(seqs_.size()); }
  int64_t evictions() const { return evictions_; }

  void check_invariants() const;

 private:
  struct Page {
    int32_t ref = 0;
    bool cached = false;
    uint64_t hash = 0, parent_hash = 0;
    std::vector<int32_t> tokens;         // cached: the page's token ids (collision check)
    std::list<int32_t>::iterator lru_it;  // evictable: position in lru_
  };
  struct Seq {
    std::vector<int32_t> pages;
    std::vector<uint64_t> hashes;  // hashes of pages[0 .. hashes.size()-1], all registered
  };

  int32_t take_page();  // a fresh page (free list, else evicts); ref 1
  void ref_page(int32_t p);
  void unref_page(int32_t p);

  int32_t page_size_;
  bool caching_;
  std::vector<Page> pages_;
  std::vector<int32_t> free_;  // stack of free page ids
  std::list<int32_t> lru_;     // evictable pages, front = next to evict
  std::unordered_map<uint64_t, int32_t> table_;  // hash -> cached page
  std::unordered_map<uint64_t, Seq> seqs_;
  int64_t evictions_ = 0;
};

// The chained page hash: H(parent, tokens[0 .. n-1]) (64-bit, splitmix/murmur-style mixing of every token).
uint64_t page_hash(uint64_t parent, const int32_t* tokens, int32_t n);

}  // namespace qs::runtime
