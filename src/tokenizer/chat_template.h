// Chat templates: a small Jinja2 renderer for the chat_template.jinja / tokenizer_config.json chat_template of
// HF models, with the environment transformers uses (trim_blocks, lstrip_blocks, loop controls). Supported:
// {{ }}, {% if/elif/else %}, {% for x in xs %} (with loop.index/index0/first/last/length, tuple unpacking, else,
// break/continue), {% set x = ... %} and {% set ns.attr = ... %} with namespace(), {# #} comments, `-` whitespace
// control, literals (strings, numbers, lists, dicts), + - * / // % ~, comparisons, and/or/not, in / not in,
// `is` tests (defined, none, string, ...), a ? b : c as `a if c else b`, subscripts and slices, the common
// filters (trim, length, upper, lower, tojson, join, default, ...), Python string/dict methods (strip, startswith,
// items, get, ...) and the functions raise_exception, range, namespace, strftime_now. Anything else (macros,
// include, call blocks, ...) is rejected with a qs::Error naming it, at parse time where possible.
// Templates come with downloaded checkpoints: they are untrusted code. ChatTemplateLimits bounds what one can cost
// (nesting, loop iterations, value and output sizes, time); each limit gives a qs::Error naming it (SECURITY.md).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace qs::tokenizer {

struct ChatMessage {
  std::string role;
  std::string content;
};

// Resource limits of a chat template (jinja2's sandbox is the reference: MAX_RANGE = 100000; Python's recursion
// limit of 1000 frames bounds nesting there). Real templates stay far below each (a few KB, nesting < 10,
// loops over the messages).
struct ChatTemplateLimits {
  size_t max_source_bytes = size_t(1) << 20;   // template text
  int max_nesting = 100;                       // nested blocks, brackets and unary operators, at parse time
  int max_tag_tokens = 4096;                   // tokens in one {{ }} / {% %} (bounds evaluation depth)
  int max_value_depth = 100;                   // nesting of lists/dicts in the context or built by {% set %}
  long long max_range = 100000;                // elements of one range() (jinja2 sandbox MAX_RANGE)
  long long max_loop_iterations = 1000000;     // loop iterations over one render, all loops together
  size_t max_output_bytes = size_t(64) << 20;  // the rendered text, and any one string or list built on the way
  double max_seconds = 10.0;                   // wall time of one render
};

struct TemplateNode;  // internal

class ChatTemplate {
 public:
  // Parses the template; throws qs::Error (with the line number) on a syntax error or an unsupported construct.
  explicit ChatTemplate(const std::string& source, const ChatTemplateLimits& limits = {});
  // Renders with the variables of `context` (a JSON object: messages, bos_token, add_generation_prompt, tools,
  // ...). Throws qs::Error on a runtime error, including the template's own raise_exception("...").
  // Pass an ordered_json (e.g. a request parsed with nlohmann::ordered_json::parse) to keep the key order of
  // objects that the template prints with tojson, as transformers does; nlohmann::json sorts keys.
  std::string render(const nlohmann::ordered_json& context) const;
  std::string render(const nlohmann::json& context) const;

 private:
  std::shared_ptr<const TemplateNode> root_;
  ChatTemplateLimits limits_;
};

// Renders the tokenizer's chat template for `messages` with bos_token / eos_token of the tokenizer and
// add_generation_prompt. Throws qs::Error when the tokenizer has no chat template.
std::string apply_chat_template(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt = true);

}  // namespace qs::tokenizer
