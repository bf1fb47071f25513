#include <attnscope/json.h>

#include <c10/util/Exception.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <system_error>

namespace attnscope {
namespace json {

const Value* Value::find(const std::string& key) const {
  if (kind != Kind::Object) return nullptr;
  for (const auto& kv : obj)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

std::string Value::describe() const {
  switch (kind) {
    case Kind::Null: return "null";
    case Kind::Bool: return b ? "true" : "false";
    case Kind::Number: {
      if (integral) return std::to_string(integer);
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", num);
      return buf;
    }
    case Kind::String: return quote(str.size() > 40 ? str.substr(0, 40) + "..." : str);
    case Kind::Array: return "an array";
    case Kind::Object: return "an object";
  }
  return "?";
}

int64_t Value::as_int(const std::string& what, int64_t lo, int64_t hi) const {
  TORCH_CHECK_VALUE(kind == Kind::Number && integral, what, ": expected an integer, got ", describe());
  TORCH_CHECK_VALUE(integer >= lo && integer <= hi, what, ": ", integer, " out of range: expected ", lo,
                    "..", hi);
  return integer;
}

int64_t Value::get_int(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) const {
  const Value* v = find(key);
  if (!v || v->is_null()) return fallback;
  return v->as_int("'" + key + "'", lo, hi);
}

double Value::get_double(const std::string& key, double fallback) const {
  const Value* v = find(key);
  if (!v || v->is_null()) return fallback;
  TORCH_CHECK_VALUE(v->is_number(), "'", key, "': expected a number, got ", v->describe());
  return v->num;
}

const Value* Value::get_array(const std::string& key) const {
  const Value* v = find(key);
  if (!v || v->is_null()) return nullptr;
  TORCH_CHECK_VALUE(v->is_array(), "'", key, "': expected an array, got ", v->describe());
  return v;
}

std::string Value::get_string(const std::string& key, const std::string& fallback) const {
  const Value* v = find(key);
  if (!v || v->is_null()) return fallback;
  TORCH_CHECK_VALUE(v->is_string(), "'", key, "': expected a string, got ", v->describe());
  return v->str;
}

bool Value::get_bool(const std::string& key, bool fallback) const {
  const Value* v = find(key);
  if (!v || v->is_null()) return fallback;
  TORCH_CHECK_VALUE(v->kind == Kind::Bool, "'", key, "': expected true or false, got ", v->describe());
  return v->b;
}

namespace {

struct Parser {
  const std::string& s;
  const std::string& what;
  size_t i = 0;

  [[noreturn]] void fail(const char* msg) {
    TORCH_CHECK_VALUE(false, what, ": malformed JSON at byte ", i, ": ", msg);
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
  }
  bool lit(const char* w) {
    size_t n = std::char_traits<char>::length(w);
    if (s.compare(i, n, w) == 0) { i += n; return true; }
    return false;
  }
  static void utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) out += char(cp);
    else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (i + 4 > s.size()) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail("bad hex digit in \\u escape");
    }
    return v;
  }
  std::string string() {
    if (s[i] != '"') fail("expected string");
    ++i;
    std::string out;
    while (true) {
      if (i >= s.size()) fail("unterminated string");
      char c = s[i++];
      if (c == '"') break;
      if (static_cast<unsigned char>(c) < 0x20) fail("unescaped control character in string");
      if (c != '\\') { out += c; continue; }
      if (i >= s.size()) fail("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (!(i + 6 <= s.size() && s[i] == '\\' && s[i + 1] == 'u')) fail("lone high surrogate");
            i += 2;
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("lone low surrogate");
          }
          utf8(out, cp);
          break;
        }
        default: fail("unknown escape");
      }
    }
    return out;
  }
  static bool digit(char c) { return c >= '0' && c <= '9'; }
  /// JSON's number grammar: -? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?, converted with
  /// std::from_chars (no locale); integers that fit int64 are also kept exactly.
  void number(Value& v) {
    const size_t start = i;
    if (i < s.size() && s[i] == '-') ++i;
    if (i >= s.size() || !digit(s[i])) { i = start; fail("unexpected character"); }
    if (s[i] == '0') {
      ++i;
      if (i < s.size() && digit(s[i])) fail("leading zero in number");
    } else {
      while (i < s.size() && digit(s[i])) ++i;
    }
    bool integral = true;
    if (i < s.size() && s[i] == '.') {
      integral = false;
      ++i;
      if (i >= s.size() || !digit(s[i])) fail("digit expected after '.'");
      while (i < s.size() && digit(s[i])) ++i;
    }
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
      integral = false;
      ++i;
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
      if (i >= s.size() || !digit(s[i])) fail("digit expected in exponent");
      while (i < s.size() && digit(s[i])) ++i;
    }
    const char* b = s.data() + start;
    const char* e = s.data() + i;
    v.kind = Value::Kind::Number;
    auto r = std::from_chars(b, e, v.num);
    if (r.ec == std::errc::result_out_of_range) {
      // from_chars leaves the value unset: tell underflow (a tiny number, 0) from overflow.
      const std::string lit(b, e);
      const size_t ex = lit.find_first_of("eE");
      const bool tiny = (ex != std::string::npos && ex + 1 < lit.size() && lit[ex + 1] == '-') ||
                        lit.rfind("0.", 0) == 0 || lit.rfind("-0.", 0) == 0;
      if (!tiny) fail("number out of range of a double");
      v.num = 0.0;
    } else if (r.ec != std::errc() || r.ptr != e) {
      fail("bad number");
    }
    if (integral) {
      int64_t x = 0;
      auto ri = std::from_chars(b, e, x);
      if (ri.ec == std::errc() && ri.ptr == e) {
        v.integral = true;
        v.integer = x;
      }
    }
  }
  Value value(int depth) {
    if (depth > 512) fail("nesting too deep");
    ws();
    if (i >= s.size()) fail("unexpected end of input");
    Value v;
    char c = s[i];
    if (c == '{') {
      v.kind = Value::Kind::Object;
      ++i; ws();
      if (i < s.size() && s[i] == '}') { ++i; return v; }
      while (true) {
        ws();
        std::string k = string();
        ws();
        if (i >= s.size() || s[i] != ':') fail("expected ':'");
        ++i;
        v.obj.emplace_back(std::move(k), value(depth + 1));
        ws();
        if (i < s.size() && s[i] == ',') { ++i; continue; }
        if (i < s.size() && s[i] == '}') { ++i; break; }
        fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      v.kind = Value::Kind::Array;
      ++i; ws();
      if (i < s.size() && s[i] == ']') { ++i; return v; }
      while (true) {
        v.arr.push_back(value(depth + 1));
        ws();
        if (i < s.size() && s[i] == ',') { ++i; continue; }
        if (i < s.size() && s[i] == ']') { ++i; break; }
        fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.kind = Value::Kind::String;
      v.str = string();
    } else if (lit("true")) { v.kind = Value::Kind::Bool; v.b = true; }
    else if (lit("false")) { v.kind = Value::Kind::Bool; v.b = false; }
    else if (lit("null")) { v.kind = Value::Kind::Null; }
    else {
      number(v);
    }
    return v;
  }
};

}  // namespace

Value parse(const std::string& text, const std::string& what) {
  Parser p{text, what};
  Value v = p.value(0);
  p.ws();
  if (p.i != text.size()) p.fail("trailing characters");
  return v;
}

std::string int_array(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + std::to_string(v[i]);
  return out + "]";
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}


std::string valid_utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = b[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (b[i + k] & 0xC0) == 0x80;
    if (ok && len > 1) {  // no overlong forms, surrogates or code points past U+10FFFF
      uint32_t cp = len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
      for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (b[i + k] & 0x3F);
      ok = (len == 2 && cp >= 0x80) || (len == 3 && cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) ||
           (len == 4 && cp >= 0x10000 && cp <= 0x10FFFF);
    }
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
      ++i;
    }
  }
  return out;
}

}  // namespace json
}  // namespace attnscope
