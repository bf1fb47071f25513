// Recorder: receives attention from the capture operators while Model::run executes the
// forward, and keeps only what the CaptureSpec asks for. One recorder is active per thread.
#pragma once
#include <attnscope/aggregates.h>
#include <attnscope/knockout.h>
#include <attnscope/mask_facts.h>
#include <attnscope/spec.h>

#include <torch/torch.h>

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace attnscope {

/// What one forward with capture produced.
struct RecordResult {
  /// Captured tensors by name; per-layer aggregates are stacked over `aggregate_layers`.
  std::map<std::string, torch::Tensor> captures;
  /// Attention layers that ran, in execution order.
  int64_t layers_run = 0;
  /// Query heads per layer that ran (-1 if never seen).
  std::vector<int64_t> heads;
  /// KV heads per layer: known at SDPA sites from k's shape, -1 at softmax sites.
  std::vector<int64_t> kv_heads;
  /// Per-head widths of q·k and of v per layer: known at SDPA sites, -1 at softmax sites.
  std::vector<int64_t> qk_dims, v_dims;
  /// Graph site id of each layer (instrumented models), -1 when the op carried the layer.
  std::vector<int64_t> site_of_layer;
  /// How each layer's attention was recorded (Trace::routes).
  std::vector<std::string> routes;
};

class Recorder {
 public:
  /// `layer_from_order`: number layers by execution order (graph-instrumented models, where the
  /// op's integer is a site id; the n-th site is ctx.attention_layers[n] when stated);
  /// otherwise the op's integer is the layer index.
  Recorder(const CaptureSpec& spec, RunContext ctx, bool layer_from_order);

  /// The recorder of the current thread, or nullptr (the operators then pass through).
  static Recorder* active();

  /// `probs (Tensor[B, H, Tq, Tk])` or `(Tensor[B*H, Tq, Tk])`: materialised softmax output.
  void on_probs(const torch::Tensor& probs, int64_t layer, bool sink = false);
  /// SDPA site: recomputes softmax(q kᵀ·scale + mask) in fp32 for the heads and rows needed.
  /// `q (Tensor[B, Hq, Tq, D])`, `k (Tensor[B, Hkv, Tk, D])`, Hq a multiple of Hkv (GQA).
  /// Given `v (Tensor[B, Hkv, Tk, Dv])` (attnscope::sdpa), returns the attention output
  /// [B, Hq, Tq, Dv] when the fused route computed every head in fp32 on the CPU with no
  /// dropout, else an undefined tensor (the caller then runs SDPA itself).
  torch::Tensor on_sdpa(const torch::Tensor& q, const torch::Tensor& k,
                        const std::optional<torch::Tensor>& mask, bool is_causal,
                        std::optional<double> scale, int64_t layer,
                        const torch::Tensor& v = {}, double dropout_p = 0.0);

  /// Stacks per-layer results; checks that every requested layer ran.
  RecordResult finish();

  /// Interventions of this run (Model::logits): the operators ask before they record.
  void set_knockout(const Knockout* k) { knockout_ = k; }
  /// `probs` with the knockout applied when it covers the layer this op call is (else probs).
  torch::Tensor knocked_probs(const torch::Tensor& probs, int64_t op_layer);
  /// The additive mask an SDPA op call must use instead of its own (undefined: no knockout here).
  torch::Tensor knocked_mask(const torch::Tensor& q, const torch::Tensor& k, const std::optional<torch::Tensor>& mask,
                             bool is_causal, int64_t op_layer);
  /// An observe-only SDPA site (capture_sdpa): a knockout there cannot change the model's output.
  void refuse_knockout(int64_t op_layer);
  /// `out (Tensor[B, H, Tq, Dv])` of the SDPA site at model layer `layer` with the knockout's
  /// ablated heads replaced (out itself when none).
  torch::Tensor ablated_output(const torch::Tensor& out, int64_t layer);
  /// The model layer the next operator call numbered `op_layer` records as.
  int64_t model_layer(int64_t op_layer) const { return next_layer(op_layer); }
  /// The ValueError an operator raised inside this forward ("" when none): the interpreter
  /// rethrows it as a RuntimeError with its traceback, and the caller restores it.
  const std::string& refusal() const { return refusal_; }
  /// Layers where the knockout removed edges / ablated heads in this forward.
  const std::set<int64_t>& knocked_layers() const { return knocked_; }
  const std::set<int64_t>& ablated_layers() const { return ablated_; }

 private:
  /// The heads an SDPA block computes, with q and k (fp32) laid out for them.
  struct SdpaHeads {
    std::vector<int64_t> heads;  // query heads computed
    bool all = true;             // every head (no index)
    torch::Tensor index;         // [n] int64 on q's device when not all
    torch::Tensor q, k;          // [B, n, Tq, D], [B, n or Hkv, Tk, D]
    int64_t k_group = 1;         // query head i of the block reads k head i / k_group
  };
  void check_sdpa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t layer);
  SdpaHeads sdpa_heads(const LayerAccumulator& acc, const torch::Tensor& q, const torch::Tensor& k, bool fused) const;
  torch::Tensor fused_route(LayerAccumulator& acc, const SdpaHeads& h, const torch::Tensor& m, double hidden_below,
                            bool is_causal, double scale, const torch::Tensor& v, double dropout_p,
                            const torch::Tensor& q);
  int64_t resolve_layer(int64_t op_layer);
  /// The layer resolve_layer will give this op call, without counting the site.
  int64_t next_layer(int64_t op_layer) const;
  LayerAccumulator* accumulator(int64_t layer, int64_t heads, int64_t tq, int64_t tk,
                                const torch::Device& device, bool whole_rows = false);
  /// Query rows per attention block of [B, heads, rows, Tk] elements on `device`.
  int64_t chunk_rows(int64_t batch, int64_t heads, int64_t tk, const torch::Device& device);

  CaptureSpec spec_;
  RunContext ctx_;
  bool layer_from_order_;
  int64_t sites_run_ = 0;  // sites seen in this forward (layer_from_order_)
  RecordResult result_;
  std::map<int64_t, std::unique_ptr<LayerAccumulator>> acc_;
  int64_t device_block_ = -1;  // elements per block on a GPU, from its free memory (once per run)
  Workspace ws_;  // slots 0-3: per-block temporaries (CUDA, softmax sites); 4: fused row buffers
  MaskFacts masks_;  // per-run facts of the mask every layer shares
  const Knockout* knockout_ = nullptr;
  std::set<int64_t> knocked_, ablated_;
  std::string refusal_;
  /// Runs `f`, remembering the message of a ValueError it throws (see refusal()).
  template <class F>
  auto remembering(F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const c10::ValueError& e) {
      refusal_ = e.what_without_backtrace();
      throw;
    }
  }
  /// Attention rollout so far [B, T, T] (CaptureSpec::rollout).
  torch::Tensor rollout_;
  /// Value-weighted attention (CaptureSpec::value_weighted): received and entropy of the rows
  /// α_ij‖v_j‖ renormalised, in accumulators of their own, stacked as "vw_*".
  CaptureSpec vw_spec_;
  std::map<int64_t, std::unique_ptr<LayerAccumulator>> vw_acc_;
  std::map<int64_t, torch::Tensor> vw_norms_;  // [B, H, Tk]: ‖v_j‖ of each query head's KV head
  /// vw_norms_ stacked over `agg_layers` [L, B, H, Tk] (NaN at padding keys); clears them.
  torch::Tensor stacked_value_norms(const std::vector<int64_t>& agg_layers);
  void value_weighted_pass(int64_t layer, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& mask, bool is_causal, double scale);
  void fold_rollout(LayerAccumulator& acc);
};

/// Makes `r` the active recorder of this thread for the scope's lifetime.
class RecorderScope {
 public:
  explicit RecorderScope(Recorder* r);
  ~RecorderScope();
  RecorderScope(const RecorderScope&) = delete;
  RecorderScope& operator=(const RecorderScope&) = delete;

 private:
  Recorder* prev_;
};

}  // namespace attnscope
