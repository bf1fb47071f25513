// CaptureSpec: what a run keeps. The recorder computes exactly this while the model runs
// and discards every attention block once its contribution is taken.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace attnscope {

struct CaptureSpec {
  /// (layer, head) pairs whose full map is kept: "head_map/L{l}H{h}" [B, Tq, Tk].
  std::vector<std::pair<int64_t, int64_t>> heads;
  /// Layers whose head-mean map is kept: "layer_map/L{l}" [B, Tq, Tk].
  std::vector<int64_t> layer_maps;
  /// Head shown in layer_maps instead of the mean over heads; -1 = mean.
  int64_t layer_map_head = -1;
  /// "rollout" [B, T, T]: attention rollout (Abnar & Zuidema 2020) of the head-mean maps,
  /// R = Ã_L ··· Ã_1 with Ã = 0.5·A + 0.5·I (rows renormalised), folded layer by layer during
  /// the run (one T x T state, no map per layer kept).
  bool rollout = false;

  /// Layers for the per-position aggregates below (order kept); empty = every layer.
  std::vector<int64_t> layers;
  /// "received_mean" / "received_max" [L, B, H, Tk]: attention each key position receives,
  /// mean (sum / number of queries that can see it) and max over those queries.
  bool received = false;
  /// Query positions (negative counts from the end) whose rows are kept: "from" [L, B, H, n, Tk].
  std::vector<int64_t> from_tokens;
  /// "attn_entropy" [L, B, H, Tq]: entropy (nats) of each attention row.
  bool attn_entropy = false;
  /// Value-weighted attention (Kobayashi et al. 2020) with the value vectors alone: each row
  /// α_ij‖v_j‖ renormalised (v_j the value vector of the head's KV head), as
  /// "vw_received_mean" / "vw_received_max" [L, B, H, Tk] and "vw_attn_entropy" [L, B, H, Tq];
  /// "vw_value_norm" [L, B, H, Tk] holds the weights ‖v_j‖.
  /// SDPA sites only (a softmax site does not show its V to the operators).
  bool value_weighted = false;
  /// k > 0 keeps "sink_mass_rows" [L, B, H, Tq] (attention to the first k keys per query)
  /// and "sink_mass" [L, B, H] (its mean over valid queries).
  int64_t sink_tokens = 0;
  /// Row statistics [L, B, H, Tq] per query row i (NaN where undefined): "row_self" (weight on
  /// key i), "row_prev" (on key i-1; NaN at the first real token), "row_distance" (Σⱼ p·|i−j|,
  /// tokens), "row_local" (mass on keys with |i−j| <= local_window), "row_duplicate" (mass on
  /// earlier keys with the query's id; NaN without one), "row_induction" (mass on earlier keys j
  /// whose previous token j−1 has the query's id, Olsson et al.; NaN without one).
  bool row_stats = false;
  /// Half-width w (tokens) of "row_local": keys j with |i − j| <= w, the query included.
  int64_t local_window = 8;
  /// n > 0: maps pooled into n x n tiles during the run, O(L·H·n²) memory whatever the length.
  /// Tile k covers positions [floor(k·T/n), floor((k+1)·T/n)) (n is capped at T).
  /// "pooled_map" [L, B, H, n, n]: mean attention over the tile's cells with a real query and a
  /// real key (masked cells count as 0); "pooled_uniform" [L, B, n, n]: the same mean for a query
  /// that spreads its attention evenly over the keys it sees (head 0's mask), the reference of
  /// the figures' "uniform" scale. NaN where a tile has no real cell.
  int64_t pooled_maps = 0;

  /// Predictive entropy per position (Trace::entropy, nats); false leaves it NaN and skips the
  /// pass over the logits (re-runs for missing maps do).
  bool predictive_entropy = true;
  /// Top-k next-token predictions per position (0 = none).
  int64_t top_k = 5;
  /// Softmax temperature for predictive entropy and top-k.
  double temperature = 1.0;
  /// Move every captured tensor to the CPU at the end of the run.
  bool to_cpu = true;
  /// Upper bound on the elements of one attention block [B, H_sel, rows, Tk] on a GPU
  /// (256 MiB in fp32: few kernel launches at 32k tokens), lowered when the device has less
  /// memory left (sdpa_blocks.h); the CPU caps blocks at 2^18.
  int64_t chunk_elements = int64_t(1) << 26;

  /// Every aggregate for every layer (received, entropy, sink mass of the first token, row statistics).
  static CaptureSpec all_aggregates();
  /// The spec that produces the captures `names` ("head_map/L0H1", "received_mean", ...; see
  /// capture_names()); names no field can produce alone (unknown ones, "from", "pooled_map",
  /// which need positions or a tile count) are left out.
  static CaptureSpec for_captures(const std::vector<std::string>& names);
  /// Names of the captures a run with this spec produces (maps expanded per layer and head;
  /// without the model-dependent ones, e.g. sink_share).
  std::vector<std::string> produces() const;
  /// True when a run with this spec keeps any attention capture (maps or aggregates).
  bool captures_anything() const { return !heads.empty() || !layer_maps.empty() || rollout || wants_aggregates(); }
  /// True when `layer` is among the aggregate layers.
  bool aggregates_layer(int64_t layer) const;
  bool wants_aggregates() const {
    return received || attn_entropy || value_weighted || sink_tokens > 0 || row_stats || pooled_maps > 0 ||
           !from_tokens.empty();
  }

  std::string to_json() const;
  static CaptureSpec from_json(const std::string& text);
  /// Checks the spec against a model's size; n_layers/n_heads < 0 = unknown (checked after the run).
  /// Bytes a run of `B` sequences of `T` tokens keeps for these captures on a model of `L`
  /// layers and `H` heads: maps (B·T² each), pooled maps (n ≤ T tiles a side, per head) and the
  /// per-token aggregates; estimated before the run allocates them (check_bytes).
  double kept_bytes(int64_t L, int64_t B, int64_t H, int64_t T) const;
  void validate(int64_t n_layers, int64_t n_heads, int64_t seq_len) const;
};

/// One CaptureSpec field, described once: to_json, from_json, validate, the Python binding and
/// Python's CaptureSpec.fields() all read this table (spec.cpp), so a new field is one entry.
struct SpecField {
  using Member =
      std::variant<bool CaptureSpec::*, int64_t CaptureSpec::*, double CaptureSpec::*,
                   std::vector<int64_t> CaptureSpec::*, std::vector<std::pair<int64_t, int64_t>> CaptureSpec::*>;
  const char* name;
  Member member;
  /// Integers (and each element of a list) lie in [lo, hi]; a double must be > lo.
  int64_t lo, hi;
  const char* doc;
};
const std::vector<SpecField>& spec_fields();

/// One capture a run can produce: its name ("{l}"/"{h}" stand for a layer and head), the spec
/// field that produces it, the value that field needs (0 = it cannot be derived from the name
/// alone), its shape and meaning. field "" = produced with any aggregate (value 1) or only by
/// some models (value 0).
struct CaptureName {
  const char* name;
  const char* field;
  int64_t value;
  /// Dims, as trace files are checked against them: L layers, B batch, H heads, T tokens,
  /// anything else any size.
  const char* shape;
  /// Values are probabilities in [0, 1] (NaN where undefined); else any value >= 0.
  bool probability;
  const char* doc;
};
const std::vector<CaptureName>& capture_names();

}  // namespace attnscope
