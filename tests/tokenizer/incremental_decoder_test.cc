// Streaming decode: multi-byte characters split over byte tokens (byte-level pieces of the tiny model, <0xXX>
// byte-fallback pieces of Llama-2) are never emitted half-way; every push() is valid UTF-8, and the pushes plus
// flush() concatenate to exactly Tokenizer::decode, also for random id streams full of broken sequences.
// Also the UTF-8 helpers those guarantees rest on.
#include <gtest/gtest.h>

#include <random>

#include "common/test_util.h"
#include "tokenizer/incremental_decoder.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace qs::tokenizer {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

TEST(Utf8, RepairReplacesMaximalSubparts) {
  EXPECT_EQ(repair_utf8("abc"), "abc");
  EXPECT_EQ(repair_utf8("\xE6\x97\xA5"), "\xE6\x97\xA5");                // 日
  EXPECT_EQ(repair_utf8("\xE6\x97" "A"), kFffd + "A");                   // truncated 3-byte char: one U+FFFD
  EXPECT_EQ(repair_utf8("\xE0\x80"), kFffd + kFffd);                     // E0 needs A0..BF next: two subparts
  EXPECT_EQ(repair_utf8("\xED\xA0\x80"), kFffd + kFffd + kFffd);         // surrogate: not UTF-8
  EXPECT_EQ(repair_utf8("\xF0\x9F\x9A"), kFffd);                         // incomplete at the end
  EXPECT_EQ(repair_utf8("\x80\xBF"), kFffd + kFffd);                     // stray continuation bytes
  EXPECT_EQ(repair_utf8("\xC0\xAF"), kFffd + kFffd);                     // overlong
  EXPECT_EQ(repair_utf8("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
}

TEST(Utf8, IncompleteTail) {
  EXPECT_EQ(incomplete_utf8_tail(""), 0u);
  EXPECT_EQ(incomplete_utf8_tail("ab"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("a\xF0"), 1u);
  EXPECT_EQ(incomplete_utf8_tail("a\xF0\x9F"), 2u);
  EXPECT_EQ(incomplete_utf8_tail("a\xF0\x9F\x9A"), 3u);
  EXPECT_EQ(incomplete_utf8_tail("a\xF0\x9F\x9A\x80"), 0u);  // complete
  EXPECT_EQ(incomplete_utf8_tail("a\xE0\x80"), 0u);          // already invalid: nothing to wait for
  EXPECT_EQ(incomplete_utf8_tail("a\x80"), 0u);
}

TEST(Utf8, ByteLevelAlphabetIsABijection) {
  std::vector<bool> seen(400, false);
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = byte_to_codepoint(uint8_t(b));
    ASSERT_LT(cp, 400u);
    EXPECT_FALSE(seen[cp]);
    seen[cp] = true;
    EXPECT_EQ(codepoint_to_byte(cp), b);
  }
  EXPECT_EQ(byte_to_codepoint(' '), 0x120u);   // 'Ġ'
  EXPECT_EQ(byte_to_codepoint('\n'), 0x10Au);  // 'Ċ'
  EXPECT_EQ(byte_to_codepoint('a'), uint32_t('a'));
  EXPECT_EQ(codepoint_to_byte(0x4E00), -1);
}

// Streams ids one by one; checks every piece and returns the concatenation.
std::string stream(const Tokenizer& tok, const std::vector<int>& ids, bool skip_special, int* held_back = nullptr) {
  IncrementalDecoder dec(tok, skip_special);
  std::string all;
  for (int id : ids) {
    const std::string piece = dec.push(id);
    EXPECT_TRUE(is_valid_utf8(piece)) << "id " << id;
    if (held_back && piece.empty()) ++*held_back;
    all += piece;
  }
  const std::string rest = dec.flush();
  EXPECT_TRUE(is_valid_utf8(rest));
  return all + rest;
}

TEST(IncrementalDecoder, TinyModelMultiByteCharacters) {
  QS_REQUIRE_DATA("models/qs-llama-tiny/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  for (const std::string text : {"日本語のテキスト", "emoji 🚀🔥 done", "mixed: 中文 English עברית العربية",
                                 "Ünïcödé ÆØÅ ßẞ", "plain ascii text"}) {
    const std::vector<int> ids = tok.encode(text);
    int held = 0;
    EXPECT_EQ(stream(tok, ids, true, &held), text);
    EXPECT_EQ(stream(tok, ids, false), "<|begin_of_text|>" + text);
    if (text != "plain ascii text") EXPECT_GT(held, 0) << "no character was split over tokens in: " << text;
  }
}

TEST(IncrementalDecoder, Llama2ByteFallbackEmojiAndLeadingSpace) {
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.json"));
  // "emoji 🚀🔥 done": 🚀 arrives as <0xF0><0x9F><0x9A><0x80> (ids 243 162 157 131).
  const std::vector<int> ids = {1, 953, 29877, 2397, 29871, 243, 162, 157, 131, 243, 162, 151, 168, 2309};
  IncrementalDecoder dec(tok, /*skip_special_tokens=*/true);
  std::vector<std::string> pieces;
  for (int id : ids) pieces.push_back(dec.push(id));
  EXPECT_EQ(pieces[0], "");            // <s> skipped
  EXPECT_EQ(pieces[1], "em");          // "▁em": the Strip decoder drops the first space of the text
  EXPECT_EQ(pieces[5], "");            // F0
  EXPECT_EQ(pieces[6], "");            // 9F
  EXPECT_EQ(pieces[7], "");            // 9A
  EXPECT_EQ(pieces[8], "\xF0\x9F\x9A\x80");
  EXPECT_EQ(pieces[12], "\xF0\x9F\x94\xA5");  // 🔥
  EXPECT_EQ(pieces[13], " done");
  EXPECT_EQ(dec.flush(), "");
  EXPECT_EQ(stream(tok, ids, true), "emoji 🚀🔥 done");
  EXPECT_EQ(stream(tok, ids, false), "<s> emoji 🚀🔥 done");
  // A character cut off at the end comes out of flush() as U+FFFD, as decode writes it.
  EXPECT_EQ(stream(tok, {953, 243, 162}, true), tok.decode({953, 243, 162}, true));
  EXPECT_EQ(tok.decode({953, 243, 162}, true), "em" + kFffd);
}

// Streaming a completion after a prompt: the SentencePiece-style leading-space strip applies to the start of
// the whole text only, so the generated "▁brown" keeps its space.
TEST(IncrementalDecoder, ContinuationKeepsLeadingSpace) {
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.json"));
  const std::vector<int> prompt = tok.encode("The quick");
  const std::vector<int> more = tok.encode("brown fox", false);  // "▁brown", "▁fox"
  std::vector<int> all = prompt;
  all.insert(all.end(), more.begin(), more.end());
  const std::string whole = tok.decode(all, true);
  ASSERT_EQ(whole, "The quick brown fox");
  IncrementalDecoder cont(tok, true, /*continues_text=*/true);
  std::string streamed;
  for (int id : more) streamed += cont.push(id);
  streamed += cont.flush();
  EXPECT_EQ(streamed, " brown fox");
  EXPECT_EQ(tok.decode(prompt, true) + streamed, whole);
  IncrementalDecoder fresh(tok, true);  // a text of its own: its first space is dropped
  EXPECT_EQ(fresh.push(more[0]), "brown");
  EXPECT_EQ(fresh.flush(), "");
  EXPECT_EQ(fresh.push(more[0]), "brown");  // flush() starts a new text
}

// Random streams of byte tokens and ordinary tokens: broken and complete sequences in every combination.
TEST(IncrementalDecoder, RandomStreamsMatchDecode) {
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.json");
  QS_REQUIRE_DATA("models/qs-llama-tiny/tokenizer.json");
  const Tokenizer llama2 = Tokenizer::from_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.json"));
  const Tokenizer tiny = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  std::mt19937 rng(1234);
  for (const Tokenizer* tok : {&llama2, &tiny}) {
    // Llama-2 byte pieces are ids 3..258; the tiny model's single-byte pieces are its first few hundred ids.
    const int lo = tok == &llama2 ? 3 : 5, hi = tok == &llama2 ? 258 : 260;
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<int> ids;
      const int n = 1 + int(rng() % 40);
      for (int i = 0; i < n; ++i) {
        const int r = int(rng() % 10);
        ids.push_back(r < 7 ? lo + int(rng() % (hi - lo + 1)) : r < 9 ? int(rng() % tok->vocab_size()) : 1);
      }
      for (bool skip : {false, true}) {
        const std::string want = tok->decode(ids, skip);
        ASSERT_TRUE(is_valid_utf8(want));
        ASSERT_EQ(stream(*tok, ids, skip), want) << "trial " << trial;
      }
    }
  }
}

}  // namespace
}  // namespace qs::tokenizer
