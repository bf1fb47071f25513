// Model: a TorchScript causal LM loaded for attention capture.
#pragma once
#include <attnscope/instrument.h>
#include <attnscope/spec.h>
#include <attnscope/trace.h>
#include <attnscope/vocab.h>

#include <torch/script.h>

#include <string>
#include <vector>

namespace attnscope {

/// Architecture facts, from the archive's attnscope.json or inferred (-1 = unknown).
struct ModelInfo {
  int64_t n_layers = -1, n_heads = -1, n_kv_heads = -1, head_dim = -1, vocab_size = -1;
  int64_t bos_id = -1;
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
  /// Fields that were inferred (from the graph or a run) instead of read from attnscope.json.
  std::vector<std::string> inferred;

  /// Facts from attnscope.json text (num_layers, num_heads, num_kv_heads, head_dim,
  /// vocab_size, bos_token_id, family, tokenizer, causal, output, context_length); absent
  /// fields stay unknown.
  static ModelInfo from_json(const std::string& text);
};

class Model {
 public:
  /// Loads `path` (torch.jit.save archive) on `device`: "cpu", "cuda", "cuda:N" or "auto"
  /// (CUDA when available). Reads the extra files attnscope.json and tokenizer.json when
  /// present. If forward carries no capture operators, a weight-sharing instrumented clone is
  /// made (see instrument()).
  static Model load(const std::string& path, const std::string& device = "auto");
  /// Wraps an already loaded module (instrumented when it carries no capture operators); its
  /// parameters are moved to `device` in place.
  static Model from_module(torch::jit::Module module, const torch::Device& device,
                           ModelInfo info = {});

  /// Runs forward on `input_ids (Tensor[B, T] or [T])` integer ids with optional
  /// `attention_mask (Tensor[B, T])` (1 = token, 0 = padding) and keeps what `spec` asks.
  Trace run(const torch::Tensor& input_ids, const CaptureSpec& spec = {},
            const torch::Tensor& attention_mask = {});

  /// Human-readable summary: device, architecture facts and where they came from, sites.
  std::string describe() const;

  const ModelInfo& info() const { return info_; }
  /// Attention sites found by the graph pass (empty when the archive carried its own ops).
  const std::vector<AttentionSite>& sites() const { return sites_; }
  /// Sites that did not run in the last forward (branches not taken).
  const std::vector<int64_t>& idle_sites() const { return idle_sites_; }
  /// True when the graph pass inserted the capture operators.
  bool instrumented() const { return instrumented_; }
  torch::Device device() const { return device_; }
  const Vocab& vocab() const { return vocab_; }
  /// tokenizer.json text from the archive ("" when absent); Python builds its tokenizer from it.
  const std::string& tokenizer_json() const { return tokenizer_json_; }
  /// The module that runs (instrumented clone or the loaded module).
  const torch::jit::Module& module() const { return module_; }

 private:
  Model(torch::jit::Module m, torch::Device d) : module_(std::move(m)), device_(d) {}
  void prepare();
  /// Fills what attnscope.json did not state (heads, KV heads, layers, causal) from a forward
  /// on a few tokens with layer 0's head-mean map captured; failures leave them unknown.
  void dry_run();

  torch::jit::Module module_;
  torch::Device device_;
  ModelInfo info_;
  Vocab vocab_;
  std::string tokenizer_json_, source_;
  std::vector<AttentionSite> sites_;
  std::vector<int64_t> idle_sites_;
  bool instrumented_ = false;
  bool takes_mask_ = false;
  /// Device constants of the graph moved to device_ (see retarget_device_constants).
  int64_t retargeted_ = 0;

 public:
  /// Number of device constants retargeted to the model's device when it was loaded.
  int64_t retargeted_constants() const { return retargeted_; }
};

/// Resolves "cpu", "cuda", "cuda:N", "auto"; throws naming the string when it is not usable.
torch::Device resolve_device(const std::string& device);

}  // namespace attnscope
