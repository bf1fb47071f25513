#include <attnscope/spec.h>

#include <attnscope/json.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <sstream>

namespace attnscope {

CaptureSpec CaptureSpec::all_aggregates() {
  CaptureSpec s;
  s.received = true;
  s.attn_entropy = true;
  s.sink_tokens = 1;
  return s;
}

bool CaptureSpec::aggregates_layer(int64_t layer) const {
  if (!wants_aggregates()) return false;
  return layers.empty() || std::find(layers.begin(), layers.end(), layer) != layers.end();
}

namespace {
std::string ints(const std::vector<int64_t>& v) { return json::int_array(v); }
std::vector<int64_t> to_ints(const json::Value* v) {
  std::vector<int64_t> out;
  if (v && v->is_array())
    for (const auto& e : v->arr) out.push_back(static_cast<int64_t>(e.num));
  return out;
}
}  // namespace

std::string CaptureSpec::to_json() const {
  std::ostringstream o;
  o << "{\"heads\":[";
  for (size_t i = 0; i < heads.size(); ++i)
    o << (i ? "," : "") << "[" << heads[i].first << "," << heads[i].second << "]";
  o << "],\"layer_maps\":" << ints(layer_maps) << ",\"layer_map_head\":" << layer_map_head
    << ",\"layers\":" << ints(layers) << ",\"received\":" << (received ? "true" : "false")
    << ",\"from_tokens\":" << ints(from_tokens)
    << ",\"attn_entropy\":" << (attn_entropy ? "true" : "false")
    << ",\"sink_tokens\":" << sink_tokens << ",\"top_k\":" << top_k
    << ",\"temperature\":" << temperature << ",\"to_cpu\":" << (to_cpu ? "true" : "false")
    << ",\"chunk_elements\":" << chunk_elements << "}";
  return o.str();
}

CaptureSpec CaptureSpec::from_json(const std::string& text) {
  json::Value v = json::parse(text, "capture spec");
  TORCH_CHECK(v.is_object(), "capture spec: expected a JSON object");
  CaptureSpec s;
  if (const json::Value* h = v.find("heads"))
    for (const auto& p : h->arr) {
      TORCH_CHECK(p.is_array() && p.arr.size() == 2,
                  "capture spec: each entry of \"heads\" must be [layer, head]");
      s.heads.emplace_back(static_cast<int64_t>(p.arr[0].num), static_cast<int64_t>(p.arr[1].num));
    }
  s.layer_maps = to_ints(v.find("layer_maps"));
  s.layer_map_head = v.get_int("layer_map_head", -1);
  s.layers = to_ints(v.find("layers"));
  s.received = v.get_bool("received", false);
  s.from_tokens = to_ints(v.find("from_tokens"));
  s.attn_entropy = v.get_bool("attn_entropy", false);
  s.sink_tokens = v.get_int("sink_tokens", 0);
  s.top_k = v.get_int("top_k", 5);
  if (const json::Value* t = v.find("temperature")) s.temperature = t->num;
  s.to_cpu = v.get_bool("to_cpu", true);
  s.chunk_elements = v.get_int("chunk_elements", int64_t(1) << 26);
  return s;
}

void CaptureSpec::validate(int64_t n_layers, int64_t n_heads, int64_t seq_len) const {
  auto check_layer = [&](int64_t l, const char* what) {
    TORCH_CHECK(l >= 0, what, ": layer ", l, " out of range: layers are numbered from 0");
    if (n_layers >= 0)
      TORCH_CHECK(l < n_layers, what, ": layer ", l, " out of range: model has ", n_layers,
                  " layers (0..", n_layers - 1, ")");
  };
  auto check_head = [&](int64_t h, const char* what) {
    TORCH_CHECK(h >= 0, what, ": head ", h, " out of range: heads are numbered from 0");
    if (n_heads >= 0)
      TORCH_CHECK(h < n_heads, what, ": head ", h, " out of range: model has ", n_heads,
                  " heads (0..", n_heads - 1, ")");
  };
  for (const auto& lh : heads) {
    check_layer(lh.first, "heads");
    check_head(lh.second, "heads");
  }
  for (int64_t l : layer_maps) check_layer(l, "layer_maps");
  if (layer_map_head != -1) check_head(layer_map_head, "layer_map_head");
  for (int64_t l : layers) check_layer(l, "layers");
  TORCH_CHECK(sink_tokens >= 0, "sink_tokens ", sink_tokens, " must be >= 0");
  TORCH_CHECK(top_k >= 0, "top_k ", top_k, " must be >= 0");
  TORCH_CHECK(temperature > 0, "temperature ", temperature, " must be > 0");
  TORCH_CHECK(chunk_elements > 0, "chunk_elements ", chunk_elements, " must be > 0");
  if (seq_len >= 0) {
    for (int64_t p : from_tokens)
      TORCH_CHECK(p >= -seq_len && p < seq_len, "from_tokens: token_idx ", p,
                  " out of range for a sequence of ", seq_len, " tokens (valid: ", -seq_len,
                  "..", seq_len - 1, ")");
    TORCH_CHECK(sink_tokens <= seq_len, "sink_tokens ", sink_tokens,
                " exceeds the sequence length ", seq_len);
  }
}

}  // namespace attnscope
