#include <attnscope/mask_facts.h>

namespace attnscope {

torch::Tensor MaskFacts::row_keys(const torch::Tensor& m, double hidden_below, int64_t tq) {
  // Every layer gets the same mask tensor: computed once per run (the cache holds the tensor,
  // so its storage cannot be reused by another mask, and its version catches in-place edits).
  if (rk_mask_.defined() && rk_mask_.unsafeGetTensorImpl() == m.unsafeGetTensorImpl() &&
      rk_version_ == m._version() && rk_.size(0) == tq)
    return rk_;
  if (m.size(3) == 1) return {};  // one value over every key: nothing to trim
  // Last key any batch row or head lets query r see, + 1 (0: none).
  auto seen = m.scalar_type() == torch::kBool ? m : m.gt(hidden_below);
  auto cols = torch::arange(1, m.size(3) + 1, torch::dtype(torch::kLong).device(m.device()));
  auto last = torch::where(seen.any(0).any(0), cols, 0).amax(-1);  // [Tq or 1]
  rk_ = last.expand({tq}).to(torch::kCPU).contiguous();
  rk_mask_ = m;
  rk_version_ = m._version();
  return rk_;
}

torch::Tensor MaskFacts::visible_counts(const torch::Tensor& m, const torch::Tensor& valid, double hidden_below,
                                        bool is_causal, int64_t tq, int64_t tk) {
  const bool same_mask = counts_mask_.defined() == m.defined() &&
                         (!m.defined() || (counts_mask_.unsafeGetTensorImpl() == m.unsafeGetTensorImpl() &&
                                           counts_version_ == m._version()));
  if (counts_.defined() && same_mask && counts_causal_ == is_causal && counts_.size(-1) == tk && counts_tq_ == tq)
    return counts_;
  auto q_ok = valid.narrow(1, valid.size(1) - tq, tq).to(m.defined() ? m.device() : valid.device());
  torch::Tensor c;  // [B|1, H|1, Tk]
  if (m.defined()) {
    auto seen = m.scalar_type() == torch::kBool ? m : m.gt(hidden_below);  // [B|1, H|1, Tq|1, Tk|1]
    seen = seen.expand({seen.size(0), seen.size(1), tq, tk});
    c = seen.logical_and(q_ok.view({q_ok.size(0), 1, tq, 1})).sum(2, false, torch::kFloat);
  } else if (is_causal) {
    // SDPA's is_causal: query r sees keys j <= r, so key j < Tq is seen by the valid queries
    // r >= j (a suffix sum, O(T) instead of a [Tq, Tk] mask), keys j >= Tq by none.
    c = torch::zeros({q_ok.size(0), 1, tk}, torch::dtype(torch::kFloat).device(q_ok.device()));
    c.select(1, 0).narrow(1, 0, tq).copy_(q_ok.flip({1}).cumsum(1, torch::kFloat).flip({1}));
  } else {
    c = q_ok.sum(1, true, torch::kFloat).unsqueeze(1).expand({q_ok.size(0), 1, tk});
  }
  counts_ = c;
  counts_mask_ = m;
  counts_version_ = m.defined() ? m._version() : -1;
  counts_causal_ = is_causal;
  counts_tq_ = tq;
  return counts_;
}

}  // namespace attnscope
