// BlockManager on its own: reference counts and the three page states, all-or-nothing allocation, prefix hits
// (whole pages only, never the page of the last token, chained so a later page only hits after its prefix),
// sharing between sequences, LRU eviction order (tail pages of a freed sequence go first), prefix caching off,
// and a randomized run checking the invariants after every operation.
#include <gtest/gtest.h>

#include <random>

#include "common/test_util.h"
#include "runtime/kv/block_manager.h"

namespace qs::runtime {
namespace {

std::vector<int32_t> seq_tokens(int32_t n, int32_t base) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) t[size_t(i)] = base + i * 7 % 31;
  return t;
}

TEST(BlockManager, AllocateGrowFreeCountsPages) {
  BlockManager bm(4, 10, true);
  EXPECT_TRUE(bm.allocate(1, 5));  // 2 pages
  EXPECT_EQ(bm.pages_of(1).size(), 2u);
  EXPECT_TRUE(bm.allocate(1, 8));  // still 2
  EXPECT_EQ(bm.pages_of(1).size(), 2u);
  EXPECT_TRUE(bm.allocate(1, 9));  // 3
  EXPECT_EQ(bm.num_used(), 3);
  EXPECT_FALSE(bm.allocate(2, 29));  // 8 pages > 7 left: nothing changes
  EXPECT_FALSE(bm.has(2));
  EXPECT_EQ(bm.num_free(), 7);
  EXPECT_TRUE(bm.allocate(2, 28));
  EXPECT_EQ(bm.num_free(), 0);
  bm.check_invariants();
  bm.free(1);
  bm.free(2);
  bm.free(3);  // unknown: ignored
  EXPECT_EQ(bm.num_free(), 10);
  EXPECT_EQ(bm.num_used(), 0);
  bm.check_invariants();
}

TEST(BlockManager, PrefixHitSharesFullPagesButNeverTheLastToken) {
  BlockManager bm(4, 16, true);
  const auto t = seq_tokens(13, 3);  // pages [0..3], [4..7], [8..11], [12]
  EXPECT_TRUE(bm.match_prefix(t.data(), 13).pages.empty());
  ASSERT_TRUE(bm.allocate(1, 13));
  bm.commit(1, t.data(), 13);
  EXPECT_EQ(bm.num_cached(), 3);  // full pages only
  // Same 13 tokens: 3 pages hit (12 tokens), the last token recomputes.
  PrefixMatch m = bm.match_prefix(t.data(), 13);
  EXPECT_EQ(m.num_tokens(), 12);
  // Exactly 12 tokens: only 2 pages (the page holding token 11 must be recomputed).
  EXPECT_EQ(bm.match_prefix(t.data(), 12).num_tokens(), 8);
  EXPECT_EQ(bm.match_prefix(t.data(), 9).num_tokens(), 8);
  EXPECT_EQ(bm.match_prefix(t.data(), 8).num_tokens(), 4);
  // A different first page: no hit at all, even though later pages are equal (chained hashes).
  auto u = t;
  u[1] += 1;
  EXPECT_EQ(bm.match_prefix(u.data(), 13).num_tokens(), 0);
  // A different second page: only the first hits.
  auto w = t;
  w[6] += 1;
  EXPECT_EQ(bm.match_prefix(w.data(), 13).num_tokens(), 4);

  ASSERT_TRUE(bm.allocate(2, 13, &m));
  EXPECT_EQ(bm.pages_of(2).size(), 4u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(bm.pages_of(2)[size_t(i)], bm.pages_of(1)[size_t(i)]);
  EXPECT_NE(bm.pages_of(2)[3], bm.pages_of(1)[3]);
  EXPECT_EQ(bm.num_used(), 5);
  bm.check_invariants();
  bm.free(1);
  EXPECT_EQ(bm.num_used(), 4);  // the shared pages stay in use by 2
  bm.check_invariants();
  bm.free(2);
  EXPECT_EQ(bm.num_used(), 0);
  EXPECT_EQ(bm.num_evictable(), 3);
  EXPECT_EQ(bm.num_free(), 13);
  bm.check_invariants();
}

TEST(BlockManager, HitOnEvictablePagesCountsThemAsTaken) {
  BlockManager bm(2, 4, true);
  const auto t = seq_tokens(5, 1);
  ASSERT_TRUE(bm.allocate(1, 5));  // 3 pages
  bm.commit(1, t.data(), 5);        // 2 full pages cached
  bm.free(1);                       // 2 evictable + 2 free
  PrefixMatch m = bm.match_prefix(t.data(), 5);
  ASSERT_EQ(m.num_tokens(), 4);
  // 2 hit pages + 3 fresh = 5 > 4 pages: must fail although free + evictable = 4 >= 3 fresh.
  EXPECT_FALSE(bm.allocate(2, 9, &m));
  EXPECT_FALSE(bm.has(2));
  bm.check_invariants();
  EXPECT_TRUE(bm.allocate(2, 8, &m));  // 2 hit + 2 fresh
  EXPECT_EQ(bm.num_free() + bm.num_evictable(), 0);
  bm.check_invariants();
}

TEST(BlockManager, EvictsLeastRecentlyFreedTailFirst) {
  BlockManager bm(2, 6, true);
  const auto a = seq_tokens(7, 100), b = seq_tokens(7, 200);
  ASSERT_TRUE(bm.allocate(1, 7));  // 4 pages, 3 full
  bm.commit(1, a.data(), 7);
  bm.free(1);  // evictable: a3 (tail) first, then a2, a1
  EXPECT_EQ(bm.num_evictable(), 3);
  ASSERT_TRUE(bm.allocate(2, 6));  // 3 pages: 3 free... (6 - 3 evictable = 3 free) no eviction yet
  EXPECT_EQ(bm.evictions(), 0);
  ASSERT_TRUE(bm.allocate(3, 2));  // 1 page: evicts a's third page (the tail)
  EXPECT_EQ(bm.evictions(), 1);
  EXPECT_EQ(bm.match_prefix(a.data(), 7).num_tokens(), 4);  // a1, a2 still cached
  bm.check_invariants();
  bm.free(2);
  bm.free(3);
  (void)b;
  // Re-referencing a2 and a1 through a hit protects them from eviction.
  PrefixMatch m = bm.match_prefix(a.data(), 7);
  ASSERT_TRUE(bm.allocate(4, 4, &m));
  EXPECT_TRUE(bm.allocate(5, 8));  // the 4 pages not held by 4
  EXPECT_EQ(bm.match_prefix(a.data(), 7).num_tokens(), 4);
  EXPECT_FALSE(bm.allocate(6, 1));
  bm.check_invariants();
}

TEST(BlockManager, IdenticalContentInTwoPagesKeepsOneCached) {
  BlockManager bm(2, 8, true);
  const auto t = seq_tokens(5, 9);
  ASSERT_TRUE(bm.allocate(1, 5));
  ASSERT_TRUE(bm.allocate(2, 5));  // same tokens computed concurrently (no hit)
  bm.commit(1, t.data(), 5);
  bm.commit(2, t.data(), 5);
  EXPECT_EQ(bm.num_cached(), 2);
  bm.check_invariants();
  bm.free(1);
  bm.free(2);
  EXPECT_EQ(bm.num_evictable(), 2);
  EXPECT_EQ(bm.num_free(), 6);
  bm.check_invariants();
}

TEST(BlockManager, CachingOffNeverHits) {
  BlockManager bm(2, 8, false);
  const auto t = seq_tokens(5, 9);
  ASSERT_TRUE(bm.allocate(1, 5));
  bm.commit(1, t.data(), 5);
  EXPECT_EQ(bm.num_cached(), 0);
  EXPECT_TRUE(bm.match_prefix(t.data(), 5).pages.empty());
  bm.free(1);
  EXPECT_EQ(bm.num_free(), 8);
  bm.check_invariants();
}

TEST(BlockManager, BadArgumentsAreErrors) {
  EXPECT_NE(qs::test::error_of([] { BlockManager(0, 4, true); }).find("page size"), std::string::npos);
  EXPECT_NE(qs::test::error_of([] { BlockManager(4, 0, true); }).find("page count"), std::string::npos);
  BlockManager bm(4, 4, true);
  EXPECT_NE(qs::test::error_of([&] { bm.pages_of(7); }).find("holds no pages"), std::string::npos);
}

// Random sequences drawn from a few shared prefixes; grow, commit, hit, free; invariants after every operation.
TEST(BlockManager, RandomizedInvariants) {
  std::mt19937_64 rng(7);
  for (int32_t page : {1, 3, 4}) {
    BlockManager bm(page, 23, true);
    struct Live {
      uint64_t id;
      std::vector<int32_t> toks;
      int32_t computed;
    };
    std::vector<Live> live;
    uint64_t next = 1;
    for (int op = 0; op < 1500; ++op) {
      const int kind = int(rng() % 4);
      if (kind == 0 || live.empty()) {
        Live l{next++, seq_tokens(int32_t(1 + rng() % 20), int32_t(rng() % 3) * 50), 0};
        for (auto& t : l.toks)
          if (rng() % 8 == 0) t = int32_t(rng() % 9);  // some divergence
        PrefixMatch m = bm.match_prefix(l.toks.data(), int32_t(l.toks.size()));
        ASSERT_LT(m.num_tokens(), int32_t(l.toks.size()));
        const int32_t first = m.num_tokens() + 1;
        if (bm.allocate(l.id, first, &m)) {
          l.computed = first;
          bm.commit(l.id, l.toks.data(), l.computed);
          live.push_back(l);
        }
      } else if (kind == 1) {  // grow by a chunk
        Live& l = live[rng() % live.size()];
        const int32_t to = std::min<int32_t>(int32_t(l.toks.size()), l.computed + 1 + int32_t(rng() % 5));
        if (bm.allocate(l.id, to)) {
          l.computed = to;
          bm.commit(l.id, l.toks.data(), l.computed);
        }
      } else {
        const size_t i = rng() % live.size();
        bm.free(live[i].id);
        live.erase(live.begin() + std::ptrdiff_t(i));
      }
      ASSERT_NO_THROW(bm.check_invariants()) << "op " << op;
    }
    for (auto& l : live) bm.free(l.id);
    bm.check_invariants();
    EXPECT_EQ(bm.num_used(), 0);
    EXPECT_EQ(bm.num_free() + bm.num_evictable(), 23);
  }
}

}  // namespace
}  // namespace qs::runtime
