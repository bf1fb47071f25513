#include <attnscope/block_cache.h>

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace attnscope {

namespace {

class BlockCache final : public c10::Allocator {
 public:
  /// Size classes: multiples of 64 KiB, so that tensors a few rows apart in size share blocks.
  static size_t size_class(size_t n) { return (n + kStep - 1) / kStep * kStep; }

  // Data and context are the same pointer (ATen's raw_allocate needs that); the live map gives
  // a block's size class when it is freed.
  c10::DataPtr allocate(size_t n) override {
    if (n < kBlockCacheMinBytes) return prev_->allocate(n);
    const size_t bytes = size_class(n);
    void* p = nullptr;
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++tick_;
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        p = it->second.back().first;
        it->second.pop_back();
        cached_ -= bytes;
        ++stats_.reused;
      } else {
        ++stats_.fresh;
        // A block larger than all that is cached (the logits after the last layer): the cached
        // blocks are released first, so the run's peak does not hold them next to it.
        if (bytes > cached_) take_all(drop);
        else take_stale(drop);
      }
    }
    for (void* d : drop) c10::free_cpu(d);
    if (!p) p = c10::alloc_cpu(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_[p] = bytes;
    }
    return {p, p, &BlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &BlockCache::release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (scopes_++ > 0) return;
    stats_ = BlockCacheStats{};
    c10::Allocator* current = c10::GetCPUAllocator();
    if (current == this || !current->raw_deleter()) return;  // small raw blocks go back through it
    prev_ = current;
    prev_raw_ = current->raw_deleter();
    c10::SetCPUAllocator(this, /*priority=*/0);
    installed_ = c10::GetCPUAllocator() == this;  // refused: a higher-priority allocator is set
  }

  void leave() {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--scopes_ > 0) return;
      if (installed_) c10::SetCPUAllocator(prev_, /*priority=*/0);
      installed_ = false;
      take_all(drop);
    }
    for (void* p : drop) c10::free_cpu(p);
  }

  BlockCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    BlockCacheStats s = stats_;
    s.cached_bytes = cached_;
    return s;
  }

  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // never destroyed: tensors may outlive main
    return *cache;
  }

 private:
  static constexpr size_t kStep = size_t(64) << 10;
  static constexpr uint64_t kMaxAge = 64;

  /// Empties the cache into `drop` (freed by the caller, outside the lock). Holds mu_.
  void take_all(std::vector<void*>& drop) {
    for (auto& kv : free_)
      for (auto& b : kv.second) drop.push_back(b.first);
    free_.clear();
    cached_ = 0;
  }

  /// Moves blocks cached more than kMaxAge large allocations ago into `drop`: a layer takes its
  /// predecessor's blocks within a few dozen allocations, so older ones are sizes that do not
  /// come back (layers of different widths, a growing KV cache) and would only hold memory.
  void take_stale(std::vector<void*>& drop) {
    for (auto it = free_.begin(); it != free_.end();) {
      auto& v = it->second;
      size_t kept = 0;
      for (auto& b : v) {
        if (tick_ - b.second > kMaxAge) {
          drop.push_back(b.first);
          cached_ -= it->first;
        } else {
          v[kept++] = b;
        }
      }
      v.resize(kept);
      it = v.empty() ? free_.erase(it) : std::next(it);
    }
  }

  /// A block is freed: kept for reuse while a scope is alive and the cache has room. A pointer
  /// that is not a block (a small raw allocation) goes back to the allocator that made it.
  static void release(void* p) {
    BlockCache& c = get();
    c10::DeleterFnPtr other = nullptr;
    {
      std::lock_guard<std::mutex> lock(c.mu_);
      auto it = c.live_.find(p);
      if (it == c.live_.end()) {
        other = c.prev_raw_;
      } else {
        const size_t bytes = it->second;
        c.live_.erase(it);
        if (c.scopes_ > 0 && c.cached_ + bytes <= kBlockCacheMaxBytes) {
          c.free_[bytes].emplace_back(p, c.tick_);
          c.cached_ += bytes;
          return;
        }
      }
    }
    if (other) other(p);
    else c10::free_cpu(p);
  }

  std::mutex mu_;
  int scopes_ = 0;
  bool installed_ = false;
  c10::Allocator* prev_ = nullptr;
  c10::DeleterFnPtr prev_raw_ = nullptr;
  std::unordered_map<void*, size_t> live_;                // block -> size class, while a tensor holds it
  std::unordered_map<size_t, std::vector<std::pair<void*, uint64_t>>> free_;  // size class -> (block, tick cached)
  uint64_t tick_ = 0;  // large allocations so far
  size_t cached_ = 0;
  BlockCacheStats stats_;
};

}  // namespace

BlockCacheScope::BlockCacheScope() { BlockCache::get().enter(); }
BlockCacheScope::~BlockCacheScope() { BlockCache::get().leave(); }

BlockCacheStats block_cache_stats() { return BlockCache::get().stats(); }

}  // namespace attnscope
