// DatasetStats' file: the running sums as safetensors (format "attnscope-dataset"), with the
// parts, epsilon, shape and model in the metadata; load() checks every size against the tensors.
#include <attnscope/dataset.h>

#include <algorithm>
#include <cmath>

#include <attnscope/json.h>
#include <attnscope/safetensors.h>

#include <sstream>

namespace attnscope {

namespace {
constexpr const char* kFormat = "attnscope-dataset";
constexpr int64_t kVersion = 2;  // 2: model_id is the model's identity (Model::model_id), checked

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
                {"model_id", model_id_},
                {"model_name", model_name_},
                {"allow_different_models", mixed_ || model_id_ == "mixed" ? "1" : "0"}};
  check_loaded(path, kVersion);  // what load would refuse is never written
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
  const int64_t version = meta_int(f, "version", path, 1, INT64_MAX);
  TORCH_CHECK_VALUE(version <= kVersion, "dataset '", path, "' has format version ", version,
                    "; this attnscope reads up to ", kVersion);
  DatasetStats d(DatasetParts::parse(meta("parts")), meta_double(f, "epsilon", path));
  d.n_layers_ = meta_int(f, "n_layers", path, 1, 100000);
  d.n_heads_ = meta_int(f, "n_heads", path, 1, 65536);
  d.length_ = meta_int(f, "length", path, 0, int64_t(1) << 40);
  d.state_ = f.tensors;
  auto opt = [&](const char* k) {
    auto it = f.metadata.find(k);
    return it == f.metadata.end() ? std::string() : it->second;
  };
  // Version 1 kept a description ("family LxH source") in "model": not an identity, so unknown.
  d.model_id_ = version >= 2 ? opt("model_id") : "";
  d.model_name_ = json::valid_utf8(version >= 2 ? opt("model_name") : opt("model"));
  d.mixed_ = opt("allow_different_models") == "1";
  d.check_loaded(path, version);
  return d;
}

void DatasetStats::check_loaded(const std::string& path, int64_t version) const {
  const std::string at = "'" + path + "': ";
  TORCH_CHECK_VALUE(n_layers_ >= 1 && n_heads_ >= 1, at, "the dataset is empty (", n_layers_, " layers x ", n_heads_,
                    " heads): add at least one sequence");
  TORCH_CHECK_VALUE((version < 2 && model_id_.empty()) || is_model_id(model_id_) || model_id_ == "mixed", at,
                    "model_id '", model_id_.substr(0, 40), "' is not an attnscope model id",
                    model_id_.empty() ? " (it is empty: which model made these sums is unknown)" : "");
  // Every sum the parts need, in the shape the metadata says, and nothing else: the sizes
  // come from the metadata, so each must agree with the tensors (a 2.5 KB file saying
  // length=1e8 would otherwise be padded to gigabytes on merge).
  auto shapes = state_shapes(parts_, n_layers_, n_heads_, length_);
  if (state_.count("learned_sink_sum") || state_.count("learned_sink_count"))
    shapes["learned_sink_sum"] = shapes["learned_sink_count"] = {n_layers_, n_heads_};
  for (const auto& [name, shape] : shapes) {
    auto it = state_.find(name);
    TORCH_CHECK_VALUE(it != state_.end(), at, "'", name, "' is missing (parts ", parts_.to_string(), ")");
    const auto& x = it->second;
    TORCH_CHECK_VALUE(x.sizes() == c10::IntArrayRef(shape) && x.scalar_type() == torch::kDouble, at, "'", name, "' is ",
                      x.scalar_type(), " ", x.sizes(), "; n_layers ", n_layers_, ", n_heads ", n_heads_, " and length ",
                      length_, " make it Double ", c10::IntArrayRef(shape));
    TORCH_CHECK_VALUE(torch::isfinite(x).all().item<bool>() && (x >= 0).all().item<bool>(), at, "'", name,
                      "' holds a negative or non-finite value");
  }
  for (const auto& kv : state_)
    TORCH_CHECK_VALUE(shapes.count(kv.first), at, "'", kv.first, "' is not a sum of parts ", parts_.to_string());
  // Counts are whole numbers no larger than the sequences they count.
  const double n = state_.at("n_sequences").item<double>();
  TORCH_CHECK_VALUE(n >= 1 && n == std::floor(n) && n < 9.0e15, at, "n_sequences ", n, " must be a whole number >= 1");
  const auto& pc = state_.at("position_count");
  TORCH_CHECK_VALUE((pc == pc.floor()).all().item<bool>() && (pc <= n).all().item<bool>(), at,
                    "position_count must hold whole numbers of at most n_sequences (", n, ")");
}

}  // namespace attnscope
