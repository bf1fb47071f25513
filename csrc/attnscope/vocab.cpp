#include <attnscope/vocab.h>

#include <attnscope/json.h>

#include <c10/util/Exception.h>

namespace attnscope {

Vocab Vocab::from_tokenizer_json(const std::string& text) {
  json::Value root = json::parse(text, "tokenizer.json");
  TORCH_CHECK_VALUE(root.is_object(), "tokenizer.json: expected a JSON object, got ", root.describe());
  // Ids are dense in real tokenizers: the largest id is bounded by the entries the file holds
  // (plus slack for gaps), so a tiny file cannot make us allocate gigabytes.
  std::vector<std::pair<int64_t, std::string>> entries;
  const json::Value* model = root.find("model");
  const json::Value* vocab = model ? model->find("vocab") : nullptr;
  if (vocab && vocab->is_object()) {
    for (const auto& kv : vocab->obj)
      entries.emplace_back(kv.second.as_int("tokenizer.json model.vocab['" + kv.first.substr(0, 40) + "']", 0,
                                            INT64_MAX), kv.first);
  } else if (vocab && vocab->is_array()) {  // Unigram: [[piece, score], ...], id = index
    for (size_t i = 0; i < vocab->arr.size(); ++i) {
      const auto& e = vocab->arr[i];
      TORCH_CHECK_VALUE(e.is_array() && !e.arr.empty() && e.arr[0].is_string(), "tokenizer.json model.vocab[", i,
                        "]: expected [piece, score], got ", e.describe());
      entries.emplace_back(static_cast<int64_t>(i), e.arr[0].str);
    }
  }
  if (const json::Value* added = root.get_array("added_tokens"))
    for (size_t i = 0; i < added->arr.size(); ++i) {
      const auto& t = added->arr[i];
      TORCH_CHECK_VALUE(t.is_object(), "tokenizer.json added_tokens[", i, "]: expected an object");
      entries.emplace_back(t.get_int("id", -1, 0, INT64_MAX), t.get_string("content", ""));
    }
  const int64_t limit = static_cast<int64_t>(entries.size()) + 1024;
  Vocab v;
  for (const auto& e : entries) {
    if (e.first < 0) continue;
    TORCH_CHECK_VALUE(e.first < limit, "tokenizer.json: token id ", e.first, " ('", e.second.substr(0, 40),
                      "') is beyond what its ", entries.size(), " entries can number (ids below ", limit, ")");
    if (static_cast<int64_t>(v.tokens_.size()) <= e.first) v.tokens_.resize(e.first + 1);
    v.tokens_[e.first] = json::valid_utf8(e.second);
  }
  TORCH_CHECK_VALUE(!v.tokens_.empty(), "tokenizer.json: no vocabulary found under model.vocab or "
                    "added_tokens");
  return v;
}

Vocab Vocab::from_token_list(const std::string& text) {
  json::Value root = json::parse(text, "tokens.json");
  TORCH_CHECK(root.is_array() && !root.arr.empty(), "tokens.json: expected a non-empty JSON array "
              "of token strings (index = id)");
  Vocab v;
  for (size_t i = 0; i < root.arr.size(); ++i) {
    TORCH_CHECK_VALUE(root.arr[i].is_string(), "tokens.json[", i, "]: expected a token string, got ",
                      root.arr[i].describe());
    v.tokens_.push_back(json::valid_utf8(root.arr[i].str));
  }
  return v;
}

std::string Vocab::token(int64_t id) const {
  if (id >= 0 && id < size() && !tokens_[id].empty()) return tokens_[id];
  return "<" + std::to_string(id) + ">";
}

}  // namespace attnscope
