#include <attnscope/entropy.h>

#include <attnscope/softmax_rows.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace attnscope {

namespace {
void check(const torch::Tensor& logits, double temperature, const char* what) {
  TORCH_CHECK(logits.dim() == 3, what, ": expected logits [B, T, V], got ", logits.sizes());
  TORCH_CHECK(temperature > 0, what, ": temperature ", temperature, " must be > 0");
}

/// Positions [t0, t0 + n) of the logits in fp32, divided by the temperature: a view of the
/// logits when they are fp32 at temperature 1 (never written), else a block-sized copy, so a
/// bf16 [B, T, V] never exists as a whole in fp32.
torch::Tensor block(const torch::Tensor& logits, int64_t t0, int64_t n, double temperature) {
  auto z = logits.narrow(1, t0, n).to(torch::kFloat);
  return temperature == 1.0 ? z : z / temperature;
}

/// Positions per block: about 2^18 elements on the CPU (cache-sized), 2^27 on a GPU (few launches).
int64_t positions_per_block(const torch::Tensor& logits) {
  const int64_t budget = logits.is_cuda() ? (int64_t(1) << 27) : (int64_t(1) << 18);
  return std::max<int64_t>(1, budget / std::max<int64_t>(1, logits.size(0) * logits.size(2)));
}
}  // namespace

torch::Tensor predictive_entropy(const torch::Tensor& logits, double temperature) {
  return predictive_stats(logits, /*with_entropy=*/true, 0, temperature).entropy;
}

std::pair<torch::Tensor, torch::Tensor> top_k_predictions(const torch::Tensor& logits, int64_t k,
                                                          double temperature) {
  TORCH_CHECK(k >= 1 && k <= logits.size(-1), "top_k_predictions: k ", k,
              " out of range: vocabulary has ", logits.size(-1), " entries");
  auto s = predictive_stats(logits, /*with_entropy=*/false, k, temperature);
  return {s.probs, s.ids};
}

namespace {
void cpu_rows(const torch::Tensor& logits, bool with_entropy, int64_t k, double temperature, PredictiveStats& out);
void aten_blocks(const torch::Tensor& logits, bool with_entropy, int64_t k, double temperature, PredictiveStats& out);
}  // namespace

PredictiveStats predictive_stats(const torch::Tensor& logits, bool with_entropy, int64_t k, double temperature) {
  torch::NoGradGuard no_grad;
  check(logits, temperature, "predictive_stats");
  TORCH_CHECK(k >= 0 && k <= logits.size(-1), "predictive_stats: k ", k, " out of range: vocabulary has ",
              logits.size(-1), " entries");
  const int64_t batch = logits.size(0), len = logits.size(1);
  PredictiveStats out;
  if (with_entropy) out.entropy = torch::empty({batch, len}, logits.options().dtype(torch::kFloat));
  if (k > 0) {
    out.probs = torch::empty({batch, len, k}, logits.options().dtype(torch::kFloat));
    out.ids = torch::empty({batch, len, k}, logits.options().dtype(torch::kLong));
  }
  if (!with_entropy && k == 0) return out;
  const auto dt = logits.scalar_type();
  if (logits.device().is_cpu() && k <= 64 &&
      (dt == torch::kFloat || dt == torch::kBFloat16 || dt == torch::kHalf)) {
    cpu_rows(logits, with_entropy, k, temperature, out);
  } else {
    aten_blocks(logits, with_entropy, k, temperature, out);
  }
  if (with_entropy) {
    auto bad = out.entropy.isnan();
    if (bad.any().item<bool>())
      TORCH_WARN("predictive_entropy: ", bad.sum().item<int64_t>(),
                 " position(s) have NaN logits; their entropy is NaN");
  }
  return out;
}

namespace {
// CPU: one row of logits at a time (predictive_row: two reads, no temporaries), rows in
// parallel; bf16/fp16 rows are widened into a per-thread buffer.
void cpu_rows(const torch::Tensor& logits, bool with_entropy, int64_t k, double temperature, PredictiveStats& out) {
  const int64_t batch = logits.size(0), len = logits.size(1), vocab = logits.size(2);
  const auto dt = logits.scalar_type();
  const auto z = logits.stride(2) == 1 ? logits : logits.contiguous();
  const int64_t s0 = z.stride(0), s1 = z.stride(1);
  const float inv_t = static_cast<float>(1.0 / temperature);
  float* ent = with_entropy ? out.entropy.data_ptr<float>() : nullptr;
  float* probs = k > 0 ? out.probs.data_ptr<float>() : nullptr;
  int64_t* ids = k > 0 ? out.ids.data_ptr<int64_t>() : nullptr;
  std::vector<char> nan_rows(static_cast<size_t>(batch * len), 0);
  at::parallel_for(0, batch * len, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> wide;
    std::vector<int64_t> top(static_cast<size_t>(std::max<int64_t>(k, 1)));
    for (int64_t i = begin; i < end; ++i) {
      const int64_t off = (i / len) * s0 + (i % len) * s1;
      const float* row;
      if (dt == torch::kFloat) {
        row = z.data_ptr<float>() + off;
      } else {
        wide.resize(static_cast<size_t>(vocab));
        if (dt == torch::kBFloat16) {
          const auto* src = z.data_ptr<c10::BFloat16>() + off;
          for (int64_t j = 0; j < vocab; ++j) wide[j] = static_cast<float>(src[j]);
        } else {
          const auto* src = z.data_ptr<c10::Half>() + off;
          for (int64_t j = 0; j < vocab; ++j) wide[j] = static_cast<float>(src[j]);
        }
        row = wide.data();
      }
      const RowPredictive r = predictive_row(row, vocab, inv_t, k, top.data());
      if (ent) ent[i] = r.entropy;
      if (k == 0) continue;
      if (r.nan) {
        nan_rows[i] = 1;
        continue;
      }
      for (int64_t j = 0; j < k; ++j) {
        ids[i * k + j] = top[j];
        probs[i * k + j] = std::exp(row[top[j]] * inv_t - r.lse);
      }
    }
  });
  if (k == 0) return;
  for (int64_t i = 0; i < batch * len; ++i)  // rows with NaN logits: torch.topk's order
    if (nan_rows[i]) {
      auto zi = logits[i / len][i % len].to(torch::kFloat) / temperature;
      auto tk = zi.topk(k, -1, true, true);
      out.probs[i / len][i % len].copy_((std::get<0>(tk) - zi.logsumexp(-1)).exp());
      out.ids[i / len][i % len].copy_(std::get<1>(tk));
    }
}

// Elsewhere (CUDA, other dtypes, k > 64): blocks of positions with ATen ops.
void aten_blocks(const torch::Tensor& logits, bool with_entropy, int64_t k, double temperature, PredictiveStats& out) {
  const int64_t len = logits.size(1);
  const int64_t step = positions_per_block(logits);
  for (int64_t t0 = 0; t0 < len; t0 += step) {
    const int64_t n = std::min(step, len - t0);
    auto z = block(logits, t0, n, temperature);  // the one fp32 copy of this block
    auto mx = std::get<0>(z.max(-1, /*keepdim=*/true));
    torch::Tensor tk_vals, tk_ids;
    if (k > 0) std::tie(tk_vals, tk_ids) = z.topk(k, -1, /*largest=*/true, /*sorted=*/true);
    // Not in place: for fp32 logits at temperature 1, z is a view of the caller's logits.
    auto d = z - mx;
    d.clamp_min_(-1e30);  // -inf logits: e = 0 and e*d = 0 instead of 0*(-inf)
    auto e = d.exp();
    auto sum = e.sum(-1, /*keepdim=*/true);
    auto lse = sum.log() + mx;  // logsumexp of the block's logits
    if (with_entropy)
      out.entropy.narrow(1, t0, n).copy_(sum.squeeze(-1).log() - torch::linalg_vecdot(e, d) / sum.squeeze(-1));
    if (k > 0) {
      out.probs.narrow(1, t0, n).copy_((tk_vals - lse).exp());
      out.ids.narrow(1, t0, n).copy_(tk_ids);
    }
  }
}
}  // namespace

}  // namespace attnscope
