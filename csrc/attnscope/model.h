// Model: a TorchScript causal LM loaded for attention capture: loading, the graph pass and the
// facts here (model.cpp); Model::run in run.cpp, Model::generate in generate.cpp.
#pragma once
#include <attnscope/generate_options.h>
#include <attnscope/instrument.h>
#include <attnscope/knockout.h>
#include <attnscope/model_info.h>
#include <attnscope/spec.h>
#include <attnscope/trace.h>
#include <attnscope/vocab.h>
#include <memory>
#include <mutex>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/script.h>

#include <string>
#include <vector>

namespace attnscope {

/// Settings of a run from the environment, read once at its start (not at every site):
/// ATTNSCOPE_SDPA_ROUTE = auto | blocks | softmax (RunContext::sdpa_route) and
/// ATTNSCOPE_BLOCK_CACHE = 1 | 0 (CPU runs reuse freed blocks, block_cache.h); other values
/// are refused by name.
class Recorder;
struct RunContext;
struct RecordResult;

/// ids [T] or [B, T] of any integer dtype -> [B, T] int64 on the CPU; refuses ids outside
/// [0, vocab_size) (vocab_size <= 0: unknown) by value and position.
torch::Tensor checked_ids(const torch::Tensor& input_ids, int64_t vocab_size);
/// attention_mask [T] / [B, T] (undefined = every token real) -> [B, T] int64 0/1 with one
/// contiguous run of real tokens per row (left or right padding), refused by name otherwise.
torch::Tensor checked_mask(const torch::Tensor& attention_mask, const torch::Tensor& ids);

struct RunOptions {
  std::string sdpa_route = "auto";
  bool block_cache = true;
  static RunOptions from_environment();
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

  /// Which weights this is: "w:<16 hex>" for an archive (check_archive_records: its data records'
  /// CRCs), "m:<16 hex>" for a module (module_identity: its tensors' bytes). Traces and
  /// datasets carry it; combining two of different ids is refused unless asked for.
  const std::string& model_id() const { return model_id_; }
  /// A readable name for messages and titles: the archive's file name, or "module <Class>".
  const std::string& model_name() const { return model_name_; }
  static std::string module_identity(const torch::jit::Module& module);

  /// Runs forward on `input_ids (Tensor[B, T] or [T])` integer ids with optional
  /// `attention_mask (Tensor[B, T])` (1 = token, 0 = padding) and keeps what `spec` asks.
  Trace run(const torch::Tensor& input_ids, const CaptureSpec& spec = {},
            const torch::Tensor& attention_mask = {});

  /// The forward's logits `[B, T, V]` (fp32, CPU) for `input_ids (Tensor[B, T])`, with the
  /// attention `knockout` applied in its layers and heads when given (nothing is captured).
  /// Refused for a model whose forward returns hidden states, and when a layer to knock out
  /// is one attnscope only observes.
  torch::Tensor logits(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                       const Knockout* knockout = nullptr);
  /// The logits `[B, t, V]` (fp32, CPU) of one step of the archive's KV-cache decode method: new
  /// `input_ids (Tensor[B, t])` after the cached `past_k`, `past_v (Tensor[L, B, KV, P, D])`,
  /// `attention_mask (Tensor[B, P + t])`; the knockout's edges are [B, P + t, P + t] (only the
  /// last t query rows are computed) and a head ablation is "zero" only.
  torch::Tensor decode_logits(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                              const torch::Tensor& past_k, const torch::Tensor& past_v,
                              const Knockout* knockout = nullptr);
  /// True when a knockout can run over a KV cache (decode_logits): the decode method's attention
  /// passes through attnscope operators, site for site as forward's.
  bool decode_intervenes() const { return decode_intervenes_ && has_decode(); }

  /// Generates from `prompt_ids (Tensor[B, P] or [P])` (left-padded when B > 1, with
  /// `attention_mask`), then runs ONE capture over prompt + response with `spec`: the Trace
  /// holds the whole sequence, `prompt_len` = P and the settings in `generation`. Its
  /// predictive entropy (at temperature 1) is that of the distributions the tokens were drawn
  /// from; rows that stopped early are right-padded (mask 0).
  Trace generate(const torch::Tensor& prompt_ids, const GenerateOptions& options,
                 const CaptureSpec& spec = {}, const torch::Tensor& attention_mask = {});
  /// The KV cache of `ids (Tensor[B, T])` (no padding) from the archive's decode method:
  /// {k, v} each [L, B, KV, T, D]. Slices [..., :P0, :] of it seed GenerateOptions::past_k/v for
  /// any continuation of the first P0 tokens.
  std::pair<torch::Tensor, torch::Tensor> prefill(const torch::Tensor& ids);
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
  /// An empty KV cache {k, v} for `batch` rows in the archive's dtype on its device: each
  /// [L, B, cache heads, 0, k / v dim] (ModelInfo::cache_shape); checks the facts are known.
  std::pair<torch::Tensor, torch::Tensor> empty_cache(int64_t batch, const char* who) const;
  Model(torch::jit::Module m, torch::Device d) : module_(std::move(m)), device_(d) {}
  void prepare();
  /// Fills what attnscope.json did not state (heads, KV heads, layers, causal) from a forward
  /// on a few tokens with layer 0's head-mean map captured; failures leave them unknown.
  void dry_run();
  // What the archive's decode method returned: logits [B, t, V], caches [L, B, KV, T, D].
  struct Decoded {
    torch::Tensor logits, k, v;
  };
  // Generated ids and mask [B, P + n] on the CPU, steps taken, why each row stopped.
  struct Generated {
    torch::Tensor ids, mask;
    int64_t steps = 0;
    std::vector<std::string> reason;
  };
  // Model::generate's steps (generate.cpp).
  Decoded decode(const torch::Tensor& ids, const torch::Tensor& mask, const c10::IValue& k, const c10::IValue& v);
  int64_t prefix_length(const GenerateOptions& o, bool cached, const torch::Tensor& mask) const;
  Generated sample(const torch::Tensor& ids, const torch::Tensor& mask, const GenerateOptions& o,
                   const std::vector<int64_t>& stop, bool cached, int64_t from);
  std::vector<std::string> tokens_of(const torch::Tensor& ids) const;
  torch::Tensor output_tensor_of(const c10::IValue& out, int64_t batch, int64_t len) const;
  /// ModelInfo::attention_layers, or every layer when it names none.
  std::vector<int64_t> attention_layer_list() const;
  // Model::run's steps (run.cpp).
  /// The facts every site of one run shares (valid tokens, padding, causality, the ids).
  RunContext run_context(const torch::Tensor& ids, const torch::Tensor& mask) const;
  torch::Tensor recorded_forward(const torch::Tensor& ids, const torch::Tensor& mask, bool has_padding,
                                 bool block_cache, Recorder& rec);
  std::string output_kind(const torch::Tensor& logits);
  void check_stated_facts(const RecordResult& res) const;
  void add_predictions(Trace& t, const torch::Tensor& logits, bool has_logits, bool has_padding) const;
  void add_run_facts(Trace& t, const RecordResult& res);

  torch::jit::Module module_;
  torch::Device device_;
  ModelInfo info_;
  Vocab vocab_;
  std::string tokenizer_json_, metadata_json_, source_, model_id_, model_name_;
  static Model wrap(torch::jit::Module module, const torch::Device& device, ModelInfo info,
                    const std::string& metadata_json);
  std::vector<AttentionSite> sites_;
  std::vector<int64_t> idle_sites_;
  std::shared_ptr<std::mutex> idle_mutex_ = std::make_shared<std::mutex>();  // Model stays movable
  bool instrumented_ = false;
  bool decode_intervenes_ = false;
  /// decode's logits alone (first_output_graph): decode_logits does not build caches it drops.
  std::shared_ptr<torch::jit::GraphFunction> decode_logits_fn_;
  bool takes_mask_ = false;
  /// True only while the dry run at load runs: the one run allowed to fill the model's facts.
  bool loading_ = false;
  /// Device constants of the graph moved to device_ (see retarget_device_constants).
  int64_t retargeted_ = 0;

 public:
  /// Number of device constants retargeted to the model's device when it was loaded.
  int64_t retargeted_constants() const { return retargeted_; }
};

}  // namespace attnscope
