// GenerateOptions: how Model::generate (generate.cpp) picks each new token.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace attnscope {

/// How Model::generate picks each new token.
struct GenerateOptions {
  /// Tokens to add at most (>= 1); generation also stops at the model's context length.
  int64_t max_new_tokens = 64;
  /// 0 = greedy (argmax); > 0 divides the logits before sampling.
  double temperature = 0.0;
  /// Sample among the k most likely tokens only (0 = all).
  int64_t top_k = 0;
  /// Nucleus sampling: the smallest set of tokens whose probability reaches top_p, in (0, 1].
  double top_p = 1.0;
  /// Seed of the sampling generator (a CPU generator: the same seed gives the same draws on
  /// CPU and CUDA for the same logits).
  uint64_t seed = 0;
  /// A row stops after emitting one of these (EOS, the chat template's end of turn). Unset:
  /// the model's EOS; empty: no stop token (only max_new_tokens and the context end a row).
  std::optional<std::vector<int64_t>> stop_ids;
  /// Id written after a row has stopped (its attention_mask is 0 there).
  int64_t pad_id = 0;
  /// Use the archive's `decode` method (KV cache, one token per step) when it has one;
  /// false, or archives without it: a full forward per step.
  bool use_cache = true;
  /// Called after every step with the step number (1-based) and each row's new token
  /// (`Tensor[B]` int64 on the CPU; pad_id for rows that had stopped): progress bars and
  /// streaming. Returning false ends generation there (stop reason "stopped by the caller").
  std::function<bool(int64_t step, const torch::Tensor& next)> on_step;
  /// KV cache of the prompt's first P0 positions, from Model::prefill of a sequence that starts
  /// with them (the shared prefix of an answer's branches): `past_k`/`past_v (Tensor[L, 1|B,
  /// KV, P0, D])`, P0 < P. Generation then computes positions P0.. only. Undefined: none. Needs
  /// the decode method, an unpadded prompt and use_cache.
  torch::Tensor past_k, past_v;
  /// Run the capture pass over prompt + response after generating (the trace's attention,
  /// entropy and top-k). false: the trace holds the ids, mask, tokens and generation only, its
  /// entropy NaN (branches whose captures are taken later, when looked at).
  bool capture = true;
};

}  // namespace attnscope
