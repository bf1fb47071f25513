"""How much memory one argument may make attnscope allocate (the C++ core's rule, memory_budget.h:
ATTNSCOPE_MAX_BYTES, else half of this machine's physical memory): estimated before allocating
and refused past it with a ValueError naming the argument, never an allocator failure after
gigabytes."""
import os

__all__ = ["memory_budget", "check_bytes"]


def memory_budget():
    """Bytes attnscope may allocate for one argument's work."""
    v = os.environ.get("ATTNSCOPE_MAX_BYTES")
    if v:
        if not v.isdigit() or int(v) <= 0:
            raise ValueError(f"ATTNSCOPE_MAX_BYTES {v!r}: expected a number of bytes > 0")
        return int(v)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 << 30


def check_bytes(nbytes, what, hint):
    """ValueError when `nbytes` exceed memory_budget(), naming `what` and how to stay within it."""
    budget = memory_budget()
    if nbytes > budget:
        how = "ATTNSCOPE_MAX_BYTES" if os.environ.get("ATTNSCOPE_MAX_BYTES") else \
            "half of this machine's memory; ATTNSCOPE_MAX_BYTES sets it"
        raise ValueError(f"{what} needs about {nbytes / 1e9:.1f} GB, more than the {budget / 1e9:.1f} GB attnscope "
                         f"may allocate ({how}): {hint}")
