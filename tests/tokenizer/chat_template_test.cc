// Chat templates: the qs-llama-tiny template renders a conversation to the exact string worked out by hand
// from chat_template.jinja; the Jinja features other models' templates use (Llama-2's system-prompt handling
// with slices, set, raise_exception and %, namespaces, loop variables, filters, whitespace control) render as
// Jinja2 would (every expected string here was checked against Jinja2 3.1 with transformers' environment:
// trim_blocks, lstrip_blocks, loopcontrols, its tojson); unsupported constructs are rejected with a message naming them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/test_util.h"
#include "core/error.h"
#include "tokenizer/chat_template.h"

namespace qs::tokenizer {
namespace {
using ::testing::HasSubstr;
using json = nlohmann::json;

std::string render(const std::string& tmpl, const json& ctx = json::object()) { return ChatTemplate(tmpl).render(ctx); }

std::string error_of(const std::string& tmpl, const json& ctx = json::object()) {
  try {
    render(tmpl, ctx);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ChatTemplate, TinyModelConversationExactString) {
  QS_REQUIRE_DATA("models/qs-llama-tiny/chat_template.jinja");
  const Tokenizer tok = Tokenizer::from_dir(test::data_path("models/qs-llama-tiny"));
  const std::vector<ChatMessage> msgs = {{"system", "You are terse."},
                                         {"user", "  What is 2+2?\n"},
                                         {"assistant", "4"}};
  // From the template by hand: bos_token, then per message
  //   '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + (content | trim) + '<|eot_id|>'
  // (the filter binds tighter than +, so only the content is trimmed), then the generation prompt.
  const std::string want =
      "<|begin_of_text|>"
      "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>";
  EXPECT_EQ(apply_chat_template(tok, msgs, /*add_generation_prompt=*/false), want);
  EXPECT_EQ(apply_chat_template(tok, msgs, true), want + "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // The rendered prompt tokenizes with the special tokens whole (and no second BOS when encoded without specials).
  const std::vector<int> ids = tok.encode(apply_chat_template(tok, {{"user", "hi"}}, true), false);
  ASSERT_GE(ids.size(), 8u);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 2);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 4), 1);  // one <|eot_id|>
  EXPECT_EQ(ids.back() == 3 || tok.decode({ids.back()}) == "\n\n", true);
}

TEST(ChatTemplate, NoTemplateIsAnError) {
  QS_REQUIRE_DATA("fixtures/llama2-tokenizer/tokenizer.json");
  const Tokenizer tok = Tokenizer::from_file(test::data_path("fixtures/llama2-tokenizer/tokenizer.json"));
  try {
    apply_chat_template(tok, {{"user", "hi"}});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no chat template"));
  }
}

// The Llama-2-chat template (as shipped in tokenizer_config.json of meta-llama/Llama-2-7b-chat-hf).
const char* kLlama2Chat =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif "
    "%}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    "loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if "
    "message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] "
    "== 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

TEST(ChatTemplate, Llama2ChatTemplate) {
  const json ctx = {{"bos_token", "<s>"},
                    {"eos_token", "</s>"},
                    {"messages",
                     {{{"role", "system"}, {"content", "Be brief."}},
                      {{"role", "user"}, {"content", " Hi "}},
                      {{"role", "assistant"}, {"content", "Hello."}},
                      {{"role", "user"}, {"content", "Bye"}}}}};
  EXPECT_EQ(render(kLlama2Chat, ctx),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n Hi [/INST] Hello. </s><s>[INST] Bye [/INST]");
  json bad = ctx;
  bad["messages"][2]["role"] = "user";
  EXPECT_THAT(error_of(kLlama2Chat, bad),
              HasSubstr("chat template error: Conversation roles must alternate user/assistant"));
}

TEST(ChatTemplate, WhitespaceControlTrimAndLstripBlocks) {
  // trim_blocks drops the newline after a block tag; lstrip_blocks drops the indentation before one.
  const std::string t = "A\n  {% if true %}\n    B\n  {% endif %}\nC {{- ' D ' -}} E\n{#- note -#}\nF";
  EXPECT_EQ(render(t), "A\n    B\nC D EF");
  EXPECT_EQ(render("x {%- if 1 %} y {% endif -%} z"), "x y z");
  EXPECT_EQ(render("{{ 'a' }}\n{{ 'b' }}"), "a\nb");  // no trimming after {{ }}
}

TEST(ChatTemplate, LoopsNamespacesAndExpressions) {
  const json ctx = {{"xs", {3, 1, 2}}, {"d", {{"k", "v"}}}, {"name", "  Ada  "}};
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index }}:{{ x }}{% if not loop.last %},{% endif %}{% endfor %}", ctx),
            "1:3,2:1,3:2");
  EXPECT_EQ(render("{% for x in xs %}{% if x == 1 %}{% continue %}{% endif %}{% if loop.index0 == 2 %}{% break "
                   "%}{% endif %}{{ x }}{% endfor %}|{% for x in [] %}no{% else %}empty{% endfor %}",
                   ctx),
            "3|empty");
  EXPECT_EQ(render("{% set ns = namespace(n=0, seen=false) %}{% for x in xs %}{% set ns.n = ns.n + x %}{% endfor "
                   "%}{{ ns.n }} {{ ns.seen }}",
                   ctx),
            "6 False");
  // {% set %} inside a loop stays inside it (Jinja scoping): the outer value is unchanged.
  EXPECT_EQ(render("{% set y = 1 %}{% for x in xs %}{% set y = x %}{% endfor %}{{ y }}", ctx), "1");
  // ... nor carries over to the next iteration.
  EXPECT_EQ(render("{% for x in xs %}{% if loop.first %}{% set y = 5 %}{% endif %}{{ y }},{% endfor %}", ctx), "5,,,");
  EXPECT_EQ(render("{% for k, v in d.items() %}{{ k }}={{ v }}{% endfor %}", ctx), "k=v");
  EXPECT_EQ(render("{{ name | trim | upper }}|{{ name.strip().lower() }}|{{ xs | length }}|{{ xs[-1] }}", ctx),
               "ADA|ada|3|2");
  EXPECT_EQ(render("{{ 7 // 2 }} {{ 7 % 3 }} {{ -7 // 2 }} {{ 1 + 2 * 3 }} {{ 'a' ~ 1 }} {{ 7 / 2 }}"),
            "3 1 -4 7 a1 3.5");
  EXPECT_EQ(render("{{ 'yes' if 'b' in 'abc' else 'no' }} {{ 4 not in xs }} {{ missing is defined }} "
                   "{{ missing | default('dflt') }} {{ none is none }}",
                   ctx),
            "yes True False dflt True");
  EXPECT_EQ(render("{{ d | tojson }} {{ [1, 'a', none, true] | tojson }} {{ xs[1:] }} {{ xs | join('-') }}", ctx),
            "{\"k\": \"v\"} [1, \"a\", null, true] [1, 2] 3-1-2");
  EXPECT_EQ(render("{{ d.get('k') }}{{ d.get('z', '!') }}{{ d.k }}{{ d['k'] }}{{ 'x'.startswith('x') }}", ctx),
            "v!vvTrue");
}

TEST(ChatTemplate, SlicesTojsonAndKeyOrder) {
  // Key order as given (z before a), as Python's json.dumps keeps it: the context is an ordered_json.
  const nlohmann::ordered_json ctx = nlohmann::ordered_json::parse(
      R"({"xs": [3, 1, 2], "s": "abcdef", "tools": [{"name": "f", "args": {"z": 1, "a": [1, 2]}}]})");
  const ChatTemplate slices("{{ xs[::-1] }} {{ xs[::2] }} {{ s[1:-1] }} {{ s[::-2] }} {{ xs[5:] }} {{ xs[-2:] }}");
  EXPECT_EQ(slices.render(ctx), "[2, 1, 3] [3, 2] bcde fdb [] [1, 2]");
  EXPECT_EQ(ChatTemplate("{{ tools[0] | tojson }}|{{ tools[0] | tojson(indent=2) }}").render(ctx),
            "{\"name\": \"f\", \"args\": {\"z\": 1, \"a\": [1, 2]}}|{\n  \"name\": \"f\",\n  \"args\": {\n    \"z\": "
            "1,\n    \"a\": [\n      1,\n      2\n    ]\n  }\n}");
  // Qwen3-style reverse scan: filters bind tighter than arithmetic.
  EXPECT_EQ(ChatTemplate("{% for m in xs[::-1] %}{% set i = (xs|length - 1) - loop.index0 %}{{ i }}{% endfor %}")
                .render(ctx),
            "210");
  EXPECT_EQ(render("{{ 'a\\tb' }}|{{ \"q'uote\" }}|{{ 'x' if none else 'y' }}|{{ [1,2] + [3] }}|{{ 2.5 * 2 }}|{{ 10 / 4 }}"),
            "a\tb|q'uote|y|[1, 2, 3]|5.0|2.5");
  EXPECT_THAT(error_of("{{ xs[::0] }}", {{"xs", {1}}}), HasSubstr("slice step cannot be zero"));
  // String filters apply str() first, as Jinja's do (a tool-call message's content may be None).
  EXPECT_EQ(render("{{ none | trim }}|{{ missing | trim }}|{{ missing | length }}|{{ 12 | upper }}|{{ none | "
                   "replace('o','0') }}"),
            "None||0|12|N0ne");
}

TEST(ChatTemplate, UnsupportedConstructsAreNamed) {
  EXPECT_THAT(error_of("{% macro f() %}x{% endmacro %}"), HasSubstr("unsupported statement '{% macro %}'"));
  EXPECT_THAT(error_of("{% include 'x' %}"), HasSubstr("unsupported statement '{% include %}'"));
  EXPECT_THAT(error_of("{{ x | wordcount }}"), HasSubstr("unsupported filter 'wordcount'"));
  EXPECT_THAT(error_of("{{ x is divisibleby 3 }}"), HasSubstr("unsupported test 'is divisibleby'"));
  EXPECT_THAT(error_of("{{ lookup(1) }}"), HasSubstr("unknown function 'lookup'"));
  EXPECT_THAT(error_of("{% if true %}x"), HasSubstr("missing {% endif %}"));
  EXPECT_THAT(error_of("a\n{{ 'x' "), HasSubstr("line 2: unclosed '{{'"));
  EXPECT_THAT(error_of("{{ 1 + }}"), HasSubstr("expected an expression"));
  EXPECT_THAT(error_of("{{ 'a' - 1 }}"), HasSubstr("cannot apply '-'"));
  EXPECT_THAT(error_of("{{ x.foo() }}", {{"x", "s"}}), HasSubstr("unsupported method 'foo'"));
}

}  // namespace
}  // namespace qs::tokenizer
