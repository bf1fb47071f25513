// Token strings for labels, read from a Hugging Face tokenizer.json or a tokens.json id ->
// string list (Python does the tokenising; C++ only needs id -> string).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace attnscope {

class Vocab {
 public:
  Vocab() = default;
  /// Parses tokenizer.json text: model.vocab (object token->id, or Unigram [[token, score]])
  /// plus added_tokens. Throws on malformed JSON.
  static Vocab from_tokenizer_json(const std::string& text);
  /// Parses tokens.json text: a JSON array of token strings, index = id (what export_hf
  /// stores for tokenizers without a tokenizer.json).
  static Vocab from_token_list(const std::string& text);

  bool empty() const { return tokens_.empty(); }
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  /// Raw token string of `id` (byte-level BPE markers such as "Ġ" kept); "<id>" if unknown.
  std::string token(int64_t id) const;

 private:
  std::vector<std::string> tokens_;
};

}  // namespace attnscope
