// Attention knockout (Geva et al. 2023, "Dissecting Recall of Factual Associations"): chosen
// edges query i → key j are removed before the softmax, in chosen layers and heads, and the
// model runs on. Applied where attnscope's operators sit inside the attention: a softmax site
// gets its probabilities renormalised without the edges (p_j / (1 − Σ_removed p), which is the
// softmax of the logits with −∞ there, learned sinks included), an attnscope::sdpa site gets
// −∞ in its mask. Head ablation replaces the output of chosen heads (Σ_j p_ij v_j) by zeros or
// by its mean over the row's real query positions: at a softmax site through the probabilities
// (the output is linear in them), at an attnscope::sdpa site on the output itself.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace attnscope {

struct Knockout {
  /// Model layers to intervene in (empty = every attention layer).
  std::vector<int64_t> layers;
  /// Query heads to intervene in (empty = every head).
  std::vector<int64_t> heads;
  /// `edges (Tensor[B, T, T] bool)`: true = the edge (query i, key j) of batch row b is removed.
  torch::Tensor edges;
  /// `ablate (Tensor[B, L, H] bool)`: true = the output of query head h of model layer l in
  /// batch row b is replaced (undefined = no head ablated), by zeros (`ablate_mode` "zero") or
  /// by its mean over the row's real query positions ("mean").
  torch::Tensor ablate;
  std::string ablate_mode = "zero";

  /// Edges are removed at `layer`.
  bool removes(int64_t layer) const;
  /// Some head of `layer` is ablated in some row.
  bool ablates(int64_t layer) const;
  bool applies(int64_t layer) const { return removes(layer) || ablates(layer); }
  /// Checks the shapes and indices against a run of `batch` rows over `tokens` key positions on
  /// a model of `n_layers` layers, `n_heads` heads and these attention layers; throws
  /// ValueError naming the argument.
  void validate(int64_t batch, int64_t tokens, int64_t n_layers, int64_t n_heads,
                const std::vector<int64_t>& attention_layers) const;
  /// `probs (Tensor[B, H, Tq, Tk])` with the edges removed at `layer` (the last Tq of the T
  /// query rows). Throws ValueError when a real query row would keep no weight at all.
  torch::Tensor on_probs(const torch::Tensor& probs, int64_t layer) const;
  /// The mask an SDPA call gets instead of (`mask`, `is_causal`): additive, `q`'s dtype,
  /// [B|1, H, Tq, Tk], −∞ at the removed edges (call SDPA with is_causal = false).
  torch::Tensor on_mask(const std::optional<torch::Tensor>& mask, bool is_causal, const torch::Tensor& q,
                        const torch::Tensor& k, int64_t layer) const;
  /// `x (Tensor[B, H, Tq, N])` (probabilities or head outputs) with the ablated heads of `layer`
  /// replaced; `valid (Tensor[B, Tq] bool)`: the real query rows a mean is taken over.
  torch::Tensor on_heads(const torch::Tensor& x, int64_t layer, const torch::Tensor& valid) const;

 private:
  torch::Tensor removed(int64_t heads, int64_t tq, int64_t tk, const torch::Device& device) const;
};

}  // namespace attnscope
