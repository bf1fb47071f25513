// Trace: everything one Model::run produced. Saved as safetensors (see save()); Python
// reads it with `safetensors` alone: tensors by name, facts as metadata strings.
#pragma once
#include <attnscope/generation_info.h>
#include <attnscope/spec.h>

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace attnscope {

struct Trace {
  /// Token ids `[B, T]` int64.
  torch::Tensor input_ids;
  /// `[B, T]` int64, 1 = real token, 0 = padding.
  torch::Tensor attention_mask;
  /// Predictive entropy `[B, T]` fp32, nats; entry i is that of the distribution predicting
  /// token i+1 (the last position predicts a token beyond the input).
  torch::Tensor entropy;
  /// Top-k next-token predictions `[B, T, k]`: probabilities fp32, ids int64 (undefined if k=0).
  torch::Tensor topk_probs, topk_ids;
  /// Captured attention quantities by name (see README "Capture names"): per-layer aggregates
  /// stacked as `[L, B, H, ...]` over `captures["aggregate_layers"]`, maps `[B, Tq, Tk]`.
  std::map<std::string, torch::Tensor> captures;
  /// The spec that made this trace.
  CaptureSpec spec;
  /// Attention layers that ran, query heads and KV heads per layer (-1 = unknown).
  int64_t n_layers = -1, n_heads = -1, n_kv_heads = -1;
  /// `[H]` int64: the KV head each query head reads (grouped-query attention).
  torch::Tensor kv_head_of;
  /// Module path of each layer's attention site ("" where the graph had none).
  std::vector<std::string> layer_paths;
  /// Model-layer indices of the layers with softmax attention, increasing, when not every
  /// layer 0..n_layers-1 has it (hybrids); empty = all of them.
  std::vector<int64_t> attention_layers;
  /// How each layer's attention was recorded ("" where none ran): "fused" (SDPA site, C++ rows
  /// on the CPU), "blocks" (ATen blocks with the kernel's log-sum-exp), "softmax" (ATen blocks,
  /// a softmax per block), "probabilities" (the model's own softmax output). Empty in files
  /// written before it was kept.
  std::vector<std::string> routes;
  /// Raw token strings `B*T`, row-major like input_ids (empty if the model has no vocabulary).
  std::vector<std::string> tokens;
  /// Generated traces: columns 0..prompt_len-1 are the (left-padded) prompt, the rest the
  /// response; -1 for a trace of given text.
  int64_t prompt_len = -1;
  /// The model that made this trace (Model::model_id, model_name); "" in files written before
  /// it was kept (unknown: combining such a trace with another needs allow_different_models).
  std::string model_id, model_name;
  /// Generated traces: how they were made (and where a branch forked); empty otherwise.
  std::optional<GenerationInfo> generation;
  /// Warnings raised while the run computed this trace (also passed on to the previous
  /// c10 warning handler); the Python wrapper re-issues them as Python warnings. Not saved.
  std::vector<std::string> warnings;

  bool has(const std::string& name) const { return captures.count(name) > 0; }
  /// Captured tensor `name`; the error lists what the trace holds and how to capture it.
  const torch::Tensor& get(const std::string& name) const;
  /// Names of the captured tensors.
  std::vector<std::string> names() const;
  /// Marks the trace as generated (a branch of an answer records where the answer began and
  /// where it forked): `prompt_len` in [0, T].
  void set_generation(int64_t prompt_len, const GenerationInfo& generation);

  /// Writes `path` as safetensors: tensors input_ids, attention_mask, entropy, topk_probs,
  /// topk_ids, kv_head_of and "captures/<name>"; metadata format="attnscope-trace", version,
  /// spec (JSON), n_layers, n_heads, n_kv_heads, layer_paths and tokens (JSON string arrays),
  /// attention_layers (a JSON int array, only for hybrids).
  void save(const std::string& path) const;
  /// Reads a trace written by save() or by attnscope's Python side.
  static Trace load(const std::string& path);
};

/// Checks a trace against itself (trace_check.cpp): ids >= 0; a 0/1 mask whose real tokens form
/// one run per row; top-k, kv_head_of, layer_paths and the capture spec within the stated layer
/// and head counts; every capture a known name with the shape [L, B, H, ...] or [B, T, T] these
/// give, probabilities in [0, 1]. Throws ValueError naming `where` and what is wrong.
void check_trace(const Trace& t, const std::string& where);
/// True for a Model::model_id ("w:" or "m:" and 16 lowercase hex digits).
bool is_model_id(const std::string& id);

}  // namespace attnscope
