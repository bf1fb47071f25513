// Integrity of a TorchScript archive (a zip) before it is loaded: torch::jit::load reads members
// without checking their CRC-32, so a damaged weight would load as different numbers, and it
// trusts each tensor's declared size, so a record shorter than its tensor is read past its end.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace attnscope {

/// Checks every member of the archive at `path` — local headers against the central directory,
/// and each member's bytes against its CRC-32 — and throws ValueError naming the file when one
/// fails (Model::load then runs check_archive_records). Reads the whole archive once (about a
/// second per GB).
void verify_archive(const std::string& path);

/// Checks that every storage data.pkl and constants.pkl declare has a record of at least its
/// bytes, and that every tensor on it (offset, sizes, strides) stays inside it; throws ValueError
/// naming the file, the record and both sizes. Reads the zip directory and the two pickles only,
/// so Model::load runs it on every archive. Returns the identity of the weights (from the same
/// directory, no weight read): "w:" + 16 hex digits of a 64-bit FNV-1a hash over each data/
/// record's (parameters and buffers) name, size and CRC-32; two saves of the same weights agree,
/// a changed weight changes its record's CRC and so the identity ("" for a zip that is no module).
std::string check_archive_records(const std::string& path);

/// CRC-32 (as zip uses) of `n` bytes, continuing from `crc` (0 to start).
uint32_t crc32(const uint8_t* p, size_t n, uint32_t crc = 0);

/// 64-bit FNV-1a of `n` bytes, continuing from `h`; hex16(h) writes it as 16 hex digits.
uint64_t fnv1a(const void* p, size_t n, uint64_t h = 14695981039346656037ull);
std::string hex16(uint64_t h);

}  // namespace attnscope
