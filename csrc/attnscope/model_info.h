// ModelInfo: a model's architecture facts (attnscope.json or inferred), and device names.
#pragma once
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace attnscope {

/// Architecture facts, from the archive's attnscope.json or inferred (-1 = unknown).
struct ModelInfo {
  int64_t n_layers = -1, n_heads = -1, n_kv_heads = -1, vocab_size = -1;
  /// Per-head width of q and k (the q·k product); -1 = unknown.
  int64_t head_dim = -1;
  /// Per-head width of v when it differs from q·k's (multi-head latent attention: DeepSeek-V3
  /// has q·k 192 = 128 + 64 rope, v 128); -1 = the same as head_dim.
  int64_t v_head_dim = -1;
  /// Shape of the decode method's KV cache per layer, [B, cache_heads, P, cache_k_dim] for k and
  /// [..., cache_v_dim] for v, when it is not (num_kv_heads, head_dim, v_head_dim): archives that
  /// cache what transformers caches (DeepSeek-V3 keeps compressed latents, Falcon one head).
  int64_t cache_heads = -1, cache_k_dim = -1, cache_v_dim = -1;

  /// (heads, k dim, v dim) of the KV cache: each cache_* fact, else num_kv_heads / head_dim /
  /// v_head_dim (or head_dim); -1 where unknown.
  std::array<int64_t, 3> cache_shape() const {
    const int64_t v = v_head_dim > 0 ? v_head_dim : head_dim;
    return {cache_heads > 0 ? cache_heads : n_kv_heads, cache_k_dim > 0 ? cache_k_dim : head_dim,
            cache_v_dim > 0 ? cache_v_dim : v};
  }
  int64_t bos_id = -1, eos_id = -1;
  std::string family, tokenizer_kind;
  /// Query i sees keys j <= i (decoder LMs); false for encoders. Used to skip the keys after
  /// a block's last query at softmax sites (checked on each layer's first block); the
  /// received-mean divisors come from the mask the model really used, not from this flag.
  bool causal = true;
  /// True when attnscope.json states "causal"; otherwise a dry run at load decides it.
  bool causal_stated = false;
  /// "logits" (forward returns [B, T, V]: predictive entropy and top-k) or "hidden_states"
  /// (an encoder without LM head: no predictive entropy, Trace.entropy is NaN).
  std::string output = "logits";
  /// Longest input the model takes (its position table or max_position_embeddings); -1 = unknown.
  int64_t context_length = -1;
  /// Model-layer indices of the layers with softmax attention, increasing, when not every layer
  /// has it (hybrids: Jamba's Mamba layers, LFM2's convolutions); empty = all of 0..n_layers-1.
  /// Captures, traces and figures number layers by these indices.
  std::vector<int64_t> attention_layers;
  /// Fields that were inferred (from the graph or a run) instead of read from attnscope.json.
  std::vector<std::string> inferred;

  /// Facts from attnscope.json text (num_layers, num_heads, num_kv_heads, head_dim,
  /// v_head_dim, vocab_size, bos_token_id, family, tokenizer, causal, output, context_length,
  /// attention_layers); absent
  /// fields stay unknown.
  static ModelInfo from_json(const std::string& text);
};

/// Resolves "cpu", "cuda", "cuda:N", "auto"; throws naming the string when it is not usable.
torch::Device resolve_device(const std::string& device);

}  // namespace attnscope
