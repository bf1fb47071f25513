// A loaded trace checked against itself (Trace::load): ids, mask, top-k, head facts, the spec
// and every capture agree in shape with the ids [B, T] and the stated layer and head counts, and
// values that are probabilities lie in [0, 1]. A file edited by hand or by a broken writer is
// refused by name here instead of failing, or misleading, in a figure later.
#include <attnscope/trace.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace attnscope {

namespace {

/// Values outside [lo, hi] (NaN allowed: undefined positions).
bool outside(const torch::Tensor& x, double lo, double hi) {
  return x.numel() > 0 && (x.lt(lo).any().item<bool>() || x.gt(hi).any().item<bool>());
}

// The mask: 0/1 integers, and each row's real tokens one run (padding on the left or right).
void check_ids_and_mask(const Trace& t, const std::string& at) {
  const auto B = t.input_ids.size(0), T = t.input_ids.size(1);
  TORCH_CHECK_VALUE(B > 0 && T > 0, at, "input_ids is empty (", B, " x ", T, ")");
  TORCH_CHECK_VALUE(t.input_ids.min().item<int64_t>() >= 0, at, "token id ", t.input_ids.min().item<int64_t>(),
                    " is negative: ids must be in [0, vocab_size)");
  const auto& m = t.attention_mask;
  TORCH_CHECK_VALUE(!m.is_floating_point() && !m.is_complex(), at, "attention_mask must hold integers 0/1, got ",
                    m.scalar_type());
  const auto mk = m.to(torch::kLong);
  TORCH_CHECK_VALUE(!outside(mk, 0, 1), at, "attention_mask holds ",
                    mk.max().item<int64_t>() > 1 ? mk.max().item<int64_t>() : mk.min().item<int64_t>(),
                    ": only 0 (padding) and 1 (token) are allowed");
  const auto real = mk.sum(1);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(real[b].item<int64_t>() > 0, at, "row ", b, " of attention_mask has no real token");
    // One run of ones: the number of 0 -> 1 and 1 -> 0 steps, with zeros outside the row, is 2.
    const auto padded = torch::cat({torch::zeros({1}, torch::kLong), mk[b], torch::zeros({1}, torch::kLong)});
    const auto steps = padded.narrow(0, 1, T + 1).ne(padded.narrow(0, 0, T + 1)).sum().item<int64_t>();
    TORCH_CHECK_VALUE(steps == 2, at, "row ", b, " of attention_mask has a hole: real tokens must be one run, "
                      "with padding only on the left or the right");
  }
}

void check_predictions(const Trace& t, const std::string& at) {
  const auto B = t.input_ids.size(0), T = t.input_ids.size(1);
  TORCH_CHECK_VALUE(t.entropy.is_floating_point(), at, "entropy must be floating point, got ", t.entropy.scalar_type());
  TORCH_CHECK_VALUE(t.topk_probs.defined() == t.topk_ids.defined(), at, "topk_probs and topk_ids come together");
  if (!t.topk_ids.defined()) return;
  const auto& p = t.topk_probs;
  TORCH_CHECK_VALUE(p.dim() == 3 && p.size(0) == B && p.size(1) == T && t.topk_ids.sizes() == p.sizes() &&
                        p.is_floating_point() && !t.topk_ids.is_floating_point(),
                    at, "topk_probs (float) and topk_ids (int) must both be [", B, ", ", T, ", k], got ", p.sizes(),
                    " and ", t.topk_ids.sizes());
  TORCH_CHECK_VALUE(t.topk_ids.numel() == 0 || t.topk_ids.min().item<int64_t>() >= 0, at,
                    "topk_ids holds a negative id");
  TORCH_CHECK_VALUE(!outside(p, 0, 1), at, "topk_probs holds values outside [0, 1]");
}

// Heads, layer facts and the spec against the stated layer and head counts.
void check_layer_facts(const Trace& t, const std::string& at) {
  // The ranges a trace file's metadata is read with: a trace outside them is never written.
  TORCH_CHECK_VALUE(t.n_layers >= 1 && t.n_layers <= 100000, at, "n_layers ", t.n_layers, " out of range 1..100000");
  TORCH_CHECK_VALUE(t.n_heads >= 1 && t.n_heads <= 65536, at, "n_heads ", t.n_heads, " out of range 1..65536");
  TORCH_CHECK_VALUE(t.n_kv_heads >= 1 && t.n_kv_heads <= t.n_heads, at, "n_kv_heads ", t.n_kv_heads,
                    " out of range 1..n_heads (", t.n_heads, ")");
  if (t.kv_head_of.defined()) {  // each query head's KV head
    const auto& k = t.kv_head_of;
    TORCH_CHECK_VALUE(k.dim() == 1 && k.size(0) == t.n_heads && !k.is_floating_point(), at, "kv_head_of must be [",
                      t.n_heads, "] integers (one per head), got ", k.sizes(), " ", k.scalar_type());
    TORCH_CHECK_VALUE(!outside(k.to(torch::kLong), 0, t.n_kv_heads - 1), at, "kv_head_of holds a KV head outside 0..",
                      t.n_kv_heads - 1);
  }
  TORCH_CHECK_VALUE(t.layer_paths.empty() || static_cast<int64_t>(t.layer_paths.size()) == t.n_layers, at,
                    t.layer_paths.size(), " layer_paths for n_layers ", t.n_layers);
  for (size_t i = 0; i < t.attention_layers.size(); ++i)
    TORCH_CHECK_VALUE(t.attention_layers[i] >= 0 && t.attention_layers[i] < t.n_layers &&
                          (i == 0 || t.attention_layers[i] > t.attention_layers[i - 1]),
                      at, "attention_layers must increase within 0..", t.n_layers - 1, ", got ",
                      t.attention_layers[i], " at ", i);
  try {
    t.spec.validate(t.n_layers, t.n_heads, t.input_ids.size(1));
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, at, "its capture spec does not fit the trace: ", e.what_without_backtrace());
  }
}

// A map capture: "head_map/L{l}H{h}" or "layer_map/L{l}", float [B, T, T] attention weights.
bool check_map(const Trace& t, const std::string& at, const std::string& name, const torch::Tensor& x) {
  static const std::regex head_map(R"(head_map/L(\d{1,9})H(\d{1,9}))"), layer_map(R"(layer_map/L(\d{1,9}))");
  std::smatch mm;
  const bool hm = std::regex_match(name, mm, head_map);
  if (!hm && !std::regex_match(name, mm, layer_map)) return false;
  const auto B = t.input_ids.size(0), T = t.input_ids.size(1);
  const int64_t l = std::stoll(mm[1]);
  TORCH_CHECK_VALUE(l < t.n_layers, at, name, ": layer ", l, " out of range: the trace has ", t.n_layers, " layers");
  if (hm)
    TORCH_CHECK_VALUE(std::stoll(mm[2]) < t.n_heads, at, name, ": head ", mm[2].str(), " out of range: the trace has ",
                      t.n_heads, " heads");
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(0) == B && x.size(1) == T && x.size(2) == T && x.is_floating_point(), at,
                    name, " must be a float [", B, ", ", T, ", ", T, "] map, got ", x.sizes(), " ", x.scalar_type());
  TORCH_CHECK_VALUE(!outside(x, 0.0, 1.0 + 1e-4), at, name, " holds values outside [0, 1]: not attention weights");
  return true;
}

// An aggregate capture [L, B, ...]: its dims and values as capture_names() describes them.
void check_aggregate(const Trace& t, const std::string& at, const std::string& name, const torch::Tensor& x,
                     int64_t n_agg) {
  const CaptureName* c = nullptr;
  for (const auto& a : capture_names())
    if (name == a.name) c = &a;
  TORCH_CHECK_VALUE(c && std::string(c->shape).rfind("[L, B", 0) == 0, at, "unknown capture '", name, "'");
  std::vector<int64_t> want;  // sizes, 0 where any size goes
  std::istringstream dims(std::string(c->shape).substr(1, std::strlen(c->shape) - 2));
  for (std::string d; std::getline(dims, d, ',');) {
    d.erase(0, d.find_first_not_of(' '));
    want.push_back(d == "L"   ? n_agg
                   : d == "B" ? t.input_ids.size(0)
                   : d == "H" ? t.n_heads
                   : d == "T" ? t.input_ids.size(1)
                              : 0);
  }
  bool ok = x.is_floating_point() && x.dim() == static_cast<int64_t>(want.size());
  for (size_t d = 0; ok && d < want.size(); ++d) ok = want[d] <= 0 || x.size(d) == want[d];
  std::ostringstream w;  // the expected shape, "?" where any size goes
  for (size_t d = 0; d < want.size(); ++d) w << (d ? ", " : "[") << (want[d] > 0 ? std::to_string(want[d]) : "?");
  w << "]";
  TORCH_CHECK_VALUE(ok, at, name, " must be a float ", w.str(), " tensor ", c->shape, ", got ", x.sizes(), " ",
                    x.scalar_type());
  TORCH_CHECK_VALUE(x.size(0) <= t.n_layers, at, name, " has ", x.size(0), " layers; the trace has ", t.n_layers);
  if (c->probability) {
    TORCH_CHECK_VALUE(!outside(x, 0.0, 1.0 + 1e-4), at, name, " holds values outside [0, 1]");
  } else {
    TORCH_CHECK_VALUE(!outside(x, -1e-4, INFINITY), at, name, " holds negative values");
  }
}

}  // namespace

bool is_model_id(const std::string& id) {
  return id.size() == 18 && (id[0] == 'w' || id[0] == 'm') && id[1] == ':' &&
         id.find_first_not_of("0123456789abcdef", 2) == std::string::npos;
}

void check_trace(const Trace& t, const std::string& where) {
  const std::string at = "'" + where + "': ";
  check_ids_and_mask(t, at);
  check_predictions(t, at);
  check_layer_facts(t, at);
  TORCH_CHECK_VALUE(t.model_id.empty() || is_model_id(t.model_id), at, "model_id '", t.model_id.substr(0, 40),
                    "' is not an attnscope model id (w: or m: and 16 hex digits)");
  TORCH_CHECK_VALUE(t.model_name.size() <= 4096, at, "model_name of ", t.model_name.size(), " bytes (at most 4096)");
  // Captures: aggregates [L, B, ...] over the aggregate layers, maps [B, T, T].
  int64_t n_agg = -1;
  if (t.captures.count("aggregate_layers")) {
    const auto& a = t.captures.at("aggregate_layers");
    TORCH_CHECK_VALUE(a.dim() == 1 && !a.is_floating_point(), at, "aggregate_layers must be a 1-D integer tensor");
    TORCH_CHECK_VALUE(!outside(a.to(torch::kLong), 0, t.n_layers - 1), at, "aggregate_layers names a layer outside 0..",
                      t.n_layers - 1, " (n_layers ", t.n_layers, ")");
    n_agg = a.size(0);
  }
  for (const auto& [name, x] : t.captures)
    if (name != "aggregate_layers" && !check_map(t, at, name, x)) check_aggregate(t, at, name, x, n_agg);
  // How each layer was recorded (after the layer facts, which name the commoner edits).
  TORCH_CHECK_VALUE(static_cast<int64_t>(t.routes.size()) <= std::max<int64_t>(t.n_layers, 0), at, t.routes.size(),
                    " routes for n_layers ", t.n_layers);
  for (const auto& r : t.routes)
    TORCH_CHECK_VALUE(r.empty() || r == "fused" || r == "blocks" || r == "softmax" || r == "probabilities", at,
                      "route '", r, "' is not one of fused, blocks, softmax, probabilities");
}

}  // namespace attnscope
