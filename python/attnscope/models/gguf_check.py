"""A GGUF file's header checked against the file's own size before anything is built from it.

The `gguf` package believes a header: an array that says it holds 2^40 token types is read
element by element, and tensor offsets that overlap give two weights the same bytes. This walk
reads only lengths and offsets (the way the format lays them out: little-endian, version 2/3)
and refuses, by name, any length that cannot fit in what is left of the file, tensor data that
runs past the end of the file or overlaps another tensor's, and more than 4 dimensions.
"""
import mmap
import os
import struct

# Value types of GGUF key-value pairs and the bytes of one element (strings and arrays vary).
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
MAX_DIMS = 4


def check_gguf_header(path):
    """Walks the header of the GGUF at `path`; ValueError naming the key or tensor whose length,
    size or offset the file cannot hold. Returns the tensors' (name, offset, nbytes) in order."""
    size = os.path.getsize(path)
    if size < 24:
        raise ValueError(f"{path}: not a readable GGUF file ({size} bytes)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return _walk(path, data, size)


def _walk(path, data, size):
    pos = 0

    def need(n, what):
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ValueError(f"{path}: GGUF {what} needs {n} bytes at offset {pos}, but the file has "
                             f"{len(data) - pos} left: truncated or a false length")
        out = data[pos:pos + n]
        pos += n
        return out

    def u32(what):
        return struct.unpack("<I", need(4, what))[0]

    def u64(what):
        return struct.unpack("<Q", need(8, what))[0]

    def string(what):
        return need(u64(f"{what} length"), what).decode("utf-8", "replace")

    if need(4, "magic") != b"GGUF":
        raise ValueError(f"{path}: not a readable GGUF file (no GGUF magic)")
    version = u32("version")
    if version not in (2, 3):
        raise ValueError(f"{path}: not a readable GGUF file (version {version}; expected 2 or 3)")
    n_tensors, n_kv = u64("tensor count"), u64("key-value count")
    # Each key-value pair takes at least 12 bytes, each tensor description at least 28.
    for n, least, what in ((n_kv, 12, "key-value pairs"), (n_tensors, 28, "tensors")):
        if n * least > size:
            raise ValueError(f"{path}: GGUF header says {n} {what}, more than a file of {size} bytes can hold")
    alignment = 32
    for _ in range(n_kv):
        key = string("key")
        vtype = u32(f"type of {key!r}")
        if vtype == _STRING:
            value = string(f"value of {key!r}")
        elif vtype in _SCALAR:
            raw = need(_SCALAR[vtype], f"value of {key!r}")
            value = int.from_bytes(raw, "little") if vtype in (4, 10) else None
        elif vtype == _ARRAY:
            etype, count = u32(f"element type of {key!r}"), u64(f"length of {key!r}")
            if etype == _STRING:
                if count * 8 > len(data) - pos:  # every string has at least its 8-byte length
                    raise ValueError(f"{path}: GGUF array {key!r} says {count} strings, more than the "
                                     f"{len(data) - pos} bytes left can hold")
                for _ in range(count):
                    need(u64(f"a string of {key!r}"), f"a string of {key!r}")
            elif etype in _SCALAR:
                need(count * _SCALAR[etype], f"array {key!r} of {count} elements")
            else:
                raise ValueError(f"{path}: GGUF array {key!r} has element type {etype}: expected a scalar or string")
            value = None
        else:
            raise ValueError(f"{path}: GGUF key {key!r} has value type {vtype}: unknown")
        if key == "general.alignment" and value is not None:
            if not value or value & (value - 1) or value > 1 << 20:
                raise ValueError(f"{path}: GGUF general.alignment {value} must be a power of two <= 2^20")
            alignment = value
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    tensors = []
    for _ in range(n_tensors):
        name = string("tensor name")
        n_dims = u32(f"dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ValueError(f"{path}: GGUF tensor {name!r} has {n_dims} dimensions: expected 1..{MAX_DIMS}")
        dims = [u64(f"shape of {name!r}") for _ in range(n_dims)]
        ttype, offset = u32(f"type of {name!r}"), u64(f"offset of {name!r}")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise ValueError(f"{path}: GGUF tensor {name!r} has type {ttype}: unknown") from None
        count = 1
        for d in dims:
            count *= d
        if count % block:
            raise ValueError(f"{path}: GGUF tensor {name!r} of shape {dims} is not a whole number of "
                             f"{block}-element blocks")
        tensors.append((name, offset, count // block * type_size))
    start = (pos + alignment - 1) // alignment * alignment  # tensor data begins aligned after the header
    end_prev, prev = start, None
    for name, offset, nbytes in sorted(tensors, key=lambda t: t[1]):
        if start + offset < end_prev:
            raise ValueError(f"{path}: GGUF tensors {prev!r} and {name!r} overlap: {name!r} starts at data offset "
                             f"{offset}, inside {prev!r}")
        if start + offset + nbytes > size:
            raise ValueError(f"{path}: GGUF tensor {name!r} ({nbytes} bytes at data offset {offset}) runs past the "
                             f"end of the file ({size} bytes)")
        end_prev, prev = start + offset + nbytes, name
    return tensors
