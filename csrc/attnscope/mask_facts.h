// MaskFacts: what an attention mask lets each query and key see. Every layer of a run gets the
// same mask tensor, so each fact is computed once per run and cached by the tensor's identity
// and version (the cache holds the tensor, so its storage cannot be reused by another mask,
// and the version catches in-place edits).
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace attnscope {

class MaskFacts {
 public:
  /// [Tq] int64: for each query row, 1 + the last key the mask `m` ([B|1, H|1, Tq|1, Tk]) lets
  /// any batch row or head see (0: none); undefined when the mask is one value over the keys.
  /// Float masks hide keys at or below `hidden_below`.
  torch::Tensor row_keys(const torch::Tensor& m, double hidden_below, int64_t tq);
  /// [B|1, H|1, Tk] fp32: how many valid queries (`valid (Tensor[B, T])` bool, the last `tq`
  /// columns are the queries) the mask `m` — or SDPA's is_causal, or nothing — lets see each key.
  torch::Tensor visible_counts(const torch::Tensor& m, const torch::Tensor& valid, double hidden_below,
                               bool is_causal, int64_t tq, int64_t tk);

 private:
  torch::Tensor rk_, rk_mask_;  // row_keys of the last mask seen, and that mask
  int64_t rk_version_ = -1;
  torch::Tensor counts_, counts_mask_;  // visible_counts of the last mask seen
  int64_t counts_version_ = -1, counts_tq_ = -1;
  bool counts_causal_ = false;
};

}  // namespace attnscope
