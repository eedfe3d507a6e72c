// SentencePiece tokenizer.model (Llama-2): every fixture case encodes to exactly the ids the sentencepiece
// library produced (`ids_no_bos`, which differ from the tokenizer.json ids on runs of spaces) and decodes back;
// BOS/EOS come from the model and tokenizer_config.json; unsupported or corrupt models are rejected by name.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/test_util.h"
#include "core/error.h"
#include "tokenizer/incremental_decoder.h"
#include "tokenizer/tokenizer.h"

namespace qs::tokenizer {
namespace {
using json = nlohmann::json;
using ::testing::HasSubstr;

TEST(SentencePiece, Llama2ModelMatchesSentencePieceIds) {
  QS_REQUIRE_DATA("fixtures/tokenizer_cases.json");
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.model");
  const Tokenizer tok = Tokenizer::from_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.model"));
  std::ifstream f(test::data_path("fixtures/tokenizer_cases.json"));
  const json cases = json::parse(f)["llama2-sentencepiece"];
  ASSERT_GE(cases.size(), 20u);
  for (const json& c : cases) {
    const std::string text = c["text"];
    const std::vector<int> want = c["ids_no_bos"];
    const std::vector<int> got = tok.encode(text, /*add_special_tokens=*/false);
    EXPECT_EQ(got, want) << "text: '" << text << "'";
    std::vector<std::string> pieces;
    for (int id : got) pieces.push_back(tok.token_text(id));
    EXPECT_EQ(pieces, c["pieces"].get<std::vector<std::string>>()) << text;
    EXPECT_EQ(tok.decode(want), c["decoded"].get<std::string>()) << text;
    // With special tokens: BOS first (tokenizer_config.json add_bos_token = true), skipped when decoding.
    std::vector<int> with_bos = {1};
    with_bos.insert(with_bos.end(), want.begin(), want.end());
    EXPECT_EQ(tok.encode(text), with_bos) << text;
    EXPECT_EQ(tok.decode(with_bos, /*skip_special_tokens=*/true), text) << text;
    IncrementalDecoder dec(tok, true);
    std::string streamed;
    for (int id : with_bos) streamed += dec.push(id);
    EXPECT_EQ(streamed + dec.flush(), text) << text;
  }
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_ids(), std::vector<int>{2});
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_TRUE(tok.is_special(0) && tok.is_special(1) && tok.is_special(2));
}

// Same model without tokenizer_config.json beside it: the model's own ids, BOS added by default.
TEST(SentencePiece, ModelAloneAndFromDir) {
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.model");
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "qs_sp_test_model_alone";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.model"), dir / "tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing);
  const Tokenizer tok = Tokenizer::from_dir(dir.string());  // no tokenizer.json there: tokenizer.model
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int>{1, 15043, 3186}));
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_ids(), std::vector<int>{2});
  EXPECT_EQ(tok.decode({1, 15043, 3186, 2}), "<s> Hello world</s>");
  std::filesystem::remove_all(dir);
}

TEST(SentencePiece, RejectsCorruptOrUnsupportedModels) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "qs_sp_test_bad";
  std::filesystem::create_directories(dir);
  auto error_of = [&](const std::string& bytes) -> std::string {
    std::ofstream(dir / "tokenizer.model", std::ios::binary) << bytes;
    try {
      Tokenizer::from_sentencepiece((dir / "tokenizer.model").string());
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  // Field 1 (a piece) claiming 100 bytes with 2 present.
  EXPECT_THAT(error_of(std::string("\x0a\x64\x0a\x01", 4)), HasSubstr("runs past the end"));
  EXPECT_THAT(error_of(std::string("\x0f", 1)), HasSubstr("unsupported protobuf wire type 7"));
  // One piece "a" and a trainer_spec with model_type = 1 (unigram).
  EXPECT_THAT(error_of(std::string("\x0a\x03\x0a\x01" "a" "\x12\x02\x18\x01", 9)),
              HasSubstr("SentencePiece model type unigram is not supported"));
  // BPE, but a normalizer with a precompiled character map (nmt_nfkc).
  EXPECT_THAT(error_of(std::string("\x0a\x03\x0a\x01" "a" "\x12\x02\x18\x02" "\x1a\x0d\x0a\x08nmt_nfkc\x12\x01x", 24)),
              HasSubstr("normalizer 'nmt_nfkc' (a precompiled character map) is not supported"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace qs::tokenizer
