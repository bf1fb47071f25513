// The capture operators, registered with TORCH_LIBRARY as attnscope::capture, capture_dim,
// capture_sdpa and sdpa. The first three return their first input unchanged so that a graph
// using the result keeps the call; sdpa returns the attention output. Alias analysis is
// CONSERVATIVE so no pass moves or removes them. With no active Recorder they are
// pass-throughs (sdpa is then aten SDPA): an exported model runs anywhere the library is loaded.
#pragma once
#include <torch/torch.h>

#include <optional>

namespace attnscope {

/// Schema: attnscope::capture(Tensor probs, int layer) -> Tensor
/// `probs (Tensor[B, H, Tq, Tk])` (or `[B*H, Tq, Tk]`) softmax-materialised attention.
torch::Tensor capture(const torch::Tensor& probs, int64_t layer);

/// Schema: attnscope::capture_dim(Tensor probs, int dim, int layer) -> Tensor
/// A softmax site whose dim was given as a non-negative index in a graph without ranks (an
/// archive reloaded by torch.jit.load): captured like capture() when `dim` is the last
/// dimension of `probs` at run time, passed through untouched otherwise (not attention).
torch::Tensor capture_dim(const torch::Tensor& probs, int64_t dim, int64_t layer);

/// Schema: attnscope::capture_sink(Tensor probs, int dim, int layer) -> Tensor
/// A softmax site with learned attention sinks (GPT-OSS): `probs (Tensor[B, H, Tq, Tk])` are the
/// softmax's probabilities over the real keys, the sink columns already sliced off, so a row
/// sums to 1 - (the sinks' share). Captured like capture(), plus the sinks' share per row
/// (`sink_share`); passed through untouched when `dim` (the slice's) is not the last dim.
torch::Tensor capture_sink(const torch::Tensor& probs, int64_t dim, int64_t layer);

/// Schema: attnscope::capture_sdpa(Tensor q, Tensor k, Tensor? mask, bool is_causal,
///                                 float? scale, int layer) -> Tensor   (returns q)
/// Placed on the query input of scaled_dot_product_attention; the recorder recomputes the
/// probabilities it needs from q `[B, Hq, Tq, D]` and k `[B, Hkv, Tk, D]`.
torch::Tensor capture_sdpa(const torch::Tensor& q, const torch::Tensor& k,
                           const std::optional<torch::Tensor>& mask, bool is_causal,
                           std::optional<double> scale, int64_t layer);

/// Schema: attnscope::sdpa(Tensor q, Tensor k, Tensor v, Tensor? mask, float dropout_p,
///                         bool is_causal, float? scale, bool enable_gqa, int layer) -> Tensor
/// scaled_dot_product_attention with the capture built in (what the graph pass and attnscope's
/// modules use since archive format 4). No capture running, or a layer the recorder does not
/// compute in full: exactly aten::scaled_dot_product_attention. Otherwise (CPU, fp32, no dropout,
/// every head computed) the recorder's fused route also gives the output, P·V from the same
/// probabilities, so the attention is computed once (equal to the fused kernel's to ~1e-7).
torch::Tensor sdpa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                   const std::optional<torch::Tensor>& mask, double dropout_p, bool is_causal,
                   std::optional<double> scale, bool enable_gqa, int64_t layer);

/// Qualified operator names, for the graph pass and for checking archives.
constexpr const char* kCaptureOp = "attnscope::capture";
constexpr const char* kCaptureSdpaOp = "attnscope::capture_sdpa";
constexpr const char* kCaptureDimOp = "attnscope::capture_dim";
constexpr const char* kSdpaOp = "attnscope::sdpa";
constexpr const char* kCaptureSinkOp = "attnscope::capture_sink";

}  // namespace attnscope
