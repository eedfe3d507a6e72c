// The small Jinja2 renderer behind chat templates (see chat_template.h). Values are nlohmann::ordered_json (a
// "discarded" json stands for Jinja's Undefined); the template is split into text / {{ }} / {% %} segments with
// transformers' whitespace settings (trim_blocks, lstrip_blocks), then parsed by recursive descent into
// closures: an expression is a function Ctx -> value, a statement appends to the output.
#include "tokenizer/chat_template.h"

#include <algorithm>
#include <charconv>
#include <functional>
#include <map>

#include "core/error.h"
#include "tokenizer/template_values.h"

namespace qs::tokenizer {
namespace jinja {

struct Ctx {
  std::vector<json> scopes;  // each a json object; the first holds the render context
  bool brk = false, cont = false;
  json* find(const std::string& name) {
    for (size_t i = scopes.size(); i-- > 0;)
      if (auto it = scopes[i].find(name); it != scopes[i].end()) return &*it;
    return nullptr;
  }
};

using Expr = std::function<json(Ctx&)>;
using Stmt = std::function<void(Ctx&, std::string&)>;

// ------------------------------------------------------------------ expression lexer and parser

struct Tok {
  enum Kind { kName, kString, kInt, kFloat, kOp, kEnd } kind;
  std::string text;
};

std::vector<Tok> lex(const std::string& s, int line, const ChatTemplateLimits& lim) {
  std::vector<Tok> out;
  size_t i = 0;
  while (i < s.size()) {
    QS_CHECK(out.size() < size_t(lim.max_tag_tokens))
        << "chat template line " << line << ": more than " << lim.max_tag_tokens
        << " tokens in one tag (ChatTemplateLimits::max_tag_tokens)";
    const char c = s[i];
    if (std::isspace(uint8_t(c))) {
      ++i;
    } else if (std::isalpha(uint8_t(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(uint8_t(s[j])) || s[j] == '_')) ++j;
      out.push_back({Tok::kName, s.substr(i, j - i)});
      i = j;
    } else if (std::isdigit(uint8_t(c))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(uint8_t(s[j]))) ++j;
      bool is_float = j + 1 < s.size() && s[j] == '.' && std::isdigit(uint8_t(s[j + 1]));
      if (is_float)
        for (++j; j < s.size() && std::isdigit(uint8_t(s[j]));) ++j;
      out.push_back({is_float ? Tok::kFloat : Tok::kInt, s.substr(i, j - i)});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string v;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          v += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          v += s[j];
        }
      }
      QS_CHECK(j < s.size()) << "chat template line " << line << ": unterminated string";
      out.push_back({Tok::kString, v});
      i = j + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : two)
        if (s.compare(i, 2, t) == 0) op = t;
      QS_CHECK(std::string("+-*/%~<>=()[]{}.,:|!").find(c) != std::string::npos)
          << "chat template line " << line << ": unexpected character '" << c << "'";
      QS_CHECK(op != "!") << "chat template line " << line << ": unexpected '!'";
      out.push_back({Tok::kOp, op});
      i += op.size();
    }
  }
  out.push_back({Tok::kEnd, ""});
  return out;
}

// Counts nesting while parsing (blocks, brackets, unary operators) against ChatTemplateLimits::max_nesting, so a
// deeply nested template is an error instead of a stack overflow (here or when the closures run).
class NestingGuard {
 public:
  NestingGuard(int* depth, int max, int line) : depth_(depth) {
    QS_CHECK(++*depth_ <= max) << "chat template line " << line << ": nested more than " << max
                               << " levels deep (ChatTemplateLimits::max_nesting)";
  }
  ~NestingGuard() { --*depth_; }
  NestingGuard(const NestingGuard&) = delete;
  NestingGuard& operator=(const NestingGuard&) = delete;

 private:
  int* depth_;
};

class ExprParser {
 public:
  ExprParser(std::vector<Tok> toks, int line, int* depth, int max_depth)
      : t_(std::move(toks)), line_(line), depth_(depth), max_depth_(max_depth) {}

  bool at_end() const { return t_[p_].kind == Tok::kEnd; }
  bool peek_name(const char* n) const { return t_[p_].kind == Tok::kName && t_[p_].text == n; }
  bool peek_op(const char* o) const { return t_[p_].kind == Tok::kOp && t_[p_].text == o; }
  bool accept_name(const char* n) { return peek_name(n) ? (++p_, true) : false; }
  bool accept_op(const char* o) { return peek_op(o) ? (++p_, true) : false; }
  void expect_op(const char* o) { QS_CHECK(accept_op(o)) << where() << "expected '" << o << "'"; }
  std::string name() {
    QS_CHECK(t_[p_].kind == Tok::kName) << where() << "expected a name";
    return t_[p_++].text;
  }
  void expect_end() { QS_CHECK(at_end()) << where() << "unexpected '" << t_[p_].text << "'"; }
  std::string where() const {
    return "chat template line " + std::to_string(line_) + " (at '" + t_[p_].text + "'): ";
  }

  Expr expr() {  // a if cond else b
    NestingGuard g(depth_, max_depth_, line_);
    Expr a = or_expr();
    if (!accept_name("if")) return a;
    Expr cond = or_expr();
    Expr b = accept_name("else") ? expr() : Expr([](Ctx&) { return undefined(); });
    return [a, cond, b](Ctx& c) { return truthy(cond(c)) ? a(c) : b(c); };
  }

 private:
  Expr or_expr() {
    Expr a = and_expr();
    while (accept_name("or")) {
      Expr b = and_expr();
      a = [a, b](Ctx& c) { json x = a(c); return truthy(x) ? x : b(c); };
    }
    return a;
  }
  Expr and_expr() {
    Expr a = not_expr();
    while (accept_name("and")) {
      Expr b = not_expr();
      a = [a, b](Ctx& c) { json x = a(c); return truthy(x) ? b(c) : x; };
    }
    return a;
  }
  Expr not_expr() {
    if (accept_name("not")) {
      NestingGuard g(depth_, max_depth_, line_);
      Expr a = not_expr();
      return [a](Ctx& c) { return json(!truthy(a(c))); };
    }
    return compare_expr();
  }
  Expr compare_expr() {
    Expr a = concat_expr();
    while (true) {
      if (accept_name("is")) {
        const bool neg = accept_name("not");
        const std::string test = name();
        QS_CHECK(is_known_test(test)) << where() << "unsupported test 'is " << test << "'";
        a = [a, neg, test](Ctx& c) { return json(apply_test(test, a(c)) != neg); };
        continue;
      }
      bool neg_in = false;
      if (peek_name("not") && t_[p_ + 1].kind == Tok::kName && t_[p_ + 1].text == "in") p_ += 2, neg_in = true;
      if (neg_in || accept_name("in")) {
        Expr b = concat_expr();
        a = [a, b, neg_in](Ctx& c) { json x = a(c); return json(contains(b(c), x) != neg_in); };
        continue;
      }
      std::string op;
      for (const char* o : {"==", "!=", "<=", ">=", "<", ">"})
        if (accept_op(o)) {
          op = o;
          break;
        }
      if (op.empty()) return a;
      Expr b = concat_expr();
      a = [a, b, op](Ctx& c) {
        const json x = a(c), y = b(c);
        if (op == "==") return json(equal(x, y));
        if (op == "!=") return json(!equal(x, y));
        const int r = compare(x, y);
        return json(op == "<" ? r < 0 : op == ">" ? r > 0 : op == "<=" ? r <= 0 : r >= 0);
      };
    }
  }
  Expr concat_expr() {
    Expr a = add_expr();
    while (accept_op("~")) {
      Expr b = add_expr();
      a = [a, b](Ctx& c) { return json(to_str(a(c)) + to_str(b(c))); };
    }
    return a;
  }
  Expr add_expr() {
    Expr a = mul_expr();
    while (peek_op("+") || peek_op("-")) {
      const char op = t_[p_++].text[0];
      Expr b = mul_expr();
      a = [a, b, op](Ctx& c) { json x = a(c); return arith(op, x, b(c)); };
    }
    return a;
  }
  Expr mul_expr() {
    Expr a = unary_expr();
    while (peek_op("*") || peek_op("/") || peek_op("//") || peek_op("%")) {
      const std::string o = t_[p_++].text;
      const char op = o == "//" ? 'f' : o[0];
      Expr b = unary_expr();
      a = [a, b, op](Ctx& c) { json x = a(c); return arith(op, x, b(c)); };
    }
    return a;
  }
  Expr unary_expr() {
    if (accept_op("-")) {
      NestingGuard g(depth_, max_depth_, line_);
      Expr a = unary_expr();
      return [a](Ctx& c) { return arith('-', json(0), a(c)); };
    }
    if (accept_op("+")) {
      NestingGuard g(depth_, max_depth_, line_);
      return unary_expr();
    }
    return filter_expr(postfix_expr(primary()));
  }
  Expr filter_expr(Expr a) {
    while (accept_op("|")) {
      const std::string f = name();
      std::vector<Expr> args;
      if (peek_op("(")) args = positional_args(f);
      QS_CHECK(is_known_filter(f)) << where() << "unsupported filter '" << f << "'";
      a = [a, f, args](Ctx& c) {
        std::vector<json> v;
        for (const Expr& e : args) v.push_back(e(c));
        return apply_filter(f, a(c), v);
      };
    }
    return a;
  }
  // Parses "(a, b, k=v)": positional arguments, and keyword arguments into *kw.
  std::vector<Expr> call_args(std::vector<std::pair<std::string, Expr>>* kw) {
    expect_op("(");
    std::vector<Expr> args;
    while (!accept_op(")")) {
      if (!args.empty() || !kw->empty()) expect_op(",");
      if (t_[p_].kind == Tok::kName && t_[p_ + 1].kind == Tok::kOp && t_[p_ + 1].text == "=") {
        const std::string k = name();
        expect_op("=");
        kw->emplace_back(k, expr());
      } else {
        QS_CHECK(kw->empty()) << where() << "positional argument after a keyword argument";
        args.push_back(expr());
      }
    }
    return args;
  }
  // Filter and method arguments are positional; the keyword names the filters take are mapped to positions.
  std::vector<Expr> positional_args(const std::string& fn) {
    std::vector<std::pair<std::string, Expr>> kw;
    std::vector<Expr> args = call_args(&kw);
    static const std::map<std::string, std::vector<std::string>> names = {
        {"tojson", {"indent"}}, {"default", {"default_value", "boolean"}}, {"d", {"default_value", "boolean"}},
        {"join", {"d"}}, {"replace", {"old", "new"}}};
    for (auto& [k, e] : kw) {
      auto it = names.find(fn);
      size_t pos = 0;
      if (it != names.end()) pos = std::find(it->second.begin(), it->second.end(), k) - it->second.begin();
      QS_CHECK(it != names.end() && pos < it->second.size())
          << where() << "unsupported keyword argument '" << k << "' of " << fn;
      if (args.size() <= pos) args.resize(pos + 1, [](Ctx&) { return json(); });
      args[pos] = e;
    }
    return args;
  }
  Expr postfix_expr(Expr a) {
    while (true) {
      if (accept_op(".")) {
        const std::string attr = name();
        if (peek_op("(")) {
          std::vector<Expr> args = positional_args(attr);
          a = [a, attr, args](Ctx& c) {
            json obj = a(c);
            std::vector<json> v;
            for (const Expr& e : args) v.push_back(e(c));
            return call_method(obj, attr, v);
          };
        } else {
          a = [a, attr](Ctx& c) { return subscript(a(c), json(attr)); };
        }
      } else if (accept_op("[")) {
        Expr lo = peek_op(":") ? Expr([](Ctx&) { return json(); }) : expr();
        if (accept_op(":")) {
          const Expr none = [](Ctx&) { return json(); };
          Expr hi = peek_op("]") || peek_op(":") ? none : expr();
          Expr step = none;
          if (accept_op(":")) step = peek_op("]") ? none : expr();
          expect_op("]");
          a = [a, lo, hi, step](Ctx& c) { json v = a(c); return slice(v, lo(c), hi(c), step(c)); };
        } else {
          expect_op("]");
          a = [a, lo](Ctx& c) { json v = a(c); return subscript(v, lo(c)); };
        }
      } else {
        return a;
      }
    }
  }
  Expr primary() {
    const Tok t = t_[p_];
    if (t.kind == Tok::kString) {
      ++p_;
      std::string s = t.text;
      while (t_[p_].kind == Tok::kString) s += t_[p_++].text;  // adjacent literals concatenate
      return [s](Ctx&) { return json(s); };
    }
    if (t.kind == Tok::kInt) {
      ++p_;
      long long v = 0;
      const auto r = std::from_chars(t.text.data(), t.text.data() + t.text.size(), v);
      QS_CHECK(r.ec == std::errc() && r.ptr == t.text.data() + t.text.size())
          << where() << "integer literal " << t.text.substr(0, 40) << " does not fit 64 bits";
      return [v](Ctx&) { return json(v); };
    }
    if (t.kind == Tok::kFloat) {
      ++p_;
      double v = 0;
      const auto r = std::from_chars(t.text.data(), t.text.data() + t.text.size(), v);
      QS_CHECK(r.ec == std::errc()) << where() << "number literal " << t.text.substr(0, 40) << " is out of range";
      return [v](Ctx&) { return json(v); };
    }
    if (accept_op("(")) {
      Expr e = expr();
      expect_op(")");
      return e;
    }
    if (accept_op("[")) {
      std::vector<Expr> items;
      while (!accept_op("]")) {
        if (!items.empty()) expect_op(",");
        if (accept_op("]")) break;  // trailing comma
        items.push_back(expr());
      }
      return [items](Ctx& c) {
        json a = json::array();
        for (const Expr& e : items) a.push_back(e(c));
        budget().check_depth(a, "a list literal");
        return a;
      };
    }
    if (accept_op("{")) {
      std::vector<std::pair<Expr, Expr>> items;
      while (!accept_op("}")) {
        if (!items.empty()) expect_op(",");
        if (accept_op("}")) break;
        Expr k = expr();
        expect_op(":");
        items.emplace_back(k, expr());
      }
      return [items](Ctx& c) {
        json o = json::object();
        for (const auto& [k, v] : items) o[need_string(k(c), "dict key")] = v(c);
        budget().check_depth(o, "a dict literal");
        return o;
      };
    }
    QS_CHECK(t.kind == Tok::kName) << where() << "expected an expression";
    ++p_;
    const std::string& n = t.text;
    if (n == "true" || n == "True") return [](Ctx&) { return json(true); };
    if (n == "false" || n == "False") return [](Ctx&) { return json(false); };
    if (n == "none" || n == "None") return [](Ctx&) { return json(); };
    if (peek_op("(")) {
QS_CHECK(is_known_function(n)) << where() << "unknown function '" << n << "'";
      std::vector<std::pair<std::string, Expr>> kw;
      std::vector<Expr> args = call_args(&kw);
      return [n, args, kw](Ctx& c) {
        std::vector<json> v;
        for (const Expr& e : args) v.push_back(e(c));
        std::map<std::string, json> k;
        for (const auto& [key, e] : kw) k[key] = e(c);
        return call_function(n, v, k);
      };
    }
    return [n](Ctx& c) {
      const json* v = c.find(n);
      return v ? *v : undefined();
    };
  }

  std::vector<Tok> t_;
  size_t p_ = 0;
  int line_;
  int* depth_;
  int max_depth_;
};

// ------------------------------------------------------------------ template structure

struct Segment {
  enum Kind { kText, kExpr, kStmt } kind;
  std::string text;
  int line;
};

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Splits the source into text / {{ }} / {% %} (comments dropped), applying `-` whitespace control,
// trim_blocks (drop the newline after a block tag) and lstrip_blocks (drop the indentation before one).
std::vector<Segment> split_template(const std::string& src) {
  std::vector<Segment> out;
  size_t pos = 0;
  int line = 1;
  auto count_lines = [&](size_t from, size_t to) {
    for (size_t i = from; i < to; ++i) line += src[i] == '\n';
  };
  while (pos < src.size()) {
    size_t at = pos;
    while ((at = src.find('{', at)) != std::string::npos && at + 1 < src.size() && src[at + 1] != '{' &&
           src[at + 1] != '%' && src[at + 1] != '#')
      ++at;
    if (at == std::string::npos || at + 1 >= src.size()) {
      out.push_back({Segment::kText, src.substr(pos), line});
      break;
    }
    std::string text = src.substr(pos, at - pos);
    const char kind = src[at + 1];
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    const size_t end = src.find(close, at + 2);
    const int text_line = line;
    count_lines(pos, at);
    QS_CHECK(end != std::string::npos) << "chat template line " << line << ": unclosed '{" << kind << "'";
    size_t ib = at + 2, ie = end;
    const bool strip_before = ib < ie && src[ib] == '-';
    const bool keep_before = ib < ie && src[ib] == '+';
    if (strip_before || keep_before) ++ib;
    const bool strip_after = ie > ib && src[ie - 1] == '-';
    if (strip_after) --ie;
    if (strip_before) {
      while (!text.empty() && is_ws(text.back())) text.pop_back();
    } else if (kind != '{' && !keep_before) {
      const size_t nl = text.find_last_of('\n');
      const size_t tail = nl == std::string::npos ? 0 : nl + 1;
      const bool line_start = nl != std::string::npos || pos == 0 || src[pos - 1] == '\n';
      if (line_start && text.find_first_not_of(" \t", tail) == std::string::npos) text.resize(tail);
    }
    if (!text.empty()) out.push_back({Segment::kText, text, text_line});
    if (kind != '#') out.push_back({kind == '{' ? Segment::kExpr : Segment::kStmt, src.substr(ib, ie - ib), line});
    count_lines(at, end + 2);
    pos = end + 2;
    if (strip_after) {
      while (pos < src.size() && is_ws(src[pos])) line += src[pos++] == '\n';
    } else if (kind != '{') {
      if (src.compare(pos, 1, "\n") == 0) ++pos, ++line;
      else if (src.compare(pos, 2, "\r\n") == 0) pos += 2, ++line;
    }
  }
  return out;
}

class TemplateParser {
 public:
  TemplateParser(std::vector<Segment> segs, const ChatTemplateLimits& lim) : s_(std::move(segs)), lim_(lim) {}

  // Parses statements until one of `stops` ({% endfor %}...) or the end; returns them and which stop ended it.
  std::vector<Stmt> body(const std::vector<std::string>& stops, std::string* stop, ExprParser** stop_parser) {
    std::vector<Stmt> out;
    while (i_ < s_.size()) {
      const Segment& seg = s_[i_++];
      if (seg.kind == Segment::kText) {
        std::string text = seg.text;
        out.push_back([text](Ctx&, std::string& o) { o += text; });
        continue;
      }
      parsers_.push_back(
          std::make_unique<ExprParser>(lex(seg.text, seg.line, lim_), seg.line, &depth_, lim_.max_nesting));
      ExprParser& p = *parsers_.back();
      if (seg.kind == Segment::kExpr) {
        Expr e = p.expr();
        p.expect_end();
        out.push_back([e](Ctx& c, std::string& o) {
          const std::string v = to_str(e(c));
          budget().check_size(o.size() + v.size(), "the rendered text");
          o += v;
        });
        continue;
      }
      const std::string kw = p.name();
      if (std::find(stops.begin(), stops.end(), kw) != stops.end()) {
        *stop = kw;
        *stop_parser = &p;
        return out;
      }
      out.push_back(statement(kw, p, seg.line));
    }
    QS_CHECK(stops.empty()) << "chat template: missing {% " << stops.back() << " %} at the end";
    return out;
  }

 private:
  static void run(const std::vector<Stmt>& b, Ctx& c, std::string& o) {
    for (const Stmt& s : b) {
      s(c, o);
      budget().check_size(o.size(), "the rendered text");
      if (c.brk || c.cont) return;
    }
  }

  Stmt statement(const std::string& kw, ExprParser& p, int line) {
    NestingGuard g(&depth_, lim_.max_nesting, line);
    std::string stop;
    ExprParser* sp = nullptr;
    if (kw == "if") {
      std::vector<std::pair<Expr, std::vector<Stmt>>> branches;
      Expr cond = p.expr();
      p.expect_end();
      while (true) {
        std::vector<Stmt> b = body({"elif", "else", "endif"}, &stop, &sp);
        branches.emplace_back(cond, std::move(b));
        if (stop == "elif") {
          cond = sp->expr();
          sp->expect_end();
        } else if (stop == "else") {
          sp->expect_end();
          cond = [](Ctx&) { return json(true); };
        } else {
          sp->expect_end();
          break;
        }
      }
      return [branches](Ctx& c, std::string& o) {
        for (const auto& [cond, b] : branches)
          if (truthy(cond(c))) return run(b, c, o);
      };
    }
    if (kw == "for") {
      std::vector<std::string> vars = {p.name()};
      while (p.accept_op(",")) vars.push_back(p.name());
      QS_CHECK(p.accept_name("in")) << p.where() << "expected 'in'";
      Expr seq = p.expr();
      QS_CHECK(!p.peek_name("recursive")) << p.where() << "recursive loops are not supported";
      p.expect_end();
      std::vector<Stmt> b = body({"else", "endfor"}, &stop, &sp);
      sp->expect_end();
      std::vector<Stmt> empty;
      if (stop == "else") {
        empty = body({"endfor"}, &stop, &sp);
        sp->expect_end();
      }
      return [vars, seq, b, empty, line](Ctx& c, std::string& o) {
        json items = seq(c);
        if (items.is_object()) {
          json keys = json::array();
          for (auto it = items.begin(); it != items.end(); ++it) keys.push_back(it.key());
          items = std::move(keys);
        }
        if (is_undefined(items) || items.is_null()) items = json::array();
        QS_CHECK(items.is_array()) << "chat template line " << line << ": cannot loop over " << repr(items);
        if (items.empty()) return run(empty, c, o);
        const size_t n = items.size();
        for (size_t i = 0; i < n; ++i) {
          budget().loop_iteration(line);
          // Each iteration gets a fresh scope: a {% set %} inside the loop neither leaks out nor carries over
          // to the next iteration (Jinja2 semantics; namespace() is the way to carry values).
          c.scopes.push_back(json::object());
          json& scope = c.scopes.back();
          scope["loop"] = {{"index", i + 1}, {"index0", i}, {"revindex", n - i}, {"revindex0", n - i - 1},
                           {"first", i == 0}, {"last", i + 1 == n}, {"length", n},
                           {"previtem", i > 0 ? items[i - 1] : undefined()},
                           {"nextitem", i + 1 < n ? items[i + 1] : undefined()}};
          if (vars.size() == 1) {
            scope[vars[0]] = items[i];
          } else {
            QS_CHECK(items[i].is_array() && items[i].size() == vars.size())
                << "chat template line " << line << ": cannot unpack " << repr(items[i]) << " into "
                << vars.size() << " names";
            for (size_t k = 0; k < vars.size(); ++k) scope[vars[k]] = items[i][k];
          }
          run(b, c, o);
          c.scopes.pop_back();
          c.cont = false;
          if (c.brk) {
            c.brk = false;
            break;
          }
        }
      };
    }
    if (kw == "set") {
      const std::string target = p.name();
      std::string attr;
      if (p.accept_op(".")) attr = p.name();
      QS_CHECK(p.accept_op("=")) << p.where() << "only '{% set name = value %}' is supported";
      Expr value = p.expr();
      p.expect_end();
      return [target, attr, value, line](Ctx& c, std::string&) {
        json v = value(c);
        budget().check_depth(v, "a value set with {% set %}");
        if (attr.empty()) {
          c.scopes.back()[target] = std::move(v);
          return;
        }
        json* ns = c.find(target);
        QS_CHECK(ns && ns->is_object()) << "chat template line " << line << ": '" << target
                                        << "' is not a namespace";
        (*ns)[attr] = std::move(v);
      };
    }
    if (kw == "break" || kw == "continue") {
      p.expect_end();
      const bool brk = kw == "break";
      return [brk](Ctx& c, std::string&) { (brk ? c.brk : c.cont) = true; };
    }
    QS_FAIL() << "chat template line " << line << ": unsupported statement '{% " << kw << " %}'";
    return nullptr;
  }

  std::vector<Segment> s_;
  ChatTemplateLimits lim_;
  size_t i_ = 0;
  int depth_ = 0;
  std::vector<std::unique_ptr<ExprParser>> parsers_;
};

}  // namespace jinja

using jinja::json;

struct TemplateNode {
  std::vector<jinja::Stmt> body;
};

ChatTemplate::ChatTemplate(const std::string& source, const ChatTemplateLimits& limits) : limits_(limits) {
  QS_CHECK(source.size() <= limits.max_source_bytes)
      << "chat template of " << source.size() << " bytes is over the limit of " << limits.max_source_bytes
      << " bytes (ChatTemplateLimits::max_source_bytes)";
  jinja::TemplateParser parser(jinja::split_template(source), limits);
  auto node = std::make_shared<TemplateNode>();
  std::string stop;
  jinja::ExprParser* sp = nullptr;
  try {
    node->body = parser.body({}, &stop, &sp);
  } catch (const qs::Error&) {
    throw;
  } catch (const std::exception& e) {  // a library exception is still the template's fault: one error type
    QS_FAIL() << "chat template: " << e.what();
  }
  root_ = std::move(node);
}

std::string ChatTemplate::render(const nlohmann::json& context) const {
  return render(json::parse(context.dump()));  // keys of a nlohmann::json are already sorted
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  QS_CHECK(context.is_object()) << "chat template: the context must be a JSON object";
  jinja::RenderBudget budget(limits_);
  jinja::RenderScope scope(budget);
  budget.check_depth(context, "the context");
  jinja::Ctx c;
  c.scopes.push_back(context);
  c.scopes.push_back(json::object());  // top-level {% set %}
  std::string out;
  try {
    for (const jinja::Stmt& s : root_->body) {
      s(c, out);
      budget.check_size(out.size(), "the rendered text");
    }
  } catch (const qs::Error&) {
    throw;
  } catch (const std::exception& e) {  // e.g. a JSON type error inside a filter: still one error type
    QS_FAIL() << "chat template: " << e.what();
  }
  return out;
}

std::string apply_chat_template(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  QS_CHECK(!tokenizer.chat_template().empty()) << "this model has no chat template";
  json msgs = json::array();
  for (const ChatMessage& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
  const json ctx = {{"messages", msgs},
                    {"bos_token", tokenizer.bos_token()},
                    {"eos_token", tokenizer.eos_token()},
                    {"add_generation_prompt", add_generation_prompt}};
  return ChatTemplate(tokenizer.chat_template()).render(ctx);
}

}  // namespace qs::tokenizer
