#include <attnscope/aggregates.h>

#include <algorithm>
#include <limits>

namespace attnscope {

torch::Tensor Workspace::get(int slot, torch::IntArrayRef sizes, const torch::Device& device) {
  if (static_cast<int>(buf_.size()) <= slot) buf_.resize(slot + 1);
  int64_t n = 1;
  for (int64_t d : sizes) n *= d;
  auto& b = buf_[slot];
  if (!b.defined() || b.numel() < n || b.device() != device)
    b = torch::empty({n}, torch::dtype(torch::kFloat).device(device));
  return b.narrow(0, 0, n).view(sizes);
}

torch::Tensor visible_query_count(const torch::Tensor& valid_q, const torch::Tensor& valid_k,
                                  bool causal) {
  auto q = valid_q.to(torch::kFloat);  // [B, Tq]
  auto k = valid_k.to(torch::kFloat);  // [B, Tk]
  const int64_t tq = q.size(1), tk = k.size(1);
  if (!causal) return k * q.sum(1, /*keepdim=*/true);
  // Queries at absolute positions >= j see key j: a reverse cumulative sum over positions.
  const int64_t off = tk - tq;
  auto at_pos = torch::zeros({q.size(0), tk}, q.options());
  at_pos.narrow(1, off, tq).copy_(q);
  auto from_j = at_pos.flip(1).cumsum(1).flip(1);
  return k * from_j;
}

LayerAccumulator::LayerAccumulator(const CaptureSpec& spec, int64_t layer, int64_t batch,
                                   int64_t heads, int64_t tq, int64_t tk,
                                   const torch::Device& device)
    : spec_(spec), layer_(layer), batch_(batch), heads_(heads), tq_(tq), tk_(tk) {
  for (const auto& lh : spec.heads)
    if (lh.first == layer) {
      TORCH_CHECK(lh.second >= 0 && lh.second < heads, "head ", lh.second,
                  " out of range: layer ", layer, " has ", heads, " heads (0..", heads - 1, ")");
      if (std::find(map_heads_.begin(), map_heads_.end(), lh.second) == map_heads_.end())
        map_heads_.push_back(lh.second);
    }
  layer_map_ = std::find(spec.layer_maps.begin(), spec.layer_maps.end(), layer) !=
               spec.layer_maps.end();
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
    if (!from_rows_.empty())
      from_ = torch::zeros({batch, heads, static_cast<int64_t>(from_rows_.size()), tk}, f32);
  }
  // Zero-filled: blocks may skip key columns known to be zero (causal trimming).
  if (layer_map_) layer_map_t_ = torch::zeros({batch, tq, tk}, f32);
  for (int64_t h : map_heads_) head_maps_[h] = torch::zeros({batch, tq, tk}, f32);
}

int64_t LayerAccumulator::block_index(int64_t head) const {
  if (block_heads_.empty()) return head;
  auto it = std::find(block_heads_.begin(), block_heads_.end(), head);
  return static_cast<int64_t>(it - block_heads_.begin());
}

void LayerAccumulator::add_block(const torch::Tensor& probs, int64_t r0, const RunContext& ctx,
                                 Workspace& ws) {
  const int64_t rows = probs.size(2), keys = probs.size(3);  // keys <= tk_: the rest are zero
  if (aggregates_) {
    if (spec_.received) {
      // Padded query rows are excluded; `where` (not a product) also drops NaN rows that
      // fully masked queries produce.
      torch::Tensor p = probs;
      if (ctx.has_padding) {
        auto q_ok = ctx.valid.narrow(1, tk_ - tq_ + r0, rows).view({batch_, 1, rows, 1});
        p = ws.get(0, probs.sizes(), probs.device());
        torch::where_out(p, q_ok, probs, torch::zeros({}, probs.options()));
      }
      recv_sum_.narrow(2, 0, keys).add_(p.sum(2));
      auto mx = recv_max_.narrow(2, 0, keys);
      torch::max_out(mx, mx, p.amax(2));
    }
    if (spec_.attn_entropy) {
      // -sum p log p; clamping keeps 0·log 0 = 0 on the vectorised log path.
      auto plogp = ws.get(0, probs.sizes(), probs.device());
      torch::clamp_min_out(plogp, probs, std::numeric_limits<float>::min());
      plogp.log_().mul_(probs);
      auto out = entropy_.narrow(2, r0, rows);
      torch::sum_out(out, plogp, {-1});
      out.neg_();
    }
    if (spec_.sink_tokens > 0) {
      auto k = std::min(spec_.sink_tokens, keys);
      sink_rows_.narrow(2, r0, rows).copy_(probs.narrow(3, 0, k).sum(-1));
    }
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
  auto valid_q = ctx.valid.narrow(1, tk_ - tq_, tq_);             // [B, Tq]
  auto valid_k = ctx.valid.narrow(1, ctx.valid.size(1) - tk_, tk_);  // [B, Tk]
  auto q_ok = valid_q.unsqueeze(1);                                  // [B, 1, Tq]
  if (aggregates_) {
    if (spec_.received) {
      auto count = visible_query_count(valid_q, valid_k, ctx.causal).unsqueeze(1);  // [B,1,Tk]
      auto seen = count > 0;
      out["received_mean"] = torch::where(seen, recv_sum_ / count.clamp_min(1), nan);
      out["received_max"] = torch::where(seen, recv_max_, nan);
    }
    if (spec_.attn_entropy) out["attn_entropy"] = torch::where(q_ok, entropy_, nan);
    if (spec_.sink_tokens > 0) {
      out["sink_mass_rows"] = torch::where(q_ok, sink_rows_, nan);
      auto n = valid_q.to(torch::kFloat).sum(1).view({batch_, 1}).clamp_min(1);
      out["sink_mass"] = torch::where(q_ok, sink_rows_, 0.0f).sum(2) / n;
    }
    if (!from_rows_.empty()) out["from"] = from_;
  }
  if (layer_map_) out["layer_map/L" + std::to_string(layer_)] = layer_map_t_;
  for (auto& hm : head_maps_)
    out["head_map/L" + std::to_string(layer_) + "H" + std::to_string(hm.first)] = hm.second;
  return out;
}

}  // namespace attnscope
