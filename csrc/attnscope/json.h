// Minimal, strict JSON reader/writer for the archive's metadata (attnscope.json, tokenizer.json,
// capture specs, safetensors headers). LibTorch ships no JSON library, and a source build via
// pip must work without Debian's nlohmann-json, so the grammar (RFC 8259) is implemented here:
// numbers only in JSON's own syntax (no NaN, inf, hex, leading '+'), parsed independently of
// the C locale; integers kept exact; typed getters that reject wrong types and out-of-range
// values with the key's name instead of converting them.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace attnscope {
namespace json {

struct Value {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool b = false;
  double num = 0.0;
  /// Number written without fraction or exponent that fits int64: exactly `integer`.
  bool integral = false;
  int64_t integer = 0;
  std::string str;
  std::vector<Value> arr;
  /// Object members in file order (tokenizer.json vocabularies are large; order is kept).
  std::vector<std::pair<std::string, Value>> obj;

  bool is_null() const { return kind == Kind::Null; }
  bool is_number() const { return kind == Kind::Number; }
  bool is_string() const { return kind == Kind::String; }
  bool is_array() const { return kind == Kind::Array; }
  bool is_object() const { return kind == Kind::Object; }
  /// Member `key` of an object, or nullptr when absent or not an object.
  const Value* find(const std::string& key) const;
  /// This value as an integer in [lo, hi]; c10::Error naming `what` otherwise (wrong type,
  /// fraction, out of range).
  int64_t as_int(const std::string& what, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const;
  /// Member `key` as an integer in [lo, hi], `fallback` when absent or null; present with a
  /// wrong type or value: c10::Error naming the key.
  int64_t get_int(const std::string& key, int64_t fallback, int64_t lo = INT64_MIN,
                  int64_t hi = INT64_MAX) const;
  /// Member `key` as a finite number, `fallback` when absent/null; otherwise c10::Error.
  double get_double(const std::string& key, double fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  /// Member `key` when it is an array; nullptr when absent/null; c10::Error for another type.
  const Value* get_array(const std::string& key) const;
  /// A short rendering of this value for error messages.
  std::string describe() const;
};

/// Parses `text`; throws c10::Error naming `what` and the byte offset on malformed input.
Value parse(const std::string& text, const std::string& what = "JSON");

/// Quotes and escapes `s` as a JSON string literal.
std::string quote(const std::string& s);

/// `s` with every byte that is not part of well-formed UTF-8 written as the text "\xNN":
/// token strings from files are data that Python and the page must be able to decode.
std::string valid_utf8(const std::string& s);

/// `v` as a JSON array of integers: [1,2,3].
std::string int_array(const std::vector<int64_t>& v);

}  // namespace json
}  // namespace attnscope
