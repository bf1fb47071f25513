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
  s.row_stats = true;
  return s;
}

bool CaptureSpec::aggregates_layer(int64_t layer) const {
  if (!wants_aggregates()) return false;
  return layers.empty() || std::find(layers.begin(), layers.end(), layer) != layers.end();
}

namespace {
std::string ints(const std::vector<int64_t>& v) { return json::int_array(v); }
constexpr int64_t kMaxIndex = int64_t(1) << 40;  // layers, heads, positions: far beyond any model
std::vector<int64_t> to_ints(const json::Value& v, const std::string& key, int64_t lo) {
  std::vector<int64_t> out;
  if (const json::Value* a = v.get_array(key))
    for (size_t k = 0; k < a->arr.size(); ++k)
      out.push_back(a->arr[k].as_int("capture spec '" + key + "'[" + std::to_string(k) + "]", lo, kMaxIndex));
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
    << ",\"sink_tokens\":" << sink_tokens << ",\"row_stats\":" << (row_stats ? "true" : "false")
    << ",\"local_window\":" << local_window << ",\"pooled_maps\":" << pooled_maps << ",\"predictive_entropy\":" << (predictive_entropy ? "true" : "false")
    << ",\"top_k\":" << top_k
    << ",\"temperature\":" << temperature << ",\"to_cpu\":" << (to_cpu ? "true" : "false")
    << ",\"chunk_elements\":" << chunk_elements << "}";
  return o.str();
}

CaptureSpec CaptureSpec::from_json(const std::string& text) {
  json::Value v = json::parse(text, "capture spec");
  TORCH_CHECK(v.is_object(), "capture spec: expected a JSON object");
  CaptureSpec s;
  static const char* known[] = {"heads", "layer_maps", "layer_map_head", "layers", "received", "from_tokens",
                                "attn_entropy", "sink_tokens", "row_stats", "local_window", "pooled_maps", "predictive_entropy", "top_k", "temperature", "to_cpu", "chunk_elements"};
  for (const auto& kv : v.obj)
    TORCH_CHECK_VALUE(std::find_if(std::begin(known), std::end(known), [&](const char* k) { return kv.first == k; }) !=
                          std::end(known),
                      "capture spec: unknown key '", kv.first, "'");
  if (const json::Value* h = v.get_array("heads"))
    for (size_t k = 0; k < h->arr.size(); ++k) {
      const auto& p = h->arr[k];
      TORCH_CHECK_VALUE(p.is_array() && p.arr.size() == 2,
                        "capture spec: each entry of \"heads\" must be [layer, head], got ", p.describe());
      const std::string at = "capture spec 'heads'[" + std::to_string(k) + "]";
      s.heads.emplace_back(p.arr[0].as_int(at + " layer", 0, kMaxIndex), p.arr[1].as_int(at + " head", 0, kMaxIndex));
    }
  s.layer_maps = to_ints(v, "layer_maps", 0);
  s.layer_map_head = v.get_int("layer_map_head", -1, -1, kMaxIndex);
  s.layers = to_ints(v, "layers", 0);
  s.received = v.get_bool("received", false);
  s.from_tokens = to_ints(v, "from_tokens", -kMaxIndex);
  s.attn_entropy = v.get_bool("attn_entropy", false);
  s.sink_tokens = v.get_int("sink_tokens", 0, 0, kMaxIndex);
  s.row_stats = v.get_bool("row_stats", false);
  s.local_window = v.get_int("local_window", 8, 0, kMaxIndex);
  s.pooled_maps = v.get_int("pooled_maps", 0, 0, int64_t(1) << 16);
  s.predictive_entropy = v.get_bool("predictive_entropy", true);
  s.top_k = v.get_int("top_k", 5, 0, int64_t(1) << 24);
  s.temperature = v.get_double("temperature", 1.0);
  TORCH_CHECK_VALUE(s.temperature > 0, "capture spec 'temperature': ", s.temperature, " must be > 0");
  s.to_cpu = v.get_bool("to_cpu", true);
  s.chunk_elements = v.get_int("chunk_elements", int64_t(1) << 26, 1, int64_t(1) << 40);
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
  TORCH_CHECK(pooled_maps >= 0 && pooled_maps <= 65536, "pooled_maps ", pooled_maps,
              " out of range: expected 0 (off) or a tile count in 1..65536");
  TORCH_CHECK(local_window >= 0, "local_window ", local_window, " must be >= 0 (tokens on each side of the query)");
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
