#include <attnscope/trace.h>

#include <attnscope/json.h>
#include <attnscope/safetensors.h>

#include <sstream>

namespace attnscope {

namespace {
constexpr const char* kFormat = "attnscope-trace";
constexpr int64_t kVersion = 1;
const std::string kCapturePrefix = "captures/";

std::string string_array(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + json::quote(v[i]);
  return s + "]";
}

std::vector<std::string> parse_string_array(const std::string& text, const char* what) {
  std::vector<std::string> out;
  if (text.empty()) return out;
  const auto v = json::parse(text, what);
  TORCH_CHECK_VALUE(v.is_array(), what, " must be a JSON array of strings");
  for (const auto& e : v.arr) {
    TORCH_CHECK_VALUE(e.is_string(), what, " must be a JSON array of strings; element ", out.size(), " is not a string");
    out.push_back(e.str);
  }
  return out;
}
std::vector<int64_t> parse_int_array(const std::string& text, const char* what, int64_t hi) {
  std::vector<int64_t> out;
  if (text.empty()) return out;
  const auto v = json::parse(text, what);
  TORCH_CHECK_VALUE(v.is_array(), what, " must be a JSON array of layer indices");
  for (size_t i = 0; i < v.arr.size(); ++i)
    out.push_back(v.arr[i].as_int(std::string(what) + "[" + std::to_string(i) + "]", 0, hi));
  return out;
}
}  // namespace

const torch::Tensor& Trace::get(const std::string& name) const {
  auto it = captures.find(name);
  if (it != captures.end()) return it->second;
  std::ostringstream have;
  for (const auto& kv : captures) have << (have.tellp() > 0 ? ", " : "") << kv.first;
  TORCH_CHECK(false, "trace has no capture named '", name, "'; it holds [", have.str(),
              "]. Capture it with the matching CaptureSpec field (heads for head_map/L*H*, "
              "layer_maps for layer_map/L*, received, attn_entropy, sink_tokens, row_stats for row_*, from_tokens)");
}

std::vector<std::string> Trace::names() const {
  std::vector<std::string> n;
  for (const auto& kv : captures) n.push_back(kv.first);
  return n;
}

void Trace::set_generation(int64_t p, const GenerationInfo& g) {
  const int64_t T = input_ids.defined() ? input_ids.size(-1) : 0;
  TORCH_CHECK_VALUE(p >= 0 && p <= T, "prompt_len ", p, " out of range: the trace has ", T, " positions");
  prompt_len = p;
  generation = g;
}

void Trace::save(const std::string& path) const {
  check_trace(*this, path);  // what load would refuse is never written
  SafetensorsFile f;
  auto put = [&](const std::string& k, const torch::Tensor& t) {
    if (t.defined()) f.tensors[k] = t;
  };
  put("input_ids", input_ids);
  put("attention_mask", attention_mask);
  put("entropy", entropy);
  put("topk_probs", topk_probs);
  put("topk_ids", topk_ids);
  put("kv_head_of", kv_head_of);
  for (const auto& kv : captures) put(kCapturePrefix + kv.first, kv.second);
  f.metadata = {{"format", kFormat},
                {"version", std::to_string(kVersion)},
                {"spec", spec.to_json()},
                {"n_layers", std::to_string(n_layers)},
                {"n_heads", std::to_string(n_heads)},
                {"n_kv_heads", std::to_string(n_kv_heads)},
                {"layer_paths", string_array(layer_paths)},
                {"routes", string_array(routes)},
                {"tokens", string_array(tokens)},
                {"prompt_len", std::to_string(prompt_len)},
                {"model_id", model_id},
                {"model_name", model_name},
                {"generation", generation ? generation->to_json() : std::string()}};
  if (!attention_layers.empty()) {
    std::string a = "[";
    for (size_t i = 0; i < attention_layers.size(); ++i) a += (i ? "," : "") + std::to_string(attention_layers[i]);
    f.metadata["attention_layers"] = a + "]";
  }
  write_safetensors(path, f);
}

Trace Trace::load(const std::string& path) {
  SafetensorsFile f;
  try {
    f = read_safetensors(path);
  } catch (const c10::Error& e) {
    std::string m = e.what_without_backtrace();
    TORCH_CHECK(m.rfind("file not found", 0) != 0, "trace file not found: '", path, "'");
    TORCH_CHECK_VALUE(false, "'", path, "' is not an attnscope trace: ", m);
  }
  auto meta = [&](const char* k) {
    auto it = f.metadata.find(k);
    return it == f.metadata.end() ? std::string() : it->second;
  };
  TORCH_CHECK_VALUE(meta("format") == kFormat, "'", path, "' is not an attnscope trace: missing format tag '",
                    kFormat, "'");
  const int64_t version = meta_int(f, "version", path, 1, INT64_MAX);
  TORCH_CHECK_VALUE(version <= kVersion, "trace '", path, "' has format version ", version,
                    "; this attnscope reads up to ", kVersion);
  Trace t;
  auto tensor = [&](const char* k) {
    auto it = f.tensors.find(k);
    return it == f.tensors.end() ? torch::Tensor() : it->second;
  };
  t.input_ids = tensor("input_ids");
  t.attention_mask = tensor("attention_mask");
  t.entropy = tensor("entropy");
  t.topk_probs = tensor("topk_probs");
  t.topk_ids = tensor("topk_ids");
  t.kv_head_of = tensor("kv_head_of");
  for (const auto& kv : f.tensors)
    if (kv.first.rfind(kCapturePrefix, 0) == 0) t.captures[kv.first.substr(kCapturePrefix.size())] = kv.second;
  t.spec = CaptureSpec::from_json(meta("spec"));
  t.n_layers = meta_int(f, "n_layers", path, 1, 100000);
  t.n_heads = meta_int(f, "n_heads", path, 1, 65536);
  t.n_kv_heads = meta_int(f, "n_kv_heads", path, 1, t.n_heads);
  t.layer_paths = parse_string_array(meta("layer_paths"), "trace layer_paths");
  t.routes = parse_string_array(meta("routes"), "trace routes");
  t.attention_layers = parse_int_array(meta("attention_layers"), "trace attention_layers", t.n_layers - 1);
  t.tokens = parse_string_array(meta("tokens"), "trace tokens");
  for (auto* list : {&t.tokens, &t.layer_paths, &t.routes})  // files may hold any bytes; Python decodes UTF-8
    for (auto& s : *list) s = json::valid_utf8(s);
  // Shapes agree with each other: ids [B, T] are the reference every reader indexes by.
  TORCH_CHECK_VALUE(t.input_ids.defined() && t.input_ids.dim() == 2 && t.input_ids.scalar_type() == torch::kLong,
                    "'", path, "': input_ids must be an int64 [B, T] tensor");
  const auto B = t.input_ids.size(0), T = t.input_ids.size(1);
  for (const auto& [name, x] : {std::pair<const char*, torch::Tensor>{"attention_mask", t.attention_mask},
                                {"entropy", t.entropy}})
    TORCH_CHECK_VALUE(x.defined() && x.dim() == 2 && x.size(0) == B && x.size(1) == T, "'", path, "': ", name,
                      " must be [", B, ", ", T, "], got ", x.defined() ? x.sizes() : c10::IntArrayRef{});
  TORCH_CHECK_VALUE(static_cast<int64_t>(t.tokens.size()) == 0 || static_cast<int64_t>(t.tokens.size()) == B * T,
                    "'", path, "': ", t.tokens.size(), " token strings for ", B, " x ", T, " ids");
  t.prompt_len = meta_int(f, "prompt_len", path, -1, T, false, -1);
  t.model_id = meta("model_id");
  t.model_name = json::valid_utf8(meta("model_name"));
  if (const std::string g = json::valid_utf8(meta("generation")); !g.empty())
    t.generation = GenerationInfo::from_json(g, "'" + path + "': generation");
  check_trace(t, path);
  return t;
}

}  // namespace attnscope
