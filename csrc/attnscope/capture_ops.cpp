#include <attnscope/capture_ops.h>

#include <attnscope/recorder.h>

#include <torch/library.h>

namespace attnscope {

torch::Tensor capture(const torch::Tensor& probs, int64_t layer) {
  Recorder* r = Recorder::active();
  if (!r) return probs;
  torch::Tensor p = r->knocked_probs(probs, layer);  // probs itself unless a knockout covers the layer
  r->on_probs(p, layer);
  return p;
}

torch::Tensor capture_dim(const torch::Tensor& probs, int64_t dim, int64_t layer) {
  if (dim == probs.dim() - 1) return capture(probs, layer);
  return probs;
}

torch::Tensor capture_sink(const torch::Tensor& probs, int64_t dim, int64_t layer) {
  if (dim != -1 && dim != probs.dim() - 1) return probs;
  Recorder* r = Recorder::active();
  if (!r) return probs;
  torch::Tensor p = r->knocked_probs(probs, layer);
  r->on_probs(p, layer, /*sink=*/true);
  return p;
}

torch::Tensor capture_sdpa(const torch::Tensor& q, const torch::Tensor& k,
                           const std::optional<torch::Tensor>& mask, bool is_causal,
                           std::optional<double> scale, int64_t layer) {
  if (Recorder* r = Recorder::active()) {
    r->refuse_knockout(layer);
    r->on_sdpa(q, k, mask, is_causal, scale, layer);
  }
  return q;
}

namespace {
torch::Tensor run_sdpa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       const std::optional<torch::Tensor>& m, double dropout_p, bool is_causal,
                       std::optional<double> scale, bool enable_gqa) {
  if (enable_gqa && !q.is_cpu() && q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.size(1) > 0 &&
      q.size(1) != k.size(1) && q.size(1) % k.size(1) == 0) {
    // On CUDA the memory-efficient kernel (fp32) takes no grouped K/V: repeat them, as
    // transformers does, so the fused kernels keep running.
    const int64_t g = q.size(1) / k.size(1);
    return at::scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), m, dropout_p,
                                            is_causal, scale, false);
  }
  return at::scaled_dot_product_attention(q, k, v, m, dropout_p, is_causal, scale, enable_gqa);
}
}  // namespace

torch::Tensor sdpa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                   const std::optional<torch::Tensor>& mask, double dropout_p, bool is_causal,
                   std::optional<double> scale, bool enable_gqa, int64_t layer) {
  Recorder* r = Recorder::active();
  if (!r) return run_sdpa(q, k, v, mask, dropout_p, is_causal, scale, enable_gqa);
  const int64_t model_layer = r->model_layer(layer);  // before on_sdpa counts this site
  std::optional<torch::Tensor> m = mask;
  if (torch::Tensor knocked = r->knocked_mask(q, k, mask, is_causal, layer); knocked.defined()) {
    m = knocked;  // the removed edges at −∞; the causal part is in it now
    is_causal = false;
  }
  // Without enable_gqa, unequal head counts are SDPA's error to raise: no output from us.
  const bool heads_ok = enable_gqa || (q.dim() == 4 && k.dim() == 4 && q.size(1) == k.size(1));
  torch::Tensor out = r->on_sdpa(q, k, m, is_causal, scale, layer, heads_ok ? v : torch::Tensor(), dropout_p);
  if (!out.defined()) out = run_sdpa(q, k, v, m, dropout_p, is_causal, scale, enable_gqa);
  return r->ablated_output(out, model_layer);
}

}  // namespace attnscope

TORCH_LIBRARY(attnscope, m) {
  m.def(torch::schema("attnscope::capture(Tensor probs, int layer) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &attnscope::capture);
  m.def(torch::schema("attnscope::capture_dim(Tensor probs, int dim, int layer) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &attnscope::capture_dim);
  m.def(torch::schema("attnscope::capture_sink(Tensor probs, int dim, int layer) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &attnscope::capture_sink);
  m.def(torch::schema("attnscope::capture_sdpa(Tensor q, Tensor k, Tensor? mask, bool is_causal, "
                      "float? scale, int layer) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &attnscope::capture_sdpa);
  m.def(torch::schema("attnscope::sdpa(Tensor q, Tensor k, Tensor v, Tensor? mask, float dropout_p, "
                      "bool is_causal, float? scale, bool enable_gqa, int layer) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &attnscope::sdpa);
}
