// Reading and writing the safetensors format (8-byte little-endian header length, JSON
// header with dtype/shape/data_offsets per tensor and a string map "__metadata__", raw
// little-endian data). Any language reads it: Python's `safetensors`, numpy, Rust.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>

namespace attnscope {

struct SafetensorsFile {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// Writes CPU copies of `f.tensors` (contiguous) and the metadata strings to `path`.
void write_safetensors(const std::string& path, const SafetensorsFile& f);
/// Reads a file written by write_safetensors or any safetensors writer.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace attnscope
