#include <attnscope/spec.h>

#include <attnscope/json.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
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
constexpr int64_t kMaxIndex = int64_t(1) << 40;  // layers, heads, positions: far beyond any model
using Pairs = std::vector<std::pair<int64_t, int64_t>>;
using Ints = std::vector<int64_t>;
template <class... F>
struct Overload : F... {
  using F::operator()...;
};
template <class... F>
Overload(F...) -> Overload<F...>;

std::string pairs_json(const Pairs& v) {
  std::string o = "[";
  for (size_t i = 0; i < v.size(); ++i)
    o += (i ? ",[" : "[") + std::to_string(v[i].first) + "," + std::to_string(v[i].second) + "]";
  return o + "]";
}

Pairs pairs_of(const json::Value& v, const SpecField& f) {
  Pairs out;
  if (const json::Value* h = v.get_array(f.name))
    for (size_t k = 0; k < h->arr.size(); ++k) {
      const auto& p = h->arr[k];
      TORCH_CHECK_VALUE(p.is_array() && p.arr.size() == 2, "capture spec: each entry of \"", f.name,
                        "\" must be [layer, head], got ", p.describe());
      const std::string at = "capture spec '" + std::string(f.name) + "'[" + std::to_string(k) + "]";
      out.emplace_back(p.arr[0].as_int(at + " layer", f.lo, f.hi), p.arr[1].as_int(at + " head", f.lo, f.hi));
    }
  return out;
}

Ints ints_of(const json::Value& v, const SpecField& f) {
  Ints out;
  if (const json::Value* a = v.get_array(f.name))
    for (size_t k = 0; k < a->arr.size(); ++k)
      out.push_back(
          a->arr[k].as_int("capture spec '" + std::string(f.name) + "'[" + std::to_string(k) + "]", f.lo, f.hi));
  return out;
}
}  // namespace

const std::vector<SpecField>& spec_fields() {
  static const std::vector<SpecField> fields = {
      {"heads", &CaptureSpec::heads, 0, kMaxIndex, "(layer, head) pairs whose full map is kept"},
      {"layer_maps", &CaptureSpec::layer_maps, 0, kMaxIndex, "layers whose head-mean map is kept"},
      {"layer_map_head", &CaptureSpec::layer_map_head, -1, kMaxIndex,
       "head shown in layer_maps instead of the mean; -1 = mean"},
      {"rollout", &CaptureSpec::rollout, 0, 1,
       "attention rollout of the head-mean maps (0.5 A + 0.5 I), folded layer by layer"},
      {"layers", &CaptureSpec::layers, 0, kMaxIndex, "layers of the aggregates (order kept); empty = every layer"},
      {"received", &CaptureSpec::received, 0, 1,
       "attention each key position receives: mean and max over the queries that see it"},
      {"from_tokens", &CaptureSpec::from_tokens, -kMaxIndex, kMaxIndex,
       "query positions whose rows are kept (negative counts from the end)"},
      {"attn_entropy", &CaptureSpec::attn_entropy, 0, 1, "entropy (nats) of each attention row"},
      {"value_weighted", &CaptureSpec::value_weighted, 0, 1,
       "value-weighted attention (rows α‖v‖ renormalised): received and entropy; SDPA sites"},
      {"sink_tokens", &CaptureSpec::sink_tokens, 0, kMaxIndex, "k > 0: attention on the first k real keys per query"},
      {"row_stats", &CaptureSpec::row_stats, 0, 1,
       "row statistics: self, previous, distance, local, duplicate, induction"},
      {"local_window", &CaptureSpec::local_window, 0, kMaxIndex, "half-width (tokens) of row_local"},
      {"pooled_maps", &CaptureSpec::pooled_maps, 0, int64_t(1) << 16,
       "n > 0: every map pooled into n x n tiles during the run"},
      {"predictive_entropy", &CaptureSpec::predictive_entropy, 0, 1,
       "next-token entropy per position (false: NaN, no pass over the logits)"},
      {"top_k", &CaptureSpec::top_k, 0, int64_t(1) << 24, "top-k next-token predictions per position (0 = none)"},
      {"temperature", &CaptureSpec::temperature, 0, 0, "softmax temperature of predictive entropy and top-k (> 0)"},
      {"to_cpu", &CaptureSpec::to_cpu, 0, 1, "move every capture to the CPU at the end of the run"},
      {"chunk_elements", &CaptureSpec::chunk_elements, 1, kMaxIndex,
       "upper bound on the elements of one attention block"},
  };
  return fields;
}

const std::vector<CaptureName>& capture_names() {
  static const std::vector<CaptureName> names = {
      {"head_map/L{l}H{h}", "heads", 1, "[B, T, T]", true,
       "attention of head h in layer l: row = query i, column = key j"},
      {"layer_map/L{l}", "layer_maps", 1, "[B, T, T]", true, "mean over heads (or head layer_map_head)"},
      {"rollout", "rollout", 1, "[B, T, T]", true,
       "attention rollout: row i = how much each input token j flows into token i's last layer"},
      {"received_mean", "received", 1, "[L, B, H, T]", true,
       "attention key j receives, averaged over the real queries that see it"},
      {"received_count", "received", 1, "[L, B, H, T]", false, "the real queries that see key j"},
      {"received_max", "received", 1, "[L, B, H, T]", true, "max over those queries"},
      {"from", "from_tokens", 0, "[L, B, H, n, T]", true, "rows of the from_tokens queries"},
      {"attn_entropy", "attn_entropy", 1, "[L, B, H, T]", false, "entropy (nats) of each query's attention"},
      {"vw_received_mean", "value_weighted", 1, "[L, B, H, T]", true,
       "value-weighted attention key j receives, averaged over the real queries that see it"},
      {"vw_received_max", "value_weighted", 1, "[L, B, H, T]", true, "its max over those queries"},
      {"vw_attn_entropy", "value_weighted", 1, "[L, B, H, T]", false, "entropy (nats) of each value-weighted row"},
      {"vw_value_norm", "value_weighted", 1, "[L, B, H, T]", false,
       "the weights: norm of key j's value vector as head h reads it (NaN at padding)"},
      {"sink_mass_rows", "sink_tokens", 1, "[L, B, H, T]", true,
       "attention on the first sink_tokens real keys of each row"},
      {"sink_mass", "sink_tokens", 1, "[L, B, H]", true, "its mean over real queries"},
      {"row_self", "row_stats", 1, "[L, B, H, T]", true, "weight on key i"},
      {"row_prev", "row_stats", 1, "[L, B, H, T]", true, "weight on key i-1"},
      {"row_distance", "row_stats", 1, "[L, B, H, T]", false, "sum_j p |i - j| (tokens)"},
      {"row_local", "row_stats", 1, "[L, B, H, T]", true, "mass on keys with |i - j| <= local_window"},
      {"row_duplicate", "row_stats", 1, "[L, B, H, T]", true, "mass on earlier keys with the query's id"},
      {"row_induction", "row_stats", 1, "[L, B, H, T]", true, "mass on keys whose previous token has the query's id"},
      {"pooled_map", "pooled_maps", 0, "[L, B, H, n, n]", true, "maps as n x n tile means"},
      {"pooled_uniform", "pooled_maps", 0, "[L, B, n, n]", true, "tile means of a query attending uniformly"},
      {"sink_share", "", 0, "[L, B, H, T]", true, "models with learned sinks: the sinks' share of each row"},
      {"aggregate_layers", "", 1, "[L]", false, "the layers the aggregates are stacked over"},
  };
  return names;
}

CaptureSpec CaptureSpec::for_captures(const std::vector<std::string>& wanted) {
  CaptureSpec s;
  s.received = s.attn_entropy = s.row_stats = s.predictive_entropy = false;
  s.sink_tokens = s.top_k = 0;
  for (const auto& n : wanted) {
    long long l = -1, h = -1;
    char tail = 0;
    if (std::sscanf(n.c_str(), "head_map/L%lldH%lld%c", &l, &h, &tail) == 2 && l >= 0 && h >= 0) {
      s.heads.emplace_back(l, h);
    } else if (std::sscanf(n.c_str(), "layer_map/L%lld%c", &l, &tail) == 1 && l >= 0) {
      s.layer_maps.push_back(l);
    } else {
      for (const auto& c : capture_names()) {
        if (n != c.name || c.value == 0) continue;
        for (const auto& f : spec_fields())
          if (std::string(f.name) == c.field)
            std::visit(Overload{[&](bool CaptureSpec::*m) { s.*m = true; },
                                [&](int64_t CaptureSpec::*m) { s.*m = std::max(s.*m, c.value); }, [](auto) {}},
                       f.member);
      }
    }
  }
  return s;
}

std::vector<std::string> CaptureSpec::produces() const {
  std::vector<std::string> out;
  for (const auto& lh : heads) out.push_back("head_map/L" + std::to_string(lh.first) + "H" + std::to_string(lh.second));
  for (int64_t l : layer_maps) out.push_back("layer_map/L" + std::to_string(l));
  for (const auto& c : capture_names()) {
    const std::string field = c.field;
    bool on = false;
    if (field.empty()) on = c.value == 1 && wants_aggregates();
    for (const auto& f : spec_fields())
      if (field == f.name && field != "heads" && field != "layer_maps")
        on = std::visit(Overload{[&](bool CaptureSpec::*m) { return this->*m; },
                                 [&](int64_t CaptureSpec::*m) { return this->*m > 0; },
                                 [&](Ints CaptureSpec::*m) { return !(this->*m).empty(); }, [](auto) { return false; }},
                        f.member);
    if (on) out.push_back(c.name);
  }
  return out;
}

std::string CaptureSpec::to_json() const {
  std::ostringstream o;
  o.precision(17);
  o << "{";
  bool first = true;
  for (const auto& f : spec_fields()) {
    o << (first ? "" : ",") << "\"" << f.name << "\":";
    first = false;
    std::visit(Overload{[&](bool CaptureSpec::*m) { o << (this->*m ? "true" : "false"); },
                        [&](int64_t CaptureSpec::*m) { o << this->*m; }, [&](double CaptureSpec::*m) { o << this->*m; },
                        [&](Ints CaptureSpec::*m) { o << json::int_array(this->*m); },
                        [&](Pairs CaptureSpec::*m) { o << pairs_json(this->*m); }},
               f.member);
  }
  o << "}";
  return o.str();
}

CaptureSpec CaptureSpec::from_json(const std::string& text) {
  json::Value v = json::parse(text, "capture spec");
  TORCH_CHECK(v.is_object(), "capture spec: expected a JSON object");
  const auto& fields = spec_fields();
  for (const auto& kv : v.obj)
    TORCH_CHECK_VALUE(std::any_of(fields.begin(), fields.end(), [&](const SpecField& f) { return kv.first == f.name; }),
                      "capture spec: unknown key '", kv.first, "'");
  CaptureSpec s;
  const CaptureSpec d;  // defaults
  for (const auto& f : fields) {
    const std::string key = f.name;
    std::visit(Overload{[&](bool CaptureSpec::*m) { s.*m = v.get_bool(key, d.*m); },
                        [&](int64_t CaptureSpec::*m) { s.*m = v.get_int(key, d.*m, f.lo, f.hi); },
                        [&](double CaptureSpec::*m) {
                          s.*m = v.get_double(key, d.*m);
                          TORCH_CHECK_VALUE(s.*m > f.lo, "capture spec '", key, "': ", s.*m, " must be > ", f.lo);
                        },
                        [&](Ints CaptureSpec::*m) { s.*m = ints_of(v, f); },
                        [&](Pairs CaptureSpec::*m) { s.*m = pairs_of(v, f); }},
               f.member);
  }
  return s;
}

double CaptureSpec::kept_bytes(int64_t L, int64_t B, int64_t H, int64_t T) const {
  const double t = static_cast<double>(T), b = static_cast<double>(B), h = static_cast<double>(H);
  const double la = layers.empty() ? static_cast<double>(L) : static_cast<double>(layers.size());
  const double n = static_cast<double>(std::min(pooled_maps, T));
  const double maps = static_cast<double>(heads.size() + layer_maps.size() + (rollout ? 3 : 0)) * b * t * t;
  const double pooled = pooled_maps > 0 ? la * b * (h + 1) * n * n : 0.0;
  const double per_token = la * b * h * t * 16;  // every aggregate at once, generously
  return 4.0 * (maps + pooled + per_token);
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
  TORCH_CHECK_VALUE(!rollout || layer_map_head == -1, "rollout folds the head-mean maps, but layer_map_head is ",
                    layer_map_head, ": run the rollout with layer_map_head -1");
  for (int64_t l : layers) check_layer(l, "layers");
  for (const auto& f : spec_fields())  // the table's bounds (Python may set fields directly)
    std::visit(Overload{[&](int64_t CaptureSpec::*m) {
                          TORCH_CHECK_VALUE(this->*m >= f.lo && this->*m <= f.hi, f.name, " ", this->*m,
                                            " out of range: expected ", f.lo, "..", f.hi, " (", f.doc, ")");
                        },
                        [&](double CaptureSpec::*m) {
                          TORCH_CHECK_VALUE(this->*m > f.lo, f.name, " ", this->*m, " must be > ", f.lo);
                        },
                        [](auto) {}},
               f.member);
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
