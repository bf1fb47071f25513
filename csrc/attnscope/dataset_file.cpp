// DatasetStats' file: the running sums as safetensors (format "attnscope-dataset"), with the
// parts, epsilon, shape and model in the metadata; load() checks every size against the tensors.
#include <attnscope/dataset.h>

#include <algorithm>

#include <attnscope/safetensors.h>

#include <sstream>

namespace attnscope {

namespace {
constexpr const char* kFormat = "attnscope-dataset";
constexpr int64_t kVersion = 1;

std::string exact(double x) {
  std::ostringstream o;
  o.precision(17);
  o << x;
  return o.str();
}
}  // namespace

std::string DatasetParts::to_string() const {
  const DatasetParts& p = *this;
  std::string s;
  auto add = [&](bool on, const char* n) { if (on) s += (s.empty() ? "" : ",") + std::string(n); };
  add(p.layer_maps, "layer_maps");
  add(p.head_maps, "head_maps");
  add(p.received, "received");
  add(p.attn_entropy, "attn_entropy");
  add(p.row_stats, "row_stats");
  return s;
}

DatasetParts DatasetParts::parse(const std::string& s) {
  DatasetParts p{false, false, false, false, false};
  size_t a = 0;
  while (a <= s.size()) {
    size_t b = s.find(',', a);
    if (b == std::string::npos) b = s.size();
    std::string w = s.substr(a, b - a);
    if (w == "layer_maps") p.layer_maps = true;
    else if (w == "head_maps") p.head_maps = true;
    else if (w == "received") p.received = true;
    else if (w == "attn_entropy") p.attn_entropy = true;
    else if (w == "row_stats") p.row_stats = true;
    else TORCH_CHECK(w.empty(), "dataset file: unknown part '", w, "' in metadata 'parts'");
    a = b + 1;
  }
  return p;
}

std::vector<std::string> DatasetParts::needed(int64_t n_layers, int64_t n_heads) const {
  return dataset_capture_spec(*this, n_layers, n_heads).produces();
}

DatasetParts DatasetParts::of_trace(const Trace& t) {
  DatasetParts out{false, false, false, false, false};
  if (t.n_layers <= 0 || t.n_heads <= 0) return out;
  for (bool DatasetParts::*part : {&DatasetParts::layer_maps, &DatasetParts::head_maps, &DatasetParts::received,
                                   &DatasetParts::attn_entropy, &DatasetParts::row_stats}) {
    DatasetParts one{false, false, false, false, false};
    one.*part = true;
    const auto need = one.needed(t.n_layers, t.n_heads);
    out.*part = std::all_of(need.begin(), need.end(), [&](const std::string& n) { return t.has(n); });
  }
  return out;
}

std::string DatasetParts::part_of(const std::string& name) {
  const CaptureSpec s = CaptureSpec::for_captures({name});
  if (!s.layer_maps.empty()) return "layer_maps";
  if (!s.heads.empty()) return "head_maps";
  if (s.received) return "received";
  if (s.attn_entropy) return "attn_entropy";
  if (s.row_stats) return "row_stats";
  return "";
}

void DatasetStats::save(const std::string& path) const {
  TORCH_CHECK(n_layers_ >= 0, "DatasetStats.save: the dataset is empty: add at least one sequence");
  SafetensorsFile f;
  f.tensors = state_;
  f.metadata = {{"format", kFormat},
                {"version", std::to_string(kVersion)},
                {"parts", parts_.to_string()},
                {"epsilon", exact(epsilon_)},
                {"n_layers", std::to_string(n_layers_)},
                {"n_heads", std::to_string(n_heads_)},
                {"length", std::to_string(length_)},
                {"model", model_id_}};
  write_safetensors(path, f);
}

DatasetStats DatasetStats::load(const std::string& path) {
  auto f = read_safetensors(path);
  auto meta = [&](const char* k) {
    auto it = f.metadata.find(k);
    TORCH_CHECK(it != f.metadata.end(), path, ": not an attnscope dataset file (no metadata '", k, "')");
    return it->second;
  };
  TORCH_CHECK(meta("format") == kFormat, path, ": format is '", meta("format"), "', expected '",
              kFormat, "' (a single-run trace loads with Trace.load)");
  DatasetStats d(DatasetParts::parse(meta("parts")), meta_double(f, "epsilon", path));
  d.n_layers_ = meta_int(f, "n_layers", path, 1, 100000);
  d.n_heads_ = meta_int(f, "n_heads", path, 1, 65536);
  d.length_ = meta_int(f, "length", path, 0, int64_t(1) << 40);
  // The sizes come from the file's metadata: each must agree with the tensors it holds (a
  // dataset of 2.5 KB saying length=1e8 would otherwise be padded to gigabytes on merge).
  for (const auto& kv : f.tensors) {
    const int dims = position_dims(kv.first);
    const auto& t = kv.second;
    TORCH_CHECK_VALUE(t.dim() >= dims, "'", path, "': '", kv.first, "' has shape ", t.sizes(), ", expected ",
                      dims, " position axes");
    for (int k = 1; k <= dims; ++k)
      TORCH_CHECK_VALUE(t.size(-k) == d.length_, "'", path, "': '", kv.first, "' has shape ", t.sizes(),
                        ": its position axes must be the file's length ", d.length_);
  }
  d.state_ = f.tensors;
  if (auto it = f.metadata.find("model"); it != f.metadata.end()) d.model_id_ = it->second;
  return d;
}

}  // namespace attnscope
