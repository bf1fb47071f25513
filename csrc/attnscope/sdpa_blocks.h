// The block route at SDPA sites, in ATen ops (any device; the CPU takes it only when asked,
// ATTNSCOPE_SDPA_ROUTE=blocks|softmax): the site's attention runs once through the device's
// fused kernel that also returns each row's log-sum-exp, then each block of query rows gets its
// probabilities as exp(scale·q·kᵀ + mask − lse) (no max, no sum, no normalisation, no NaN pass)
// and each row's entropy as −Σ p·(z − lse), one batched dot product with the block's logits z.
// Without a log-sum-exp (no such kernel for the inputs, no V given, dropout) blocks take a
// materialised softmax instead.
#pragma once
#include <attnscope/aggregates.h>

#include <torch/torch.h>

#include <string>

namespace attnscope {

/// Output and log-sum-exp of one SDPA call from a fused kernel.
struct AttentionLse {
  /// [B, H, Tq, Dv] in q's dtype: the site's attention output.
  torch::Tensor out;
  /// [B, H, Tq] fp32: log Σ_j exp(scale·q·k_j + mask_j) per row (undefined: no kernel).
  torch::Tensor lse;
};

/// Runs softmax(q kᵀ·scale + mask [causal]) v through the device's fused kernel that returns
/// the log-sum-exp (CPU: the flash kernel, grouped K/V as they are; CUDA: the memory-efficient
/// kernel, K/V repeated per query head, the bias padded to its alignment). `q (Tensor[B, Hq, Tq,
/// D])`, `k`/`v (Tensor[B, Hkv, Tk, D|Dv])`, `mask` bool or additive, broadcastable to
/// [B, Hq, Tq, Tk]. Returns {} (both undefined) when the kernel refuses the inputs; the
/// reason is warned once per process.
AttentionLse attention_with_lse(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& mask, bool is_causal, double scale);

/// Elements one attention block [B, H, rows, Tk] may hold on `device`: `cap` (the spec's
/// chunk_elements), lowered so that the block's buffers (about four fp32 copies) take at most a
/// quarter of the memory the device has left (free memory plus what the caching allocator holds
/// unused). `cap` when the device cannot tell (older PyTorch, no allocator statistics).
int64_t device_block_elements(const torch::Device& device, int64_t cap);

/// One SDPA site prepared for the block route.
struct SdpaBlocks {
  /// [B, Hb, Tq, D] fp32: the block heads' queries.
  torch::Tensor q;
  /// [B, Hb, Tk, D] fp32: key of each block head (KV heads repeated).
  torch::Tensor k;
  /// Undefined, or bool / additive [B|1, Hb|1, Tq|1, Tk|1] (any dtype).
  torch::Tensor mask;
  /// Additive mask values below this hide their key (-inf or the dtype's lowest).
  double hidden_below = 0.0;
  /// SDPA's is_causal (top-left aligned: key j > query row i is hidden).
  bool is_causal = false;
  double scale = 1.0;
  /// [B, Hb, Tq] fp32 from attention_with_lse, or undefined: softmax per block.
  torch::Tensor lse;
  /// [B, Hb, Tk] fp32 or undefined: each row's probabilities times these key weights,
  /// renormalised (value-weighted attention: the weights are ‖v_j‖; needs lse undefined).
  torch::Tensor key_weight;
};

/// Adds the site's probabilities to `acc`, `rows` query rows at a time (Workspace slots 0-3).
void add_sdpa_blocks(LayerAccumulator& acc, const SdpaBlocks& site, int64_t rows,
                     const RunContext& ctx, Workspace& ws);

}  // namespace attnscope
