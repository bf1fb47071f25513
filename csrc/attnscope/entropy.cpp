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
  const int64_t batch = z.size(0), len = z.size(1), vocab = z.size(2);
  auto h = torch::empty({batch, len}, z.options());
  // H = log S - sum(e * d) / S with d = z - max z, e = exp(d), S = sum e; computed over
  // blocks of positions so the temporaries stay small. NaN logits propagate to NaN.
  const int64_t step = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, batch * vocab));
  for (int64_t t0 = 0; t0 < len; t0 += step) {
    const int64_t n = std::min(step, len - t0);
    auto zc = z.narrow(1, t0, n);
    auto d = zc - std::get<0>(zc.max(-1, /*keepdim=*/true));
    d.clamp_min_(-1e30);  // -inf logits: e = 0 and e·d = 0 instead of 0·(-inf)
    auto e = d.exp();
    auto sum = e.sum(-1);
    h.narrow(1, t0, n).copy_(sum.log() - torch::linalg_vecdot(e, d) / sum);
  }
  auto bad = h.isnan();
  if (bad.any().item<bool>())
    TORCH_WARN("predictive_entropy: ", bad.sum().item<int64_t>(),
               " position(s) have NaN logits; their entropy is NaN");
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
