// Softmax of one attention row fused with what the aggregates take from it. At SDPA sites the
// recorder has the raw q·kᵀ products of a block of rows; each row (a few KB, in L1) is turned
// into probabilities and entropy in three short vectorised loops instead of a dozen ATen passes
// over the whole block (scale, mask, softmax, NaN cleaning, clamp, log, product, sums).
#pragma once
#include <cstdint>

namespace attnscope {

/// The mask of one query row over keys 0..n-1. At most one of `vis` / `add` is set.
struct RowMask {
  /// Boolean mask, true = the key may be attended; element j at vis[j * stride].
  const bool* vis = nullptr;
  /// Additive mask (fp32); element j at add[j * stride]. Values <= `hidden_below` hide the key
  /// (transformers' -inf / dtype-lowest convention); larger ones (ALiBi-style biases) are added.
  const float* add = nullptr;
  /// Element stride along keys: 1, or 0 when one value is broadcast over every key (only
  /// these two).
  int64_t stride = 1;
  float hidden_below = 0.0f;

  /// Whether key j is visible (ignoring causality).
  bool visible(int64_t j) const {
    if (vis) return vis[j * stride];
    if (add) return add[j * stride] > hidden_below;
    return true;
  }
};

/// One row's softmax, left unnormalised: p[j] = z[j] * inv_sum.
struct RowSoftmax {
  /// Entropy of the row in nats (0 for a row with no visible key, NaN for NaN scores).
  float entropy;
  /// 1 / sum of the row's exponentials (1 for a row with no visible key or NaN scores).
  float inv_sum;
  /// Σ e[j]·|i − j| over the keys (unnormalised) when asked for with distance_from = i, else 0.
  double distance;
};

/// In place: z[0..keys) holds q·k products of one row; afterwards it holds the exponentials
/// exp(z·scale + mask - max), exactly 0 for hidden keys (a row with no visible key is all 0, a
/// row with a NaN score all NaN). The probabilities are z[j] * inv_sum: consumers scale as they
/// read, which saves a pass over the row. Keys keys..n-1 are treated as hidden and not touched.
/// Without `entropy` the result's entropy is left 0 (its sums and log are skipped). With
/// `distance_from` = i >= 0, also the row statistics' distance sum from key index i.
RowSoftmax softmax_row(float* z, int64_t keys, float scale, const RowMask& mask, bool entropy = true,
                       int64_t distance_from = -1);

/// With p[j] = e[j] * inv: sum[j] += p[j], max[j] = max(max[j], p[j]) for each key j < n.
void add_received(const float* e, float inv, int64_t n, float* sum, float* max);

/// add_received for g rows at once, in row order (the same sums, bit for bit): row r is
/// e[r][0..n[r]) scaled by inv[r]. The accumulators are read and written once per group
/// instead of once per row: at 8k keys they are 64 KB, out of L1, and per-row updates cost 6 %
/// of a site.
void add_received_rows(const float* const* e, const float* inv, const int64_t* n, int64_t g, float* sum,
                       float* max);

/// dst[j] = e[j] * inv (add = false) or dst[j] += e[j] * inv (add = true), j < n.
void scale_row(const float* e, float inv, int64_t n, float* dst, bool add);

/// The token facts one row's duplicate and induction masses need (row_stats).
struct RowIds {
  /// [n]: the id of key j and of key j−1, negative where that token is padding or missing (no
  /// query id matches).
  const int32_t* key_id = nullptr;
  const int32_t* prev_id = nullptr;
  int32_t qid = -1;
  /// The positions of the query's earlier copies, ascending (n_copies of them): the sums read
  /// only these keys and the key after each, unless the copies are so many that one pass
  /// comparing every key's ids is cheaper.
  const int32_t* copies = nullptr;
  int64_t n_copies = 0;
};

/// Row statistics (CaptureSpec::row_stats) of p[j] = e[j] * inv over keys j < n, for the query
/// at key index i: out[s * out_stride] for s = 0..5 is self (p[i]), prev (p[i−1]), distance
/// Σ p[j]·|i−j| (tokens), local (Σ p[j], |i−j| <= w), duplicate (Σ p[j], j < i, key_id[j] == qid)
/// and induction (Σ p[j], j < i, prev_id[j] == qid). `ids` null when the query has no earlier
/// copy (both masses then undefined: 0 here; an induction key implies a copy). `distance`:
/// Σ e[j]·|i − j|, from softmax_row (its exp pass takes it; a pass here would read the row again).
void row_stats(const float* e, float inv, int64_t n, int64_t i, int64_t w, const RowIds* ids, double distance,
               float* out, int64_t out_stride);

/// Tile sums of one row for pooled maps: sums[c] = Σ p[j] (p[j] = e[j] * inv) over the keys
/// j < n of tile c, [bounds[c], bounds[c + 1]); with `share` given, share[c] = the tile's keys
/// with weight > 0 over all such keys of the row (a uniform row's tile sum).
void pool_row(const float* e, float inv, int64_t n, const int64_t* bounds, int64_t tiles, float* sums,
              float* share);

/// Predictive statistics of one row of logits z[0..n) at inverse temperature `inv_t`, reading
/// z twice and writing nothing: the entropy (nats) of softmax(z·inv_t), its log-sum-exp, and,
/// when k > 0, the k largest logits as ids (decreasing; ties: lower id first) in `top_ids`.
/// NaN anywhere in the row: entropy and lse NaN, top ids left to the caller (`nan` = true).
struct RowPredictive {
  float entropy, lse;
  bool nan;
};
RowPredictive predictive_row(const float* z, int64_t n, float inv_t, int64_t k, int64_t* top_ids);

}  // namespace attnscope
