// How much memory one argument may make attnscope allocate: estimated before allocating and
// refused past the budget, so a huge argument is an error naming it, not an allocator failure
// after gigabytes (or the machine swapping).
#pragma once
#include <cstdint>
#include <string>

namespace attnscope {

/// ATTNSCOPE_MAX_BYTES when set (bytes, > 0), else half of this machine's physical memory.
/// Python's attnscope.budget applies the same rule (tested to agree).
int64_t memory_budget();

/// Throws ValueError when `bytes` exceed memory_budget(): "`what` needs about 4.5 GB, more than
/// the 12.0 GB attnscope may allocate (half of this machine's memory; ATTNSCOPE_MAX_BYTES sets
/// it): `hint`".
void check_bytes(double bytes, const std::string& what, const std::string& hint);

}  // namespace attnscope
