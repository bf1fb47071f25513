// The row kernels' grouped received sums against the one-row kernel (bit for bit), the no-mask
// softmax pass against the masked one and a double-precision formula, and the run's block cache.
#include "helpers.h"

#include <attnscope/block_cache.h>
#include <attnscope/softmax_rows.h>

#include <c10/core/CPUAllocator.h>

#include <cmath>
#include <cstring>
#include <vector>

CATCH_TEST_CASE("grouped received sums equal row-by-row sums bit for bit", "[kernels]") {
  torch::manual_seed(3);
  const int64_t keys = 300;  // not a multiple of the vector width
  for (int64_t g : {1, 3, 8}) {
    auto e = torch::rand({g, keys});
    e.select(1, 7).fill_(0.0f);
    std::vector<float> inv;
    std::vector<int64_t> n;
    std::vector<const float*> rows;
    for (int64_t r = 0; r < g; ++r) {
      inv.push_back(1.0f / (1.0f + static_cast<float>(r)));
      n.push_back(keys - 37 * r % 50);  // unequal lengths: a common part and tails
      rows.push_back(e[r].data_ptr<float>());
    }
    auto s0 = torch::rand({keys}), m0 = torch::rand({keys}) * 0.1f;
    auto s1 = s0.clone(), m1 = m0.clone();
    const auto start_s = s0.clone(), start_m = m0.clone();
    for (int64_t r = 0; r < g; ++r)
      attnscope::add_received(rows[r], inv[r], n[r], s0.data_ptr<float>(), m0.data_ptr<float>());
    attnscope::add_received_rows(rows.data(), inv.data(), n.data(), g, s1.data_ptr<float>(), m1.data_ptr<float>());
    CATCH_CHECK(std::memcmp(s0.data_ptr<float>(), s1.data_ptr<float>(), sizeof(float) * keys) == 0);
    CATCH_CHECK(std::memcmp(m0.data_ptr<float>(), m1.data_ptr<float>(), sizeof(float) * keys) == 0);
    // and against the formula: the sums of p = e·inv over each row's keys, and their max
    auto p = e * torch::tensor(inv).unsqueeze(1);
    for (int64_t r = 0; r < g; ++r) p[r].narrow(0, n[r], keys - n[r]).zero_();
    CATCH_CHECK(torch::allclose(s1, start_s + p.sum(0), 1e-6, 1e-6));
    CATCH_CHECK(torch::equal(m1, torch::maximum(start_m, std::get<0>(p.max(0)))));
  }
}

CATCH_TEST_CASE("softmax row without a mask: the masked pass's values and the formula's", "[kernels]") {
  torch::manual_seed(4);
  for (int64_t keys : {1, 5, 16, 333, 4100}) {
    auto z = torch::randn({keys}) * 4.0f;
    const float scale = 0.125f;
    // The formula in double: p = softmax(z·scale), entropy, distance from key keys - 1.
    auto zd = z.to(torch::kDouble) * scale;
    auto p = torch::softmax(zd, 0);
    const double ent = -(p * p.log()).sum().item<double>();
    auto dist = torch::arange(keys, torch::kDouble).neg().add(keys - 1);
    const double mean_dist = (p * dist).sum().item<double>();

    auto a = z.clone(), b = z.clone();
    attnscope::RowMask none;                   // the no-mask pass
    std::vector<uint8_t> all(static_cast<size_t>(keys), 1);
    attnscope::RowMask vis;                    // every key visible through a bool mask: the masked pass
    vis.vis = reinterpret_cast<const bool*>(all.data());
    const auto ra = attnscope::softmax_row(a.data_ptr<float>(), keys, scale, none, true, keys - 1);
    const auto rb = attnscope::softmax_row(b.data_ptr<float>(), keys, scale, vis, true, keys - 1);
    CATCH_CHECK(std::abs(ra.entropy - ent) <= 1e-5 * std::max(1.0, ent));
    CATCH_CHECK(std::abs(ra.entropy - rb.entropy) <= 1e-6 * std::max(1.0f, rb.entropy));
    CATCH_CHECK(std::abs(ra.distance * ra.inv_sum - mean_dist) <= 1e-5 * std::max(1.0, mean_dist));
    CATCH_CHECK(torch::allclose((a * ra.inv_sum).to(torch::kDouble), p, 1e-5, 1e-7));
    CATCH_CHECK(torch::allclose(a * ra.inv_sum, b * rb.inv_sum, 1e-6, 1e-8));
  }
  // NaN scores: every probability NaN, as in the masked pass.
  auto z = torch::randn({40});
  z[17] = std::nanf("");
  attnscope::RowMask none;
  const auto r = attnscope::softmax_row(z.data_ptr<float>(), 40, 1.0f, none, true, -1);
  CATCH_CHECK(std::isnan(r.entropy));
  CATCH_CHECK(z.isnan().all().item<bool>());
}

CATCH_TEST_CASE("block cache: a scope reuses freed large blocks and frees them when it ends", "[kernels]") {
  const auto before = c10::GetCPUAllocator();
  {
    attnscope::BlockCacheScope scope;
    void* first = nullptr;
    {
      auto x = torch::empty({1 << 20});  // 4 MiB: cached when freed
      first = x.data_ptr();
      auto small = torch::ones({100});   // the usual allocator
      CATCH_CHECK(small.sum().item<float>() == 100.0f);
    }
    CATCH_CHECK(attnscope::block_cache_stats().cached_bytes >= (size_t(4) << 20));
    auto y = torch::empty({1 << 20});
    CATCH_CHECK(y.data_ptr() == first);  // the same block again
    CATCH_CHECK(attnscope::block_cache_stats().reused >= 1);
    {
      auto z = torch::empty({1 << 20});  // cached when freed
    }
    CATCH_CHECK(attnscope::block_cache_stats().cached_bytes >= (size_t(4) << 20));
    {
      auto big = torch::empty({4 << 20});  // 16 MiB, more than all that is cached: the cache is emptied
      CATCH_CHECK(attnscope::block_cache_stats().cached_bytes == 0);
    }
    // ATen's raw buffers (raw_allocate / raw_deallocate) work through the cache too.
    auto g = torch::gelu(torch::randn({3 << 20}));
    CATCH_CHECK(g.size(0) == (3 << 20));
    {
      attnscope::BlockCacheScope nested;  // a second scope on the same cache
      auto w = torch::zeros({1 << 20});
      CATCH_CHECK(w.sum().item<float>() == 0.0f);
    }
    CATCH_CHECK(c10::GetCPUAllocator() != before);  // still installed: the outer scope is alive
    // Sizes that never come back (layers of different widths): blocks older than 64 large
    // allocations are released, so the cache stays bounded instead of filling up to its cap.
    {
      auto keep_small = torch::empty({1 << 19});  // 2 MiB, cached when freed below
    }
    const size_t mib = size_t(1) << 20;
    size_t most = 0;
    for (int64_t i = 0; i < 300; ++i) {
      auto t = torch::empty({(int64_t(1) << 18) + i * (int64_t(1) << 14)});  // 1 MiB + i·64 KiB: a new class each
      most = std::max(most, attnscope::block_cache_stats().cached_bytes);
    }
    CATCH_CHECK(most <= 70 * 20 * mib);  // ~65 blocks of at most 20 MiB, not the 2 GiB cap
  }
  CATCH_CHECK(c10::GetCPUAllocator() == before);
  CATCH_CHECK(attnscope::block_cache_stats().cached_bytes == 0);
  // A tensor made in a scope and freed after it is released normally.
  torch::Tensor kept;
  {
    attnscope::BlockCacheScope scope;
    kept = torch::full({1 << 20}, 2.0f);
  }
  CATCH_CHECK(kept.sum().item<float>() == 2.0f * (1 << 20));
  kept = torch::Tensor();
  CATCH_CHECK(attnscope::block_cache_stats().cached_bytes == 0);
}
