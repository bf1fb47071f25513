// Pooled maps (CaptureSpec::pooled_maps): each layer's maps as n x n tile means, taken row by row
// while the run computes them, so a 4k-token trace keeps n² numbers per head instead of T². Each
// row is first reduced to n tile sums (the fused route: pool_row while the row is in cache; the
// block route: a cumulative sum per block), then rows are added into their query tile.
#include <attnscope/aggregates.h>

#include <limits>

namespace attnscope {

void LayerAccumulator::init_pooled(const torch::Device& device) {
  TORCH_CHECK(tq_ == tk_, "pooled_maps: layer ", layer_, " attends ", tq_, " queries to ", tk_,
              " keys; pooling needs the run's whole sequence as queries and keys");
  pool_n_ = std::min(spec_.pooled_maps, tq_);
  pool_bounds_.resize(static_cast<size_t>(pool_n_ + 1));
  std::vector<int64_t> tile(static_cast<size_t>(tq_));
  for (int64_t k = 0; k <= pool_n_; ++k) pool_bounds_[k] = k * tq_ / pool_n_;  // floor(k·T/n)
  for (int64_t k = 0; k < pool_n_; ++k)
    for (int64_t i = pool_bounds_[k]; i < pool_bounds_[k + 1]; ++i) tile[i] = k;
  pool_tile_ = torch::tensor(tile, torch::kLong).to(device);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  pool_sum_ = torch::zeros({batch_, heads_, pool_n_, pool_n_}, f32);
  uni_sum_ = torch::zeros({batch_, pool_n_, pool_n_}, f32);
}

void LayerAccumulator::fold_pooled_rows(const torch::Tensor& rows, const torch::Tensor& uniform, int64_t r0,
                                        const RunContext& ctx) {
  const int64_t n_rows = rows.size(2);
  auto q_ok = ctx.valid.narrow(1, ctx.valid.size(1) - tq_ + r0, n_rows).to(rows.device());  // [B, R]
  auto tiles = pool_tile_.narrow(0, r0, n_rows);
  // `where`, not a product: a fully masked row may hold NaN.
  pool_sum_.index_add_(2, tiles, torch::where(q_ok.view({batch_, 1, n_rows, 1}), rows, 0.0f));
  uni_sum_.index_add_(1, tiles, torch::where(q_ok.view({batch_, n_rows, 1}), uniform, 0.0f));
}

void LayerAccumulator::add_pooled_block(const torch::Tensor& probs, int64_t r0, const RunContext& ctx) {
  const int64_t keys = probs.size(3);
  // Tile sums of each row: a scatter-add of the keys into their tile (direct sums: differences
  // of a cumulative sum lose ~1e-5 of a small tile's value in fp32).
  auto tile_of_key = pool_tile_.narrow(0, 0, keys);
  auto tile_sums = [&](const torch::Tensor& x) {
    auto sizes = x.sizes().vec();
    sizes.back() = pool_n_;
    return torch::zeros(sizes, x.options()).index_add_(-1, tile_of_key, x);
  };
  auto seen = tile_sums(probs.select(1, 0).gt(0).to(torch::kFloat));  // [B, R, n]: keys head 0 sees
  fold_pooled_rows(tile_sums(probs), seen / seen.sum(-1, true).clamp_min(1), r0, ctx);
}

void LayerAccumulator::finish_pooled(const RunContext& ctx, std::map<std::string, torch::Tensor>& out) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const auto dev = pool_sum_.device();
  auto real = ctx.valid.narrow(1, ctx.valid.size(1) - tq_, tq_).to(dev).to(torch::kFloat);  // [B, T]
  auto per_tile = torch::zeros({batch_, pool_n_}, real.options()).index_add_(1, pool_tile_, real);
  auto cells = per_tile.unsqueeze(2) * per_tile.unsqueeze(1);  // [B, n, n]: real query x real key
  auto ok = cells.gt(0);
  out["pooled_map"] = torch::where(ok.unsqueeze(1), pool_sum_ / cells.clamp_min(1).unsqueeze(1), nan);
  out["pooled_uniform"] = torch::where(ok, uni_sum_ / cells.clamp_min(1), nan);
}

}  // namespace attnscope
