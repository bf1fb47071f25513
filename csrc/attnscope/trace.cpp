#include <attnscope/trace.h>

#include <torch/serialize.h>

#include <fstream>
#include <iterator>
#include <sstream>

namespace attnscope {

namespace {
constexpr const char* kFormat = "attnscope-trace";
constexpr int64_t kVersion = 1;
}  // namespace

const torch::Tensor& Trace::get(const std::string& name) const {
  auto it = captures.find(name);
  if (it != captures.end()) return it->second;
  std::ostringstream have;
  for (const auto& kv : captures) have << (have.tellp() > 0 ? ", " : "") << kv.first;
  TORCH_CHECK(false, "trace has no capture named '", name, "'; it holds [", have.str(),
              "]. Capture it with the matching CaptureSpec field (heads for head_map/L*H*, "
              "layer_maps for layer_map/L*, received, attn_entropy, sink_tokens, from_tokens)");
}

std::vector<std::string> Trace::names() const {
  std::vector<std::string> n;
  for (const auto& kv : captures) n.push_back(kv.first);
  return n;
}

void Trace::save(const std::string& path) const {
  c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
  d.insert(std::string("format"), std::string(kFormat));
  d.insert(std::string("version"), kVersion);
  auto put = [&](const char* k, const torch::Tensor& t) {
    if (t.defined()) d.insert(std::string(k), t.cpu());
  };
  put("input_ids", input_ids);
  put("attention_mask", attention_mask);
  put("entropy", entropy);
  put("topk_probs", topk_probs);
  put("topk_ids", topk_ids);
  put("kv_head_of", kv_head_of);
  c10::Dict<std::string, torch::Tensor> caps;
  for (const auto& kv : captures) caps.insert(kv.first, kv.second.cpu());
  d.insert(std::string("captures"), caps);
  d.insert(std::string("spec"), spec.to_json());
  d.insert(std::string("n_layers"), n_layers);
  d.insert(std::string("n_heads"), n_heads);
  d.insert(std::string("n_kv_heads"), n_kv_heads);
  d.insert(std::string("layer_paths"), c10::List<std::string>(layer_paths));
  d.insert(std::string("tokens"), c10::List<std::string>(tokens));
  auto bytes = torch::pickle_save(c10::IValue(d));
  std::ofstream f(path, std::ios::binary);
  TORCH_CHECK(f.good(), "cannot write trace file '", path, "'");
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  TORCH_CHECK(f.good(), "writing trace file '", path, "' failed");
}

Trace Trace::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  TORCH_CHECK(f.good(), "trace file not found: '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  c10::IValue v;
  try {
    v = torch::pickle_load(bytes);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "'", path, "' is not an attnscope trace (torch.save zip): ",
                e.what_without_backtrace());
  }
  TORCH_CHECK(v.isGenericDict(), "'", path, "' is not an attnscope trace: top level is not a dict");
  auto d = v.toGenericDict();
  auto get = [&](const char* k) -> c10::IValue {
    auto it = d.find(c10::IValue(std::string(k)));
    return it == d.end() ? c10::IValue() : it->value();
  };
  TORCH_CHECK(get("format").isString() && get("format").toStringRef() == kFormat, "'", path,
              "' is not an attnscope trace: missing format tag '", kFormat, "'");
  TORCH_CHECK(get("version").toInt() <= kVersion, "trace '", path, "' has format version ",
              get("version").toInt(), "; this attnscope reads up to ", kVersion);
  Trace t;
  auto tensor = [&](const char* k) { auto x = get(k); return x.isTensor() ? x.toTensor() : torch::Tensor(); };
  t.input_ids = tensor("input_ids");
  t.attention_mask = tensor("attention_mask");
  t.entropy = tensor("entropy");
  t.topk_probs = tensor("topk_probs");
  t.topk_ids = tensor("topk_ids");
  t.kv_head_of = tensor("kv_head_of");
  for (const auto& kv : get("captures").toGenericDict())
    t.captures[kv.key().toStringRef()] = kv.value().toTensor();
  t.spec = CaptureSpec::from_json(get("spec").toStringRef());
  t.n_layers = get("n_layers").toInt();
  t.n_heads = get("n_heads").toInt();
  t.n_kv_heads = get("n_kv_heads").toInt();
  for (const auto& s : get("layer_paths").toListRef()) t.layer_paths.push_back(s.toStringRef());
  for (const auto& s : get("tokens").toListRef()) t.tokens.push_back(s.toStringRef());
  return t;
}

}  // namespace attnscope
