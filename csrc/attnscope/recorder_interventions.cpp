// The recorder's interventions and folded captures: a run's knockout applied before it records
// (knockout.h), the rollout folded layer by layer, the value-weighted weights stacked.
#include <attnscope/recorder.h>

#include <limits>

namespace attnscope {

torch::Tensor Recorder::knocked_probs(const torch::Tensor& probs, int64_t op_layer) {
  const int64_t layer = next_layer(op_layer);
  if (!knockout_) return probs;
  const bool remove = knockout_->removes(layer), ablate = knockout_->ablates(layer);
  if (!remove && !ablate) return probs;
  const int64_t batch = ctx_.valid.size(0);
  TORCH_CHECK(probs.dim() == 4 || (probs.dim() == 3 && probs.size(0) % batch == 0), "knockout: attention of shape ",
              probs.sizes(), " at layer ", layer, " does not split into batch ", batch, " x heads");
  auto p4 = probs.dim() == 4 ? probs : probs.view({batch, probs.size(0) / batch, probs.size(1), probs.size(2)});
  if (remove) {
    knocked_.insert(layer);
    p4 = remembering([&] { return knockout_->on_probs(p4, layer); });
  }
  if (ablate) {  // the head's output Σ_j p_ij v_j is linear in its row: zero or mean rows give it
    ablated_.insert(layer);
    p4 = knockout_->on_heads(p4, layer, ctx_.valid);
  }
  return p4.reshape(probs.sizes());
}

torch::Tensor Recorder::knocked_mask(const torch::Tensor& q, const torch::Tensor& k,
                                     const std::optional<torch::Tensor>& mask, bool is_causal, int64_t op_layer) {
  const int64_t layer = next_layer(op_layer);
  if (!knockout_ || !knockout_->removes(layer) || q.dim() != 4 || k.dim() != 4) return {};
  knocked_.insert(layer);
  return remembering([&] { return knockout_->on_mask(mask, is_causal, q, k, layer); });
}

torch::Tensor Recorder::ablated_output(const torch::Tensor& out, int64_t layer) {
  if (!knockout_ || !knockout_->ablates(layer)) return out;
  TORCH_CHECK(out.dim() == 4, "ablate: attention output of shape ", out.sizes(), " at layer ", layer,
              ": expected [B, H, T, D]");
  ablated_.insert(layer);
  return knockout_->on_heads(out, layer, ctx_.valid);
}

void Recorder::refuse_knockout(int64_t op_layer) {
  const int64_t layer = next_layer(op_layer);
  if (!knockout_ || !knockout_->applies(layer)) return;
  remembering([&] {
    TORCH_CHECK_VALUE(false, "knockout: layer ", layer,
                      "'s attention is an SDPA call attnscope only observes (an archive written before "
                      "attnscope::sdpa): re-export the model to intervene in it");
  });
}

void Recorder::fold_rollout(LayerAccumulator& acc) {
  if (!spec_.rollout) return;
  torch::NoGradGuard no_grad;
  const torch::Tensor& a = acc.layer_map();  // [B, T, T] head mean
  TORCH_CHECK_VALUE(a.defined() && a.size(1) == a.size(2), "rollout: a layer's attention of ", a.size(1),
                    " queries over ", a.size(2), " keys: the rollout needs every query of the sequence");
  // Ã = 0.5·A + 0.5·I over the real tokens, rows renormalised (a padded row: the identity).
  const auto v = ctx_.valid.to(torch::kFloat);  // [B, T]
  auto m = torch::nan_to_num(a, 0.0) * v.unsqueeze(2) * v.unsqueeze(1);
  m.mul_(0.5).diagonal(0, 1, 2).add_(0.5);
  m.div_(m.sum(-1, true));
  rollout_ = rollout_.defined() ? torch::bmm(m, rollout_) : m;  // R_l = Ã_l R_(l-1)
  acc.release_layer_map();
}

torch::Tensor Recorder::stacked_value_norms(const std::vector<int64_t>& agg_layers) {
  // The weights themselves: a head's value-weighted map is its map · ‖v‖, renormalised.
  const auto& first = vw_norms_.begin()->second;
  auto norms = torch::full({static_cast<int64_t>(agg_layers.size()), first.size(0), first.size(1), first.size(2)},
                           std::numeric_limits<float>::quiet_NaN(), first.options());
  for (size_t i = 0; i < agg_layers.size(); ++i)
    if (auto it = vw_norms_.find(agg_layers[i]); it != vw_norms_.end() && it->second.sizes() == first.sizes())
      norms.select(0, static_cast<int64_t>(i)).copy_(it->second);
  vw_norms_.clear();
  const auto key_ok = ctx_.valid.unsqueeze(1).unsqueeze(0);  // [1, B, 1, Tk]: padding keys have no value
  return torch::where(key_ok, norms, std::numeric_limits<float>::quiet_NaN());
}

}  // namespace attnscope
