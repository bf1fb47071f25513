#include <attnscope/knockout.h>

#include <algorithm>
#include <limits>

namespace attnscope {

bool Knockout::removes(int64_t layer) const {
  return edges.defined() && (layers.empty() || std::find(layers.begin(), layers.end(), layer) != layers.end());
}

bool Knockout::ablates(int64_t layer) const {
  return ablate.defined() && layer >= 0 && layer < ablate.size(1) && ablate.select(1, layer).any().item<bool>();
}

void Knockout::validate(int64_t batch, int64_t tokens, int64_t n_layers, int64_t n_heads,
                        const std::vector<int64_t>& attention_layers) const {
  if (ablate.defined()) {
    TORCH_CHECK_VALUE(ablate.dim() == 3 && ablate.scalar_type() == torch::kBool && ablate.size(0) == batch &&
                          (n_layers < 0 || ablate.size(1) == n_layers) && (n_heads < 0 || ablate.size(2) == n_heads),
                      "ablate: expected a bool [", batch, ", ", n_layers, ", ", n_heads,
                      "] tensor (batch, layer, head), got ", ablate.sizes(), " ", c10::toString(ablate.scalar_type()));
    TORCH_CHECK_VALUE(ablate_mode == "zero" || ablate_mode == "mean", "ablate mode '", ablate_mode,
                      "': expected 'zero' or 'mean'");
    const auto any = ablate.any(2).any(0);  // [L]
    for (int64_t l = 0; l < any.size(0); ++l)
      TORCH_CHECK_VALUE(!any[l].item<bool>() ||
                            std::find(attention_layers.begin(), attention_layers.end(), l) != attention_layers.end(),
                        "ablate: layer ", l, " is not an attention layer of this model");
  }
  if (!edges.defined() && ablate.defined()) {
    TORCH_CHECK_VALUE(layers.empty() && heads.empty(),
                      "knockout layers/heads choose where edges are removed: "
                      "give edges too");
    return;
  }
  TORCH_CHECK_VALUE(edges.defined() && edges.dim() == 3 && edges.scalar_type() == torch::kBool &&
                        edges.size(0) == batch && edges.size(1) == tokens && edges.size(2) == tokens,
                    "knockout edges: expected a bool [", batch, ", ", tokens, ", ", tokens, "] tensor (batch, query, key), got ",
                    edges.defined() ? edges.sizes() : c10::IntArrayRef{}, edges.defined() ? " " : "",
                    edges.defined() ? c10::toString(edges.scalar_type()) : "none");
  for (int64_t h : heads)
    TORCH_CHECK_VALUE(h >= 0 && (n_heads < 0 || h < n_heads), "knockout heads: head ", h, " out of range: the model has ",
                      n_heads, " heads (0..", n_heads - 1, ")");
  for (int64_t l : layers)
    TORCH_CHECK_VALUE(l >= 0 && std::find(attention_layers.begin(), attention_layers.end(), l) != attention_layers.end(),
                      "knockout layers: layer ", l, " is not an attention layer of this model (",
                      attention_layers.empty() ? 0 : attention_layers.front(), "..",
                      attention_layers.empty() ? -1 : attention_layers.back(), ")");
}

torch::Tensor Knockout::removed(int64_t heads_n, int64_t tq, int64_t tk, const torch::Device& device) const {
  // [B, H, Tq, Tk] bool: the edges of the last Tq query rows (a site over a cache sees the
  // last rows only), in the chosen heads.
  auto e = edges.narrow(1, edges.size(1) - tq, tq).narrow(2, 0, tk).to(device).unsqueeze(1);  // [B, 1, Tq, Tk]
  auto h = torch::ones({heads_n}, torch::dtype(torch::kBool).device(device));
  if (!heads.empty()) {
    h.fill_(false);
    for (int64_t x : heads)
      if (x < heads_n) h[x] = true;
  }
  return e.logical_and(h.view({1, heads_n, 1, 1}));
}

torch::Tensor Knockout::on_probs(const torch::Tensor& probs, int64_t layer) const {
  const auto cut = removed(probs.size(1), probs.size(2), probs.size(3), probs.device());
  const auto kept = probs.masked_fill(cut, 0);
  const auto left = 1 - (probs - kept).sum(-1, true).to(torch::kFloat);  // the row's mass not removed
  const auto had = probs.sum(-1, true) > 0;
  TORCH_CHECK_VALUE(!(kept.sum(-1, true) <= 0).logical_and(had).any().item<bool>(), "knockout: at layer ", layer,
                    " a query row would attend to nothing (every key it sees is removed): keep at least one");
  return (kept.to(torch::kFloat) / left).to(probs.scalar_type());
}

torch::Tensor Knockout::on_heads(const torch::Tensor& x, int64_t layer, const torch::Tensor& valid) const {
  if (!ablates(layer)) return x;
  const auto sel = ablate.select(1, layer).narrow(1, 0, x.size(1)).to(x.device()).view({x.size(0), x.size(1), 1, 1});
  if (ablate_mode == "zero") return x.masked_fill(sel, 0);
  // The mean over real query rows, in fp32; rows of padding get it too (they predict nothing).
  const auto rows = valid.narrow(1, valid.size(1) - x.size(2), x.size(2))
                        .to(x.device())
                        .to(torch::kFloat)
                        .view({x.size(0), 1, x.size(2), 1});
  const auto mean = (x.to(torch::kFloat) * rows).sum(2, true) / rows.sum(2, true).clamp_min(1);
  return torch::where(sel, mean.to(x.scalar_type()).expand_as(x), x);
}

torch::Tensor Knockout::on_mask(const std::optional<torch::Tensor>& mask, bool is_causal, const torch::Tensor& q,
                                const torch::Tensor& k, int64_t layer) const {
  const int64_t heads_n = q.size(1), tq = q.size(2), tk = k.size(2);
  const auto opt = torch::dtype(q.scalar_type()).device(q.device());
  const double inf = std::numeric_limits<double>::infinity();
  torch::Tensor base;  // additive [B|1, H|1, Tq, Tk]
  if (mask.has_value() && mask->defined()) {
    base = *mask;
    while (base.dim() < 4) base = base.unsqueeze(0);
    base = base.scalar_type() == torch::kBool ? torch::zeros({}, opt).masked_fill(base.logical_not(), -inf)
                                               : base.to(q.scalar_type());
  } else if (is_causal) {
    base = torch::zeros({tq, tk}, opt).masked_fill(torch::ones({tq, tk}, opt.dtype(torch::kBool)).triu(tk - tq + 1), -inf)
               .view({1, 1, tq, tk});
  } else {
    base = torch::zeros({1, 1, tq, tk}, opt);
  }
  const auto out = torch::where(removed(heads_n, tq, tk, q.device()), torch::full({}, -inf, opt), base);
  const auto dead = [&](const torch::Tensor& m) { return (m == -inf).all(-1); };
  TORCH_CHECK_VALUE(!dead(out).logical_and(dead(base).logical_not()).any().item<bool>(), "knockout: at layer ", layer,
                    " a query row would attend to nothing (every key it sees is removed): keep at least one");
  return out;
}

}  // namespace attnscope
