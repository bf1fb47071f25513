// Minimal JSON reader/writer for the archive's metadata (attnscope.json, tokenizer.json).
// LibTorch ships no JSON library; this covers RFC 8259 except number edge cases we never write.
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
  /// Integer member with a default when absent/null.
  int64_t get_int(const std::string& key, int64_t fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
};

/// Parses `text`; throws c10::Error naming `what` and the byte offset on malformed input.
Value parse(const std::string& text, const std::string& what = "JSON");

/// Quotes and escapes `s` as a JSON string literal.
std::string quote(const std::string& s);

/// `v` as a JSON array of integers: [1,2,3].
std::string int_array(const std::vector<int64_t>& v);

}  // namespace json
}  // namespace attnscope
