#include <attnscope/vocab.h>

#include <attnscope/json.h>

#include <c10/util/Exception.h>

namespace attnscope {

Vocab Vocab::from_tokenizer_json(const std::string& text) {
  json::Value root = json::parse(text, "tokenizer.json");
  Vocab v;
  auto put = [&](int64_t id, const std::string& tok) {
    if (id < 0) return;
    if (static_cast<int64_t>(v.tokens_.size()) <= id) v.tokens_.resize(id + 1);
    v.tokens_[id] = tok;
  };
  if (const json::Value* model = root.find("model")) {
    if (const json::Value* vocab = model->find("vocab")) {
      if (vocab->is_object()) {
        for (const auto& kv : vocab->obj) put(static_cast<int64_t>(kv.second.num), kv.first);
      } else if (vocab->is_array()) {  // Unigram: [[piece, score], ...], id = index
        for (size_t i = 0; i < vocab->arr.size(); ++i)
          if (vocab->arr[i].is_array() && !vocab->arr[i].arr.empty())
            put(static_cast<int64_t>(i), vocab->arr[i].arr[0].str);
      }
    }
  }
  if (const json::Value* added = root.find("added_tokens"))
    for (const auto& t : added->arr) put(t.get_int("id", -1), t.get_string("content", ""));
  TORCH_CHECK(!v.tokens_.empty(), "tokenizer.json: no vocabulary found under model.vocab or "
              "added_tokens");
  return v;
}

Vocab Vocab::from_token_list(const std::string& text) {
  json::Value root = json::parse(text, "tokens.json");
  TORCH_CHECK(root.is_array() && !root.arr.empty(), "tokens.json: expected a non-empty JSON array "
              "of token strings (index = id)");
  Vocab v;
  for (const auto& t : root.arr) v.tokens_.push_back(t.str);
  return v;
}

std::string Vocab::token(int64_t id) const {
  if (id >= 0 && id < size() && !tokens_[id].empty()) return tokens_[id];
  return "<" + std::to_string(id) + ">";
}

}  // namespace attnscope
