// Model: a TorchScript causal LM loaded for attention capture.
#pragma once
#include <memory>
#include <mutex>
#include <attnscope/instrument.h>
#include <attnscope/spec.h>
#include <attnscope/trace.h>
#include <attnscope/vocab.h>

#include <torch/script.h>

#include <string>
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
  /// A row stops after emitting one of these (EOS, the chat template's end of turn).
  std::vector<int64_t> stop_ids;
  /// Id written after a row has stopped (its attention_mask is 0 there).
  int64_t pad_id = 0;
  /// Use the archive's `decode` method (KV cache, one token per step) when it has one;
  /// false, or archives without it: a full forward per step.
  bool use_cache = true;
};

/// Architecture facts, from the archive's attnscope.json or inferred (-1 = unknown).
struct ModelInfo {
  int64_t n_layers = -1, n_heads = -1, n_kv_heads = -1, head_dim = -1, vocab_size = -1;
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
                           ModelInfo info = {}, const std::string& metadata_json = "");

  /// Runs forward on `input_ids (Tensor[B, T] or [T])` integer ids with optional
  /// `attention_mask (Tensor[B, T])` (1 = token, 0 = padding) and keeps what `spec` asks.
  Trace run(const torch::Tensor& input_ids, const CaptureSpec& spec = {},
            const torch::Tensor& attention_mask = {});

  /// Generates from `prompt_ids (Tensor[B, P] or [P])` (left-padded when B > 1, with
  /// `attention_mask`), then runs ONE capture over prompt + response with `spec`: the Trace
  /// holds the whole sequence, `prompt_len` = P and the settings in `generation`. Its
  /// predictive entropy (at temperature 1) is that of the distributions the tokens were drawn
  /// from; rows that stopped early are right-padded (mask 0).
  Trace generate(const torch::Tensor& prompt_ids, const GenerateOptions& options,
                 const CaptureSpec& spec = {}, const torch::Tensor& attention_mask = {});
  /// True when the archive has the KV-cache `decode` method (see models/export.py).
  bool has_decode() const { return module_.find_method("decode").has_value(); }

  /// Human-readable summary: device, architecture facts and where they came from, sites.
  std::string describe() const;

  const ModelInfo& info() const { return info_; }
  /// Attention sites found by the graph pass (empty when the archive carried its own ops).
  const std::vector<AttentionSite>& sites() const { return sites_; }
  /// Sites that did not run in the last forward (branches not taken). run() may be called from
  /// several threads at once: the model's facts are fixed at load and this list is guarded.
  std::vector<int64_t> idle_sites() const {
    std::lock_guard<std::mutex> lock(*idle_mutex_);
    return idle_sites_;
  }
  /// True when the graph pass inserted the capture operators.
  bool instrumented() const { return instrumented_; }
  torch::Device device() const { return device_; }
  const Vocab& vocab() const { return vocab_; }
  /// tokenizer.json text from the archive ("" when absent); Python builds its tokenizer from it.
  const std::string& tokenizer_json() const { return tokenizer_json_; }
  /// attnscope.json text as given ("" when absent): Python reads the fields C++ does not use
  /// (chat_template, eos_token_id lists).
  const std::string& metadata_json() const { return metadata_json_; }
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
  std::string tokenizer_json_, metadata_json_, source_;
  std::vector<AttentionSite> sites_;
  std::vector<int64_t> idle_sites_;
  std::shared_ptr<std::mutex> idle_mutex_ = std::make_shared<std::mutex>();  // Model stays movable
  bool instrumented_ = false;
  bool takes_mask_ = false;
  /// True only while the dry run at load runs: the one run allowed to fill the model's facts.
  bool loading_ = false;
  /// Device constants of the graph moved to device_ (see retarget_device_constants).
  int64_t retargeted_ = 0;

 public:
  /// Number of device constants retargeted to the model's device when it was loaded.
  int64_t retargeted_constants() const { return retargeted_; }
};

/// Resolves "cpu", "cuda", "cuda:N", "auto"; throws naming the string when it is not usable.
torch::Device resolve_device(const std::string& device);

}  // namespace attnscope
