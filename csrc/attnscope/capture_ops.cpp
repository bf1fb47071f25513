#include <attnscope/capture_ops.h>

#include <attnscope/recorder.h>

#include <torch/library.h>

namespace attnscope {

torch::Tensor capture(const torch::Tensor& probs, int64_t layer) {
  if (Recorder* r = Recorder::active()) r->on_probs(probs, layer);
  return probs;
}

torch::Tensor capture_dim(const torch::Tensor& probs, int64_t dim, int64_t layer) {
  if (dim == probs.dim() - 1) return capture(probs, layer);
  return probs;
}

torch::Tensor capture_sdpa(const torch::Tensor& q, const torch::Tensor& k,
                           const std::optional<torch::Tensor>& mask, bool is_causal,
                           std::optional<double> scale, int64_t layer) {
  if (Recorder* r = Recorder::active()) r->on_sdpa(q, k, mask, is_causal, scale, layer);
  return q;
}

}  // namespace attnscope

TORCH_LIBRARY(attnscope, m) {
  m.def(torch::schema("attnscope::capture(Tensor probs, int layer) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &attnscope::capture);
  m.def(torch::schema("attnscope::capture_dim(Tensor probs, int dim, int layer) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &attnscope::capture_dim);
  m.def(torch::schema("attnscope::capture_sdpa(Tensor q, Tensor k, Tensor? mask, bool is_causal, "
                      "float? scale, int layer) -> Tensor",
                      c10::AliasAnalysisKind::CONSERVATIVE),
        &attnscope::capture_sdpa);
}
