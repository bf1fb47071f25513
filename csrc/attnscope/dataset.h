// DatasetStats: attention statistics over many sequences, kept as running sums so memory does
// not grow with the dataset (no per-sequence map is ever kept). Traces are added one batch at
// a time; two DatasetStats merge (sums add, maxima take the max), which is also what a
// data-parallel all-reduce does with state().
#pragma once
#include <attnscope/trace.h>

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace attnscope {

/// Which parts a dataset run accumulates (each needs the matching capture in every trace).
struct DatasetParts {
  /// Head-mean map per layer (capture layer_maps = every layer).
  bool layer_maps = true;
  /// Full map of every (layer, head) (capture heads = every pair): L·H·T² numbers.
  bool head_maps = false;
  /// Received-attention profiles, α_k and Sink hits (capture received).
  bool received = true;
  /// Attention entropy per head and query position (capture attn_entropy).
  bool attn_entropy = true;
  /// Row statistics per head, the head atlas's scores (capture row_stats): 6 x L x H sums.
  bool row_stats = false;

  /// "layer_maps,received,..." (the dataset file's metadata).
  std::string to_string() const;
  /// The parts named in `s` (as to_string writes them); throws on an unknown name.
  static DatasetParts parse(const std::string& s);
  /// The captures every trace added must hold for these parts (dataset_capture_spec's).
  std::vector<std::string> needed(int64_t n_layers, int64_t n_heads) const;
  /// Every part `t`'s captures can feed (each part's captures all present).
  static DatasetParts of_trace(const Trace& t);
  /// The part that accumulates capture `name` ("layer_map/L3" -> "layer_maps"), "" for none.
  static std::string part_of(const std::string& name);
};

/// The CaptureSpec a dataset run needs for `parts` on a model with these many layers/heads.
CaptureSpec dataset_capture_spec(const DatasetParts& parts, int64_t n_layers, int64_t n_heads);

class DatasetStats {
 public:
  /// `epsilon`: Sink threshold on α₁ (Gu et al. use 0.3).
  explicit DatasetStats(DatasetParts parts = {}, double epsilon = 0.3);

  /// Adds every sequence of `trace` (right padding only; every layer must be captured).
  /// Sequences longer than the current length grow the accumulators (zero-padded).
  void add(const Trace& trace);
  /// Adds `other`'s sums (same parts, epsilon and model shape).
  void merge(const DatasetStats& other);
  /// Grows the position axes to `length` (a no-op when already that long).
  void resize(int64_t length);

  /// The running sums by name (fp64, on the device of the first trace); a data-parallel run
  /// all-reduces them in place: those in max_state_names() with MAX, the rest with SUM.
  std::map<std::string, torch::Tensor>& state() { return state_; }
  const std::map<std::string, torch::Tensor>& state() const { return state_; }
  static std::vector<std::string> max_state_names();

  int64_t n_sequences() const;
  /// Longest sequence added (the position axes' size).
  int64_t length() const { return length_; }
  int64_t n_layers() const { return n_layers_; }
  int64_t n_heads() const { return n_heads_; }
  double epsilon() const { return epsilon_; }
  /// Which model the sums come from (Model::model_id of the traces added; "" = unknown, in files
  /// written before it was kept) and its name: saved with the file. add() and merge() refuse
  /// traces or sums of another model (same shape is not the same model) unless
  /// allow_different_models() was set, which the file then states.
  const std::string& model_id() const { return model_id_; }
  const std::string& model_name() const { return model_name_; }
  bool allow_different_models() const { return mixed_; }
  void set_allow_different_models(bool allow) { mixed_ = allow; }
  const DatasetParts& parts() const { return parts_; }

  // ---- results (fp32, on the device of the sums)
  /// Mean head-mean map of `layer` (head = -1) or of one head: [T, T]; cell (i, j) averages
  /// over the sequences that have both positions.
  torch::Tensor layer_map(int64_t layer, int64_t head = -1) const;
  /// α_k: mean over sequences of the attention key k receives (mean over the queries that
  /// can see it): [L, H, T]. α[..., 0] is Gu et al.'s α₁.
  torch::Tensor alpha() const;
  /// Max over every query of every sequence of the attention key k receives: [L, H, T].
  torch::Tensor received_max() const;
  /// Fraction of sequences in which α₁ of (layer, head) exceeds epsilon: [L, H].
  torch::Tensor sink_rate() const;
  /// Sink₁ per layer: mean over heads of sink_rate (Gu et al.'s Sink₁^ε of a sequence,
  /// averaged over sequences), as a fraction: [L].
  torch::Tensor sink1_per_layer() const;
  /// Sink₁ of the model: mean of sink1_per_layer.
  double sink1() const;
  /// Mean attention entropy (nats) per query position [L, H, T] and per head [L, H]
  /// (mean over every real query row of every sequence).
  torch::Tensor attn_entropy() const;
  torch::Tensor head_entropy() const;
  /// Row statistics per head [6, L, H] (self, prev, distance, local, duplicate, induction; the
  /// order of CaptureSpec::row_stats): mean over every real query row of every sequence where
  /// the statistic is defined, NaN where no row defines it; row_stat_counts: those rows.
  torch::Tensor row_stats() const;
  torch::Tensor row_stat_counts() const;
  /// Learned attention sinks' mean share of a real row per head [L, H] (models with sinks, part
  /// row_stats; nullopt for other models).
  std::optional<torch::Tensor> learned_sink() const;
  /// Mean predictive entropy (nats) per position [T] (the distribution predicting token i+1).
  torch::Tensor predictive_entropy() const;
  /// Number of sequences that have position t [T].
  torch::Tensor position_count() const;

  /// Writes the sums as safetensors (format "attnscope-dataset"): any reader can rebuild
  /// every result from them.
  void save(const std::string& path) const;
  static DatasetStats load(const std::string& path);

 private:
  // add()'s steps: the trace checked against the dataset (returns its real positions [B, T] on
  // the sums' device), then the maps' sums.
  torch::Tensor check_addable(const Trace& t) const;
  void add_maps(const Trace& t, const torch::Tensor& valid);
  /// Position axes (trailing) of state tensor `name`; resize() pads them.
  static int position_dims(const std::string& name);
  void init(const Trace& t, const torch::Device& device);
  /// Every sum's shape for these parts, L layers, H heads, T positions (learned_sink_sum and
  /// learned_sink_count, [L, H], appear only for models with learned sinks).
  static std::map<std::string, std::vector<int64_t>> state_shapes(const DatasetParts& parts, int64_t L, int64_t H,
                                                                  int64_t T);
  void check_loaded(const std::string& path, int64_t version) const;
  const torch::Tensor& need(const std::string& name, const char* part) const;

  DatasetParts parts_;
  double epsilon_;
  std::string model_id_, model_name_;
  bool mixed_ = false;  // allow_different_models: sums of several models, on purpose
  void check_model(const std::string& id, const std::string& name, const char* who);
  int64_t n_layers_ = -1, n_heads_ = -1, length_ = 0;
  std::map<std::string, torch::Tensor> state_;
};

}  // namespace attnscope
