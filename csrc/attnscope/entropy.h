// Predictive entropy and top-k predictions from logits.
#pragma once
#include <torch/torch.h>

namespace attnscope {

/// Entropy in nats of softmax(logits / temperature) along the vocabulary, accumulated in fp32.
/// `logits (Tensor[B, T, V])` -> `Tensor[B, T]`. Entry i is the entropy of the distribution
/// that predicts token i+1. NaN logits give NaN entropy and a warning, never an error.
torch::Tensor predictive_entropy(const torch::Tensor& logits, double temperature = 1.0);

/// Top-k next-token predictions: probabilities `Tensor[B, T, k]` fp32 and ids `Tensor[B, T, k]`
/// int64, sorted by decreasing probability.
std::pair<torch::Tensor, torch::Tensor> top_k_predictions(const torch::Tensor& logits, int64_t k,
                                                          double temperature = 1.0);

/// Both in ONE pass over the logits (each block converted to fp32 once): `entropy` [B, T]
/// when `with_entropy` (else undefined), `probs`/`ids` [B, T, k] when k > 0 (else undefined).
/// Same values as predictive_entropy and top_k_predictions.
struct PredictiveStats {
  torch::Tensor entropy, probs, ids;
};
PredictiveStats predictive_stats(const torch::Tensor& logits, bool with_entropy, int64_t k,
                                 double temperature = 1.0);

}  // namespace attnscope
