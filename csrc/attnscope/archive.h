// Integrity of a TorchScript archive (a zip) before it is loaded: torch::jit::load reads members
// without checking their CRC-32, so a damaged weight would load as different numbers.
#pragma once
#include <string>

namespace attnscope {

/// Checks every member of the archive at `path` — local headers against the central directory,
/// and each member's bytes against its CRC-32 — and throws ValueError naming the file when one
/// fails. Reads the whole archive once (about a second per GB).
void verify_archive(const std::string& path);

}  // namespace attnscope
