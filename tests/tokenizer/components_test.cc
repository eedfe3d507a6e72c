// Tokenizer components on small hand-built tokenizer.json files, where the right answer can be worked out by
// hand: merge order (rank, then leftmost), both merge notations, byte fallback / unk / fuse_unk, ignore_merges,
// added-token lstrip / rstrip / single_word / normalized, every Split behaviour, Metaspace (Mistral style) and
// tokenizer_config overrides of BOS / EOS.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace qs::tokenizer {
namespace {
using json = nlohmann::json;
using Ids = std::vector<int>;

// A tokenizer with no normalizer / pre-tokenizer / decoder: the whole text is one word, decode concatenates.
json bare(json vocab, json merges) {
  json j;
  j["model"] = {{"type", "BPE"}, {"vocab", std::move(vocab)}, {"merges", std::move(merges)}};
  return j;
}

Tokenizer make(const json& j, const std::string& config = {}) { return Tokenizer::from_json(j.dump(), config); }

TEST(TokenizerComponents, MergeOrderByRankThenLeftmost) {
  const json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}};
  EXPECT_EQ(make(bare(vocab, {"b c", "a b"})).encode("abc"), (Ids{0, 4}));
  EXPECT_EQ(make(bare(vocab, {"a b", "b c"})).encode("abc"), (Ids{3, 2}));
  // [a, b] pairs mean the same as "a b" strings.
  EXPECT_EQ(make(bare(vocab, json::parse(R"([["b", "c"], ["a", "b"]])"))).encode("abc"), (Ids{0, 4}));
  // Equal ranks: leftmost first.
  const Tokenizer t = make(bare({{"a", 0}, {"aa", 1}, {"aaaa", 2}}, {"a a", "aa aa"}));
  EXPECT_EQ(t.encode("aaa"), (Ids{1, 0}));
  EXPECT_EQ(t.encode("aaaaa"), (Ids{2, 0}));
  EXPECT_EQ(t.encode("aaaaaaa"), (Ids{2, 1, 0}));
  EXPECT_EQ(t.decode(t.encode("aaaaaaa")), "aaaaaaa");
}

TEST(TokenizerComponents, IgnoreMerges) {
  json j = bare({{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}}, {"b c", "a b"});
  EXPECT_EQ(make(j).encode("abc"), (Ids{0, 4}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(make(j).encode("abc"), (Ids{5}));
  EXPECT_EQ(make(j).encode("abcc"), (Ids{0, 4, 2}));
}

TEST(TokenizerComponents, ByteFallbackUnkAndFuseUnk) {
  // é = C3 A9.
  json j = bare({{"<unk>", 0}, {"<0xC3>", 1}, {"<0xA9>", 2}, {"a", 3}}, json::array());
  j["model"]["byte_fallback"] = true;
  j["model"]["unk_token"] = "<unk>";
  j["decoder"] = json::parse(R"({"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]})");
  Tokenizer t = make(j);
  EXPECT_EQ(t.encode("aé"), (Ids{3, 1, 2}));
  EXPECT_EQ(t.decode({3, 1, 2}), "aé");
  EXPECT_EQ(t.encode("a€"), (Ids{3, 0}));  // € = E2 82 AC has no byte pieces: unk
  j["model"]["byte_fallback"] = false;
  EXPECT_EQ(make(j).encode("aééa"), (Ids{3, 0, 0, 3}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(make(j).encode("aééa"), (Ids{3, 0, 3}));
  j["model"].erase("unk_token");
  EXPECT_EQ(make(j).encode("aééa"), (Ids{3, 3}));  // no unk token: dropped, as HF tokenizers does
}

TEST(TokenizerComponents, AddedTokenOptions) {
  json j = bare({{"x", 0}, {"y", 1}, {" ", 2}}, json::array());
  j["added_tokens"] = {{{"id", 3}, {"content", "<m>"}, {"special", true}}};
  EXPECT_EQ(make(j).encode("x <m> y"), (Ids{0, 2, 3, 2, 1}));
  j["added_tokens"][0]["lstrip"] = true;
  EXPECT_EQ(make(j).encode("x  <m> y"), (Ids{0, 3, 2, 1}));
  j["added_tokens"][0]["rstrip"] = true;
  EXPECT_EQ(make(j).encode("x  <m>  y"), (Ids{0, 3, 1}));
  EXPECT_EQ(make(j).decode({0, 3, 1}), "x<m>y");
  EXPECT_EQ(make(j).decode({0, 3, 1}, /*skip_special_tokens=*/true), "xy");

  json w = bare({{"x", 0}, {"y", 1}, {" ", 2}}, json::array());
  w["added_tokens"] = {{{"id", 4}, {"content", "xy"}, {"single_word", true}}};
  EXPECT_EQ(make(w).encode("xy"), (Ids{4}));
  EXPECT_EQ(make(w).encode("xxy"), (Ids{0, 0, 1}));
  EXPECT_EQ(make(w).encode("xxy xy"), (Ids{0, 0, 1, 2, 4}));
  EXPECT_FALSE(make(w).is_special(4));  // added but not special: kept by skip_special_tokens
  EXPECT_EQ(make(w).decode({4, 2}, true), "xy ");

  // A normalized added token is matched in the normalized text (here y -> x).
  json n = bare({{"x", 0}, {"y", 1}}, json::array());
  n["normalizer"] = json::parse(R"({"type": "Replace", "pattern": {"String": "y"}, "content": "x"})");
  n["added_tokens"] = {{{"id", 5}, {"content", "xx"}, {"normalized", true}}};
  EXPECT_EQ(make(n).encode("yx"), (Ids{5}));
  EXPECT_EQ(make(n).encode("y"), (Ids{0}));
}

TEST(TokenizerComponents, SplitBehaviours) {
  const json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"-", 3}, {"a-", 4}, {"-b", 5}, {"--", 6}, {"-c", 7}, {"b-", 8}};
  json j = bare(vocab, {"a -", "- b", "- -", "- c", "b -"});
  EXPECT_EQ(make(j).encode("a-b--c"), (Ids{4, 1, 6, 2}));  // no split: a- (rank 0), then -- (rank 2)
  auto with = [&](const char* behavior, bool invert = false) {
    json s = j;
    s["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}};
    return make(s).encode("a-b--c");
  };
  EXPECT_EQ(with("Isolated"), (Ids{0, 3, 1, 3, 3, 2}));
  EXPECT_EQ(with("Removed"), (Ids{0, 1, 2}));
  EXPECT_EQ(with("MergedWithPrevious"), (Ids{4, 8, 3, 2}));  // a- b- - c
  EXPECT_EQ(with("MergedWithNext"), (Ids{0, 5, 3, 7}));      // a -b - -c
  EXPECT_EQ(with("Contiguous"), (Ids{0, 3, 1, 6, 2}));       // a - b -- c
  EXPECT_EQ(with("Removed", /*invert=*/true), (Ids{3, 3, 3}));  // the non-dashes are the "matches" now
}

// Mistral-style: Metaspace pre-tokenizer (prepend_scheme "first", no split) and Metaspace decoder.
TEST(TokenizerComponents, MetaspaceFirst) {
  json j = bare({{"\u2581", 0}, {"a", 1}, {"b", 2}, {"\u2581a", 3}, {"<s>", 4}}, {"\u2581 a"});
  j["added_tokens"] = {{{"id", 4}, {"content", "<s>"}, {"special", true}}};
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", false}};
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", false}};
  const Tokenizer t = make(j);
  EXPECT_EQ(t.encode("a b"), (Ids{3, 0, 2}));
  EXPECT_EQ(t.encode("<s>a"), (Ids{4, 1}));  // after an added token: not the first piece, no prefix
  EXPECT_EQ(t.encode("a<s>a"), (Ids{3, 4, 1}));
  EXPECT_EQ(t.decode({3, 0, 2}), "a b");
  EXPECT_EQ(t.decode({0, 3}), " a");  // only the very first space is stripped
  j["pre_tokenizer"]["split"] = true;
  j["pre_tokenizer"]["prepend_scheme"] = "always";
  EXPECT_EQ(make(j).encode("<s>a"), (Ids{4, 3}));
  EXPECT_EQ(make(j).encode("aa a"), (Ids{3, 1, 3}));
}

TEST(TokenizerComponents, ConfigOverridesBosEos) {
  json j = bare({{"a", 0}, {"<s>", 1}, {"</s>", 2}}, json::array());
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}})");
  EXPECT_EQ(make(j).encode("a"), (Ids{1, 0}));
  EXPECT_EQ(make(j).bos_id(), 1);  // from the template when there is no config
  EXPECT_TRUE(make(j).eos_ids().empty());
  const std::string cfg = R"({"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": false,
      "add_eos_token": true, "chat_template": [{"name": "tool_use", "template": "T"},
                                               {"name": "default", "template": "D"}]})";
  const Tokenizer t = make(j, cfg);
  EXPECT_EQ(t.encode("a"), (Ids{0, 2}));
  EXPECT_EQ(t.encode("a", false), (Ids{0}));
  EXPECT_FALSE(t.adds_bos());
  EXPECT_EQ(t.eos_ids(), Ids{2});
  EXPECT_TRUE(t.is_special(2));
  EXPECT_EQ(t.chat_template(), "D");
  EXPECT_EQ(make(j, R"({"add_bos_token": true, "bos_token": "<s>"})").encode("a"), (Ids{1, 0}));
}

}  // namespace
}  // namespace qs::tokenizer
