#include <attnscope/sdpa_blocks.h>

#include <torch/version.h>

// c10::DeviceAllocator (every accelerator's caching allocator behind one interface) arrived in
// PyTorch 2.9; before it, GPU blocks keep the spec's chunk_elements.
#if (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)) && \
    __has_include(<c10/core/CachingDeviceAllocator.h>)
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#define ATTNSCOPE_DEVICE_ALLOCATOR 1
#endif

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <utility>

namespace attnscope {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
// The memory-efficient CUDA kernel reads bias rows at aligned addresses: keys padded to a
// multiple of 16 elements, as SDPA pads them itself.
constexpr int64_t kBiasAlign = 16;

/// The mask as the kernels take it: additive, in q's dtype (bool: 0 / -inf).
torch::Tensor kernel_bias(const torch::Tensor& mask, const torch::Tensor& q, int64_t tk) {
  if (!mask.defined()) return {};
  torch::Tensor m = mask.scalar_type() == torch::kBool
                        ? torch::where(mask, torch::zeros({}, q.options()), torch::full({}, -kInf, q.options()))
                        : mask.to(q.scalar_type());
  if (q.is_cpu()) return m;
  // CUDA: last dimension contiguous, rows aligned (a broadcast key dimension is written out).
  auto sizes = m.sizes().vec();
  sizes.back() = (tk + kBiasAlign - 1) / kBiasAlign * kBiasAlign;
  auto padded = torch::zeros(sizes, q.options()).narrow(-1, 0, tk);
  auto want = m.sizes().vec();
  want.back() = tk;
  padded.copy_(m.expand(want));
  return padded;
}

#ifdef ATTNSCOPE_DEVICE_ALLOCATOR
// getMemoryInfo joined the device allocator interface in recent PyTorch: detected, not assumed.
template <typename A, typename = void>
struct HasMemoryInfo : std::false_type {};
template <typename A>
struct HasMemoryInfo<A, std::void_t<decltype(std::declval<A&>().getMemoryInfo(c10::DeviceIndex{0}))>>
    : std::true_type {};

template <typename A>
int64_t available_bytes(A* alloc, c10::DeviceIndex idx) {
  if constexpr (HasMemoryInfo<A>::value) {
    const auto stats = alloc->getDeviceStats(idx);
    // [0]: every pool. Memory the caching allocator holds unused is ours to take too.
    const int64_t cached = stats.reserved_bytes[0].current - stats.allocated_bytes[0].current;
    return static_cast<int64_t>(alloc->getMemoryInfo(idx).first) + std::max<int64_t>(0, cached);
  } else {
    return -1;
  }
}
#endif

}  // namespace

AttentionLse attention_with_lse(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& mask, bool is_causal, double scale) {
  try {
    auto bias = kernel_bias(mask, q, k.size(2));
    std::optional<torch::Tensor> b;
    if (bias.defined()) b = bias;
    if (q.is_cpu()) {  // the flash kernel reads grouped K/V itself
      auto r = at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal, b, scale);
      return {std::get<0>(r), std::get<1>(r).to(torch::kFloat)};
    }
    if (q.is_cuda()) {
      const int64_t g = q.size(1) / k.size(1);
      auto kr = g == 1 ? k : k.repeat_interleave(g, 1);
      auto vr = g == 1 ? v : v.repeat_interleave(g, 1);
      auto r = at::_scaled_dot_product_efficient_attention(q, kr, vr, b, /*compute_log_sumexp=*/true, 0.0,
                                                           is_causal, scale);
      // The kernel pads its log-sum-exp rows to a multiple of 32.
      return {std::get<0>(r), std::get<1>(r).narrow(2, 0, q.size(2)).to(torch::kFloat)};
    }
  } catch (const c10::Error& e) {
    TORCH_WARN_ONCE("attnscope: the fused attention kernel refused this site (", e.what_without_backtrace(),
                    "); SDPA sites on ", q.device(), " take a softmax per block instead");
  }
  return {};
}

int64_t device_block_elements(const torch::Device& device, int64_t cap) {
#ifdef ATTNSCOPE_DEVICE_ALLOCATOR
  if (device.is_cpu()) return cap;
  try {
    const c10::DeviceIndex idx =
        device.has_index() ? device.index() : c10::impl::getDeviceGuardImpl(device.type())->getDevice().index();
    const int64_t avail = available_bytes(c10::getDeviceAllocator(device.type()), idx);
    // Four fp32 copies of a block (logits, probabilities, a temporary, the visibility and
    // ATen's own temporaries) in a quarter of what is left: the next layers still fit.
    if (avail >= 0) return std::max<int64_t>(1, std::min(cap, avail / (4 * 4 * 4)));
  } catch (const c10::Error&) {
  }
#endif
  (void)device;
  return cap;
}

namespace {
// Value-weighted rows: α_ij w_j / Σ_j α_ij w_j in place (a row with no weight stays 0).
void weigh_rows(torch::Tensor& probs, const torch::Tensor& weight, bool with_lse) {
  TORCH_CHECK(!with_lse, "value-weighted blocks take no log-sum-exp");
  probs.mul_(weight.unsqueeze(2));
  probs.div_(probs.sum(-1, true).clamp_min_(std::numeric_limits<float>::min()));
}
}  // namespace

void add_sdpa_blocks(LayerAccumulator& acc, const SdpaBlocks& s, int64_t step, const RunContext& ctx,
                     Workspace& ws) {
  const int64_t batch = s.q.size(0), hb = s.q.size(1), tq = s.q.size(2), tk = s.k.size(2);
  const auto dev = s.q.device();
  const bool vis = acc.wants_visibility();
  const bool with_lse = s.lse.defined();
  // With the log-sum-exp, hidden keys get the lowest finite logit instead of -inf: exp gives
  // the same 0, and p·log p = 0·lowest stays 0 (0·-inf would be NaN) for the entropy below.
  const float hidden = with_lse ? std::numeric_limits<float>::lowest() : -kInf;
  auto qs = s.q * s.scale;  // scale folded into q once per layer
  auto kt = s.k.transpose(-1, -2);
  torch::Tensor lse;
  if (with_lse) {
    // A row no key is visible to: the CUDA kernel says -inf, the CPU one 0; 0 for both, so
    // exp(lowest − 0) = 0 and the row's entropy is 0, as on the softmax route.
    lse = s.lse.masked_fill(s.lse.isneginf(), 0.0f).unsqueeze(-1);  // [B, Hb, Tq, 1]
  }
  torch::Tensor all_visible;
  for (int64_t r0 = 0; r0 < tq; r0 += step) {
    const int64_t rows = std::min(step, tq - r0);
    // With is_causal, keys after the block's last row get probability exactly 0: skip them.
    const int64_t keys = s.is_causal ? std::min(tk, r0 + rows) : tk;
    auto scores = ws.get(1, {batch, hb, rows, keys}, dev);
    torch::matmul_out(scores, qs.narrow(2, r0, rows), kt.narrow(3, 0, keys));
    torch::Tensor visible;  // [B|1, Hb|1, rows, keys]: pairs the mask lets through
    if (s.mask.defined()) {
      const auto& m = s.mask;
      auto mc = m.size(2) > 1 ? m.narrow(2, r0, rows) : m;
      if (mc.size(3) > 1) mc = mc.narrow(3, 0, keys);
      if (mc.scalar_type() == torch::kBool) {
        scores.masked_fill_(mc.logical_not(), hidden);
        if (vis) visible = mc;
      } else {
        scores.add_(mc.to(torch::kFloat));
        if (with_lse) scores.clamp_min_(hidden);  // a -inf bias: the lowest finite logit
        if (vis) visible = mc.gt(s.hidden_below);
      }
      if (vis && (visible.size(2) != rows || visible.size(3) != keys))
        visible = visible.expand({visible.size(0), visible.size(1), rows, keys});
    }
    if (s.is_causal) {  // SDPA's causal mask is top-left aligned: key j > query row i is hidden
      auto hide = torch::ones({rows, keys}, torch::dtype(torch::kBool).device(dev)).triu(r0 + 1);
      scores.masked_fill_(hide, hidden);
      if (vis) visible = visible.defined() ? visible.logical_and(hide.logical_not())
                                           : hide.logical_not().view({1, 1, rows, keys});
    }
    if (vis && !visible.defined()) {  // no mask at all: every key is visible (one buffer per site)
      if (!all_visible.defined())
        all_visible = torch::ones({1, 1, step, tk}, torch::dtype(torch::kBool).device(dev));
      visible = all_visible.narrow(2, 0, rows).narrow(3, 0, keys);
    }
    auto probs = ws.get(2, scores.sizes(), dev);
    torch::Tensor ent;
    if (with_lse) {
      scores.sub_(lse.narrow(2, r0, rows));  // log p
      torch::exp_out(probs, scores);
      if (acc.wants_entropy()) {
        // −Σ p log p with log p = z − lse at hand (no log, no clamp), over the row's own sum S
        // (1 up to the kernel's rounding of lse): H = log S − Σ p·(z − lse) / S, else lse's
        // rounding comes back times H (on 700-token rows 3.5e-6 nats from float64, 1.7e-6
        // with S). ATen's sums (cascaded), not a batched dot product: its fp32 lane sums were
        // 1.6e-5 off.
        auto plogp = ws.get(0, probs.sizes(), dev);
        torch::mul_out(plogp, probs, scores);
        auto sum = probs.sum(-1);
        ent = plogp.sum(-1);
        ent.div_(sum).neg_().add_(sum.log()).masked_fill_(sum.eq(0), 0.0);  // no visible key: 0
      }
    } else {
      torch::_softmax_out(probs, scores, -1, false);
      // Only an explicit mask can hide every key of a row (padding queries: 0/0 = NaN); with
      // is_causal alone row i always sees keys 0..i, so the extra pass is skipped.
      if (s.mask.defined()) probs.nan_to_num_(0.0);
    }
    if (s.key_weight.defined()) weigh_rows(probs, s.key_weight.narrow(2, 0, keys), with_lse);
    acc.add_block(probs, r0, ctx, ws, visible, ent);
  }
}

}  // namespace attnscope
