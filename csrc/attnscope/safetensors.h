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

/// Writes CPU copies of `f.tensors` (contiguous) and the metadata strings to `path`: into
/// `path`.tmp<PID>, fsync'd, then renamed over `path` (atomic: readers and crashes see the old
/// or the new file). Temporaries left by killed writers of the same path are removed first.
void write_safetensors(const std::string& path, const SafetensorsFile& f);
/// Removes `path`.tmp<PID> files whose process no longer exists.
void remove_stale_temporaries(const std::string& path);
/// Reads a file written by write_safetensors or any safetensors writer; a malformed file (bad
/// header, offsets out of bounds / overlapping / not covering the data, sizes that disagree)
/// raises c10::ValueError naming the path, the tensor and the value.
SafetensorsFile read_safetensors(const std::string& path);

/// Metadata string `key` of `f` as a whole decimal integer in [lo, hi] ("" and a missing key
/// give `fallback` when `required` is false); c10::ValueError naming `path` and the key.
int64_t meta_int(const SafetensorsFile& f, const std::string& key, const std::string& path, int64_t lo,
                 int64_t hi, bool required = true, int64_t fallback = 0);
/// Metadata string `key` as a finite decimal number (locale-independent).
double meta_double(const SafetensorsFile& f, const std::string& key, const std::string& path);

}  // namespace attnscope
