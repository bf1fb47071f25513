// Row statistics of the aggregates (CaptureSpec::row_stats): per query row, the weight on itself
// and on the previous token, the mean attention distance, the local mass, and the duplicate-token
// and induction masses. The fused CPU route takes them per row (softmax_rows.cpp: row_stats);
// the block route and softmax sites take them here in ATen ops, a block of rows at a time. No
// [Tq, Tk] tensor of token facts exists: ids are compared per block.
#include <attnscope/aggregates.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>
#include <unordered_set>

namespace attnscope {

namespace {
const char* const kRowStatNames[6] = {"row_self", "row_prev", "row_distance",
                                      "row_local", "row_duplicate", "row_induction"};
}  // namespace

/// A run's token facts for one (Tq, Tk): the same for every layer, so built once.
struct RowTokens {
  int64_t tq = 0, tk = 0;
  torch::Tensor key_id, prev_id, query_id, prev_ok, has_dup, has_ind, copy_pos, copy_at, copy_n;
};

void LayerAccumulator::init_row_tokens(const RunContext& ctx) {
  if (const auto& c = ctx.row_tokens; c && c->tq == tq_ && c->tk == tk_ && c->key_id.size(0) == batch_) {
    key_id_ = c->key_id, prev_id_ = c->prev_id, query_id_ = c->query_id, prev_ok_ = c->prev_ok;
    has_dup_ = c->has_dup, has_ind_ = c->has_ind, copy_pos_ = c->copy_pos, copy_at_ = c->copy_at;
    copy_n_ = c->copy_n;
    return;
  }
  TORCH_CHECK(ctx.ids.defined(), "row_stats needs the run's token ids (RunContext::ids)");
  auto ids = ctx.ids.to(torch::kCPU).to(torch::kLong).contiguous();
  auto valid = ctx.valid.to(torch::kCPU).contiguous();
  const int64_t t_all = ids.size(1), koff = t_all - tk_, qoff = tk_ - tq_;
  TORCH_CHECK(koff >= 0 && qoff >= 0, "row_stats: attention of ", tq_, " queries over ", tk_,
              " keys does not fit the run's ", t_all, " tokens");
  key_id_ = torch::empty({batch_, tk_}, torch::kInt);
  prev_id_ = torch::empty({batch_, tk_}, torch::kInt);
  query_id_ = torch::empty({batch_, tq_}, torch::kInt);
  prev_ok_ = torch::empty({batch_, tq_}, torch::kBool);
  has_ind_ = torch::empty({batch_, tq_}, torch::kBool);
  const int64_t* id = ids.data_ptr<int64_t>();
  const bool* ok = valid.data_ptr<bool>();
  int32_t *kid = key_id_.data_ptr<int32_t>(), *pid = prev_id_.data_ptr<int32_t>(), *qid = query_id_.data_ptr<int32_t>();
  bool *pok = prev_ok_.data_ptr<bool>(), *ind = has_ind_.data_ptr<bool>();
  for (int64_t b = 0; b < batch_; ++b) {
    const int64_t* row = id + b * t_all + koff;
    const bool* real = ok + b * t_all + koff;
    // Keys in order: a query's facts are read from the keys before it, then its key is added.
    std::unordered_set<int64_t> seen_prev;
    for (int64_t j = 0; j < tk_; ++j) {
      kid[b * tk_ + j] = real[j] ? static_cast<int32_t>(row[j]) : -1;
      pid[b * tk_ + j] = j >= 1 && real[j] && real[j - 1] ? static_cast<int32_t>(row[j - 1]) : -2;
      const int64_t r = j - qoff;
      if (r >= 0) {
        const int64_t x = b * tq_ + r;
        qid[x] = real[j] ? static_cast<int32_t>(row[j]) : -3;
        pok[x] = real[j] && j >= 1 && real[j - 1];
        ind[x] = real[j] && seen_prev.count(row[j]) > 0;
      }
      if (pid[b * tk_ + j] >= 0) seen_prev.insert(pid[b * tk_ + j]);
    }
  }
  // Copy lists: the real keys sorted by (id, position); a query's earlier copies are the part
  // of its id's run before its own position.
  copy_pos_ = torch::full({batch_, tk_}, -1, torch::kInt);
  copy_at_ = torch::zeros({batch_, tq_}, torch::kInt);
  copy_n_ = torch::zeros({batch_, tq_}, torch::kInt);
  int32_t *cpos = copy_pos_.data_ptr<int32_t>(), *cat = copy_at_.data_ptr<int32_t>(), *cn = copy_n_.data_ptr<int32_t>();
  for (int64_t b = 0; b < batch_; ++b) {
    std::vector<std::pair<int64_t, int32_t>> keys;  // (id, position) of the real keys
    for (int64_t j = 0; j < tk_; ++j)
      if (kid[b * tk_ + j] >= 0) keys.emplace_back(id[b * t_all + koff + j], static_cast<int32_t>(j));
    std::sort(keys.begin(), keys.end());
    for (size_t x = 0, run = 0; x < keys.size(); ++x) {
      if (x > 0 && keys[x].first != keys[x - 1].first) run = x;
      cpos[b * tk_ + x] = keys[x].second;
      const int64_t r = keys[x].second - qoff;
      if (r >= 0) {
        cat[b * tq_ + r] = static_cast<int32_t>(run);
        cn[b * tq_ + r] = static_cast<int32_t>(x - run);
      }
    }
  }
  has_dup_ = copy_n_.gt(0);  // a real query with an earlier real copy of its token
  ctx.row_tokens = std::make_shared<RowTokens>(
      RowTokens{tq_, tk_, key_id_, prev_id_, query_id_, prev_ok_, has_dup_, has_ind_, copy_pos_, copy_at_, copy_n_});
}

void LayerAccumulator::add_row_stats_block(const torch::Tensor& probs, int64_t r0, const RunContext& ctx) {
  if (!key_id_.defined()) init_row_tokens(ctx);
  const auto dev = probs.device();
  if (dev_ids_.empty()) dev_ids_ = {key_id_.to(dev), prev_id_.to(dev), query_id_.to(dev)};
  const int64_t rows = probs.size(2), keys = probs.size(3);
  auto li = torch::TensorOptions().dtype(torch::kLong).device(dev);
  auto i = torch::arange(r0, r0 + rows, li) + (tk_ - tq_);  // the rows' key index
  auto diff = i.unsqueeze(1) - torch::arange(keys, li).unsqueeze(0);  // [R, K]: i − j
  auto dist = diff.abs().to(torch::kFloat);
  // Position weights [R, K, 4] (self, prev, distance, local), shared by the batch.
  auto w4 = torch::stack({diff.eq(0).to(torch::kFloat), diff.eq(1).to(torch::kFloat), dist,
                          dist.le(static_cast<double>(spec_.local_window)).to(torch::kFloat)}, -1);
  auto s4 = torch::einsum("bhrk,rks->sbhr", {probs, w4});
  // Token weights [B, R, K, 2] (duplicate, induction): earlier keys whose id / previous id is the query's.
  auto qid = dev_ids_[2].narrow(1, r0, rows).unsqueeze(2);  // [B, R, 1]
  auto before = diff.gt(0).unsqueeze(0);
  auto dup = dev_ids_[0].narrow(1, 0, keys).unsqueeze(1).eq(qid).logical_and(before);
  auto ind = dev_ids_[1].narrow(1, 0, keys).unsqueeze(1).eq(qid).logical_and(before);
  auto s2 = torch::einsum("bhrk,brks->sbhr", {probs, torch::stack({dup, ind}, -1).to(torch::kFloat)});
  stats_.narrow(0, 0, 4).narrow(3, r0, rows).copy_(s4);
  stats_.narrow(0, 4, 2).narrow(3, r0, rows).copy_(s2);
}

void LayerAccumulator::finish_row_stats(const torch::Tensor& valid_q, std::map<std::string, torch::Tensor>& out) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const auto dev = stats_.device();
  const torch::Tensor defined[6] = {valid_q, prev_ok_.to(dev), valid_q, valid_q, has_dup_.to(dev), has_ind_.to(dev)};
  for (int s = 0; s < 6; ++s)
    out[kRowStatNames[s]] = torch::where(defined[s].logical_and(valid_q).unsqueeze(1), stats_[s], nan);
}

}  // namespace attnscope
