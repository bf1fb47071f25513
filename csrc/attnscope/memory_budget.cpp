#include <attnscope/memory_budget.h>

#include <c10/util/Exception.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace attnscope {

namespace {
std::string gb(double bytes) {
  char s[32];
  std::snprintf(s, sizeof s, "%.1f GB", bytes / 1e9);
  return s;
}
}  // namespace

int64_t memory_budget() {
  if (const char* v = std::getenv("ATTNSCOPE_MAX_BYTES"); v && *v) {
    char* end = nullptr;
    const long long n = std::strtoll(v, &end, 10);
    TORCH_CHECK_VALUE(end && *end == '\0' && n > 0, "ATTNSCOPE_MAX_BYTES '", v, "': expected a number of bytes > 0");
    return n;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page / 2 : int64_t(8) << 30;
}

void check_bytes(double bytes, const std::string& what, const std::string& hint) {
  const auto budget = static_cast<double>(memory_budget());
  TORCH_CHECK_VALUE(bytes <= budget, what, " needs about ", gb(bytes), ", more than the ", gb(budget),
                    " attnscope may allocate (", std::getenv("ATTNSCOPE_MAX_BYTES") ? "ATTNSCOPE_MAX_BYTES" :
                    "half of this machine's memory; ATTNSCOPE_MAX_BYTES sets it", "): ", hint);
}

}  // namespace attnscope
