// Malformed or unsupported tokenizer.json / tokenizer_config.json: each is rejected with a qs::Error whose
// message names the problem (never a crash, never a silently wrong tokenizer).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace qs::tokenizer {
namespace {
using ::testing::HasSubstr;
using json = nlohmann::json;

// A minimal valid byte-level BPE tokenizer.json; tests break one part of it.
json valid() {
  return json::parse(R"({
    "added_tokens": [{"id": 4, "content": "<s>", "special": true, "normalized": false}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "special_tokens": {"<s>": {"id": "<s>", "ids": [4], "tokens": ["<s>"]}}},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3}, "merges": ["a b"]}})");
}

std::string error_of_text(std::string_view tokenizer_json, std::string_view config = {}) {
  try {
    Tokenizer::from_json(tokenizer_json, config);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}
std::string error_of(const json& j, std::string_view config = {}) { return error_of_text(j.dump(), config); }

TEST(TokenizerMalformed, ValidBaseLoads) {
  const Tokenizer t = Tokenizer::from_json(valid().dump());
  EXPECT_EQ(t.encode("abc"), (std::vector<int>{4, 2, 3}));
}

TEST(TokenizerMalformed, NotJson) {
  EXPECT_THAT(error_of_text(std::string_view("{\"model\": {\"type\": \"BPE\",")), HasSubstr("tokenizer.json: invalid JSON"));
  EXPECT_THAT(error_of_text(std::string_view("[1, 2]")), HasSubstr("top level must be an object"));
}

TEST(TokenizerMalformed, MissingOrUnknownModel) {
  json j = valid();
  j.erase("model");
  EXPECT_THAT(error_of(j), HasSubstr("model is missing"));
  j = valid();
  j["model"]["type"] = "WordPiece";
  EXPECT_THAT(error_of(j), HasSubstr("unsupported model type 'WordPiece'"));
  j = valid();
  j["model"]["type"] = "Unigram";
  EXPECT_THAT(error_of(j), HasSubstr("unsupported model type 'Unigram'"));
}

TEST(TokenizerMalformed, MissingVocabOrMerges) {
  json j = valid();
  j["model"].erase("vocab");
  EXPECT_THAT(error_of(j), HasSubstr("model.vocab is missing"));
  j = valid();
  j["model"].erase("merges");
  EXPECT_THAT(error_of(j), HasSubstr("model.merges is missing"));
  j = valid();
  j["model"]["vocab"] = json::array();
  EXPECT_THAT(error_of(j), HasSubstr("model.vocab must be an object"));
  j = valid();
  j["model"]["vocab"]["d"] = -3;
  EXPECT_THAT(error_of(j), HasSubstr("model.vocab['d']: token id -3 is not an integer from 0 to"));
  j = valid();
  j["model"]["vocab"]["d"] = 1;
  EXPECT_THAT(error_of(j), HasSubstr("id 1 is used by both"));
}

TEST(TokenizerMalformed, MergesReferencingUnknownTokens) {
  json j = valid();
  j["model"]["merges"] = {"a b", "a x"};
  EXPECT_THAT(error_of(j), HasSubstr("merge #1 'a x': token 'x' is not in the vocabulary"));
  j["model"]["merges"] = json::parse(R"([["a", "b"], ["c", "a"]])");
  EXPECT_THAT(error_of(j), HasSubstr("merge #1 'c a': merged token 'ca' is not in the vocabulary"));
  j["model"]["merges"] = {"ab"};
  EXPECT_THAT(error_of(j), HasSubstr("model.merges[0] 'ab' must be two tokens separated by one space"));
  j["model"]["merges"] = json::parse(R"([["a", "b", "c"]])");
  EXPECT_THAT(error_of(j), HasSubstr("model.merges[0] must be \"a b\" or [\"a\", \"b\"]"));
}

TEST(TokenizerMalformed, UnsupportedComponents) {
  json j = valid();
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  EXPECT_THAT(error_of(j), HasSubstr("unsupported pre_tokenizer type 'BertPreTokenizer'"));
  j = valid();
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_THAT(error_of(j), HasSubstr("unsupported normalizer type 'Lowercase'"));
  j = valid();
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_THAT(error_of(j), HasSubstr("unsupported decoder type 'WordPiece'"));
  j = valid();
  j["post_processor"] = {{"type", "Unknown"}};
  EXPECT_THAT(error_of(j), HasSubstr("unsupported post_processor type 'Unknown'"));
  j = valid();
  j["model"]["dropout"] = 0.1;
  EXPECT_THAT(error_of(j), HasSubstr("dropout"));
  j = valid();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}}}}};
  EXPECT_THAT(error_of(j), HasSubstr("pre_tokenizer.pretokenizers[0].pattern is missing"));
}

TEST(TokenizerMalformed, BadRegex) {
  json j = valid();
  j["pre_tokenizer"] = json::parse(R"({"type": "Split", "pattern": {"Regex": "(\\p{L}+"}, "behavior": "Isolated"})");
  EXPECT_THAT(error_of(j), HasSubstr("invalid regex /(\\p{L}+/"));
  j["pre_tokenizer"]["behavior"] = "Sideways";
  j["pre_tokenizer"]["pattern"]["Regex"] = "a";
  EXPECT_THAT(error_of(j), HasSubstr("unknown split behavior 'Sideways'"));
}

TEST(TokenizerMalformed, BadSpecialTokens) {
  json j = valid();
  j["post_processor"]["special_tokens"] = json::object();
  EXPECT_THAT(error_of(j), HasSubstr("special token '<s>' is not listed in special_tokens"));
  j = valid();
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {99};
  EXPECT_THAT(error_of(j), HasSubstr("post_processor: token id 99 is not in the vocabulary"));
  j = valid();
  j["model"]["unk_token"] = "<unk>";
  EXPECT_THAT(error_of(j), HasSubstr("unk_token '<unk>' is not in the vocabulary"));
  j = valid();
  j["added_tokens"][0].erase("content");
  EXPECT_THAT(error_of(j), HasSubstr("added_tokens[0].content is missing"));
}

TEST(TokenizerMalformed, BadTokenizerConfig) {
  EXPECT_THAT(error_of(valid(), "{\"bos_token\": "), HasSubstr("tokenizer_config.json: invalid JSON"));
  EXPECT_THAT(error_of(valid(), R"({"bos_token": "<bos>"})"),
              HasSubstr("tokenizer_config.json: bos_token '<bos>' is not in the vocabulary"));
  EXPECT_THAT(error_of(valid(), R"({"add_bos_token": "yes"})"),
              HasSubstr("tokenizer_config.json: add_bos_token must be true or false"));
}

TEST(TokenizerMalformed, MissingFile) {
  try {
    Tokenizer::from_dir("/nonexistent/model");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("tokenizer file not found: /nonexistent/model/tokenizer.json"));
  }
}

// Issue 13: one id of 200,000,000 used to size the id table (6.5 GB); ids are now bounded by the number of entries.
TEST(TokenizerMalformed, HugeIdsAreRejectedWithoutAllocating) {
  json j = valid();
  j["model"]["vocab"]["c"] = 200000000;
  EXPECT_THAT(error_of(j), HasSubstr("model.vocab['c']: token id 200000000 is not an integer from 0 to"));
  j = valid();
  j["added_tokens"][0]["id"] = 200000000;
  EXPECT_THAT(error_of(j), HasSubstr("added_tokens[0].id: token id 200000000"));
  j = valid();
  j["model"]["vocab"]["c"] = 4294967299LL;  // would truncate to 3 as an int
  EXPECT_THAT(error_of(j), HasSubstr("model.vocab['c']: token id 4294967299"));
  j = valid();
  j["post_processor"]["special_tokens"]["<s>"]["ids"] = {4294967300LL};  // would truncate to 4
  EXPECT_THAT(error_of(j), HasSubstr("token id 4294967300"));
  EXPECT_THAT(error_of_text(valid().dump(), {}), HasSubstr("(no error)"));
  // Sparse ids within the bound still load (twice the entries + 1024).
  j = valid();
  j["model"]["vocab"]["c"] = 1000;
  EXPECT_EQ(error_of(j), "(no error)");
  // generation_config ids are checked before conversion too.
  try {
    Tokenizer::from_json(valid().dump(), {}, R"({"eos_token_id": 4294967297})");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("generation_config.json eos_token_id"));
  }
}

TEST(TokenizerMalformed, JsonErrorsDoNotEchoTheInput) {
  EXPECT_THAT(error_of_text("{\"model\": SECRET-TOKEN}"), HasSubstr("invalid JSON (syntax error at byte"));
  EXPECT_THAT(error_of_text("{\"model\": SECRET-TOKEN}"), ::testing::Not(HasSubstr("SECRET")));
}

}  // namespace
}  // namespace qs::tokenizer
