// Chat-template values: operators, filters, tests, methods and functions (see template_values.h).
#include "tokenizer/template_values.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <ctime>

#include "core/error.h"

namespace qs::tokenizer::jinja {

// ------------------------------------------------------------------ render limits

RenderBudget::RenderBudget(const ChatTemplateLimits& l)
    : limits_(l),
      deadline_(std::chrono::steady_clock::now() +
                std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                    std::chrono::duration<double>(std::min(l.max_seconds, 1e6)))) {}

void RenderBudget::check_size(size_t bytes, const char* what) const {
  QS_CHECK(bytes <= limits_.max_output_bytes)
      << "chat template: " << what << " would be " << bytes << " bytes, over the limit of " << limits_.max_output_bytes
      << " bytes (ChatTemplateLimits::max_output_bytes)";
}

void RenderBudget::check_elements(size_t n, const char* what) const {
  QS_CHECK(n <= limits_.max_output_bytes / 16)
      << "chat template: " << what << " would have " << n << " elements, over the limit of "
      << limits_.max_output_bytes / 16 << " (ChatTemplateLimits::max_output_bytes / 16)";
}

namespace {
// Approximate memory of a value (string bytes + 16 per element), walking at most until `cap` is passed; also
// fails when the nesting exceeds max_depth (iteratively, so a deep value cannot overflow the stack here).
size_t weight(const json& v, size_t cap, int max_depth, const char* what) {
  size_t w = 0;
  std::vector<std::pair<const json*, int>> stack = {{&v, 0}};
  while (!stack.empty() && w <= cap) {
    auto [x, d] = stack.back();
    stack.pop_back();
    w += 16;
    if (x->is_string()) w += x->get_ref<const std::string&>().size();
    if (x->is_array() || x->is_object()) {
      QS_CHECK(d < max_depth) << "chat template: " << what << " nests lists/dicts deeper than "
                              << max_depth << " levels (ChatTemplateLimits::max_value_depth)";
      for (const json& e : *x) stack.emplace_back(&e, d + 1);
    }
  }
  return w;
}
}  // namespace

void RenderBudget::check_depth(const json& v, const char* what) const {
  check_size(weight(v, limits_.max_output_bytes, limits_.max_value_depth, what), what);
}

void RenderBudget::loop_iteration(int line) {
  QS_CHECK(++iterations_ <= limits_.max_loop_iterations)
      << "chat template line " << line << ": more than " << limits_.max_loop_iterations
      << " loop iterations in one render (ChatTemplateLimits::max_loop_iterations)";
  QS_CHECK(std::chrono::steady_clock::now() <= deadline_)
      << "chat template line " << line << ": rendering took longer than " << limits_.max_seconds
      << " s (ChatTemplateLimits::max_seconds)";
}

namespace {
thread_local RenderBudget* g_budget = nullptr;
}  // namespace

RenderBudget& budget() {
  if (g_budget) return *g_budget;
  thread_local RenderBudget fallback{ChatTemplateLimits{}};
  return fallback;
}

RenderScope::RenderScope(RenderBudget& b) : prev(g_budget) { g_budget = &b; }
RenderScope::~RenderScope() { g_budget = prev; }

// ------------------------------------------------------------------ values

bool truthy(const json& v) {
  switch (v.type()) {
    case json::value_t::boolean: return v.get<bool>();
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return v.get<long long>() != 0;
    case json::value_t::number_float: return v.get<double>() != 0.0;
    case json::value_t::string: return !v.get_ref<const std::string&>().empty();
    case json::value_t::array:
    case json::value_t::object: return !v.empty();
    default: return false;  // null, undefined
  }
}

std::string number_str(const json& v) {
  if (!v.is_number_float()) return std::to_string(v.get<long long>());
  const double d = v.get<double>();
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".eninf") == std::string::npos) s += ".0";  // Python prints 1.0, not 1
  return s;
}

// Python's json.dumps (what transformers' tojson calls): ", " / ": " separators, or "," and newlines with indent.
void dump_py(const json& v, int indent, int depth, std::string& out) {
  auto newline = [&](int d) {
    out += '\n';
    out.append(size_t(indent * d), ' ');
  };
  if (v.is_object() || v.is_array()) {
    const bool obj = v.is_object();
    out += obj ? '{' : '[';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!first) out += indent >= 0 ? "," : ", ";
      first = false;
      if (indent >= 0) newline(depth + 1);
      if (obj) {
        out += json(it.key()).dump(-1, ' ', false, json::error_handler_t::replace);
        out += ": ";
      }
      dump_py(*it, indent, depth + 1, out);
    }
    if (indent >= 0 && !v.empty()) newline(depth);
    out += obj ? '}' : ']';
  } else if (is_undefined(v)) {
    out += "null";
  } else if (v.is_number_float()) {
    out += number_str(v);
  } else {
    out += v.dump(-1, ' ', false, json::error_handler_t::replace);
  }
}

std::string repr(const json& v);

// Jinja's str(): strings as they are, Python spellings for the rest.
std::string to_str(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (is_undefined(v)) return "";
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_number()) return number_str(v);
  return repr(v);
}

std::string repr(const json& v) {
  if (v.is_string()) {
    std::string s = "'";
    for (char c : v.get<std::string>()) {
      if (c == '\'' || c == '\\') s += '\\';
      if (c == '\n') {
        s += "\\n";
        continue;
      }
      s += c;
    }
    return s + "'";
  }
  if (v.is_array()) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + repr(v[i]);
    return s + "]";
  }
  if (v.is_object()) {
    std::string s = "{";
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it, first = false)
      s += (first ? "" : ", ") + repr(json(it.key())) + ": " + repr(*it);
    return s + "}";
  }
  return to_str(v);
}

std::string strip(const std::string& s, bool left, bool right, const std::string& chars = " \t\n\r\f\v") {
  size_t b = 0, e = s.size();
  if (left)
    while (b < e && chars.find(s[b]) != std::string::npos) ++b;
  if (right)
    while (e > b && chars.find(s[e - 1]) != std::string::npos) --e;
  return s.substr(b, e - b);
}

std::string case_map(std::string s, int mode) {  // 0 upper, 1 lower, 2 capitalize, 3 title (ASCII letters)
  bool start = true;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (mode == 0) s[i] = char(std::toupper(uint8_t(c)));
    else if (mode == 1) s[i] = char(std::tolower(uint8_t(c)));
    else if (mode == 2) s[i] = char(i == 0 ? std::toupper(uint8_t(c)) : std::tolower(uint8_t(c)));
    else s[i] = char(start ? std::toupper(uint8_t(c)) : std::tolower(uint8_t(c)));
    start = !std::isalnum(uint8_t(c));
  }
  return s;
}

std::string replace_all(const std::string& s, const std::string& a, const std::string& b) {
  if (a.empty()) return s;
  std::string r;
  size_t last = 0;
  for (size_t at = s.find(a); at != std::string::npos; at = s.find(a, last)) {
    r.append(s, last, at - last);
    r += b;
    last = at + a.size();
    budget().check_size(r.size(), "the result of replace");
  }
  return r + s.substr(last);
}

const std::string& need_string(const json& v, const std::string& what) {
  QS_CHECK(v.is_string()) << "chat template: " << what << " needs a string, got " << repr(v);
  return v.get_ref<const std::string&>();
}

long long need_int(const json& v, const std::string& what) {
  QS_CHECK(v.is_number_integer()) << "chat template: " << what << " needs an integer, got " << repr(v);
  return v.get<long long>();
}

json length_of(const json& v) {
  if (v.is_string() || v.is_array() || v.is_object()) return json(v.is_string() ? v.get<std::string>().size() : v.size());
  QS_FAIL() << "chat template: length of " << repr(v);
  return json();
}

json items_of(const json& v) {
  QS_CHECK(v.is_object()) << "chat template: items() of a non-mapping " << repr(v);
  json out = json::array();
  for (auto it = v.begin(); it != v.end(); ++it) out.push_back(json::array({it.key(), *it}));
  return out;
}

json apply_filter(const std::string& name, const json& v, const std::vector<json>& a) {
  auto arg = [&](size_t i, json d) { return i < a.size() ? a[i] : d; };
  // Jinja's string filters convert their input with str() first (None -> "None", Undefined -> "").
  if (name == "trim") return strip(to_str(v), true, true);
  if (name == "length" || name == "count") return is_undefined(v) ? json(0) : length_of(v);
  if (name == "upper") return case_map(to_str(v), 0);
  if (name == "lower") return case_map(to_str(v), 1);
  if (name == "capitalize") return case_map(to_str(v), 2);
  if (name == "title") return case_map(to_str(v), 3);
  if (name == "string") return to_str(v);
  if (name == "safe") return v;
  if (name == "int") {
    if (v.is_number()) return json(v.is_number_float() ? (long long)std::clamp(v.get<double>(), -9e18, 9e18)
                                                      : v.get<long long>());
    long long r = 0;
    const std::string t = strip(to_str(v), true, true);
    const auto res = std::from_chars(t.data(), t.data() + t.size(), r);
    return res.ec == std::errc() && res.ptr == t.data() + t.size() ? json(r) : json(0);  // Jinja: default 0
  }
  if (name == "tojson") {
    std::string out;
    const json ind = arg(0, json());
    QS_CHECK(ind.is_null() || (ind.is_number_integer() && ind.get<long long>() >= 0 && ind.get<long long>() <= 64))
        << "chat template: tojson indent must be an integer from 0 to 64, got " << repr(ind);
    budget().check_depth(v, "the value given to tojson");
    dump_py(v, ind.is_number_integer() ? ind.get<int>() : -1, 0, out);
    budget().check_size(out.size(), "the result of tojson");
    return out;
  }
  if (name == "join") {
    QS_CHECK(v.is_array()) << "chat template: join of a non-list " << repr(v);
    const std::string sep = to_str(arg(0, ""));
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) {
      s += (i ? sep : "") + to_str(v[i]);
      budget().check_size(s.size(), "the result of join");
    }
    return s;
  }
  if (name == "default" || name == "d") {
    const bool boolean = truthy(arg(1, false));
    return (is_undefined(v) || (boolean && !truthy(v))) ? arg(0, "") : v;
  }
  if (name == "first" || name == "last") {
    QS_CHECK(v.is_array()) << "chat template: " << name << " of a non-list " << repr(v);
    if (v.empty()) return undefined();
    return name == "first" ? v.front() : v.back();
  }
  if (name == "list") return v.is_array() ? v : (v.is_object() ? items_of(v) : json::array({v}));
  if (name == "items") return items_of(v);
  if (name == "reverse") {
    if (v.is_string()) return std::string(v.get<std::string>().rbegin(), v.get<std::string>().rend());
    QS_CHECK(v.is_array()) << "chat template: reverse of " << repr(v);
    return json(std::vector<json>(v.rbegin(), v.rend()));
  }
  if (name == "replace") return replace_all(to_str(v), to_str(arg(0, "")), to_str(arg(1, "")));
  QS_FAIL() << "chat template: unsupported filter '" << name << "'";
  return json();
}

bool apply_test(const std::string& name, const json& v) {
  if (name == "defined") return !is_undefined(v);
  if (name == "undefined") return is_undefined(v);
  if (name == "none") return v.is_null();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_number_integer();
  if (name == "float") return v.is_number_float();
  if (name == "boolean") return v.is_boolean();
  if (name == "true") return v.is_boolean() && v.get<bool>();
  if (name == "false") return v.is_boolean() && !v.get<bool>();
  if (name == "mapping") return v.is_object();
  if (name == "sequence" || name == "iterable") return v.is_array() || v.is_string() || v.is_object();
  if (name == "even" || name == "odd") return (need_int(v, name) % 2 == 0) == (name == "even");
  QS_FAIL() << "chat template: unsupported test 'is " << name << "'";
  return false;
}

json call_method(const json& obj, const std::string& m, const std::vector<json>& a) {
  auto arg = [&](size_t i, json d) { return i < a.size() ? a[i] : d; };
  if (obj.is_string()) {
    const std::string& s = obj.get_ref<const std::string&>();
    if (m == "strip" || m == "lstrip" || m == "rstrip") {
      const json chars = arg(0, json());
      const std::string set = chars.is_string() ? chars.get<std::string>() : " \t\n\r\f\v";
      return strip(s, m != "rstrip", m != "lstrip", set);
    }
    if (m == "upper") return case_map(s, 0);
    if (m == "lower") return case_map(s, 1);
    if (m == "capitalize") return case_map(s, 2);
    if (m == "title") return case_map(s, 3);
    if (m == "startswith") return s.starts_with(need_string(arg(0, json()), m));
    if (m == "endswith") return s.ends_with(need_string(arg(0, json()), m));
    if (m == "replace") return replace_all(s, need_string(arg(0, json()), m), need_string(arg(1, json()), m));
    if (m == "split") {
      json out = json::array();
      const json sep = arg(0, json());
      if (sep.is_string()) {
        const std::string& d = sep.get_ref<const std::string&>();
        QS_CHECK(!d.empty()) << "chat template: split with an empty separator";
        size_t last = 0;
        for (size_t at = s.find(d); at != std::string::npos; at = s.find(d, last)) {
          out.push_back(s.substr(last, at - last));
          last = at + d.size();
        }
        out.push_back(s.substr(last));
      } else {  // split on runs of whitespace
        size_t i = 0;
        while (true) {
          while (i < s.size() && std::isspace(uint8_t(s[i]))) ++i;
          if (i == s.size()) break;
          size_t j = i;
          while (j < s.size() && !std::isspace(uint8_t(s[j]))) ++j;
          out.push_back(s.substr(i, j - i));
          i = j;
        }
      }
      return out;
    }
  }
  if (obj.is_object()) {
    if (m == "items") return items_of(obj);
    if (m == "keys" || m == "values") {
      json out = json::array();
      for (auto it = obj.begin(); it != obj.end(); ++it) out.push_back(m == "keys" ? json(it.key()) : *it);
      return out;
    }
    if (m == "get") {
      const std::string k = need_string(arg(0, json()), "get");
      return obj.contains(k) ? obj[k] : arg(1, json());
    }
  }
  QS_FAIL() << "chat template: unsupported method '" << m << "' on " << repr(obj);
  return json();
}

json call_function(const std::string& f, const std::vector<json>& a, const std::map<std::string, json>& kw) {
  if (f == "raise_exception") QS_FAIL() << "chat template error: " << (a.empty() ? "" : to_str(a[0]));
  if (f == "range") {
    QS_CHECK(!a.empty() && a.size() <= 3) << "chat template: range takes 1 to 3 arguments";
    long long lo = 0, hi, step = 1;
    if (a.size() == 1) hi = need_int(a[0], "range");
    else lo = need_int(a[0], "range"), hi = need_int(a[1], "range");
    if (a.size() == 3) step = need_int(a[2], "range");
    QS_CHECK(step != 0) << "chat template: range step is 0";
    // Element count without overflow: ceil((hi - lo) / step) in 128-bit arithmetic.
    const __int128 span = step > 0 ? __int128(hi) - lo : __int128(lo) - hi;
    const __int128 mag = step > 0 ? __int128(step) : -__int128(step);
    const __int128 count = span <= 0 ? 0 : (span + mag - 1) / mag;
    const long long max_range = budget().limits().max_range;
    QS_CHECK(count <= max_range) << "chat template: range() of " << (long long)std::min<__int128>(count, LLONG_MAX)
                                 << " elements is over the limit of " << max_range
                                 << " (ChatTemplateLimits::max_range, as jinja2's sandbox)";
    json out = json::array();
    for (long long k = 0; k < (long long)count; ++k) out.push_back(lo + k * step);
    return out;
  }
  if (f == "namespace") {
    json ns = json::object();
    for (const auto& [k, v] : kw) ns[k] = v;
    return ns;
  }
  if (f == "strftime_now") {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[128];
    const size_t n = std::strftime(buf, sizeof buf, a.empty() ? "%Y-%m-%d" : to_str(a[0]).c_str(), &tm);
    return std::string(buf, n);
  }
  QS_FAIL() << "chat template: unknown function '" << f << "'";
  return json();
}

json subscript(const json& v, const json& key) {
  if (v.is_object() && key.is_string()) {
    auto it = v.find(key.get<std::string>());
    return it == v.end() ? undefined() : *it;
  }
  if ((v.is_array() || v.is_string()) && key.is_number_integer()) {
    long long i = key.get<long long>();
    const long long n = v.is_array() ? (long long)v.size() : (long long)v.get<std::string>().size();
    if (i < 0) i += n;
    if (i < 0 || i >= n) return undefined();
    return v.is_array() ? v[size_t(i)] : json(std::string(1, v.get<std::string>()[size_t(i)]));
  }
  if (is_undefined(v)) QS_FAIL() << "chat template: subscript " << repr(key) << " of an undefined value";
  return undefined();
}

json slice(const json& v, const json& lo_v, const json& hi_v, const json& step_v) {
  QS_CHECK(v.is_array() || v.is_string()) << "chat template: slice of " << repr(v);
  const long long n = v.is_array() ? (long long)v.size() : (long long)v.get<std::string>().size();
  const long long step = step_v.is_null() ? 1 : need_int(step_v, "slice step");
  QS_CHECK(step != 0) << "chat template: slice step cannot be zero";
  // Python's rules: negative indices count from the end; bounds clamp to [0, n] (or [-1, n-1] going backwards).
  auto bound = [&](const json& x, long long dflt) {
    if (x.is_null()) return dflt;
    long long i = need_int(x, "slice");
    if (i < 0) i += n;
    return step > 0 ? std::clamp(i, 0LL, n) : std::clamp(i, -1LL, n - 1);
  };
  const long long lo = bound(lo_v, step > 0 ? 0 : n - 1), hi = bound(hi_v, step > 0 ? n : -1);
  json out = v.is_array() ? json::array() : json("");
  for (long long i = lo; step > 0 ? i < hi : i > hi;) {
    if (v.is_array())
      out.push_back(v[size_t(i)]);
    else
      out.get_ref<std::string&>() += v.get_ref<const std::string&>()[size_t(i)];
    if (__builtin_add_overflow(i, step, &i)) break;  // a huge step: past either end anyway
  }
  return out;
}

bool equal(const json& a, const json& b) {
  if (is_undefined(a) || is_undefined(b)) return is_undefined(a) && is_undefined(b);
  return a == b;
}

int compare(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) {
    const double x = a.get<double>(), y = b.get<double>();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.get<std::string>().compare(b.get<std::string>());
  QS_FAIL() << "chat template: cannot compare " << repr(a) << " and " << repr(b);
  return 0;
}

bool contains(const json& hay, const json& needle) {
  if (hay.is_string()) return hay.get<std::string>().find(need_string(needle, "in")) != std::string::npos;
  if (hay.is_array()) {
    for (const json& e : hay)
      if (equal(e, needle)) return true;
    return false;
  }
  if (hay.is_object()) return needle.is_string() && hay.contains(needle.get<std::string>());
  QS_FAIL() << "chat template: 'in' needs a string, list or mapping, got " << repr(hay);
  return false;
}

json arith(char op, const json& a, const json& b) {
  if (op == '+') {
    if (a.is_string() && b.is_string()) {
      budget().check_size(a.get_ref<const std::string&>().size() + b.get_ref<const std::string&>().size(),
                          "a string built with '+'");
      return a.get<std::string>() + b.get<std::string>();
    }
    if (a.is_array() && b.is_array()) {
      const size_t cap = budget().limits().max_output_bytes;
      const int depth = budget().limits().max_value_depth;
      budget().check_size(weight(a, cap, depth, "a list") + weight(b, cap, depth, "a list"), "a list built with '+'");
      json r = a;
      r.insert(r.end(), b.begin(), b.end());
      return r;
    }
  }
  QS_CHECK(a.is_number() && b.is_number()) << "chat template: cannot apply '" << op << "' to " << repr(a) << " and "
                                          << repr(b);
  const bool ints = a.is_number_integer() && b.is_number_integer();
  if (ints && (op == '+' || op == '-' || op == '*')) {
    const long long x = a.get<long long>(), y = b.get<long long>();
    long long r = 0;
    const bool overflow = op == '+'   ? __builtin_add_overflow(x, y, &r)
                          : op == '-' ? __builtin_sub_overflow(x, y, &r)
                                      : __builtin_mul_overflow(x, y, &r);
    QS_CHECK(!overflow) << "chat template: integer overflow in " << x << " " << op << " " << y;
    return json(r);
  }
  switch (op) {
    case '+': return json(a.get<double>() + b.get<double>());
    case '-': return json(a.get<double>() - b.get<double>());
    case '*': return json(a.get<double>() * b.get<double>());
    case '/':
      QS_CHECK(b.get<double>() != 0) << "chat template: division by zero";
      return json(a.get<double>() / b.get<double>());
    case 'f':  // floor division
    case '%': {
      QS_CHECK(b.get<double>() != 0) << "chat template: division by zero";
      if (ints) {
        const long long x = a.get<long long>(), y = b.get<long long>();
        QS_CHECK(!(x == LLONG_MIN && y == -1)) << "chat template: integer overflow in " << x << " // " << y;
        long long q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;  // Python floors
        return op == 'f' ? json(q) : json(r);
      }
      const double x = a.get<double>(), y = b.get<double>(), q = std::floor(x / y);
      return op == 'f' ? json(q) : json(x - q * y);
    }
  }
  return json();
}


namespace {
const char* const kFilters[] = {"trim",  "length", "count", "upper", "lower",   "capitalize", "title",
                                "string", "safe",  "int",   "tojson", "join",   "default",    "d",
                                "first", "last",   "list",  "items", "reverse", "replace"};
const char* const kTests[] = {"defined", "undefined", "none",    "string",   "number",   "integer", "float", "boolean",
                              "true",    "false",     "mapping", "sequence", "iterable", "even",    "odd"};
const char* const kFunctions[] = {"raise_exception", "range", "namespace", "strftime_now"};
template <size_t N>
bool in_list(const char* const (&list)[N], const std::string& name) {
  return std::find(std::begin(list), std::end(list), name) != std::end(list);
}
}  // namespace

bool is_known_filter(const std::string& name) { return in_list(kFilters, name); }
bool is_known_test(const std::string& name) { return in_list(kTests, name); }
bool is_known_function(const std::string& name) { return in_list(kFunctions, name); }

}  // namespace qs::tokenizer::jinja
