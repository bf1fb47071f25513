#include <attnscope/dataset.h>

#include <attnscope/safetensors.h>

#include <cmath>
#include <limits>
#include <sstream>

namespace attnscope {

namespace {
torch::Tensor pad_positions(const torch::Tensor& t, int dims, int64_t length) {
  if (dims == 0 || t.size(-1) >= length) return t;
  int64_t extra = length - t.size(-1);
  std::vector<int64_t> pad(dims == 2 ? 4 : 2, 0);
  pad[1] = extra;
  if (dims == 2) pad[3] = extra;
  return torch::constant_pad_nd(t, pad, 0);
}

// The six row statistics in the order of row_stat_sum's first axis (spec.cpp's capture names).
const std::vector<std::string>& row_stat_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& c : capture_names())
      if (std::string(c.field) == "row_stats") out.push_back(c.name);
    return out;
  }();
  return names;
}
}  // namespace

int DatasetStats::position_dims(const std::string& name) {
  if (name == "layer_map_sum" || name == "head_map_sum") return 2;
  if (name == "n_sequences" || name == "sink_hits" || name == "row_stat_sum" || name == "row_stat_count" ||
      name == "learned_sink_sum" || name == "learned_sink_count")
    return 0;
  return 1;
}

CaptureSpec dataset_capture_spec(const DatasetParts& parts, int64_t n_layers, int64_t n_heads) {
  TORCH_CHECK(n_layers > 0 && n_heads > 0, "dataset_capture_spec: the model's layers (", n_layers,
              ") and heads (", n_heads, ") must be known");
  CaptureSpec s;
  s.top_k = 0;
  s.to_cpu = false;  // sums stay on the model's device; only results are moved
  if (parts.layer_maps)
    for (int64_t l = 0; l < n_layers; ++l) s.layer_maps.push_back(l);
  if (parts.head_maps)
    for (int64_t l = 0; l < n_layers; ++l)
      for (int64_t h = 0; h < n_heads; ++h) s.heads.emplace_back(l, h);
  s.received = parts.received;
  s.attn_entropy = parts.attn_entropy;
  s.row_stats = parts.row_stats;
  return s;
}

DatasetStats::DatasetStats(DatasetParts parts, double epsilon) : parts_(parts), epsilon_(epsilon) {
  TORCH_CHECK(parts.layer_maps || parts.head_maps || parts.received || parts.attn_entropy || parts.row_stats,
              "DatasetStats: every part is off; enable at least one of layer_maps, head_maps, "
              "received, attn_entropy, row_stats");
  TORCH_CHECK_VALUE(epsilon >= 0 && epsilon < 1, "epsilon ", epsilon, " out of range: expected [0, 1)");
}

std::vector<std::string> DatasetStats::max_state_names() { return {"received_max"}; }

int64_t DatasetStats::n_sequences() const {
  auto it = state_.find("n_sequences");
  return it == state_.end() ? 0 : static_cast<int64_t>(it->second.item<double>());
}

std::map<std::string, std::vector<int64_t>> DatasetStats::state_shapes(const DatasetParts& parts, int64_t L, int64_t H,
                                                                       int64_t T) {
  std::map<std::string, std::vector<int64_t>> s{
      {"n_sequences", {1}}, {"position_count", {T}}, {"pred_entropy_sum", {T}}};
  if (parts.layer_maps) s["layer_map_sum"] = {L, T, T};
  if (parts.head_maps) s["head_map_sum"] = {L, H, T, T};
  if (parts.received) {
    s["received_sum"] = {L, H, T};
    s["received_max"] = {L, H, T};
    s["sink_hits"] = {L, H};
  }
  if (parts.attn_entropy) s["entropy_sum"] = {L, H, T};
  if (parts.row_stats) {
    s["row_stat_sum"] = {6, L, H};
    s["row_stat_count"] = {6, L, H};
  }
  return s;
}

void DatasetStats::init(const Trace& t, const torch::Device& device) {
  n_layers_ = t.n_layers;
  n_heads_ = t.n_heads;
  auto o = torch::TensorOptions().dtype(torch::kDouble).device(device);
  for (const auto& [name, shape] : state_shapes(parts_, n_layers_, n_heads_, 0)) state_[name] = torch::zeros(shape, o);
}

void DatasetStats::resize(int64_t length) {
  if (length <= length_) return;
  for (auto& kv : state_) kv.second = pad_positions(kv.second, position_dims(kv.first), length);
  length_ = length;
}

torch::Tensor DatasetStats::check_addable(const Trace& t) const {
  TORCH_CHECK(t.input_ids.defined() && t.input_ids.dim() == 2, "DatasetStats.add: the trace has "
              "no [B, T] input_ids");
  TORCH_CHECK(t.n_layers > 0 && t.n_heads > 0, "DatasetStats.add: the trace does not know its "
              "layers/heads (n_layers=", t.n_layers, ", n_heads=", t.n_heads, ")");
  TORCH_CHECK(n_layers_ < 0 || (t.n_layers == n_layers_ && t.n_heads == n_heads_),
              "DatasetStats.add: trace has ", t.n_layers, " layers x ", t.n_heads,
              " heads, the dataset ", n_layers_, " x ", n_heads_);
  const int64_t T = t.input_ids.size(1), L = t.n_layers;
  torch::Device dev = torch::kCPU;  // the sums live where the captures are (CUDA with to_cpu=false)
  if (n_layers_ >= 0) dev = state_.at("n_sequences").device();
  else
    for (const auto& kv : t.captures)
      if (kv.first != "aggregate_layers") {  // (a small CPU index tensor)
        dev = kv.second.device();
        break;
      }
  auto valid = (t.attention_mask.defined() ? t.attention_mask : torch::ones_like(t.input_ids))
                   .to(dev).to(torch::kBool);
  // Positions are only comparable across sequences when every sequence starts at 0.
  TORCH_CHECK(T > 0 && valid.select(1, 0).all().item<bool>() &&
                  !valid.narrow(1, 1, T - 1).logical_and(valid.narrow(1, 0, T - 1).logical_not())
                       .any().item<bool>(),
              "DatasetStats.add: sequences must be right-padded (attention_mask 1..1 0..0) and "
              "non-empty; got a mask with padding before a real token");
  auto layers = t.captures.count("aggregate_layers") ? t.captures.at("aggregate_layers") : torch::Tensor();
  if (parts_.received || parts_.attn_entropy || parts_.row_stats) {
    TORCH_CHECK(layers.defined() && layers.numel() == L &&
                    layers.cpu().equal(torch::arange(L, torch::kLong)),
                "DatasetStats.add: the trace must hold aggregates of every layer 0..", L - 1,
                " (CaptureSpec.layers empty = all); see dataset_capture_spec()");
  }
  for (const auto& n : parts_.needed(L, t.n_heads)) t.get(n);  // throws naming the missing capture
  return valid;
}

void DatasetStats::check_model(const std::string& id, const std::string& name, const char* who) {
  const bool first = n_layers_ < 0 && model_id_.empty();
  if (first || id == model_id_) {
    model_id_ = id, model_name_ = name.empty() ? model_name_ : name;
    return;
  }
  const auto said = [](const std::string& i, const std::string& n) {
    return i.empty() ? "an unknown model (a file written before model ids)" : "'" + n + "' (" + i + ")";
  };
  TORCH_CHECK_VALUE(mixed_, who, ": these sums come from ", said(model_id_, model_name_), ", the ",
                    std::string(who).find("merge") != std::string::npos ? "other dataset" : "trace", " from ",
                    said(id, name),
                    ": same shape is not the same model; set allow_different_models to pool "
                    "different models on purpose");
  model_id_ = "mixed";
}

void DatasetStats::add(const Trace& t) {
  // Everything is checked before any sum changes: a rejected trace leaves the stats as they were.
  const auto valid = check_addable(t);  // [B, T] bool on the sums' device
  if (!(mixed_ && model_id_ == "mixed")) check_model(t.model_id, t.model_name, "DatasetStats.add");
  const auto dev = valid.device();
  const int64_t B = t.input_ids.size(0), T = t.input_ids.size(1), L = t.n_layers;
  if (n_layers_ < 0) init(t, dev);
  resize(T);
  auto vd = valid.to(torch::kDouble);                                   // [B, T]
  auto narrow_t = [&](torch::Tensor& s, int dims) {
    auto v = s;
    for (int d = 0; d < dims; ++d) v = v.narrow(s.dim() - 1 - d, 0, T);
    return v;
  };
  state_["n_sequences"].add_(B);
  narrow_t(state_["position_count"], 1).add_(vd.sum(0));
  if (t.entropy.defined())
    narrow_t(state_["pred_entropy_sum"], 1)
        .add_(torch::where(valid, t.entropy.to(dev).to(torch::kDouble), 0.0).sum(0));

  auto vk = valid.view({1, B, 1, T});
  if (parts_.received) {
    auto recv = t.get("received_mean").to(dev).to(torch::kDouble);    // [L, B, H, T]
    auto recv_ok = torch::where(vk, recv, 0.0);
    narrow_t(state_["received_sum"], 1).add_(recv_ok.sum(1));
    auto mx = narrow_t(state_["received_max"], 1);
    auto rmax = torch::where(vk, t.get("received_max").to(dev).to(torch::kDouble), 0.0).amax(1);
    torch::max_out(mx, mx, rmax);
    // α₁ of each sequence: attention the first token receives, mean over the queries.
    state_["sink_hits"].add_((recv.select(3, 0) > epsilon_).to(torch::kDouble).sum(1));
  }
  if (parts_.attn_entropy) {
    auto ent = t.get("attn_entropy").to(dev).to(torch::kDouble);      // [L, B, H, T]
    narrow_t(state_["entropy_sum"], 1).add_(torch::where(vk, ent, 0.0).sum(1));
  }
  if (parts_.row_stats)
    for (int s = 0; s < 6; ++s) {
      auto x = t.get(row_stat_names()[s]).to(dev).to(torch::kDouble);  // [L, B, H, T], NaN = undefined or padding
      auto ok = x.isnan().logical_not();
      state_["row_stat_sum"][s].add_(torch::where(ok, x, 0.0).sum({1, 3}));
      state_["row_stat_count"][s].add_(ok.sum({1, 3}, false, torch::kDouble));
    }
  // Learned attention sinks (GPT-OSS): their share of each real row, per head, with the row
  // statistics (the atlas's learned_sink). Kept only for models that have them.
  if (parts_.row_stats && t.captures.count("sink_share")) {
    auto x = t.get("sink_share").to(dev).to(torch::kDouble);  // [L, B, H, T], NaN at padding
    auto ok = x.isnan().logical_not();
    auto& sum = state_["learned_sink_sum"];
    auto& count = state_["learned_sink_count"];
    if (!sum.defined()) {
      sum = torch::zeros({L, n_heads_}, torch::dtype(torch::kDouble).device(dev));
      count = torch::zeros_like(sum);
    }
    sum.add_(torch::where(ok, x, 0.0).sum({1, 3}));
    count.add_(ok.sum({1, 3}, false, torch::kDouble));
  }
  add_maps(t, valid);
}

void DatasetStats::add_maps(const Trace& t, const torch::Tensor& valid) {
  const auto dev = valid.device();
  const int64_t T = t.input_ids.size(1), L = t.n_layers;
  auto narrow_t = [&](torch::Tensor& s) { return s.narrow(s.dim() - 1, 0, T).narrow(s.dim() - 2, 0, T); };
  // [B, T, T]: both positions real (padded rows/columns of a map are left out of the sums)
  auto pair = valid.unsqueeze(2).logical_and(valid.unsqueeze(1));
  if (parts_.layer_maps) {
    auto sum = narrow_t(state_["layer_map_sum"]);
    for (int64_t l = 0; l < L; ++l) {
      auto m = t.get("layer_map/L" + std::to_string(l)).to(dev).to(torch::kDouble);  // [B, T, T]
      sum[l].add_(torch::where(pair, m, 0.0).sum(0));
    }
  }
  if (parts_.head_maps) {
    auto sum = narrow_t(state_["head_map_sum"]);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t h = 0; h < n_heads_; ++h) {
        auto m = t.get("head_map/L" + std::to_string(l) + "H" + std::to_string(h)).to(dev).to(torch::kDouble);
        sum[l][h].add_(torch::where(pair, m, 0.0).sum(0));
      }
  }
}

void DatasetStats::merge(const DatasetStats& other) {
  if (other.n_layers_ < 0) return;
  if (!(mixed_ && model_id_ == "mixed")) check_model(other.model_id_, other.model_name_, "DatasetStats.merge");
  TORCH_CHECK(parts_.to_string() == other.parts_.to_string(), "DatasetStats.merge: parts differ (",
              parts_.to_string(), " vs ", other.parts_.to_string(), ")");
  TORCH_CHECK(epsilon_ == other.epsilon_, "DatasetStats.merge: epsilon differs (", epsilon_,
              " vs ", other.epsilon_, ")");
  if (n_layers_ < 0) {
    n_layers_ = other.n_layers_;
    n_heads_ = other.n_heads_;
    length_ = other.length_;
    for (const auto& kv : other.state_) state_[kv.first] = kv.second.clone();
    return;
  }
  TORCH_CHECK(n_layers_ == other.n_layers_ && n_heads_ == other.n_heads_, "DatasetStats.merge: ",
              n_layers_, " layers x ", n_heads_, " heads vs ", other.n_layers_, " x ", other.n_heads_);
  resize(other.length_);
  for (auto& kv : state_) {
    auto o = pad_positions(other.state_.at(kv.first), position_dims(kv.first), length_)
                 .to(kv.second.device());
    if (kv.first == "received_max") torch::max_out(kv.second, kv.second, o);
    else kv.second.add_(o);
  }
}

const torch::Tensor& DatasetStats::need(const std::string& name, const char* part) const {
  auto it = state_.find(name);
  TORCH_CHECK(n_layers_ >= 0, "the dataset is empty: add at least one sequence");
  TORCH_CHECK(it != state_.end(), "the dataset statistics have no ", part,
              ": aggregate with that part enabled (DatasetParts.", part, ")");
  return it->second;
}

torch::Tensor DatasetStats::position_count() const {
  return need("position_count", "layer_maps").to(torch::kFloat);
}

torch::Tensor DatasetStats::layer_map(int64_t layer, int64_t head) const {
  TORCH_CHECK(n_layers_ >= 0, "the dataset is empty: add at least one sequence");
  TORCH_CHECK(layer >= 0 && layer < n_layers_, "layer ", layer, " out of range: the dataset has ",
              n_layers_, " layers");
  TORCH_CHECK(head >= -1 && head < n_heads_, "head ", head, " out of range: the dataset has ",
              n_heads_, " heads (-1 = mean over heads)");
  auto pc = need("position_count", "layer_maps");
  // With right padding a sequence has both i and j exactly when it has max(i, j).
  auto idx = torch::arange(length_, pc.options().dtype(torch::kLong));
  auto count = pc.index({torch::max(idx.unsqueeze(1), idx.unsqueeze(0))}).clamp_min(1);
  auto sum = head < 0 ? need("layer_map_sum", "layer_maps")[layer]
                      : need("head_map_sum", "head_maps")[layer][head];
  return (sum / count).to(torch::kFloat);
}

torch::Tensor DatasetStats::alpha() const {
  auto s = need("received_sum", "received");
  return (s / need("position_count", "received").clamp_min(1)).to(torch::kFloat);
}

torch::Tensor DatasetStats::received_max() const {
  return need("received_max", "received").to(torch::kFloat);
}

torch::Tensor DatasetStats::sink_rate() const {
  auto hits = need("sink_hits", "received");
  return (hits / std::max<int64_t>(n_sequences(), 1)).to(torch::kFloat);
}

torch::Tensor DatasetStats::sink1_per_layer() const { return sink_rate().mean(1); }

double DatasetStats::sink1() const { return sink_rate().to(torch::kDouble).mean().item<double>(); }

torch::Tensor DatasetStats::attn_entropy() const {
  auto s = need("entropy_sum", "attn_entropy");
  return (s / need("position_count", "attn_entropy").clamp_min(1)).to(torch::kFloat);
}

torch::Tensor DatasetStats::head_entropy() const {
  auto s = need("entropy_sum", "attn_entropy").sum(-1);
  return (s / need("position_count", "attn_entropy").sum().clamp_min(1)).to(torch::kFloat);
}

torch::Tensor DatasetStats::row_stats() const {
  auto n = need("row_stat_count", "row_stats");
  auto mean = need("row_stat_sum", "row_stats") / n.clamp_min(1);
  return torch::where(n > 0, mean, std::numeric_limits<double>::quiet_NaN()).to(torch::kFloat);
}

std::optional<torch::Tensor> DatasetStats::learned_sink() const {
  auto it = state_.find("learned_sink_sum");
  if (it == state_.end()) return std::nullopt;
  auto c = state_.find("learned_sink_count");
  TORCH_CHECK_VALUE(c != state_.end() && it->second.sizes() == c->second.sizes() && it->second.dim() == 2 &&
                        it->second.size(0) == n_layers_ && it->second.size(1) == n_heads_,
                    "dataset: learned_sink_sum/learned_sink_count must both be [", n_layers_, ", ", n_heads_, "]");
  const auto& n = c->second;
  return torch::where(n > 0, it->second / n.clamp_min(1), std::numeric_limits<double>::quiet_NaN()).to(torch::kFloat);
}

torch::Tensor DatasetStats::row_stat_counts() const { return need("row_stat_count", "row_stats").clone(); }

torch::Tensor DatasetStats::predictive_entropy() const {
  auto s = need("pred_entropy_sum", "layer_maps");
  return (s / need("position_count", "layer_maps").clamp_min(1)).to(torch::kFloat);
}

}  // namespace attnscope
