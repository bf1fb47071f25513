// Integrity of a TorchScript archive (a zip) before it is loaded: torch::jit::load reads members
// without checking their CRC-32, so a damaged weight would load as different numbers, and it
// trusts each tensor's declared size, so a record shorter than its tensor is read past its end.
#pragma once
#include <string>

namespace attnscope {

/// Checks every member of the archive at `path` — local headers against the central directory,
/// and each member's bytes against its CRC-32 — and throws ValueError naming the file when one
/// fails; then check_archive_records. Reads the whole archive once (about a second per GB).
void verify_archive(const std::string& path);

/// Checks that every storage data.pkl and constants.pkl declare has a record of at least its
/// bytes, and that every tensor on it (offset, sizes, strides) stays inside it; throws ValueError
/// naming the file, the record and both sizes. Reads the zip directory and the two pickles only,
/// so Model::load runs it on every archive.
void check_archive_records(const std::string& path);

}  // namespace attnscope
