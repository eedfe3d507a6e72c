// Values of the chat-template renderer (chat_template.cc): nlohmann::ordered_json stands for a Jinja value, a
// "discarded" json for Undefined. Truthiness, str()/repr() as Python prints them, operators, subscripts and
// slices, and the supported filters, tests, methods and global functions. Internal to the tokenizer area.
#pragma once

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer/chat_template.h"

namespace qs::tokenizer::jinja {

// Ordered, so that `tools | tojson` keeps the caller's key order as Python would.
using json = nlohmann::ordered_json;

inline json undefined() { return json(json::value_t::discarded); }
inline bool is_undefined(const json& v) { return v.is_discarded(); }

// The limits of the render running on this thread (ChatTemplate::render installs one with RenderScope); the
// value helpers below check sizes against it. Without an active render the default limits apply.
class RenderBudget {
 public:
  explicit RenderBudget(const ChatTemplateLimits& l);
  const ChatTemplateLimits& limits() const { return limits_; }
  void check_size(size_t bytes, const char* what) const;  // a string / output of `bytes` bytes
  void check_elements(size_t n, const char* what) const;  // a list or mapping of n elements
  void check_depth(const json& v, const char* what) const;  // nesting of lists/dicts
  void loop_iteration(int line);                           // counts iterations, checks the time budget
 private:
  ChatTemplateLimits limits_;
  long long iterations_ = 0;
  std::chrono::steady_clock::time_point deadline_;
};
RenderBudget& budget();  // the active one
struct RenderScope {     // installs `b` as this thread's active budget for its lifetime
  explicit RenderScope(RenderBudget& b);
  ~RenderScope();
  RenderBudget* prev;
};

bool truthy(const json& v);
const std::string& need_string(const json& v, const std::string& what);  // qs::Error unless v is a string
std::string to_str(const json& v);  // Jinja's {{ v }}
std::string repr(const json& v);    // Python repr (lists, quoted strings)

// Filters (`v | name(args)`), tests (`v is name`), methods (`v.name(args)`), global functions (`name(args)`).
bool is_known_filter(const std::string& name);
bool is_known_test(const std::string& name);
bool is_known_function(const std::string& name);
json apply_filter(const std::string& name, const json& v, const std::vector<json>& args);
bool apply_test(const std::string& name, const json& v);
json call_method(const json& obj, const std::string& name, const std::vector<json>& args);
json call_function(const std::string& name, const std::vector<json>& args, const std::map<std::string, json>& kw);

json subscript(const json& v, const json& key);                      // v[key]; Undefined when absent
json slice(const json& v, const json& lo, const json& hi, const json& step);  // v[lo:hi:step]; null = omitted
bool equal(const json& a, const json& b);
int compare(const json& a, const json& b);                            // numbers or strings
bool contains(const json& haystack, const json& needle);              // `needle in haystack`
json arith(char op, const json& a, const json& b);                    // + - * / % and 'f' (//)

}  // namespace qs::tokenizer::jinja
