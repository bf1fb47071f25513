// Reuse of large CPU blocks during a run. A transformer's layers allocate the same tensor sizes
// in turn; glibc serves each allocation above its mmap threshold with fresh pages and returns
// them when freed, so every layer would pay page faults and zero-filling again (measured:
// docs/performance.md, "Memory"). While a BlockCacheScope is alive, CPU tensors of at least kMinBytes come from blocks
// that earlier tensors of the same size class freed in that scope.
#pragma once
#include <cstddef>

namespace attnscope {

/// RAII: CPU allocations of large tensors go through the block cache while any scope is alive
/// (on any thread: c10 has one process-wide CPU allocator). When no cached block fits a request,
/// blocks cached more than 64 large allocations ago are released (sizes that do not come back),
/// or every cached block when the request is larger than all of them together (a model's
/// logits); when the last scope ends, the cached blocks are freed. Tensors still alive then keep their blocks and free them normally. Does
/// nothing when another CPU allocator of higher priority is installed.
class BlockCacheScope {
 public:
  BlockCacheScope();
  ~BlockCacheScope();
  BlockCacheScope(const BlockCacheScope&) = delete;
  BlockCacheScope& operator=(const BlockCacheScope&) = delete;
};

/// Blocks smaller than this come from the usual allocator (bytes).
constexpr size_t kBlockCacheMinBytes = size_t(1) << 20;
/// Freed blocks kept for reuse at most (bytes); a block freed above it is released.
constexpr size_t kBlockCacheMaxBytes = size_t(2) << 30;

/// Counters of the current or last scope, for tests and benchmarks: allocations served from
/// the cache, allocations that took a new block, and the bytes cached now.
struct BlockCacheStats {
  size_t reused = 0, fresh = 0, cached_bytes = 0;
};
BlockCacheStats block_cache_stats();

}  // namespace attnscope
