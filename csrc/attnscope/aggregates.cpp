#include <attnscope/aggregates.h>

#include <algorithm>
#include <limits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace attnscope {

namespace {
// A map of fresh anonymous pages, [B, Tq, Tk] fp32: zeros that cost nothing until written. A
// causal map's rows are written only up to their last key, so the pages above the diagonal
// (a quarter of a 2k-token map, nearly half at 8k) are never faulted in or cleared. Returns an
// undefined tensor where that is not available (then the caller zero-fills).
torch::Tensor zero_pages(int64_t batch, int64_t tq, int64_t tk, const torch::TensorOptions& f32) {
#if defined(__linux__)
  const size_t bytes = static_cast<size_t>(batch * tq * tk) * sizeof(float);
  if (!f32.device().is_cpu() || bytes < (size_t(1) << 20)) return {};
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return {};
  return torch::from_blob(p, {batch, tq, tk}, [bytes](void* q) { munmap(q, bytes); }, f32);
#else
  (void)batch, (void)tq, (void)tk, (void)f32;
  return {};
#endif
}
}  // namespace

torch::Tensor Workspace::get(int slot, torch::IntArrayRef sizes, const torch::Device& device) {
  if (static_cast<int>(buf_.size()) <= slot) buf_.resize(slot + 1);
  int64_t n = 1;
  for (int64_t d : sizes) n *= d;
  auto& b = buf_[slot];
  if (!b.defined() || b.numel() < n || b.device() != device)
    b = torch::empty({n}, torch::dtype(torch::kFloat).device(device));
  return b.narrow(0, 0, n).view(sizes);
}

LayerAccumulator::LayerAccumulator(const CaptureSpec& spec, int64_t layer, int64_t batch,
                                   int64_t heads, int64_t tq, int64_t tk,
                                   const torch::Device& device, bool whole_rows)
    : spec_(spec), layer_(layer), batch_(batch), heads_(heads), tq_(tq), tk_(tk) {
  for (const auto& lh : spec.heads)
    if (lh.first == layer) {
      TORCH_CHECK(lh.second >= 0 && lh.second < heads, "head ", lh.second,
                  " out of range: layer ", layer, " has ", heads, " heads (0..", heads - 1, ")");
      if (std::find(map_heads_.begin(), map_heads_.end(), lh.second) == map_heads_.end())
        map_heads_.push_back(lh.second);
    }
  keep_layer_map_ = std::find(spec.layer_maps.begin(), spec.layer_maps.end(), layer) != spec.layer_maps.end();
  layer_map_ = keep_layer_map_ || spec.rollout;  // the rollout folds every layer's head mean
  if (layer_map_ && spec.layer_map_head >= 0)
    TORCH_CHECK(spec.layer_map_head < heads, "layer_map_head ", spec.layer_map_head,
                " out of range: layer ", layer, " has ", heads, " heads (0..", heads - 1, ")");
  aggregates_ = spec.aggregates_layer(layer);
  idle_ = map_heads_.empty() && !layer_map_ && !aggregates_;
  if (idle_) return;

  // All heads are needed for aggregates and head means; otherwise only the kept heads.
  if (!aggregates_ && !(layer_map_ && spec.layer_map_head < 0)) {
    block_heads_ = map_heads_;
    if (layer_map_ && std::find(block_heads_.begin(), block_heads_.end(), spec.layer_map_head) ==
                          block_heads_.end())
      block_heads_.push_back(spec.layer_map_head);
  }

  auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  if (aggregates_) {
    if (spec.received) {
      recv_sum_ = torch::zeros({batch, heads, tk}, f32);
      recv_max_ = torch::zeros({batch, heads, tk}, f32);
      recv_count_ = torch::zeros({batch, heads, tk}, f32);
    }
    if (spec.attn_entropy) entropy_ = torch::empty({batch, heads, tq}, f32);
    if (spec.sink_tokens > 0) {
      TORCH_CHECK(spec.sink_tokens <= tk, "sink_tokens ", spec.sink_tokens, " exceeds the ", tk,
                  " key positions of layer ", layer);
      sink_rows_ = torch::empty({batch, heads, tq}, f32);
    }
    for (int64_t p : spec.from_tokens) {
      TORCH_CHECK(p >= -tq && p < tq, "from_tokens: token_idx ", p, " out of range for ", tq,
                  " query positions (valid: ", -tq, "..", tq - 1, ")");
      from_rows_.push_back(p < 0 ? p + tq : p);
    }
    if (spec.row_stats) stats_ = torch::empty({6, batch, heads, tq}, f32);
    if (spec.pooled_maps > 0) init_pooled(device);
    if (!from_rows_.empty())
      from_ = torch::zeros({batch, heads, static_cast<int64_t>(from_rows_.size()), tk}, f32);
  }
  // Zero-filled: blocks and the fused route skip key columns known to be zero (causal trimming).
  auto map = [&] {
    auto m = zero_pages(batch, tq, tk, f32);
    if (m.defined()) return m;
    maps_zeroed_ = !whole_rows;
    return whole_rows ? torch::empty({batch, tq, tk}, f32) : torch::zeros({batch, tq, tk}, f32);
  };
  maps_zeroed_ = true;
  if (layer_map_) layer_map_t_ = map();
  for (int64_t h : map_heads_) head_maps_[h] = map();
}

void LayerAccumulator::add_sink_share(const torch::Tensor& probs) {
  if (aggregates_) sink_share_ = (1.0f - probs.sum(-1, /*keepdim=*/false, torch::kFloat)).clamp_(0.0f, 1.0f);
}

int64_t LayerAccumulator::block_index(int64_t head) const {
  if (block_heads_.empty()) return head;
  auto it = std::find(block_heads_.begin(), block_heads_.end(), head);
  return static_cast<int64_t>(it - block_heads_.begin());
}

void LayerAccumulator::init_sink_keys(const RunContext& ctx) {
  // Rank keys by (padding, position): the first k of each row are its first k real tokens,
  // wherever the padding is (left, right). Rows with fewer real keys get weight 0 for the rest.
  const int64_t k = spec_.sink_tokens;
  auto valid_k = ctx.valid.narrow(1, ctx.valid.size(1) - tk_, tk_);  // [B, Tk]
  auto pos = torch::arange(tk_, torch::dtype(torch::kLong).device(valid_k.device()));
  auto order = (valid_k.logical_not().to(torch::kLong) * tk_ + pos).argsort(/*stable=*/false, /*dim=*/1, /*descending=*/false);
  sink_idx_ = order.narrow(1, 0, k).contiguous();
  sink_w_ = valid_k.gather(1, sink_idx_).to(torch::kFloat);
}

void LayerAccumulator::add_block(const torch::Tensor& probs, int64_t r0, const RunContext& ctx,
                                 Workspace& ws, const torch::Tensor& visible, const torch::Tensor& entropy) {
  const int64_t rows = probs.size(2), keys = probs.size(3);  // keys <= tk_: the rest are zero
  const int64_t hb = probs.size(1);
  if (aggregates_) {
    auto q_ok = ctx.valid.narrow(1, tk_ - tq_ + r0, rows).view({batch_, 1, rows, 1});
    if (spec_.received) {
      // Padded query rows are excluded; `where` (not a product) also drops NaN rows that
      // fully masked queries produce.
      torch::Tensor p = probs;
      if (ctx.has_padding) {
        p = ws.get(0, probs.sizes(), probs.device());
        torch::where_out(p, q_ok, probs, torch::zeros({}, probs.options()));
      }
      recv_sum_.narrow(2, 0, keys).add_(p.sum(2));
      auto mx = recv_max_.narrow(2, 0, keys);
      torch::max_out(mx, mx, p.amax(2));
      // Divisor: the valid queries of this block whose mask lets them see each key.
      auto count = recv_count_.narrow(2, 0, keys);
      if (visible.defined()) {
        count.add_(visible.logical_and(q_ok).sum(2, /*keepdim=*/false, torch::kFloat));
      } else {  // p >= 0: sign(p) is 1 where a key is seen, 0 where masked (vectorised, ~5x count_nonzero)
        auto seen = ws.get(3, p.sizes(), p.device());
        torch::sign_out(seen, p);
        count.add_(seen.sum(2));
      }
    }
    if (spec_.attn_entropy && entropy.defined()) {
      entropy_.narrow(2, r0, rows).copy_(entropy);
    } else if (spec_.attn_entropy) {
      // -sum p log p; clamping keeps 0·log 0 = 0 on the vectorised log path.
      auto plogp = ws.get(0, probs.sizes(), probs.device());
      torch::clamp_min_out(plogp, probs, std::numeric_limits<float>::min());
      plogp.log_().mul_(probs);
      auto out = entropy_.narrow(2, r0, rows);
      torch::sum_out(out, plogp, {-1});
      out.neg_();
    }
    if (spec_.sink_tokens > 0) {
      const int64_t k = spec_.sink_tokens;
      auto out = sink_rows_.narrow(2, r0, rows);
      if (!ctx.has_padding) {
        torch::sum_out(out, probs.narrow(3, 0, std::min(k, keys)), {-1});
      } else {
        if (!sink_idx_.defined()) init_sink_keys(ctx);
        // Keys at or beyond `keys` were trimmed as zero: read column 0 with weight 0 instead.
        auto inside = sink_idx_.lt(keys);
        auto idx = torch::where(inside, sink_idx_, 0).view({batch_, 1, 1, k}).expand({batch_, hb, rows, k});
        auto w = (sink_w_ * inside.to(torch::kFloat)).view({batch_, 1, 1, k});
        torch::sum_out(out, probs.gather(3, idx).mul_(w), {-1});
      }
    }
    if (spec_.row_stats) add_row_stats_block(probs, r0, ctx);
    if (pool_n_ > 0) add_pooled_block(probs, r0, ctx);
    for (size_t i = 0; i < from_rows_.size(); ++i) {
      int64_t t = from_rows_[i];
      if (t >= r0 && t < r0 + rows)
        from_.select(2, static_cast<int64_t>(i)).narrow(2, 0, keys).copy_(probs.select(2, t - r0));
    }
  }
  if (layer_map_) {
    auto rows_out = layer_map_t_.narrow(1, r0, rows).narrow(2, 0, keys);
    if (spec_.layer_map_head < 0) torch::mean_out(rows_out, probs, {1});
    else rows_out.copy_(probs.select(1, block_index(spec_.layer_map_head)));
  }
  for (auto& hm : head_maps_)
    hm.second.narrow(1, r0, rows).narrow(2, 0, keys).copy_(probs.select(1, block_index(hm.first)));
}

std::map<std::string, torch::Tensor> LayerAccumulator::finish(const RunContext& ctx) {
  std::map<std::string, torch::Tensor> out;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto valid_q = ctx.valid.narrow(1, ctx.valid.size(1) - tq_, tq_);  // [B, Tq]
  auto q_ok = valid_q.unsqueeze(1);                                  // [B, 1, Tq]
  if (aggregates_) {
    if (spec_.received) {
      // A key no valid query can see (padding, or outside every window) has no mean: NaN.
      auto seen = recv_count_ > 0;
      out["received_mean"] = torch::where(seen, recv_sum_ / recv_count_.clamp_min(1), nan);
      out["received_max"] = torch::where(seen, recv_max_, nan);
      out["received_count"] = recv_count_;
    }
    if (spec_.attn_entropy) out["attn_entropy"] = torch::where(q_ok, entropy_, nan);
    if (spec_.sink_tokens > 0) {
      out["sink_mass_rows"] = torch::where(q_ok, sink_rows_, nan);
      auto n = valid_q.to(torch::kFloat).sum(1).view({batch_, 1}).clamp_min(1);
      out["sink_mass"] = torch::where(q_ok, sink_rows_, 0.0f).sum(2) / n;
    }
    if (sink_share_.defined()) out["sink_share"] = torch::where(q_ok, sink_share_, nan);
    if (pool_n_ > 0) finish_pooled(ctx, out);
    if (spec_.row_stats) {
      if (!key_id_.defined()) init_row_tokens(ctx);
      finish_row_stats(valid_q, out);
    }
    if (!from_rows_.empty()) {
      // A row that lands on padding is undefined.
      auto rows = torch::tensor(from_rows_, torch::dtype(torch::kLong).device(valid_q.device()));
      auto ok = valid_q.index_select(1, rows).view({batch_, 1, -1, 1});
      out["from"] = torch::where(ok, from_, nan);
    }
  }
  // Rows of padded queries are undefined in maps too (the model's output there is unused).
  auto row_ok = valid_q.unsqueeze(2);  // [B, Tq, 1]
  if (layer_map_)
    out["layer_map/L" + std::to_string(layer_)] = ctx.has_padding ? torch::where(row_ok, layer_map_t_, nan) : layer_map_t_;
  for (auto& hm : head_maps_)
    out["head_map/L" + std::to_string(layer_) + "H" + std::to_string(hm.first)] =
        ctx.has_padding ? torch::where(row_ok, hm.second, nan) : hm.second;
  return out;
}

}  // namespace attnscope
