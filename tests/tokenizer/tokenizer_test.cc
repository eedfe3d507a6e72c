// Tokenizer against the reference ids of HF tokenizers (fixtures/tokenizer_cases.json): every case of the
// byte-level qs-llama-tiny tokenizer and of the Llama-2 tokenizer.json (SentencePiece-style BPE with byte
// fallback) encodes to exactly the reference ids and decodes back; plus BOS/EOS/config handling.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace qs::tokenizer {
namespace {
using json = nlohmann::json;

json load_cases() {
  std::ifstream f(test::data_path("fixtures/tokenizer_cases.json"));
  return json::parse(f);
}

TEST(Tokenizer, TinyModelMatchesReferenceIds) {
  QS_REQUIRE_DATA("fixtures/tokenizer_cases.json");
  QS_REQUIRE_DATA("models/qs-llama-tiny/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  const json cases = load_cases()["qs-llama-tiny"];
  ASSERT_GE(cases.size(), 20u);
  for (const json& c : cases) {
    const std::string text = c["text"];
    const std::vector<int> want = c["ids_with_bos"];
    EXPECT_EQ(tok.encode(text), want) << "text: '" << text << "'";
    // Without special tokens: the same ids minus the BOS.
    EXPECT_EQ(tok.encode(text, false), std::vector<int>(want.begin() + 1, want.end())) << text;
    EXPECT_EQ(tok.decode(want, /*skip_special_tokens=*/true), c["decoded"].get<std::string>()) << text;
    EXPECT_EQ(tok.decode(want), "<|begin_of_text|>" + text) << text;
  }
}

TEST(Tokenizer, Llama2TokenizerJsonMatchesReferenceIds) {
  QS_REQUIRE_DATA("fixtures/tokenizer_cases.json");
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.json"));
  const json cases = load_cases()["llama2-sentencepiece"];
  ASSERT_GE(cases.size(), 20u);
  for (const json& c : cases) {
    const std::string text = c["text"];
    const std::vector<int> want = c["hf_tokenizer_json_ids_with_bos"];
    EXPECT_EQ(tok.encode(text), want) << "text: '" << text << "'";
    EXPECT_EQ(tok.decode(want), c["decoded_from_tokenizer_json"].get<std::string>()) << text;
    EXPECT_EQ(tok.decode(want, /*skip_special_tokens=*/true), text) << text;
  }
}

TEST(Tokenizer, TinyModelSpecialTokensAndConfig) {
  QS_REQUIRE_DATA("models/qs-llama-tiny/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  EXPECT_EQ(tok.vocab_size(), 8192);
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.bos_token(), "<|begin_of_text|>");
  EXPECT_EQ(tok.eos_token(), "<|end_of_text|>");
  // tokenizer_config.json's eos_token first, then generation_config.json's [1, 4].
  EXPECT_EQ(tok.eos_ids(), (std::vector<int>{1, 4}));
  EXPECT_TRUE(tok.adds_bos());
  for (int id = 0; id < 5; ++id) EXPECT_TRUE(tok.is_special(id)) << id;
  EXPECT_FALSE(tok.is_special(5));
  EXPECT_EQ(tok.token_text(2525), "Ġworld");
  EXPECT_EQ(tok.token_to_id("<|eot_id|>"), 4);
  EXPECT_EQ(tok.token_to_id("no such piece"), -1);
  EXPECT_THAT(tok.chat_template(), ::testing::HasSubstr("<|start_header_id|>"));
  // Special tokens in the middle of text are matched whole.
  const std::vector<int> ids = tok.encode("a<|eot_id|>b<|start_header_id|>", false);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 4), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(tok.decode(ids), "a<|eot_id|>b<|start_header_id|>");
  EXPECT_EQ(tok.decode(ids, true), "ab");
}

TEST(Tokenizer, Llama2ConfigBosEos) {
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.json"));
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_ids(), std::vector<int>{2});
  EXPECT_TRUE(tok.is_special(0));  // <unk> from tokenizer_config.json
  EXPECT_TRUE(tok.is_special(1));
  EXPECT_TRUE(tok.is_special(2));
  EXPECT_FALSE(tok.is_special(3));  // <0x00> is an ordinary piece
  EXPECT_EQ(tok.token_text(13), "<0x0A>");
  EXPECT_TRUE(tok.chat_template().empty());
}

TEST(Tokenizer, RejectsInvalidUtf8AndBadIds) {
  QS_REQUIRE_DATA("models/qs-llama-tiny/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  try {
    tok.encode("ok \xC3\x28 bad");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("not valid UTF-8 (byte offset 3)"));
  }
  try {
    tok.decode({5, 8192});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("token id 8192 is out of range"));
  }
  EXPECT_THROW(tok.decode({-1}), Error);
}

// Decoding a byte token that cuts a character gives U+FFFD, never invalid UTF-8.
TEST(Tokenizer, DecodeRepairsCutCharacters) {
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.json"));
  // 🚀 = F0 9F 9A 80 = <0xF0><0x9F><0x9A><0x80> = ids 243 162 157 131 (see the emoji fixture case).
  EXPECT_EQ(tok.decode({243, 162, 157, 131}), "\xF0\x9F\x9A\x80");
  EXPECT_EQ(tok.decode({243, 162}), "\xEF\xBF\xBD");  // one maximal incomplete subpart
  EXPECT_EQ(tok.decode({131, 15043}), "\xEF\xBF\xBD Hello");  // stray continuation byte, then "▁Hello"
}

}  // namespace
}  // namespace qs::tokenizer
