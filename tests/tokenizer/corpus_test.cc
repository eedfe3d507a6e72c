// The tokenizer on real text: WikiText-2 (the perplexity input) tokenizes to exactly the token count HF
// transformers reported (reference_metrics.json) and decodes back byte for byte; the reference generation
// prompts encode to their recorded input ids and the greedy ids decode to the recorded text. The WikiText-2
// encode time is printed (information only, not asserted).
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/test_util.h"
#include "tokenizer/incremental_decoder.h"
#include "tokenizer/tokenizer.h"

namespace qs::tokenizer {
namespace {
using json = nlohmann::json;

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(TokenizerCorpus, WikiText2TokenCountAndRoundTrip) {
  QS_REQUIRE_DATA("text/wikitext2_test.txt");
  QS_REQUIRE_DATA("models/qs-llama-tiny/tokenizer.json");
  QS_REQUIRE_DATA("fixtures/reference_metrics.json");
  const Tokenizer tok = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  const std::string text = read_all(test::data_path("text/wikitext2_test.txt"));
  ASSERT_EQ(text.size(), 1296370u);
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int> ids = tok.encode(text);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ INFO     ] WikiText-2 (" << text.size() << " bytes) -> " << ids.size() << " tokens in " << secs
            << " s (" << text.size() / secs / 1e6 << " MB/s, cold word cache)\n";
  const json metrics = json::parse(read_all(test::data_path("fixtures/reference_metrics.json")));
  EXPECT_EQ(ids.size(), metrics["wikitext2_tokens"].get<size_t>());
  EXPECT_EQ(ids.front(), tok.bos_id());
  EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), text);

  // Streaming the same ids gives the same text, in valid UTF-8 pieces.
  IncrementalDecoder dec(tok, /*skip_special_tokens=*/true);
  std::string streamed;
  for (int id : ids) streamed += dec.push(id);
  streamed += dec.flush();
  EXPECT_EQ(streamed, text);
}

TEST(TokenizerCorpus, Llama2WikiText2RoundTrip) {
  QS_REQUIRE_DATA("text/wikitext2_test.txt");
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.json"));
  const std::string text = read_all(test::data_path("text/wikitext2_test.txt"));
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int> ids = tok.encode(text);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ INFO     ] Llama-2 tokenizer.json: WikiText-2 -> " << ids.size() << " tokens in " << secs << " s\n";
  // Byte-fallback BPE is lossless: decoding gives the text back exactly.
  EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), text);
  EXPECT_GT(ids.size(), text.size() / 6);  // sanity: a 32k vocabulary averages a few bytes per token
}

// One Tokenizer shared by several threads (the word cache is shared): same ids as one thread alone.
TEST(TokenizerCorpus, ConcurrentEncodeMatchesSerial) {
  QS_REQUIRE_DATA("text/wikitext2_test.txt");
  QS_REQUIRE_DATA("models/qs-llama-tiny/tokenizer.json");
  const std::string text = read_all(test::data_path("text/wikitext2_test.txt"));
  const size_t n_chunks = 8;
  std::vector<std::string> chunks;
  for (size_t i = 0; i < n_chunks; ++i) {  // lines i*20000.. (cut at newlines: never inside a character)
    const size_t b = text.find('\n', i * 20000), e = text.find('\n', b + 20000 + 7 * i);
    chunks.push_back(text.substr(b, e - b));
  }
  std::vector<std::vector<int>> serial;
  {
    const Tokenizer fresh = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
    for (const std::string& c : chunks) serial.push_back(fresh.encode(c));
  }
  const Tokenizer shared = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  std::vector<std::vector<int>> parallel(n_chunks);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n_chunks; ++i)
    threads.emplace_back([&, i] {
      for (int rep = 0; rep < 3; ++rep) parallel[i] = shared.encode(chunks[i]);
    });
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < n_chunks; ++i) EXPECT_EQ(parallel[i], serial[i]) << "chunk " << i;
}

TEST(TokenizerCorpus, ReferenceGenerationPromptsAndTexts) {
  QS_REQUIRE_DATA("fixtures/reference_generations.json");
  QS_REQUIRE_DATA("models/qs-llama-tiny/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  const json ref = json::parse(read_all(test::data_path("fixtures/reference_generations.json")));
  ASSERT_GE(ref["cases"].size(), 8u);
  for (const json& c : ref["cases"]) {
    const std::string prompt = c["prompt"];
    EXPECT_EQ(tok.encode(prompt), c["input_ids"].get<std::vector<int>>()) << prompt;
    EXPECT_EQ(tok.decode(c["greedy_ids"].get<std::vector<int>>()), c["greedy_text"].get<std::string>()) << prompt;
  }
}

}  // namespace
}  // namespace qs::tokenizer
