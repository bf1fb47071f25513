#include <attnscope/softmax_rows.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

// Written with GCC/Clang vector types (16 floats): each loop below is one pass of vector code
// whatever the auto-vectoriser decides (it declined the masked and exp loops). The AVX-512 clone
// (one register per vector) or the AVX2 clone (two) is picked at load time where the CPU has it;
// elsewhere the same code runs as SSE quadruples (why 16 lanes: docs/performance.md, "One
// attention site alone").
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define ATTNSCOPE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ATTNSCOPE_CLONES
#endif
// On every lambda of a row pass: an out-of-line lambda is compiled for the default target, not
// for the clone that calls it (a row's tail step ran as SSE code and cost 4 % of a site).
#define ATTNSCOPE_INLINE __attribute__((always_inline))

namespace attnscope {

namespace {
constexpr int64_t W = 16;  // lanes per vector
typedef float fv __attribute__((vector_size(4 * W)));
typedef int iv __attribute__((vector_size(4 * W)));
typedef unsigned char bv __attribute__((vector_size(W)));
constexpr fv kLane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};  // lane index

constexpr float kInf = std::numeric_limits<float>::infinity();

inline fv splat(float x) { return fv{} + x; }

/// Lanes [0, n) of p (n < W: the rest filled with `fill`).
inline fv load(const float* p, int64_t n, float fill) {
  fv v;
  if (n >= W) {
    std::memcpy(&v, p, sizeof v);
  } else {
    v = splat(fill);
    std::memcpy(&v, p, sizeof(float) * n);
  }
  return v;
}
inline void store(float* p, fv v, int64_t n) { std::memcpy(p, &v, sizeof(float) * (n < W ? n : W)); }

/// All-ones lanes where the bool mask lets a key through (lanes >= n: hidden).
inline iv visible_lanes(const bool* v, int64_t n) {
  bv b = bv{};
  std::memcpy(&b, v, n < W ? n : W);
  return __builtin_convertvector(b, iv) != 0;
}

inline fv select(iv m, fv a, fv b) { return (fv)(((iv)a & m) | ((iv)b & ~m)); }

// exp(x) for x <= 0 (Cephes' single-precision polynomial, ~1 ulp); exactly 0 below -87.3 (where
// fp32 exp leaves the normal range) and for -inf.
inline fv exp_nonpositive(fv x) {
  const fv lo = splat(-87.3f);
  const iv keep = x >= lo;
  const fv xc = select(keep, x, lo);
  const iv n = __builtin_convertvector(xc * 1.44269504088896341f - 0.5f, iv);  // round(x / ln 2)
  const fv nf = __builtin_convertvector(n, fv);
  fv r = xc - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  fv y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const iv two_n = (n + 127) << 23;
  return (fv)((iv)(y * (fv)two_n) & keep);
}

// Horizontal sum and max by halving (a tree of vector adds): summed lane by lane they were a
// third of row_stats' time, whose chunks are only 16 steps long.
typedef float fh __attribute__((vector_size(2 * W)));
typedef float fq __attribute__((vector_size(W)));
inline float hsum(fv v) {
  const fh a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const fq b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}
inline float hmax(fv v) {
  const fh x = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7),
           y = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const fh a = x > y ? x : y;
  float m = a[0];
  for (int i = 1; i < 8; ++i) m = a[i] > m ? a[i] : m;
  return m;
}
}  // namespace

using Full = std::integral_constant<int64_t, W>;

/// Runs body(j, n) over [0, keys) in steps of W: n == W (a compile-time constant, so loads and
/// stores are plain vector moves) for full steps, then once with the tail's n < W.
template <class Body>
__attribute__((always_inline)) inline void for_lanes(int64_t keys, Body&& body) {
  int64_t j = 0;
  for (; j + W <= keys; j += W) body(j, Full{});
  if (j < keys) body(j, keys - j);
}

/// Sums of e = exp(d) and e·d over [0, n), d = z·mul - sub clamped at -1e30 (a hidden key,
/// -inf, adds 0·d = 0); e is written to `e_out` when given (it may be z). With kDist also
/// Σ e·|qi − j| (the row statistics' distance, taken here while e is in a register: a pass of its
/// own cost 10 % of the forward at 8k tokens). Two fp32 vector accumulators per sum over chunks
/// of 256 keys (each lane adds at most 8 terms), chunks added in double: as accurate as
/// compensated sums, without their latency-bound dependency chain. Always inlined, so that it is
/// compiled into each target clone of its callers (an out-of-line copy ran the default, SSE, code).
template <bool kWithEd = true, bool kDist = false>
__attribute__((always_inline)) inline void exp_sums(const float* z, float* e_out, int64_t n, float mul,
                                                    float sub, double& sum, double& sum_ed, float qi = 0.0f,
                                                    double* sum_dist = nullptr) {
  const iv abs_mask = iv{} + 0x7fffffff;
  auto step = [&](int64_t j, auto m, fv& s, fv& ed, fv& dist) ATTNSCOPE_INLINE {
    fv d = load(z + j, m, -kInf) * mul - sub;
    d = d > -1e30f ? d : splat(-1e30f);
    const fv e = exp_nonpositive(d);
    s += e;
    if (kWithEd) ed += e * d;
    if (kDist) dist += e * (fv)((iv)(splat(qi - static_cast<float>(j)) - kLane) & abs_mask);  // |qi − j|
    if (e_out) store(e_out + j, e, m);
  };
  for (int64_t c0 = 0; c0 < n; c0 += 256) {
    const int64_t c1 = c0 + 256 < n ? c0 + 256 : n;
    fv s0 = fv{}, s1 = fv{}, ed0 = fv{}, ed1 = fv{}, ds0 = fv{}, ds1 = fv{};
    int64_t j = c0;
    for (; j + 2 * W <= c1; j += 2 * W) {
      step(j, Full{}, s0, ed0, ds0);
      step(j + W, Full{}, s1, ed1, ds1);
    }
    for (; j < c1; j += W) {
      if (j + W <= c1) step(j, Full{}, s0, ed0, ds0);
      else step(j, c1 - j, s0, ed0, ds0);
    }
    sum += hsum(s0 + s1);
    if (kWithEd) sum_ed += hsum(ed0 + ed1);
    if (kDist) *sum_dist += hsum(ds0 + ds1);
  }
}

/// The largest of z[0..n) (-inf for n = 0), reading it once; `nan` set when any is NaN.
__attribute__((always_inline)) inline float max_scan(const float* z, int64_t n, bool& nan) {
  fv vmax = splat(-kInf);
  iv vnan = iv{};
  for_lanes(n, [&](int64_t j, auto m) ATTNSCOPE_INLINE {
    const fv v = load(z + j, m, -kInf);
    vnan |= v != v;
    vmax = v > vmax ? v : vmax;
  });
  for (int i = 0; i < W; ++i) nan |= vnan[i] != 0;
  return hmax(vmax);
}

/// A row softmax_row cannot normalise: all NaN (NaN scores) or all 0 (no visible key).
inline RowSoftmax empty_row(float* z, int64_t keys, bool nan) {
  const float fill = nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
  for (int64_t j = 0; j < keys; ++j) z[j] = fill;
  return {fill, 1.0f, nan ? static_cast<double>(fill) : 0.0};
}

/// Pass 2 of softmax_row: e = exp(z·mul - max), kept in z. Entropy = -Σ p log p = log S - Σ(e·d) / S.
__attribute__((always_inline)) inline RowSoftmax exp_pass(float* z, int64_t keys, float mul, float mx,
                                                          bool entropy, int64_t distance_from) {
  double sum = 0.0, sum_ed = 0.0, dist = 0.0;
  const float qi = static_cast<float>(distance_from);
  if (distance_from >= 0) {
    if (entropy) exp_sums<true, true>(z, z, keys, mul, mx, sum, sum_ed, qi, &dist);
    else exp_sums<false, true>(z, z, keys, mul, mx, sum, sum_ed, qi, &dist);
  } else {
    if (entropy) exp_sums<true, false>(z, z, keys, mul, mx, sum, sum_ed);
    else exp_sums<false, false>(z, z, keys, mul, mx, sum, sum_ed);
  }
  return {entropy ? static_cast<float>(std::log(sum) - sum_ed / sum) : 0.0f, static_cast<float>(1.0 / sum), dist};
}

ATTNSCOPE_CLONES
RowSoftmax softmax_row(float* z, int64_t keys, float scale, const RowMask& mask, bool entropy,
                       int64_t distance_from) {
  if (!mask.vis && !mask.add && scale > 0.0f) {
    // No mask (a causal row, or every key visible): pass 1 only reads the raw products for
    // their max, and pass 2 scales as it reads (scale > 0 keeps the arg max). Storing the
    // scaled row here was a third of pass 1's time at 8k keys.
    bool nan = false;
    const float mx = max_scan(z, keys, nan) * scale;
    if (nan || !(mx > -kInf)) return empty_row(z, keys, nan);  // NaN scores, or every product -inf
    return exp_pass(z, keys, scale, mx, entropy, distance_from);
  }
  // Pass 1: scale and mask (hidden keys: -inf, whose exp is exactly 0), and the row max. A mask
  // broadcast over the keys (stride 0) is one value for the whole row.
  const bool bcast = (mask.vis || mask.add) && mask.stride == 0;
  const bool row_hidden = bcast && !mask.visible(0);
  const float row_add = bcast && mask.add ? mask.add[0] : 0.0f;
  fv vmax = splat(-kInf);
  iv vnan = iv{};
  for_lanes(keys, [&](int64_t j, auto n) ATTNSCOPE_INLINE {
    fv v = load(z + j, n, 0.0f) * scale;
    iv ok = n >= W ? iv{} - 1 : (kLane < splat(float(n)));
    if (row_hidden) {
      ok = iv{};
    } else if (bcast) {
      v = v + row_add;
    } else if (mask.vis) {
      ok &= visible_lanes(mask.vis + j, n);
    } else if (mask.add) {
      const fv a = load(mask.add + j, n, 0.0f);
      ok &= a > mask.hidden_below;
      v = v + a;
    }
    v = select(ok, v, splat(-kInf));
    vnan |= v != v;
    vmax = v > vmax ? v : vmax;
    store(z + j, v, n);
  });
  const float mx = hmax(vmax);
  bool nan = false;
  for (int i = 0; i < W; ++i) nan |= vnan[i] != 0;
  if (nan || !(mx > -kInf)) return empty_row(z, keys, nan);  // NaN scores, or no visible key (a padding row)
  return exp_pass(z, keys, 1.0f, mx, entropy, distance_from);
}

ATTNSCOPE_CLONES
void add_received(const float* e, float inv, int64_t n, float* sum, float* max) {
  for_lanes(n, [&](int64_t j, auto m) ATTNSCOPE_INLINE {
    const fv v = load(e + j, m, 0.0f) * inv;
    store(sum + j, load(sum + j, m, 0.0f) + v, m);
    const fv old = load(max + j, m, 0.0f);
    store(max + j, v > old ? v : old, m);
  });
}

ATTNSCOPE_CLONES
void add_received_rows(const float* const* e, const float* inv, const int64_t* n, int64_t g, float* sum,
                       float* max) {
  int64_t common = g > 0 ? n[0] : 0;
  for (int64_t r = 1; r < g; ++r) common = n[r] < common ? n[r] : common;
  for_lanes(common, [&](int64_t j, auto m) ATTNSCOPE_INLINE {
    fv s = load(sum + j, m, 0.0f), mx = load(max + j, m, 0.0f);
    for (int64_t r = 0; r < g; ++r) {
      const fv v = load(e[r] + j, m, 0.0f) * inv[r];
      s = s + v;
      mx = v > mx ? v : mx;
    }
    store(sum + j, s, m);
    store(max + j, mx, m);
  });
  // Each row's keys after the common part, rows still in order for every key.
  for (int64_t r = 0; r < g; ++r)
    if (n[r] > common) add_received(e[r] + common, inv[r], n[r] - common, sum + common, max + common);
}

ATTNSCOPE_CLONES
void scale_row(const float* e, float inv, int64_t n, float* dst, bool add) {
  for_lanes(n, [&](int64_t j, auto m) ATTNSCOPE_INLINE {
    const fv p = load(e + j, m, 0.0f) * inv;
    store(dst + j, add ? load(dst + j, m, 0.0f) + p : p, m);
  });
}

// No fused multiply-adds here (the AVX-512 clone would use them): the scaled logits z·(1/T) are
// then rounded as the top-k probabilities' exp(z/T − lse) rounds them (entropy.cpp, ATen), so the
// two agree; fused, the products were exact and the top-k probabilities moved by 1.7e-6.
ATTNSCOPE_CLONES __attribute__((optimize("fp-contract=off")))
RowPredictive predictive_row(const float* z, int64_t n, float inv_t, int64_t k, int64_t* top_ids) {
  // Pass 1: max (and NaN) of the row.
  bool nan = false;
  const float zmax = max_scan(z, n, nan);
  if (nan) return {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN(), true};
  const float mx = zmax * inv_t;
  // Top-k by a threshold scan: an element enters only if above the current k-th (rare after the
  // first few thousand), kept sorted by (value desc, id asc) in a small array.
  if (k > 0) {
    float vals[64];
    int64_t have = 0;
    float kth = -kInf;
    for (int64_t j = 0; j < n; ++j) {
      const float v = z[j];
      if (have == k && !(v > kth)) continue;
      int64_t pos = have < k ? have : k - 1;
      while (pos > 0 && vals[pos - 1] < v) {  // strictly greater moves up: equal keeps lower id first
        if (pos < k) { vals[pos] = vals[pos - 1]; top_ids[pos] = top_ids[pos - 1]; }
        --pos;
      }
      vals[pos] = v;
      top_ids[pos] = j;
      if (have < k) ++have;
      kth = have == k ? vals[k - 1] : -kInf;
    }
  }
  // Pass 2: S = sum e, sum e·d with d = z·inv_t - max (clamped: -inf logits add 0); chunked
  // sums (exp_sums) keep fp32 accuracy over a vocabulary of 10^5 terms.
  double sum = 0.0, sum_ed = 0.0;
  exp_sums(z, nullptr, n, inv_t, mx, sum, sum_ed);
  return {static_cast<float>(std::log(sum) - sum_ed / sum), static_cast<float>(mx + std::log(sum)), false};
}

namespace {
/// Lanes [0, n) of int32 ids (n < W: the rest -1, which no query id equals).
template <class N>
inline iv load_ids(const int32_t* p, N n) {
  iv v;
  if (n >= W) {
    std::memcpy(&v, p, sizeof v);
  } else {
    v = iv{} - 1;
    std::memcpy(&v, p, sizeof(int32_t) * n);
  }
  return v;
}
}  // namespace

ATTNSCOPE_CLONES
void row_stats(const float* e, float inv, int64_t n, int64_t i, int64_t w, const RowIds* ids, double distance,
               float* out, int64_t out_stride) {
  // A few copies (natural text, mostly): their keys are summed directly. Many (a repeated
  // token): one vector pass over the keys before the query compares every key's ids instead.
  const bool sparse = ids && ids->n_copies * 8 <= n;
  const int64_t end = i < n ? i : n;  // keys j < min(i, n)
  double dup = 0.0, ind = 0.0;
  if (sparse) {
    for (int64_t c = 0; c < ids->n_copies; ++c) {
      const int64_t j = ids->copies[c];
      if (j < end) dup += e[j];
      if (j + 1 < end && ids->prev_id[j + 1] == ids->qid) ind += e[j + 1];
    }
  } else if (ids) {  // sums in fp32 vectors over chunks of 256 keys, chunks added in double
    const iv q = iv{} + ids->qid;
    for (int64_t c0 = 0; c0 < end; c0 += 256) {
      const int64_t c1 = c0 + 256 < end ? c0 + 256 : end;
      fv u = fv{}, v = fv{};
      auto step = [&](int64_t j, auto m) ATTNSCOPE_INLINE {
        const fv x = load(e + j, m, 0.0f);
        u += select(load_ids(ids->key_id + j, m) == q, x, fv{});
        v += select(load_ids(ids->prev_id + j, m) == q, x, fv{});
      };
      int64_t j = c0;
      for (; j + W <= c1; j += W) step(j, Full{});
      if (j < c1) step(j, c1 - j);
      dup += hsum(u);
      ind += hsum(v);
    }
  }
  double local = 0.0;
  for (int64_t j = i - w < 0 ? 0 : i - w; j <= i + w && j < n; ++j) local += e[j];
  out[0] = i < n ? e[i] * inv : 0.0f;
  out[out_stride] = i >= 1 && i - 1 < n ? e[i - 1] * inv : 0.0f;
  out[2 * out_stride] = static_cast<float>(distance * inv);
  out[3 * out_stride] = static_cast<float>(local * inv);
  out[4 * out_stride] = static_cast<float>(dup * inv);
  out[5 * out_stride] = static_cast<float>(ind * inv);
}

ATTNSCOPE_CLONES
void pool_row(const float* e, float inv, int64_t n, const int64_t* bounds, int64_t tiles, float* sums,
              float* share) {
  int64_t seen = 0;
  for (int64_t c = 0; c < tiles; ++c) {
    const int64_t lo = bounds[c], hi = bounds[c + 1] < n ? bounds[c + 1] : n;
    fv s = fv{}, cnt = fv{};
    auto step = [&](int64_t j, auto m) ATTNSCOPE_INLINE {
      const fv x = load(e + j, m, 0.0f);
      s += x;
      cnt += (fv)((iv)splat(1.0f) & (x > 0.0f));
    };
    int64_t j = lo;
    for (; j + W <= hi; j += W) step(j, Full{});
    if (j < hi) step(j, hi - j);
    sums[c] = hsum(s) * inv;
    if (share) {
      const float k = hsum(cnt);
      share[c] = k;
      seen += static_cast<int64_t>(k);
    }
  }
  if (share)
    for (int64_t c = 0; c < tiles; ++c) share[c] = seen > 0 ? share[c] / static_cast<float>(seen) : 0.0f;
}

}  // namespace attnscope
