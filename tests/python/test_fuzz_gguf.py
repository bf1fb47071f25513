"""Bounded mutation fuzzing of the GGUF reader (the header walk of gguf_check, then the gguf
package and read_gguf): every mutated file must read or raise ValueError, quickly. Mutations:
bit flips, byte runs inserted or cut, and hostile u64 lengths written at random places (where
the format keeps counts and offsets). ATTNSCOPE_FUZZ_GGUF sets the count (default 300)."""
import os
import random
import struct
import time

import pytest

from test_hostile_inputs import _valid_tiny_gguf

pytest.importorskip("gguf")


def _mutate(raw, rng):
    b = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        at = rng.randrange(len(b))
        if op == 0:
            b[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del b[at:at + rng.randint(1, 16)]
        elif at + 8 <= len(b):
            n = rng.choice([0, 1, 2 ** 32 - 1, 2 ** 40, 2 ** 63, 2 ** 64 - 1, rng.randrange(2 ** 64), len(b) * 2])
            b[at:at + 8] = struct.pack("<Q", n)
    return bytes(b)


def test_mutated_gguf_headers_read_or_raise_value_error(tmp_path):
    from attnscope.models import read_gguf
    seed = _valid_tiny_gguf(tmp_path / "seed.gguf").read_bytes()
    rng = random.Random(int(os.environ.get("ATTNSCOPE_FUZZ_SEED", "1")))
    n = int(os.environ.get("ATTNSCOPE_FUZZ_GGUF", "300"))
    path = tmp_path / "m.gguf"
    outcomes = {"read": 0, "ValueError": 0}
    for i in range(n):
        data = _mutate(seed, rng)
        path.write_bytes(data)
        t0 = time.monotonic()
        try:
            read_gguf(str(path))
            outcomes["read"] += 1
        except ValueError:
            outcomes["ValueError"] += 1
        except Exception as e:  # noqa: BLE001 - any other exception is a finding
            (tmp_path / "finding.gguf").write_bytes(data)
            raise AssertionError(f"mutation {i}: {type(e).__name__}: {e} (kept as finding.gguf)") from e
        assert time.monotonic() - t0 < 5, f"mutation {i} took {time.monotonic() - t0:.1f} s"
    assert outcomes["ValueError"] > n // 4, outcomes  # the mutations reach the checks
