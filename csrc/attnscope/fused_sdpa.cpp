// The fused route at SDPA sites on the CPU: q·kᵀ of a block of rows, then one pass per row
// (softmax_rows.h) that leaves probabilities and entropy, and the aggregates take from that row
// while it is in L1. No [B, H, Tq, Tk] tensor, no per-block ATen passes.
#include <attnscope/aggregates.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace attnscope {

/// Where one row's results go; every pointer is null when not asked.
struct LayerAccumulator::Rows {
  const bool* valid = nullptr;  // [B, T] real tokens
  int64_t t_all = 0, q_off = 0;
  float *recv_sum = nullptr, *recv_max = nullptr, *recv_count = nullptr;  // [B, H, Tk]
  float *entropy = nullptr, *sink = nullptr;                               // [B, H, Tq]
  int64_t k_sink = 0;
  const int64_t* sink_idx = nullptr;  // [B, k] with padding, else keys 0..k-1
  const float* sink_w = nullptr;
  float* from = nullptr;  // [B, H, n, Tk]
  std::vector<std::pair<int64_t, float*>> copies;  // (block head, [B, Tq, Tk] map) kept as rows
  float* mean_map = nullptr;  // [B, Tq, Tk] head-mean map: p / heads added per head
  float inv_heads = 0.0f;
  torch::Tensor valid_t;
};

LayerAccumulator::Rows LayerAccumulator::rows_for(const RunContext& ctx) {
  Rows t;
  t.valid_t = ctx.valid.to(torch::kCPU).contiguous();
  t.valid = t.valid_t.data_ptr<bool>();
  t.t_all = t.valid_t.size(1);
  t.q_off = t.t_all - tq_;
  if (aggregates_ && spec_.received) {
    t.recv_sum = recv_sum_.data_ptr<float>();
    t.recv_max = recv_max_.data_ptr<float>();
    t.recv_count = recv_count_.data_ptr<float>();
  }
  if (aggregates_ && spec_.attn_entropy) t.entropy = entropy_.data_ptr<float>();
  if (aggregates_ && spec_.sink_tokens > 0) {
    t.k_sink = spec_.sink_tokens;
    t.sink = sink_rows_.data_ptr<float>();
    if (ctx.has_padding) {
      if (!sink_idx_.defined()) init_sink_keys(ctx);
      t.sink_idx = sink_idx_.data_ptr<int64_t>();
      t.sink_w = sink_w_.data_ptr<float>();
    }
  }
  if (!from_rows_.empty()) t.from = from_.data_ptr<float>();
  for (auto& hm : head_maps_) t.copies.emplace_back(block_index(hm.first), hm.second.data_ptr<float>());
  if (layer_map_ && spec_.layer_map_head >= 0)
    t.copies.emplace_back(block_index(spec_.layer_map_head), layer_map_t_.data_ptr<float>());
  if (layer_map_ && spec_.layer_map_head < 0) {
    t.mean_map = layer_map_t_.data_ptr<float>();
    t.inv_heads = 1.0f / static_cast<float>(heads_);
  }
  return t;
}

void LayerAccumulator::take_row(const Rows& t, const float* p, int64_t keys, int64_t b, int64_t hb,
                                int64_t r, const RowMask& m) const {
  const int64_t h = block_heads_.empty() ? hb : block_heads_[hb];
  const int64_t bh = b * heads_ + h;  // row of the [B, H, *] accumulators
  if (t.recv_sum && t.valid[b * t.t_all + t.q_off + r])  // padded queries are left out
    add_received(p, keys, t.recv_sum + bh * tk_, t.recv_max + bh * tk_, m,
                 t.recv_count ? t.recv_count + bh * tk_ : nullptr);
  if (t.sink) {
    float s = 0.0f;
    if (!t.sink_idx) {
      for (int64_t j = 0; j < std::min(t.k_sink, keys); ++j) s += p[j];
    } else {  // the row's first k real keys, wherever the padding is
      for (int64_t i = 0; i < t.k_sink; ++i) {
        const int64_t j = t.sink_idx[b * t.k_sink + i];
        if (j < keys) s += p[j] * t.sink_w[b * t.k_sink + i];
      }
    }
    t.sink[bh * tq_ + r] = s;
  }
  const int64_t n_from = static_cast<int64_t>(from_rows_.size());
  for (int64_t f = 0; f < n_from; ++f)
    if (from_rows_[f] == r) std::memcpy(t.from + (bh * n_from + f) * tk_, p, sizeof(float) * keys);
  for (const auto& c : t.copies)
    if (c.first == hb) std::memcpy(c.second + (b * tq_ + r) * tk_, p, sizeof(float) * keys);
  if (t.mean_map) {  // tasks that add to one row of the mean never run at once (see add_sdpa)
    float* row = t.mean_map + (b * tq_ + r) * tk_;
    for (int64_t j = 0; j < keys; ++j) row[j] += p[j] * t.inv_heads;
  }
}

namespace {
struct MaskView {
  const bool* vis = nullptr;
  const float* add = nullptr;
  int64_t s[4] = {0, 0, 0, 0};
  float hidden_below = 0.0f;

  MaskView(const torch::Tensor& mask, float hb) : hidden_below(hb) {
    if (!mask.defined()) return;
    TORCH_INTERNAL_ASSERT(mask.dim() == 4 && mask.stride(3) <= 1);
    if (mask.scalar_type() == torch::kBool) vis = mask.data_ptr<bool>();
    else add = mask.data_ptr<float>();
    for (int d = 0; d < 4; ++d) s[d] = mask.stride(d);
  }
  RowMask row(int64_t b, int64_t h, int64_t r) const {
    RowMask m;
    m.hidden_below = hidden_below;
    m.stride = s[3];
    const int64_t off = b * s[0] + h * s[1] + r * s[2];
    if (vis) m.vis = vis + off;
    if (add) m.add = add + off;
    return m;
  }
};
}  // namespace

void LayerAccumulator::add_sdpa(const torch::Tensor& q, const torch::Tensor& k, int64_t group, double scale,
                                const torch::Tensor& mask, float hidden_below, bool causal,
                                const torch::Tensor& row_keys, const RunContext& ctx, Workspace& ws,
                                const torch::Tensor& v, const torch::Tensor& out) {
  TORCH_INTERNAL_ASSERT(q.device().is_cpu() && q.scalar_type() == torch::kFloat &&
                        k.scalar_type() == torch::kFloat && q.size(0) == batch_ && q.size(2) == tq_ &&
                        k.size(2) == tk_);
  const int64_t hb_n = q.size(1);
  Rows t = rows_for(ctx);
  t.recv_count = nullptr;  // counted once per layer from the mask (add_counts), not per row
  const MaskView mv(mask, hidden_below);
  const int64_t* rk = row_keys.defined() ? row_keys.data_ptr<int64_t>() : nullptr;
  // Rows per block: a [R, Tk] fp32 buffer of <= 1 MB per thread, so it mostly stays in cache
  // between the product and the row passes; at least 64 rows, below which the product's
  // per-call cost (packing k) dominates.
  const int64_t block = std::clamp<int64_t>((int64_t(1) << 18) / std::max<int64_t>(1, tk_), 64, 256);
  const float sc = static_cast<float>(scale);
  // Tasks are (batch, head, part of the rows). With received sums each (batch, head) is cut into
  // as many parts as threads, each summing into its own partial buffer (merged below), the cuts
  // placed so causal parts hold equal work (row r costs ~r keys); 9 heads on 2 threads then
  // balance. With nothing summed over rows (full maps of a few heads) every block is a part.
  const int64_t n_blocks = (tq_ + block - 1) / block;
  const bool by_threads = t.recv_sum || t.mean_map;
  const int64_t n_part = std::min<int64_t>(n_blocks, by_threads ? std::max(1, at::get_num_threads()) : n_blocks);
  std::vector<int64_t> cut(static_cast<size_t>(n_part + 1), tq_);
  for (int64_t p = 0; p < n_part; ++p) {
    const double f = by_threads ? (causal || rk ? std::sqrt(double(p) / n_part) : double(p) / n_part)
                                : double(p) / n_part;
    cut[p] = p == 0 ? 0 : std::min(tq_, static_cast<int64_t>(std::llround(f * n_blocks)) * block);
  }
  torch::Tensor psum, pmax;  // [parts, B, H, Tk] partial received sums / max
  if (t.recv_sum && n_part > 1) {
    psum = torch::zeros({n_part, batch_, heads_, tk_}, torch::kFloat);
    pmax = torch::zeros({n_part, batch_, heads_, tk_}, torch::kFloat);
  }
  const int64_t per_thread = std::min(block, tq_) * tk_;
  const auto bufs = ws.get(4, {at::get_num_threads(), per_thread}, q.device());
  // A head-mean map adds every head into the same rows: then a task is (batch, part) and runs
  // the heads one after another.
  const bool heads_inside = t.mean_map != nullptr;
  const int64_t n_task_heads = heads_inside ? 1 : hb_n;
  at::parallel_for(0, batch_ * n_task_heads * n_part, 1, [&](int64_t begin, int64_t end) {
    float* const buf = bufs.data_ptr<float>() + at::get_thread_num() * per_thread;
    for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / n_part / n_task_heads, part = task % n_part;
    const int64_t hb_begin = heads_inside ? 0 : task / n_part % n_task_heads;
    const int64_t hb_end = heads_inside ? hb_n : hb_begin + 1;
    for (int64_t hb = hb_begin; hb < hb_end; ++hb) {
      const int64_t r_begin = cut[part], r_end = cut[part + 1];
      Rows tp = t;  // this part's received sums go to its own partial buffer
      if (psum.defined()) {
        tp.recv_sum = psum.data_ptr<float>() + part * batch_ * heads_ * tk_;
        tp.recv_max = pmax.data_ptr<float>() + part * batch_ * heads_ * tk_;
      }
      const int64_t h = block_heads_.empty() ? hb : block_heads_[hb];
      const auto qb = q.select(0, b).select(0, hb), kb = k.select(0, b).select(0, hb / group);  // [T, D]
      torch::Tensor vb, ob;  // [Tk, Dv], [Tq, Dv]
      if (out.defined()) {
        vb = v.select(0, b).select(0, hb / group);
        ob = out.select(0, b).select(0, hb);
      }
      for (int64_t r0 = r_begin; r0 < r_end; r0 += block) {
        const int64_t rows = std::min(block, tq_ - r0);
        // Keys after the last one a row of the block may see are not computed.
        int64_t keys = causal ? std::min(tk_, r0 + rows) : tk_;
        if (rk) keys = std::min(keys, *std::max_element(rk + r0, rk + r0 + rows));
        keys = std::max<int64_t>(keys, 1);
        auto out_blk = torch::from_blob(buf, {rows, keys}, torch::kFloat);
        at::mm_out(out_blk, qb.narrow(0, r0, rows), kb.narrow(0, 0, keys).t());
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t r = r0 + i;
          int64_t n = causal ? std::min(keys, r + 1) : keys;
          if (rk) n = std::min(n, rk[r]);
          float* z = buf + i * keys;
          const RowMask m = mv.row(b, hb, r);
          const float e = softmax_row(z, n, sc, m);
          if (t.entropy) t.entropy[(b * heads_ + h) * tq_ + r] = e;
          take_row(tp, z, n, b, hb, r, m);
          if (out.defined() && n < keys) std::memset(z + n, 0, sizeof(float) * (keys - n));
        }
        if (out.defined()) {  // this block's output rows: P [rows, keys] · V [keys, Dv]
          auto o = ob.narrow(0, r0, rows);
          at::mm_out(o, out_blk, vb.narrow(0, 0, keys));
        }
      }
    }
    }
  });
  if (psum.defined()) {
    recv_sum_.add_(psum.sum(0));
    torch::max_out(recv_max_, recv_max_, pmax.amax(0));
  }
}

void LayerAccumulator::add_counts(const torch::Tensor& counts) {
  if (aggregates_ && spec_.received) recv_count_.add_(counts.to(recv_count_.device()));
}

}  // namespace attnscope
