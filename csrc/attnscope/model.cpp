#include <attnscope/model.h>

#include <attnscope/archive.h>
#include <attnscope/entropy.h>
#include <attnscope/json.h>
#include <attnscope/recorder.h>

#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/cuda.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

namespace attnscope {

namespace {
// What a count of attention sites other than the stated layers says about the model.
std::string site_count_mechanism(int64_t sites, int64_t layers) {
  if (sites > layers && layers > 0 && sites % layers == 0)
    return std::to_string(sites / layers) + " softmax maps per layer (e.g. differential attention); attnscope "
           "captures one map per layer and does not support this attention yet";
  if (sites < layers)
    return "some layers are not softmax attention (a hybrid of attention with state-space, convolution or "
           "linear-attention layers); attnscope does not capture hybrid models yet";
  return "fix or remove num_layers";
}

// "  attention layers: 1, 3 (of 4)\n" for a hybrid; nothing when every layer is attention.
std::string attention_layers_line(const ModelInfo& info) {
  if (info.attention_layers.empty()) return "";
  std::string s = "  attention layers: ";
  for (size_t i = 0; i < info.attention_layers.size(); ++i)
    s += (i ? ", " : "") + std::to_string(info.attention_layers[i]);
  return s + " (of " + std::to_string(info.n_layers) + "; the others are layers of another kind)\n";
}
}  // namespace


namespace {

bool file_exists(const std::string& p) { return std::ifstream(p).good(); }

}  // namespace

Model Model::load(const std::string& path, const std::string& device) {
  TORCH_CHECK(file_exists(path), "model file not found: '", path, "'");
  torch::Device dev = resolve_device(device);
  torch::jit::ExtraFilesMap extra{{"attnscope.json", ""}, {"tokenizer.json", ""}, {"tokens.json", ""}};
  std::string identity;
  try {
    identity = check_archive_records(path);  // a short weight record would be read past its end
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, "'", path, "' is not a loadable TorchScript archive (expected a file written by ",
                      "torch.jit.save): ", e.what_without_backtrace());
  }
  torch::jit::Module m;
  try {
    m = torch::jit::load(path, dev, extra);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "'", path, "' is not a loadable TorchScript archive (expected a file "
                "written by torch.jit.save): ", e.what_without_backtrace());
  }
  m.eval();
  ModelInfo info;
  if (!extra["attnscope.json"].empty()) info = ModelInfo::from_json(extra["attnscope.json"]);
  Model model = wrap(std::move(m), dev, info, extra["attnscope.json"]);
  model.source_ = path;
  model.model_id_ = identity;  // from the zip directory: no weight is read again
  model.model_name_ = path.substr(path.find_last_of('/') + 1);
  if (!extra["tokenizer.json"].empty()) {
    model.tokenizer_json_ = extra["tokenizer.json"];
    model.vocab_ = Vocab::from_tokenizer_json(model.tokenizer_json_);
  } else if (!extra["tokens.json"].empty()) {
    model.vocab_ = Vocab::from_token_list(extra["tokens.json"]);
  }
  return model;
}

Model Model::from_module(torch::jit::Module module, const torch::Device& device, ModelInfo info,
                         const std::string& metadata_json) {
  Model model = wrap(std::move(module), device, std::move(info), metadata_json);
  model.model_id_ = module_identity(model.module_);
  model.model_name_ = "module " + (model.module_.type()->name() ? model.module_.type()->name()->name() : "?");
  return model;
}

std::string Model::module_identity(const torch::jit::Module& module) {
  // Every parameter and buffer: name, dtype, shape and the CRC-32 of its bytes (about a second
  // per GB, once per model), so an archive of the same module agrees only by chance of format:
  // "m:" ids and "w:" ids are never compared as equal.
  uint64_t h = fnv1a(nullptr, 0);
  auto take = [&](const std::string& name, const torch::Tensor& t) {
    const auto c = t.detach().cpu().contiguous();
    const std::string head = name + " " + c10::toString(c.scalar_type()) + " " + c10::str(c.sizes());
    h = fnv1a(head.data(), head.size() + 1, h);
    const uint32_t crc = crc32(static_cast<const uint8_t*>(c.data_ptr()), c.nbytes());
    h = fnv1a(&crc, sizeof crc, h);
  };
  for (const auto& p : module.named_parameters(true)) take(p.name, p.value);
  for (const auto& b : module.named_buffers(true)) take(b.name, b.value);
  return "m:" + hex16(h);
}

Model Model::wrap(torch::jit::Module module, const torch::Device& device, ModelInfo info,
                  const std::string& metadata_json) {
  module.to(device);
  module.eval();
  Model model(std::move(module), device);
  model.info_ = std::move(info);
  model.metadata_json_ = metadata_json;
  model.prepare();
  return model;
}

void Model::prepare() {
  auto fwd = module_.find_method("forward");
  TORCH_CHECK(fwd.has_value(), "the TorchScript module has no forward method");
  const auto& args = fwd->function().getSchema().arguments();  // args[0] is self
  size_t required = 0;
  for (size_t i = 1; i < args.size(); ++i)
    if (!args[i].default_value()) ++required;
  const size_t n = args.size() - 1;
  std::ostringstream sig;
  for (size_t i = 1; i < args.size(); ++i) sig << (i > 1 ? ", " : "") << args[i].name();
  TORCH_CHECK(n >= 1 && required <= 2, "wrong forward signature forward(", sig.str(),
              "): attnscope calls forward(input_ids [B, T] int64) or "
              "forward(input_ids, attention_mask [B, T])");
  takes_mask_ = n >= 2;

  if (info_.vocab_size < 0) {
    info_.vocab_size = embedding_rows(module_);
    if (info_.vocab_size > 0) info_.inferred.push_back("vocab_size (embedding table)");
  }
  if (retarget_device_constants(module_, device_, /*dry_run=*/true) > 0) {
    // Traced archives carry the tracing device as constants; a weight-sharing clone is
    // retargeted so the caller's module is left as it was.
    module_ = module_.clone(true);
    retargeted_ = retarget_device_constants(module_, device_);
  }
  const int64_t own_ops = count_capture_ops(module_);
  decode_intervenes_ = own_ops > 0 && count_capture_ops(module_, "decode") == own_ops;
  if (own_ops == 0) {
    Instrumented ins = instrument(module_);
    module_ = std::move(ins.module);
    sites_ = std::move(ins.sites);
    decode_intervenes_ = ins.decode_instrumented;
    instrumented_ = true;
    bool branches = false;
    for (const auto& s : sites_) branches |= s.in_block || s.runtime_check;
    const int64_t stated_sites = info_.attention_layers.empty() ? info_.n_layers
                                                                 : static_cast<int64_t>(info_.attention_layers.size());
    if (info_.n_layers < 0 && !branches) {
      info_.n_layers = static_cast<int64_t>(sites_.size());
      info_.inferred.push_back("num_layers (attention sites in the graph)");
    } else if (!branches) {
      // The graph wins over the file: a stated layer count the graph does not have would
      // mislabel every layer of every figure.
      const auto n_sites = static_cast<int64_t>(sites_.size());
      TORCH_CHECK_VALUE(stated_sites == n_sites, "attnscope.json says ",
                        info_.attention_layers.empty() ? "num_layers " : "attention_layers: ", stated_sites,
                        ", but the model's graph has ", n_sites, " attention sites (one per layer): ",
                        site_count_mechanism(n_sites, stated_sites));
    }
  }
  if (decode_intervenes_ && has_decode())
    if (auto g = first_output_graph(module_, "decode"))
      decode_logits_fn_ = std::make_shared<torch::jit::GraphFunction>("decode_logits", g, nullptr);
  if (info_.n_heads < 0 || info_.n_kv_heads < 0 || info_.n_layers < 0 || !info_.causal_stated) dry_run();
}

void Model::dry_run() {
  const int64_t vocab = info_.vocab_size > 0 ? info_.vocab_size : 1;
  const int64_t len = std::min<int64_t>(6, info_.context_length > 0 ? info_.context_length : 6);
  auto ids = torch::arange(1, len + 1, torch::kLong).remainder(vocab).unsqueeze(0);
  CaptureSpec spec;
  spec.layer_maps = {0};
  spec.top_k = 0;
  Trace t;
  const bool causal = info_.causal;
  if (!info_.causal_stated) info_.causal = false;  // no trimming: the whole map decides
  // TorchScript's profiling executor specialises a graph on its first runs: run the dry run
  // unoptimised so that 6 tokens are not what the user's runs are specialised for (it made
  // every later run ~10 % slower). The setting is thread-local.
  struct NoOptimize {
    bool old = torch::jit::getGraphExecutorOptimize();
    NoOptimize() { torch::jit::setGraphExecutorOptimize(false); }
    ~NoOptimize() { torch::jit::setGraphExecutorOptimize(old); }
  } no_optimize;
  loading_ = true;
  try {
    t = run(ids, spec);
    loading_ = false;
  } catch (const std::exception& e) {
    loading_ = false;
    info_.causal = causal;
    std::string msg = e.what();
    info_.inferred.push_back("nothing from a dry run on " + std::to_string(len) +
                             " tokens (it failed: " + msg.substr(0, msg.find('\n')) + ")");
    return;
  }
  info_.causal = causal;
  // Facts the dry run saw fill what the archive did not say (at load only: runs never write them).
  if (t.n_layers > 0 && info_.n_layers < 0) {
    info_.n_layers = t.n_layers;
    info_.inferred.push_back("num_layers (attention layers that ran)");
  }
  if (info_.n_heads < 0 && t.n_heads > 0) {
    info_.n_heads = t.n_heads;
    info_.inferred.push_back("num_heads (captured shapes)");
  }
  if (info_.n_kv_heads < 0 && t.n_kv_heads > 0) {
    info_.n_kv_heads = t.n_kv_heads;
    info_.inferred.push_back("num_kv_heads (k at SDPA sites of the dry run, else = num_heads)");
  }
  if (!info_.causal_stated) {
    // Attention above the diagonal of layer 0 (keys after the query) means an encoder.
    auto map = t.get("layer_map/L0")[0];
    const int64_t tq = map.size(0), tk = map.size(1);
    const bool above = tk > 1 && map.triu(tk - tq + 1).abs().sum().item<double>() > 0;
    info_.causal = !above;
    info_.inferred.push_back(above ? "causal: no (a dry run attends to later tokens)"
                                   : "causal: yes (a dry run attends only to earlier tokens)");
  }
}

std::string Model::describe() const {
  std::ostringstream o;
  auto num = [](int64_t v) { return v < 0 ? std::string("unknown") : std::to_string(v); };
  o << "attnscope model" << (source_.empty() ? "" : " '" + source_ + "'") << " on " << device_ << "\n"
    << "  family: " << (info_.family.empty() ? "unknown" : info_.family)
    << ", causal: " << (info_.causal ? "yes" : "no") << ", output: " << info_.output
    << (info_.context_length > 0 ? ", context: " + std::to_string(info_.context_length) + " tokens" : "")
    << "\n"
    << "  layers: " << num(info_.n_layers) << ", heads: " << num(info_.n_heads)
    << ", kv heads: " << num(info_.n_kv_heads) << ", head dim: " << num(info_.head_dim)
    << (info_.v_head_dim > 0 && info_.v_head_dim != info_.head_dim
            ? " (q·k), " + std::to_string(info_.v_head_dim) + " (v)" : "")
    << ", vocab: " << num(info_.vocab_size) << "\n"
    << attention_layers_line(info_)
    << "  tokenizer: " << (vocab_.empty() ? "none in archive" : std::to_string(vocab_.size()) + " tokens") << "\n";
  if (retargeted_ > 0)
    o << "  device constants of the tracing device moved to " << device_ << ": " << retargeted_ << "\n";
  if (!info_.inferred.empty()) {
    o << "  inferred (no attnscope.json entry):";
    for (const auto& s : info_.inferred) o << " " << s << ";";
    o << "\n";
  }
  if (instrumented_) {
    o << "  capture: graph-instrumented, " << sites_.size() << " attention site(s)\n";
    for (const auto& s : sites_)
      o << "    site " << s.id << ": " << s.kind << (s.path.empty() ? "" : " at " + s.path)
        << (s.in_block ? " (inside a branch/loop)" : "") << "\n";
    for (int64_t id : idle_sites())
      o << "    site " << id << " did not run in the last forward (branch not taken); not counted as a layer\n";
  } else {
    o << "  capture: operators exported in the archive\n";
  }
  return o.str();
}

}  // namespace attnscope
