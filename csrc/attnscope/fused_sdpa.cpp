// The fused route at SDPA sites on the CPU: q·kᵀ of a block of rows, then one pass per row
// (softmax_rows.h) that leaves the row's exponentials, 1 / their sum and the entropy; the
// aggregates take the probabilities (exponential x 1/sum) from that row while it is in L1.
// No [B, H, Tq, Tk] tensor, no per-block ATen passes.
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
  float *recv_sum = nullptr, *recv_max = nullptr;  // [B, H, Tk]; the counts: add_counts
  float *entropy = nullptr, *sink = nullptr;                               // [B, H, Tq]
  int64_t k_sink = 0;
  const int64_t* sink_idx = nullptr;  // [B, k] with padding, else keys 0..k-1
  const float* sink_w = nullptr;
  float* from = nullptr;  // [B, H, n, Tk]
  float* stats = nullptr;  // [6, B, H, Tq] row statistics; planes stat_plane apart
  int64_t stat_plane = 0, window = 0;
  const int32_t *key_id = nullptr, *prev_id = nullptr, *query_id = nullptr;  // init_row_tokens
  const int32_t *copy_pos = nullptr, *copy_at = nullptr, *copy_n = nullptr;  // init_row_tokens' copy lists
  float *pool = nullptr, *pool_uni = nullptr;  // [B, H, Tq, n] / [B, Tq, n] tile sums per row (add_sdpa)
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
  if (aggregates_ && spec_.row_stats) {
    if (!key_id_.defined()) init_row_tokens(ctx);
    t.stats = stats_.data_ptr<float>();
    t.stat_plane = batch_ * heads_ * tq_;
    t.window = spec_.local_window;
    t.key_id = key_id_.data_ptr<int32_t>();
    t.prev_id = prev_id_.data_ptr<int32_t>();
    t.query_id = query_id_.data_ptr<int32_t>();
    t.copy_pos = copy_pos_.data_ptr<int32_t>();
    t.copy_at = copy_at_.data_ptr<int32_t>();
    t.copy_n = copy_n_.data_ptr<int32_t>();
  }
  for (auto& hm : head_maps_) t.copies.emplace_back(block_index(hm.first), hm.second.data_ptr<float>());
  if (layer_map_ && spec_.layer_map_head >= 0)
    t.copies.emplace_back(block_index(spec_.layer_map_head), layer_map_t_.data_ptr<float>());
  if (layer_map_ && spec_.layer_map_head < 0) {
    t.mean_map = layer_map_t_.data_ptr<float>();
    t.inv_heads = 1.0f / static_cast<float>(heads_);
  }
  return t;
}

void LayerAccumulator::take_row(const Rows& t, const float* e, float inv, double distance, int64_t keys,
                                int64_t b, int64_t hb, int64_t r) const {
  const int64_t h = block_heads_.empty() ? hb : block_heads_[hb];
  const int64_t bh = b * heads_ + h;  // row of the [B, H, *] accumulators
  // Received sums: add_sdpa, a group of rows at a time.
  if (t.sink) {
    float s = 0.0f;
    if (!t.sink_idx) {
      for (int64_t j = 0; j < std::min(t.k_sink, keys); ++j) s += e[j];
    } else {  // the row's first k real keys, wherever the padding is
      for (int64_t i = 0; i < t.k_sink; ++i) {
        const int64_t j = t.sink_idx[b * t.k_sink + i];
        if (j < keys) s += e[j] * t.sink_w[b * t.k_sink + i];
      }
    }
    t.sink[bh * tq_ + r] = s * inv;
  }
  if (t.stats) {
    RowIds ids;  // none without an earlier copy: duplicate and induction are then NaN
    ids.n_copies = t.copy_n[b * tq_ + r];
    if (ids.n_copies > 0) {
      ids.key_id = t.key_id + b * tk_;
      ids.prev_id = t.prev_id + b * tk_;
      ids.qid = t.query_id[b * tq_ + r];
      ids.copies = t.copy_pos + b * tk_ + t.copy_at[b * tq_ + r];
    }
    row_stats(e, inv, keys, tk_ - tq_ + r, t.window, ids.n_copies > 0 ? &ids : nullptr, distance,
              t.stats + bh * tq_ + r, t.stat_plane);
  }
  if (t.pool)
    pool_row(e, inv, keys, pool_bounds_.data(), pool_n_, t.pool + (bh * tq_ + r) * pool_n_,
             h == 0 ? t.pool_uni + (b * tq_ + r) * pool_n_ : nullptr);
  const int64_t n_from = static_cast<int64_t>(from_rows_.size());
  for (int64_t f = 0; f < n_from; ++f)
    if (from_rows_[f] == r) scale_row(e, inv, keys, t.from + (bh * n_from + f) * tk_, false);
  // Map rows are written whole, zeros after the row's last key included: the maps are
  // allocated without zero-filling for this route (a 64 MB map at 4k tokens is written once).
  auto whole_row = [&](float* row, float w, bool add) {
    scale_row(e, w, keys, row, add);
    if (!add && keys < tk_ && !maps_zeroed_) std::memset(row + keys, 0, sizeof(float) * (tk_ - keys));
  };
  for (const auto& c : t.copies)
    if (c.first == hb) whole_row(c.second + (b * tq_ + r) * tk_, inv, false);
  // The heads of a mean map's row run one after another in one task (see add_sdpa): the first
  // writes the row, the others add to it.
  if (t.mean_map) whole_row(t.mean_map + (b * tq_ + r) * tk_, inv * t.inv_heads, hb > 0);
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

/// One fused SDPA pass over a layer: its inputs and how its rows are cut into tasks.
struct LayerAccumulator::SdpaPass {
  torch::Tensor q, k, v, out;  // [B, Hb, Tq, D], [B, Hkv', Tk, D], [B, Hkv, Tk, Dv], [B, Hq, Tq, Dv]
  int64_t group = 1;           // query head hb reads k head hb / group
  float scale = 1.0f;
  bool causal = true;
  const int64_t* row_keys = nullptr;  // [Tq] keys each row may see at most (null: all)
  const MaskView* mask = nullptr;
  int64_t block = 0, n_part = 1, n_task_heads = 1, hb_n = 0;
  bool heads_inside = false;  // a task runs every head (a head-mean map adds them into the same rows)
  std::vector<int64_t> cut;   // [n_part + 1] row boundaries of the parts
  torch::Tensor psum, pmax;   // [parts, B, H, Tk] partial received sums / max (several parts)
  Rows rows;

  // Keys a block of rows [r0, r0 + n) reads: none after the last one a row of it may see.
  int64_t block_keys(int64_t tk, int64_t r0, int64_t n) const {
    int64_t keys = causal ? std::min(tk, r0 + n) : tk;
    if (row_keys) keys = std::min(keys, *std::max_element(row_keys + r0, row_keys + r0 + n));
    return std::max<int64_t>(keys, 1);
  }
};

void LayerAccumulator::add_sdpa(const SdpaInputs& in, const RunContext& ctx, Workspace& ws) {
  const auto &q = in.q, &k = in.k;
  TORCH_INTERNAL_ASSERT(q.device().is_cpu() && q.scalar_type() == torch::kFloat &&
                        k.scalar_type() == torch::kFloat && q.size(0) == batch_ && q.size(2) == tq_ &&
                        k.size(2) == tk_);
  const MaskView mv(in.mask, in.hidden_below);
  SdpaPass p;
  p.q = q, p.k = k, p.v = in.v, p.out = in.out, p.group = in.group, p.causal = in.causal, p.mask = &mv;
  p.scale = static_cast<float>(in.scale);
  p.row_keys = in.row_keys.defined() ? in.row_keys.data_ptr<int64_t>() : nullptr;
  p.hb_n = q.size(1);
  p.rows = rows_for(ctx);
  torch::Tensor pool_rows, pool_uni;  // every row's tile sums, folded into tiles after the pass
  if (pool_n_ > 0) {
    pool_rows = ws.get(5, {batch_, heads_, tq_, pool_n_}, q.device());
    pool_uni = ws.get(6, {batch_, tq_, pool_n_}, q.device());
    p.rows.pool = pool_rows.data_ptr<float>();
    p.rows.pool_uni = pool_uni.data_ptr<float>();
  }
  // Rows per block: a [R, Tk] fp32 buffer of <= 4 MB per thread, up to 256 rows (why:
  // docs/performance.md, "Fused SDPA route").
  p.block = std::clamp<int64_t>((int64_t(1) << 20) / std::max<int64_t>(1, tk_), 32, 256);
  cut_parts(p);
  if (p.rows.recv_sum && p.n_part > 1) {
    p.psum = torch::zeros({p.n_part, batch_, heads_, tk_}, torch::kFloat);
    p.pmax = torch::zeros({p.n_part, batch_, heads_, tk_}, torch::kFloat);
  }
  const int64_t per_thread = std::min(p.block, tq_) * tk_;
  const auto bufs = ws.get(4, {at::get_num_threads(), per_thread}, q.device());
  p.heads_inside = p.rows.mean_map != nullptr;
  p.n_task_heads = p.heads_inside ? 1 : p.hb_n;
  at::parallel_for(0, batch_ * p.n_task_heads * p.n_part, 1, [&](int64_t begin, int64_t end) {
    float* const buf = bufs.data_ptr<float>() + at::get_thread_num() * per_thread;
    for (int64_t task = begin; task < end; ++task) sdpa_task(p, task, buf);
  });
  if (pool_n_ > 0) fold_pooled_rows(pool_rows, pool_uni, 0, ctx);
  if (p.psum.defined()) {
    recv_sum_.add_(p.psum.sum(0));
    torch::max_out(recv_max_, recv_max_, p.pmax.amax(0));
  }
}

void LayerAccumulator::cut_parts(SdpaPass& p) const {
  // Tasks are (batch, head, part of the rows): each (batch, head) is cut into as many parts as
  // threads, at block boundaries where the work (rows x keys read, from the real mask) is
  // evenly split, so every task holds the same work: at::parallel_for hands each thread a
  // contiguous range of tasks, and causal rows cost ~r, so equal row counts would leave a
  // thread idle. With received sums each part sums into its own partial buffer.
  const int64_t n_blocks = (tq_ + p.block - 1) / p.block;
  p.n_part = std::min<int64_t>(n_blocks, std::max(1, at::get_num_threads()));
  p.cut.assign(static_cast<size_t>(p.n_part + 1), tq_);
  std::vector<double> work(static_cast<size_t>(n_blocks + 1), 0.0);  // work of blocks before i
  for (int64_t i = 0; i < n_blocks; ++i) {
    const int64_t r0 = i * p.block, rows = std::min(p.block, tq_ - r0);
    work[i + 1] = work[i] + double(rows) * double(p.block_keys(tk_, r0, rows));
  }
  p.cut[0] = 0;
  for (int64_t part = 1, i = 0; part < p.n_part; ++part) {  // the block boundary nearest to part / n_part
    const double target = work[n_blocks] * double(part) / double(p.n_part);
    while (i < n_blocks && work[i + 1] <= target) ++i;
    const int64_t at = i < n_blocks && work[i + 1] - target < target - work[i] ? i + 1 : i;
    p.cut[part] = std::max(p.cut[part - 1], std::min(tq_, at * p.block));
  }
}

void LayerAccumulator::sdpa_task(const SdpaPass& p, int64_t task, float* buf) const {
  const int64_t b = task / p.n_part / p.n_task_heads, part = task % p.n_part;
  const int64_t hb_begin = p.heads_inside ? 0 : task / p.n_part % p.n_task_heads;
  const int64_t hb_end = p.heads_inside ? p.hb_n : hb_begin + 1;
  Rows tp = p.rows;  // this part's received sums go to its own partial buffer
  if (p.psum.defined()) {
    tp.recv_sum = p.psum.data_ptr<float>() + part * batch_ * heads_ * tk_;
    tp.recv_max = p.pmax.data_ptr<float>() + part * batch_ * heads_ * tk_;
  }
  float inv[256];  // 1 / row sum of each row of the block (block <= 256)
  // Received sums of a group of up to kGroup rows, added together (add_received_rows) while the
  // rows' exponentials are still in L2.
  constexpr int64_t kGroup = 8;
  const float* g_rows[kGroup];
  float g_inv[kGroup];
  int64_t g_keys[kGroup], g_n = 0, g_bh = -1;
  auto flush = [&] {
    if (g_n > 0) add_received_rows(g_rows, g_inv, g_keys, g_n, tp.recv_sum + g_bh * tk_, tp.recv_max + g_bh * tk_);
    g_n = 0;
  };
  // Blocks outside, heads inside: a head-mean map's block of rows stays in cache while every
  // head adds to it.
  for (int64_t r0 = p.cut[part]; r0 < p.cut[part + 1]; r0 += p.block) {
    const int64_t rows = std::min(p.block, tq_ - r0);
    const int64_t keys = p.block_keys(tk_, r0, rows);
    auto out_blk = torch::from_blob(buf, {rows, keys}, torch::kFloat);
    for (int64_t hb = hb_begin; hb < hb_end; ++hb) {
      const int64_t h = block_heads_.empty() ? hb : block_heads_[hb];
      const auto qb = p.q.select(0, b).select(0, hb), kb = p.k.select(0, b).select(0, hb / p.group);  // [T, D]
      at::mm_out(out_blk, qb.narrow(0, r0, rows), kb.narrow(0, 0, keys).t());
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t r = r0 + i;
        int64_t n = p.causal ? std::min(keys, r + 1) : keys;
        if (p.row_keys) n = std::min(n, p.row_keys[r]);
        float* z = buf + i * keys;
        const RowSoftmax sm =
            softmax_row(z, n, p.scale, p.mask->row(b, hb, r), tp.entropy != nullptr, tp.stats ? tk_ - tq_ + r : -1);
        if (tp.entropy) tp.entropy[(b * heads_ + h) * tq_ + r] = sm.entropy;
        take_row(tp, z, sm.inv_sum, sm.distance, n, b, hb, r);
        inv[i] = sm.inv_sum;
        if (p.out.defined() && n < keys) std::memset(z + n, 0, sizeof(float) * (keys - n));
        if (tp.recv_sum && tp.valid[b * tp.t_all + tp.q_off + r]) {  // padded queries are left out
          g_bh = b * heads_ + h;
          g_rows[g_n] = z, g_inv[g_n] = sm.inv_sum, g_keys[g_n] = n;
          if (++g_n == kGroup) flush();
        }
      }
      flush();                // the next head sums into other rows
      if (p.out.defined()) {  // this block's output rows: (E [rows, keys] · V [keys, Dv]) / S
        auto o = p.out.select(0, b).select(0, hb).narrow(0, r0, rows);
        at::mm_out(o, out_blk, p.v.select(0, b).select(0, hb / p.group).narrow(0, 0, keys));
        for (int64_t i = 0; i < rows; ++i) {
          float* orow = o.data_ptr<float>() + i * o.stride(0);
          scale_row(orow, inv[i], o.size(1), orow, false);
        }
      }
    }
  }
}

void LayerAccumulator::add_counts(const torch::Tensor& counts) {
  if (aggregates_ && spec_.received) recv_count_.add_(counts.to(recv_count_.device()));
}

}  // namespace attnscope
