// Chat templates are untrusted code (they come with downloaded checkpoints): every resource a template can use is
// bounded by ChatTemplateLimits and each limit gives a qs::Error naming it, never a crash, hang or gigabytes of
// memory (issue 13). Deep nesting (10,000 levels of expressions or blocks, which used to overflow the stack), huge
// range(), nested loops, string and list doubling, integer overflow, huge literals; and the real templates stay
// far inside the limits (the default limits render them unchanged).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>

#include "common/test_util.h"
#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace qs::tokenizer {
namespace {
using ::testing::HasSubstr;
using json = nlohmann::json;

std::string repeat(const std::string& s, int n) {
  std::string r;
  for (int i = 0; i < n; ++i) r += s;
  return r;
}

std::string error_of(const std::string& tmpl, const ChatTemplateLimits& lim = {}, const json& ctx = json::object()) {
  return qs::test::error_of([&] { ChatTemplate(tmpl, lim).render(ctx); });
}

TEST(ChatTemplateLimits, DeepNestingIsAnErrorNotAStackOverflow) {
  // 10,000 levels in one expression: over the token limit of a tag already; 1,000 levels: over the nesting limit.
  for (int n : {10000, 1000}) {
    const char* want = n == 10000 ? "max_tag_tokens" : "max_nesting";
    EXPECT_THAT(error_of("{{ " + repeat("(", n) + "1" + repeat(")", n) + " }}"), HasSubstr(want));
    EXPECT_THAT(error_of("{{ " + repeat("[", n) + repeat("]", n) + " }}"), HasSubstr(want));
    EXPECT_THAT(error_of("{{ " + repeat("not ", n) + "1 }}"), HasSubstr(want));
    EXPECT_THAT(error_of("{{ " + repeat("-", n) + "1 }}"), HasSubstr(want));
    if (n == 10000) EXPECT_THAT(error_of("{{ x" + repeat("[0]", n) + " }}"), HasSubstr(want));
  }
  const int n = 10000;
  EXPECT_THAT(error_of(repeat("{% if true %}", n) + "x" + repeat("{% endif %}", n)), HasSubstr("max_nesting"));
  EXPECT_THAT(error_of(repeat("{% for i in [1] %}", n) + repeat("{% endfor %}", n)), HasSubstr("max_nesting"));
  // A long left-associative chain nests closures without parser recursion: bounded by the tokens of one tag.
  EXPECT_THAT(error_of("{{ 1" + repeat(" + 1", 100000) + " }}"), HasSubstr("max_tag_tokens"));
  // At the limit it works (nesting counts expressions too, so 90 brackets fit in the default 100).
  EXPECT_EQ(ChatTemplate("{{ " + repeat("(", 90) + "7" + repeat(")", 90) + " }}").render(json::object()), "7");
  EXPECT_EQ(ChatTemplate("{{ 1" + repeat(" + 1", 1000) + " }}").render(json::object()), "1001");
}

TEST(ChatTemplateLimits, LoopsAndRangesAreBounded) {
  EXPECT_THAT(error_of("{% for i in range(1000000000000) %}{% endfor %}"), HasSubstr("max_range"));
  EXPECT_THAT(error_of("{% for i in range(-9223372036854775807, 9223372036854775807) %}{% endfor %}"),
              HasSubstr("max_range"));
  EXPECT_EQ(ChatTemplate("{{ range(100000) | length }}").render(json::object()), "100000");  // jinja2's MAX_RANGE
  // 10^10 iterations with the default limits: stopped by the iteration limit (10^6), or by the 10 s time budget
  // on a slow machine (a sanitizer build), whichever comes first; either is a clear error, never a hang.
  const auto t0 = std::chrono::steady_clock::now();
  const std::string nested = error_of("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
  EXPECT_TRUE(nested.find("max_loop_iterations") != std::string::npos ||
              nested.find("max_seconds") != std::string::npos)
      << nested;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  ChatTemplateLimits small;
  small.max_loop_iterations = 10;
  EXPECT_THAT(error_of("{% for i in range(11) %}{% endfor %}", small), HasSubstr("more than 10 loop iterations"));
  EXPECT_EQ(qs::test::error_of([&] { ChatTemplate("{% for i in range(10) %}{% endfor %}", small).render(json::object()); }),
            "(no error)");
  // The time budget: quadratic string building inside the iteration limit.
  ChatTemplateLimits quick;
  quick.max_seconds = 0.2;
  EXPECT_THAT(error_of("{% set ns = namespace(s='') %}{% for i in range(100000) %}{% for j in range(9) %}"
                       "{% set ns.s = ns.s ~ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' %}{% endfor %}{% endfor %}",
                       quick),
              HasSubstr("max_seconds"));
}

TEST(ChatTemplateLimits, SizesAreBounded) {
  // String doubling: 2^40 bytes if unbounded.
  EXPECT_THAT(error_of("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}{{ ns.s | length }}"),
              HasSubstr("max_output_bytes"));
  EXPECT_THAT(error_of("{% set ns = namespace(l=[1, 2]) %}{% for i in range(60) %}{% set ns.l = ns.l + ns.l %}"
                       "{% endfor %}"),
              HasSubstr("max_output_bytes"));
  ChatTemplateLimits lim;
  lim.max_output_bytes = 1000;
  EXPECT_THAT(error_of("{% for i in range(100) %}0123456789ABCDEF{% endfor %}", lim), HasSubstr("rendered text"));
  EXPECT_THAT(error_of("{{ range(100) | join('--------------------') }}", lim), HasSubstr("join"));
  EXPECT_THAT(error_of("{{ (range(40) | join('')) | replace('1', '" + repeat("z", 200) + "') }}", lim),
              HasSubstr("replace"));
  EXPECT_THAT(error_of("{{ [1] | tojson(indent=100000000) }}"), HasSubstr("indent"));
  ChatTemplateLimits src;
  src.max_source_bytes = 100;
  EXPECT_THAT(error_of(repeat("x", 101), src), HasSubstr("max_source_bytes"));
  // Value nesting built by a loop (each level is one {% set %}), and a deeply nested context.
  EXPECT_THAT(error_of("{% set ns = namespace(v=1) %}{% for i in range(100000) %}{% set ns.v = [ns.v] %}{% endfor %}"
                       "{{ ns.v }}"),
              HasSubstr("max_value_depth"));
  json deep = 1;
  for (int i = 0; i < 1000; ++i) deep = json::array({deep});
  EXPECT_THAT(error_of("{{ x }}", {}, json{{"x", deep}}), HasSubstr("max_value_depth"));
}

TEST(ChatTemplateLimits, ArithmeticAndLiteralsNeverOverflow) {
  EXPECT_THAT(error_of("{{ 9223372036854775807 + 1 }}"), HasSubstr("integer overflow"));
  EXPECT_THAT(error_of("{{ 3037000500 * 3037000500 }}"), HasSubstr("integer overflow"));
  EXPECT_THAT(error_of("{{ -9223372036854775807 - 2 }}"), HasSubstr("integer overflow"));
  EXPECT_THAT(error_of("{{ 99999999999999999999999 }}"), HasSubstr("does not fit 64 bits"));
  EXPECT_THAT(error_of("{{ 'abc' | int }}"), HasSubstr("(no error)"));  // Jinja: 0
  EXPECT_EQ(ChatTemplate("{{ ' 42 ' | int + 1 }}").render(json::object()), "43");
  EXPECT_THAT(error_of("{{ [1] | int }}"), HasSubstr("(no error)"));
  // Slices with huge steps stop at the end instead of overflowing the index.
  EXPECT_EQ(ChatTemplate("{{ 'abcdef'[1::9223372036854775807] }}").render(json::object()), "b");
  EXPECT_EQ(ChatTemplate("{{ 'abcdef'[-2::-9223372036854775807] }}").render(json::object()), "e");
  EXPECT_EQ(ChatTemplate("{{ [1, 2, 3][-9223372036854775807:9223372036854775807:2] | length }}").render(json::object()),
            "2");
}

TEST(ChatTemplateLimits, RealTemplatesRenderWithinTheDefaults) {
  QS_REQUIRE_DATA("models/qs-llama-tiny/chat_template.jinja");
  std::ifstream f(qs::test::data_path("models/qs-llama-tiny/chat_template.jinja"));
  const std::string src((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  json msgs = json::array();
  for (int i = 0; i < 200; ++i) msgs.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", repeat("w ", 500)}});
  const std::string out = ChatTemplate(src).render(json{{"messages", msgs}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
                                                       {"add_generation_prompt", true}});
  EXPECT_GT(out.size(), 200u * 1000u);
}

}  // namespace
}  // namespace qs::tokenizer
