#include <attnscope/softmax_rows.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

// Written with GCC/Clang vector types (8 floats): each loop below is one pass of vector code
// whatever the auto-vectoriser decides (it declined the masked and exp loops). The AVX2 clone is
// picked at load time where the CPU has it; elsewhere the same code runs as SSE pairs.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define ATTNSCOPE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ATTNSCOPE_CLONES
#endif

namespace attnscope {

namespace {
typedef float f8 __attribute__((vector_size(32)));
typedef int i8 __attribute__((vector_size(32)));
typedef unsigned char u8 __attribute__((vector_size(8)));

constexpr float kInf = std::numeric_limits<float>::infinity();

inline f8 splat(float x) { return f8{} + x; }

/// Lanes [0, n) of p (n < 8: the rest filled with `fill`).
inline f8 load(const float* p, int64_t n, float fill) {
  f8 v;
  if (n >= 8) {
    std::memcpy(&v, p, sizeof v);
  } else {
    v = splat(fill);
    std::memcpy(&v, p, sizeof(float) * n);
  }
  return v;
}
inline void store(float* p, f8 v, int64_t n) { std::memcpy(p, &v, sizeof(float) * (n < 8 ? n : 8)); }

/// All-ones lanes where the bool mask lets a key through (lanes >= n: hidden).
inline i8 visible_lanes(const bool* v, int64_t n) {
  u8 b = u8{};
  std::memcpy(&b, v, n < 8 ? n : 8);
  return __builtin_convertvector(b, i8) != 0;
}

inline f8 select(i8 m, f8 a, f8 b) { return (f8)(((i8)a & m) | ((i8)b & ~m)); }

// exp(x) for x <= 0 (Cephes' single-precision polynomial, ~1 ulp); exactly 0 below -87.3 (where
// fp32 exp leaves the normal range) and for -inf.
inline f8 exp_nonpositive(f8 x) {
  const f8 lo = splat(-87.3f);
  const i8 keep = x >= lo;
  const f8 xc = select(keep, x, lo);
  const i8 n = __builtin_convertvector(xc * 1.44269504088896341f - 0.5f, i8);  // round(x / ln 2)
  const f8 nf = __builtin_convertvector(n, f8);
  f8 r = xc - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  f8 y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const i8 two_n = (n + 127) << 23;
  return (f8)((i8)(y * (f8)two_n) & keep);
}

inline float hsum(f8 v) {
  float s = 0.0f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}
inline float hmax(f8 v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
}  // namespace

/// Runs body(j, n) over [0, keys) in steps of 8: n == 8 (a compile-time constant, so loads and
/// stores are plain vector moves) for full steps, then once with the tail's n < 8.
template <class Body>
__attribute__((always_inline)) inline void for_lanes(int64_t keys, Body&& body) {
  int64_t j = 0;
  for (; j + 8 <= keys; j += 8) body(j, std::integral_constant<int64_t, 8>{});
  if (j < keys) body(j, keys - j);
}

/// Sums of e = exp(d) and e·d over [0, n), d = z·mul - sub clamped at -1e30 (a hidden key,
/// -inf, adds 0·d = 0); e is written to `e_out` when given (it may be z). Two fp32 vector
/// accumulators per sum over chunks of 256 keys (each lane adds at most 16 terms), chunks added
/// in double: as accurate as compensated sums, without their latency-bound dependency chain.
/// Always inlined, so that it is compiled into each target clone of its callers (an
/// out-of-line copy ran the default, SSE, code).
__attribute__((always_inline)) inline void exp_sums(const float* z, float* e_out, int64_t n, float mul,
                                                    float sub, double& sum, double& sum_ed) {
  auto step = [&](int64_t j, auto m, f8& s, f8& ed) {
    f8 d = load(z + j, m, -kInf) * mul - sub;
    d = d > -1e30f ? d : splat(-1e30f);
    const f8 e = exp_nonpositive(d);
    s += e;
    ed += e * d;
    if (e_out) store(e_out + j, e, m);
  };
  constexpr std::integral_constant<int64_t, 8> full{};
  for (int64_t c0 = 0; c0 < n; c0 += 256) {
    const int64_t c1 = c0 + 256 < n ? c0 + 256 : n;
    f8 s0 = f8{}, s1 = f8{}, ed0 = f8{}, ed1 = f8{};
    int64_t j = c0;
    for (; j + 16 <= c1; j += 16) {
      step(j, full, s0, ed0);
      step(j + 8, full, s1, ed1);
    }
    for (; j < c1; j += 8) {
      if (j + 8 <= c1) step(j, full, s0, ed0);
      else step(j, c1 - j, s0, ed0);
    }
    sum += hsum(s0 + s1);
    sum_ed += hsum(ed0 + ed1);
  }
}

ATTNSCOPE_CLONES
RowSoftmax softmax_row(float* z, int64_t keys, float scale, const RowMask& mask) {
  // Pass 1: scale and mask (hidden keys: -inf, whose exp is exactly 0), and the row max. A mask
  // broadcast over the keys (stride 0) is one value for the whole row.
  const bool bcast = (mask.vis || mask.add) && mask.stride == 0;
  const bool row_hidden = bcast && !mask.visible(0);
  const float row_add = bcast && mask.add ? mask.add[0] : 0.0f;
  f8 vmax = splat(-kInf);
  i8 vnan = i8{};
  for_lanes(keys, [&](int64_t j, auto n) {
    f8 v = load(z + j, n, 0.0f) * scale;
    i8 ok = n >= 8 ? i8{} - 1 : (f8{0, 1, 2, 3, 4, 5, 6, 7} < splat(float(n)));
    if (row_hidden) {
      ok = i8{};
    } else if (bcast) {
      v = v + row_add;
    } else if (mask.vis) {
      ok &= visible_lanes(mask.vis + j, n);
    } else if (mask.add) {
      const f8 a = load(mask.add + j, n, 0.0f);
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
  for (int i = 0; i < 8; ++i) nan |= vnan[i] != 0;
  if (nan || !(mx > -kInf)) {  // NaN scores, or no visible key (a fully masked padding row)
    const float fill = nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
    for (int64_t j = 0; j < keys; ++j) z[j] = fill;
    return {fill, 1.0f};
  }
  // Pass 2: e = exp(z - max), kept in z. Entropy = -sum p log p = log S - sum(e·d) / S.
  double sum = 0.0, sum_ed = 0.0;
  exp_sums(z, z, keys, 1.0f, mx, sum, sum_ed);
  return {static_cast<float>(std::log(sum) - sum_ed / sum), static_cast<float>(1.0 / sum)};
}

ATTNSCOPE_CLONES
void add_received(const float* e, float inv, int64_t n, float* sum, float* max) {
  for_lanes(n, [&](int64_t j, auto m) {
    const f8 v = load(e + j, m, 0.0f) * inv;
    store(sum + j, load(sum + j, m, 0.0f) + v, m);
    const f8 old = load(max + j, m, 0.0f);
    store(max + j, v > old ? v : old, m);
  });
}

ATTNSCOPE_CLONES
void scale_row(const float* e, float inv, int64_t n, float* dst, bool add) {
  for_lanes(n, [&](int64_t j, auto m) {
    const f8 p = load(e + j, m, 0.0f) * inv;
    store(dst + j, add ? load(dst + j, m, 0.0f) + p : p, m);
  });
}

ATTNSCOPE_CLONES
RowPredictive predictive_row(const float* z, int64_t n, float inv_t, int64_t k, int64_t* top_ids) {
  // Pass 1: max (and NaN) of the row.
  f8 vmax = splat(-kInf);
  i8 vnan = i8{};
  for_lanes(n, [&](int64_t j, auto m) {
    const f8 v = load(z + j, m, -kInf);
    vnan |= v != v;
    vmax = v > vmax ? v : vmax;
  });
  bool nan = false;
  for (int i = 0; i < 8; ++i) nan |= vnan[i] != 0;
  if (nan) return {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN(), true};
  const float zmax = hmax(vmax), mx = zmax * inv_t;
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
/// Lanes [0, n) of int32 ids (n < 8: the rest -1, which no query id equals).
template <class N>
inline i8 load_ids(const int32_t* p, N n) {
  i8 v;
  if (n >= 8) {
    std::memcpy(&v, p, sizeof v);
  } else {
    v = i8{} - 1;
    std::memcpy(&v, p, sizeof(int32_t) * n);
  }
  return v;
}
}  // namespace

ATTNSCOPE_CLONES
void row_stats(const float* e, float inv, int64_t n, int64_t i, int64_t w, const int32_t* key_id,
               const int32_t* prev_id, int32_t qid, float* out, int64_t out_stride) {
  const f8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  const i8 q = i8{} + qid;
  const i8 abs_mask = i8{} + 0x7fffffff;
  double dist = 0.0, dup = 0.0, ind = 0.0;
  // Keys before the query: distance, duplicate and induction mass in one pass; keys after it
  // (encoders): distance only. Sums in fp32 vectors over chunks of 256 keys, chunks added in
  // double (as in exp_sums). Full steps have a compile-time width: plain vector moves.
  auto pass = [&](int64_t lo, int64_t hi, bool ids) {
    for (int64_t c0 = lo; c0 < hi; c0 += 256) {
      const int64_t c1 = c0 + 256 < hi ? c0 + 256 : hi;
      f8 d8 = f8{}, u8s = f8{}, n8 = f8{};
      auto step = [&](int64_t j, auto m) {
        const f8 x = load(e + j, m, 0.0f);
        d8 += x * (f8)((i8)(splat(static_cast<float>(i - j)) - lane) & abs_mask);  // |i − j|
        if (ids) {
          u8s += select(load_ids(key_id + j, m) == q, x, f8{});
          n8 += select(load_ids(prev_id + j, m) == q, x, f8{});
        }
      };
      int64_t j = c0;
      for (; j + 8 <= c1; j += 8) step(j, std::integral_constant<int64_t, 8>{});
      if (j < c1) step(j, c1 - j);
      dist += hsum(d8);
      dup += hsum(u8s);
      ind += hsum(n8);
    }
  };
  pass(0, i < n ? i : n, key_id != nullptr);  // no id compares for a query without earlier copies
  if (i + 1 < n) pass(i + 1, n, false);
  double local = 0.0;
  for (int64_t j = i - w < 0 ? 0 : i - w; j <= i + w && j < n; ++j) local += e[j];
  out[0] = i < n ? e[i] * inv : 0.0f;
  out[out_stride] = i >= 1 && i - 1 < n ? e[i - 1] * inv : 0.0f;
  out[2 * out_stride] = static_cast<float>(dist * inv);
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
    f8 s = f8{}, cnt = f8{};
    auto step = [&](int64_t j, auto m) {
      const f8 x = load(e + j, m, 0.0f);
      s += x;
      cnt += (f8)((i8)splat(1.0f) & (x > 0.0f));
    };
    int64_t j = lo;
    for (; j + 8 <= hi; j += 8) step(j, std::integral_constant<int64_t, 8>{});
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
