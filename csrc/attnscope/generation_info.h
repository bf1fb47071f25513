// GenerationInfo: how a generated trace was made (Model::generate) and, for a branch, where it
// left its answer. Trace files keep it as JSON (metadata "generation"); Python reads it typed.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace attnscope {

/// Where a branch left its answer (Trace.branch): the token the answer chose at `position` and
/// the one put there instead, with their probabilities at that position and the forced token's
/// rank, both absent when the token was not among the answer's kept top-k.
struct Fork {
  int64_t position = 0;
  int64_t chosen_id = -1, forced_id = -1;
  std::string chosen, forced;  // readable labels
  std::optional<double> chosen_p, forced_p;
  std::optional<int64_t> rank;  // 1 = the likeliest
};

struct GenerationInfo {
  /// Sampling as used: temperature (0 = greedy), top_k (0 = no limit), top_p, seed (< 2^63).
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  int64_t seed = 0;
  int64_t max_new_tokens = 0;
  /// Ids that end a row.
  std::vector<int64_t> stop_ids;
  /// Whether the archive's KV-cache decode ran, and how many prompt positions a given cache held.
  bool kv_cache = false;
  int64_t prefix_cached = 0;
  /// Tokens generated, and why each row stopped ("stop token", "max_new_tokens",
  /// "context length", "stopped by the caller").
  int64_t steps = 0;
  std::vector<std::string> stop_reason;
  std::optional<Fork> fork;

  std::string to_json() const;
  /// Reads to_json()'s object; c10::Error naming `what` and the key on anything else.
  static GenerationInfo from_json(const std::string& text, const std::string& what = "generation");
};

}  // namespace attnscope
