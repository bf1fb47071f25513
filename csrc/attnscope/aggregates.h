// Aggregates of one layer's attention, accumulated block by block over query rows so that a
// full [B, H, Tq, Tk] map never has to exist for the per-position quantities.
#pragma once
#include <attnscope/softmax_rows.h>
#include <attnscope/spec.h>

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace attnscope {

struct RowTokens;

/// What the recorder knows about the batch being run.
struct RunContext {
  /// [B, T] bool, true = real token (from attention_mask); queries and keys share it.
  torch::Tensor valid;
  /// True when some position is padding (enables the masked code paths).
  bool has_padding = false;
  /// Causal model: query i sees keys j <= i (+ Tk - Tq offset). Encoders: every valid key.
  bool causal = true;
  /// [B, T] int64 token ids on the CPU: the row statistics' duplicate and induction masses
  /// compare them (undefined: row statistics are refused).
  torch::Tensor ids;
  /// Model-layer indices of the attention layers (ModelInfo::attention_layers; empty = every
  /// layer): the n-th site of a graph-instrumented model is layer attention_layers[n].
  std::vector<int64_t> attention_layers;
  /// Route of SDPA sites: "auto" (fused C++ rows on the CPU, blocks elsewhere), "blocks" (ATen
  /// blocks with the kernel's log-sum-exp), "softmax" (ATen blocks, a softmax per block).
  std::string sdpa_route = "auto";
  /// The row statistics' token facts, built by the first layer that needs them and shared by the
  /// others with the same query and key lengths (row_stats.cpp).
  mutable std::shared_ptr<RowTokens> row_tokens;
};

/// Reusable scratch buffers, so blocks do not allocate (and page-fault) fresh temporaries.
class Workspace {
 public:
  /// Buffer `slot` viewed as a contiguous fp32 tensor of `sizes` on `device`, grown as needed.
  torch::Tensor get(int slot, torch::IntArrayRef sizes, const torch::Device& device);

 private:
  std::vector<torch::Tensor> buf_;
};

/// Accumulates what the spec asks of one layer.
class LayerAccumulator {
 public:
  /// `heads` = query heads of the layer; Tq/Tk = query/key lengths of its attention.
  /// `whole_rows`: the route writes every row of the maps whole (add_sdpa), so they are
  /// allocated without zero-filling; add_block skips trimmed keys and needs zeros.
  LayerAccumulator(const CaptureSpec& spec, int64_t layer, int64_t batch, int64_t heads,
                   int64_t tq, int64_t tk, const torch::Device& device, bool whole_rows = false);

  /// Heads each block must contain, in order; empty = all heads.
  const std::vector<int64_t>& block_heads() const { return block_heads_; }
  /// True when nothing is asked of this layer (the recorder then skips it).
  bool idle() const { return idle_; }
  /// True when add_block uses `visible` (the received-mean divisor is asked for).
  bool wants_visibility() const { return aggregates_ && spec_.received; }
  /// True when the layer's attention entropy is asked for.
  bool wants_entropy() const { return aggregates_ && spec_.attn_entropy; }
  /// True when the layer's row statistics are asked for.
  bool wants_row_stats() const { return aggregates_ && spec_.row_stats; }

  /// Adds probabilities of query rows [r0, r0 + R): `probs (Tensor[B, Hb, R, K])` fp32,
  /// Hb = all heads or block_heads(), K <= Tk: keys K.. of these rows are known to be zero
  /// (causal trimming) and are skipped.
  /// `visible (Tensor[B|1, Hb|1, R, K] bool)`: which (query, key) pairs the model's mask let
  /// through (SDPA sites know it from the mask); undefined = the pairs with probability > 0
  /// (softmax sites: masked keys get exactly 0). It is the divisor of "received_mean".
  /// `entropy (Tensor[B, Hb, R])`: the rows' entropy when the caller has it (from the
  /// log-sum-exp, sdpa_blocks.cpp); undefined = −Σ p log p from `probs`.
  /// Uses `ws` slot 0 for its temporaries.
  void add_block(const torch::Tensor& probs, int64_t r0, const RunContext& ctx, Workspace& ws,
                 const torch::Tensor& visible = {}, const torch::Tensor& entropy = {});

  /// One SDPA site as the fused route takes it.
  struct SdpaInputs {
    /// `q (Tensor[B, Hb, Tq, D])`, `k (Tensor[B, Hb / group, Tk, D])` fp32: block head h reads
    /// k head h / group (grouped-query attention without copies of K).
    torch::Tensor q, k;
    int64_t group = 1;
    double scale = 1.0;
    /// Undefined, or bool / fp32 viewed as [B, Hb, Tq, Tk] (broadcast strides allowed; the last
    /// stride 0 or 1); an additive value at or below `hidden_below` hides its key.
    torch::Tensor mask;
    float hidden_below = 0.0f;
    bool causal = true;
    /// `Tensor[Tq] int64`: keys at or after row_keys[r] are hidden from row r (undefined: none known).
    torch::Tensor row_keys;
    /// With `out (Tensor[B, Hb, Tq, Dv])` defined (every head), the attention output P·V is
    /// written into it from `v (Tensor[B, Hb / group, Tk, Dv])` fp32.
    torch::Tensor v, out;
  };
  /// SDPA sites on the CPU, the whole layer in one parallel pass (fused_sdpa.cpp). Tasks
  /// (batch, head, part of the rows) run in parallel, each over blocks of its rows: q·kᵀ of the
  /// block (a buffer that stays in cache), then softmax_row per row. Per-thread row buffers come
  /// from `ws` slot 4 (kept for the run, so layers allocate nothing).
  void add_sdpa(const SdpaInputs& in, const RunContext& ctx, Workspace& ws);
  /// add_sdpa leaves "received_count" (the divisor of the received mean) to this:
  /// `counts (Tensor[B|1, H|1, Tk])` valid queries that can see each key, added once per layer.
  void add_counts(const torch::Tensor& counts);
  /// Sites with learned attention sinks, `probs (Tensor[B, H, Tq, Tk])` over the real keys: the
  /// part of each row's softmax that went to the sinks, 1 − Σ over the keys (fp32, clamped to
  /// [0, 1] against rounding), becomes "sink_share". Only when the layer's aggregates are asked.
  void add_sink_share(const torch::Tensor& probs);

  /// The head-mean map [B, Tq, Tk] (undefined unless layer maps or the rollout are asked).
  const torch::Tensor& layer_map() const { return layer_map_t_; }
  /// Frees the head-mean map once the rollout has folded it, unless the spec keeps it.
  void release_layer_map() {
    if (!keep_layer_map_) layer_map_t_ = torch::Tensor(), layer_map_ = false;
  }

  /// Final tensors of this layer, keyed by capture name without the layer dimension
  /// ("received_mean" [B, H, Tk], "head_map/L3H1" [B, Tq, Tk], ...).
  std::map<std::string, torch::Tensor> finish(const RunContext& ctx);

 private:
  const CaptureSpec& spec_;
  int64_t layer_, batch_, heads_, tq_, tk_;
  bool aggregates_ = false, layer_map_ = false, keep_layer_map_ = false, idle_ = true;
  /// The maps start as zeros (fresh pages, or zero-filled): the fused route then leaves a row's
  /// columns after its last key unwritten.
  bool maps_zeroed_ = true;
  std::vector<int64_t> block_heads_;
  std::vector<int64_t> map_heads_;      // heads whose full map is kept
  std::vector<int64_t> from_rows_;      // resolved query rows for "from"
  torch::Tensor recv_sum_, recv_max_;   // [B, H, Tk]
  torch::Tensor recv_count_;            // [B, H, Tk]: valid queries that can see each key
  torch::Tensor sink_idx_, sink_w_;     // [B, k]: the first k real keys of each row, 1/0 weights
  torch::Tensor from_;                  // [B, H, n, Tk]
  torch::Tensor entropy_, sink_rows_;   // [B, H, Tq]
  torch::Tensor sink_share_;            // [B, H, Tq]: learned sinks' share of each row (sink sites)
  torch::Tensor layer_map_t_;           // [B, Tq, Tk]
  torch::Tensor stats_;                 // [6, B, H, Tq]: row statistics (row_stats.cpp)
  /// Token facts of the row statistics, from the ids and the padding (init_row_tokens):
  /// key_id_/prev_id_ [B, Tk] int32 (id of key j / of key j−1; negative = padding or none),
  /// query_id_ [B, Tq] int32, prev_ok_/has_dup_/has_ind_ [B, Tq] bool (the statistic is defined),
  /// on the CPU; dev_ids_ = {key_id_, prev_id_, query_id_} on the accumulator's device.
  torch::Tensor key_id_, prev_id_, query_id_, prev_ok_, has_dup_, has_ind_;
  /// The earlier copies of each query's token, for the fused route's sparse sums: copy_pos_
  /// [B, Tk] int32, the real keys of each row ordered by (id, position); copy_at_ [B, Tq] int32,
  /// where the query's id begins in it; has_dup_ tells whether any copy precedes the query and
  /// copy_n_ [B, Tq] int32 how many.
  torch::Tensor copy_pos_, copy_at_, copy_n_;
  std::vector<torch::Tensor> dev_ids_;
  // Pooled maps (pooled_maps.cpp): n tiles, bounds [n + 1] over the positions, the tile of each
  // position [Tq] int64, and the sums over real query rows: [B, H, n, n] and (uniform) [B, n, n].
  int64_t pool_n_ = 0;
  std::vector<int64_t> pool_bounds_;
  torch::Tensor pool_tile_, pool_sum_, uni_sum_;
  std::map<int64_t, torch::Tensor> head_maps_;  // head -> [B, Tq, Tk]

  struct Rows;      // where one row's results go (fused_sdpa.cpp)
  struct SdpaPass;  // one fused SDPA pass over a layer (fused_sdpa.cpp)
  void cut_parts(SdpaPass& p) const;
  void sdpa_task(const SdpaPass& p, int64_t task, float* buf) const;
  Rows rows_for(const RunContext& ctx);
  /// Takes what the spec asks from one row: probabilities e[j] * inv, j < keys.
  /// `distance`: Σ e[j]·|i − j| from softmax_row, for the row statistics.
  void take_row(const Rows& t, const float* e, float inv, double distance, int64_t keys, int64_t b, int64_t hb,
                int64_t r) const;

  int64_t block_index(int64_t head) const;
  void init_sink_keys(const RunContext& ctx);
  void init_row_tokens(const RunContext& ctx);
  /// Row statistics of a block of rows in ATen ops (add_block): `probs (Tensor[B, H, R, K])`.
  void add_row_stats_block(const torch::Tensor& probs, int64_t r0, const RunContext& ctx);
  /// The six "row_*" tensors [B, H, Tq], NaN where undefined.
  void finish_row_stats(const torch::Tensor& valid_q, std::map<std::string, torch::Tensor>& out);
  void init_pooled(const torch::Device& device);
  /// Pooled maps of a block of rows in ATen ops (add_block): `probs (Tensor[B, H, R, K])`.
  void add_pooled_block(const torch::Tensor& probs, int64_t r0, const RunContext& ctx);
  /// Adds rows [r0, r0 + R) to the tile sums: `rows (Tensor[B, H, R, n])` tile sums of each row,
  /// `uniform (Tensor[B, R, n])` a uniform row's; padded query rows are left out.
  void fold_pooled_rows(const torch::Tensor& rows, const torch::Tensor& uniform, int64_t r0, const RunContext& ctx);
  /// "pooled_map" [B, H, n, n] and "pooled_uniform" [B, n, n]: tile means, NaN where a tile has no real cell.
  void finish_pooled(const RunContext& ctx, std::map<std::string, torch::Tensor>& out);
};

}  // namespace attnscope
