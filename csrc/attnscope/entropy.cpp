#include <attnscope/entropy.h>

namespace attnscope {

namespace {
torch::Tensor scaled(const torch::Tensor& logits, double temperature, const char* what) {
  TORCH_CHECK(logits.dim() == 3, what, ": expected logits [B, T, V], got ", logits.sizes());
  TORCH_CHECK(temperature > 0, what, ": temperature ", temperature, " must be > 0");
  auto z = logits.to(torch::kFloat);
  return temperature == 1.0 ? z : z / temperature;
}
}  // namespace

torch::Tensor predictive_entropy(const torch::Tensor& logits, double temperature) {
  torch::NoGradGuard no_grad;
  auto z = scaled(logits, temperature, "predictive_entropy");
  // H = -sum p log p with log p from log_softmax (stable for large logits).
  auto logp = torch::log_softmax(z, -1);
  auto h = -(logp.exp() * logp).nan_to_num(0.0, 0.0, 0.0).sum(-1);
  // nan_to_num above maps 0·(-inf) to 0; logits that were NaN must stay NaN.
  auto bad = z.isnan().any(-1);
  if (bad.any().item<bool>()) {
    TORCH_WARN("predictive_entropy: ", bad.sum().item<int64_t>(),
               " position(s) have NaN logits; their entropy is NaN");
    h = h.masked_fill(bad, std::numeric_limits<float>::quiet_NaN());
  }
  return h;
}

std::pair<torch::Tensor, torch::Tensor> top_k_predictions(const torch::Tensor& logits, int64_t k,
                                                          double temperature) {
  torch::NoGradGuard no_grad;
  auto z = scaled(logits, temperature, "top_k_predictions");
  TORCH_CHECK(k >= 1 && k <= z.size(-1), "top_k_predictions: k ", k,
              " out of range: vocabulary has ", z.size(-1), " entries");
  auto probs = torch::softmax(z, -1);
  auto tk = probs.topk(k, -1, /*largest=*/true, /*sorted=*/true);
  return {std::get<0>(tk), std::get<1>(tk)};
}

}  // namespace attnscope
