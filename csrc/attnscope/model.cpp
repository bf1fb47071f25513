#include <attnscope/model.h>

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

torch::Device resolve_device(const std::string& device) {
  if (device == "auto") return torch::cuda::is_available() ? torch::Device("cuda:0") : torch::kCPU;
  if (device == "cpu") return torch::kCPU;
  if (device.rfind("cuda", 0) == 0) {
    TORCH_CHECK(torch::cuda::is_available(), "device '", device, "' requested but CUDA is not "
                "available (no GPU, or a CPU-only PyTorch); use 'cpu' or 'auto'");
    torch::Device d(device);  // throws on malformed strings
    TORCH_CHECK(!d.has_index() || d.index() < static_cast<int64_t>(torch::cuda::device_count()),
                "device '", device, "' out of range: ", torch::cuda::device_count(),
                " CUDA device(s) visible");
    return d;
  }
  TORCH_CHECK(false, "unknown device '", device, "': expected 'cpu', 'cuda', 'cuda:N' or 'auto'");
}

ModelInfo ModelInfo::from_json(const std::string& text) {
  ModelInfo info;
  json::Value v = json::parse(text, "attnscope.json");
  TORCH_CHECK(v.is_object(), "attnscope.json: expected a JSON object");
  // Absurd sizes are refused here rather than allocated later (a 1e8-head spec would cost
  // 800 MB per run); the bounds are far above any published model.
  info.n_layers = v.get_int("num_layers", -1, 1, 100000);
  info.n_heads = v.get_int("num_heads", -1, 1, 65536);
  info.n_kv_heads = v.get_int("num_kv_heads", info.n_heads, 1, 65536);
  TORCH_CHECK_VALUE(info.n_heads < 0 || (info.n_kv_heads <= info.n_heads && info.n_heads % info.n_kv_heads == 0),
                    "attnscope.json: num_kv_heads ", info.n_kv_heads, " must divide num_heads ", info.n_heads);
  info.head_dim = v.get_int("head_dim", -1, 1, 65536);
  info.vocab_size = v.get_int("vocab_size", -1, 1, int64_t(1) << 31);
  info.bos_id = v.get_int("bos_token_id", -1, -1, int64_t(1) << 31);
  // eos_token_id may be one id or a list (the first ends generation by default)
  if (const json::Value* e = v.find("eos_token_id"); e && e->is_array())
    info.eos_id = e->arr.empty() ? -1 : e->arr[0].as_int("'eos_token_id'[0]", 0, int64_t(1) << 31);
  else
    info.eos_id = v.get_int("eos_token_id", -1, -1, int64_t(1) << 31);
  info.family = v.get_string("family", "");
  info.tokenizer_kind = v.get_string("tokenizer", "");
  info.causal = v.get_bool("causal", true);
  info.causal_stated = v.find("causal") != nullptr && !v.find("causal")->is_null();
  info.output = v.get_string("output", "logits");
  TORCH_CHECK(info.output == "logits" || info.output == "hidden_states", "attnscope.json: output '",
              info.output, "' unknown: expected 'logits' or 'hidden_states'");
  info.context_length = v.get_int("context_length", -1, 1, int64_t(1) << 40);
  return info;
}

namespace {

/// Collects the warnings of one run (thread-local handler) and passes them on.
class CollectWarnings : public c10::WarningHandler {
 public:
  explicit CollectWarnings(c10::WarningHandler* next) : next_(next) {}
  void process(const c10::Warning& w) override {
    messages.push_back(w.msg());
    if (next_) next_->process(w);
  }
  std::vector<std::string> messages;

 private:
  c10::WarningHandler* next_;
};

bool file_exists(const std::string& p) { return std::ifstream(p).good(); }

}  // namespace

Model Model::load(const std::string& path, const std::string& device) {
  TORCH_CHECK(file_exists(path), "model file not found: '", path, "'");
  torch::Device dev = resolve_device(device);
  torch::jit::ExtraFilesMap extra{{"attnscope.json", ""}, {"tokenizer.json", ""}, {"tokens.json", ""}};
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
  Model model = from_module(std::move(m), dev, info, extra["attnscope.json"]);
  model.source_ = path;
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
  if (count_capture_ops(module_) == 0) {
    Instrumented ins = instrument(module_);
    module_ = std::move(ins.module);
    sites_ = std::move(ins.sites);
    instrumented_ = true;
    bool branches = false;
    for (const auto& s : sites_) branches |= s.in_block || s.runtime_check;
    if (info_.n_layers < 0 && !branches) {
      info_.n_layers = static_cast<int64_t>(sites_.size());
      info_.inferred.push_back("num_layers (attention sites in the graph)");
    } else if (!branches) {
      // The graph wins over the file: a stated layer count the graph does not have would
      // mislabel every layer of every figure.
      TORCH_CHECK_VALUE(info_.n_layers == static_cast<int64_t>(sites_.size()), "attnscope.json says num_layers ",
                        info_.n_layers, ", but the model's graph has ", sites_.size(),
                        " attention sites (one per layer): fix or remove num_layers");
    }
  }
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

Trace Model::run(const torch::Tensor& input_ids, const CaptureSpec& spec,
                 const torch::Tensor& attention_mask) {
  TORCH_CHECK(input_ids.defined(), "input_ids is undefined");
  TORCH_CHECK(!input_ids.is_floating_point() && !input_ids.is_complex() &&
                  input_ids.scalar_type() != torch::kBool,
              "input_ids must be integer token ids, got dtype ", input_ids.scalar_type());
  TORCH_CHECK(input_ids.dim() == 1 || input_ids.dim() == 2, "input_ids must be [T] or [B, T], got ",
              input_ids.sizes());
  auto ids = (input_ids.dim() == 1 ? input_ids.unsqueeze(0) : input_ids).to(torch::kLong).cpu();
  const int64_t batch = ids.size(0), len = ids.size(1);
  TORCH_CHECK(batch > 0 && len > 0, "empty sequence: input_ids has shape ", input_ids.sizes(),
              "; at least one token is needed");
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  TORCH_CHECK(lo >= 0, "token id ", lo, " at position ", ids.argmin().item<int64_t>() % len,
              " is negative: ids must be in [0, vocab_size)");
  if (info_.vocab_size > 0)
    TORCH_CHECK(hi < info_.vocab_size, "token id ", hi, " at position ",
                ids.argmax().item<int64_t>() % len, " out of range: vocabulary has ",
                info_.vocab_size, " entries");
  torch::Tensor mask;
  if (attention_mask.defined()) {
    auto am = attention_mask.dim() == 1 ? attention_mask.unsqueeze(0) : attention_mask;
    TORCH_CHECK(am.sizes() == ids.sizes(), "attention_mask shape ", attention_mask.sizes(),
                " does not match input_ids ", ids.sizes());
    TORCH_CHECK_VALUE(!at::isFloatingType(am.scalar_type()) && !at::isComplexType(am.scalar_type()),
                      "attention_mask has dtype ", am.scalar_type(), ": expected bool or an integer type holding 0 "
                      "(padding) and 1 (token); a fractional mask is not a padding layout");
    mask = am.to(torch::kLong).cpu();
    const auto bad = (mask != 0).logical_and(mask != 1);
    TORCH_CHECK_VALUE(!bad.any().item<bool>(), "attention_mask must hold only 0 (padding) and 1 (token); got ",
                      mask.masked_select(bad)[0].item<int64_t>(), " in row ",
                      bad.any(1).to(torch::kLong).argmax().item<int64_t>());
    TORCH_CHECK((mask.sum(1) > 0).all().item<bool>(),
                "attention_mask has a row with no tokens: every sequence needs at least one");
    // Positions are taken from the mask (left padding) or run past the tokens (right
    // padding); a gap inside a row is neither.
    auto first = mask.argmax(1), count = mask.sum(1);
    auto pos = torch::arange(len, torch::kLong).unsqueeze(0);
    auto contiguous = (pos >= first.unsqueeze(1)).logical_and(pos < (first + count).unsqueeze(1));
    TORCH_CHECK(mask.to(torch::kBool).equal(contiguous), "attention_mask: each row's tokens must be "
                "one contiguous run (left or right padding); row ",
                (mask.to(torch::kBool) != contiguous).any(1).to(torch::kLong).argmax().item<int64_t>(),
                " has padding between tokens");
  } else {
    mask = torch::ones_like(ids);
  }
  TORCH_CHECK_VALUE(info_.context_length <= 0 || len <= info_.context_length, "input of ", len,
              " tokens is longer than the model's context of ", info_.context_length,
              " tokens (attnscope.json context_length): shorten the text or split it");
  spec.validate(info_.n_layers, info_.n_heads, len);

  CollectWarnings collect(c10::WarningUtils::get_warning_handler());
  c10::WarningUtils::WarningHandlerGuard warning_guard(&collect);
  RunContext ctx;
  ctx.valid = mask.to(torch::kBool).to(device_);
  ctx.has_padding = !mask.all().item<bool>();
  ctx.causal = info_.causal;
  Recorder rec(spec, ctx, /*layer_from_order=*/instrumented_);
  std::vector<torch::jit::IValue> inputs{ids.to(device_)};
  if (takes_mask_) inputs.emplace_back(mask.to(device_));
  TORCH_CHECK(takes_mask_ || !ctx.has_padding, "attention_mask has padding but the model's "
              "forward takes no attention_mask argument");
  c10::IValue out;
  try {
    torch::NoGradGuard no_grad;
    RecorderScope scope(&rec);
    out = module_.forward(inputs);
  } catch (const std::exception& e) {
    // The interpreter wraps errors (ours from the capture ops included) in a TorchScript
    // traceback; lead with the final error line so the cause is read first.
    std::string msg = e.what();
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    std::string last = msg.substr(msg.rfind('\n') == std::string::npos ? 0 : msg.rfind('\n') + 1);
    const std::string prefix = "RuntimeError: ";
    if (last.rfind(prefix, 0) == 0) last = last.substr(prefix.size());
    std::string hint;
    if (last.find("index out of range in self") != std::string::npos)  // an embedding lookup failed
      hint = info_.context_length > 0
                 ? std::string(": an embedding lookup failed (an id beyond the model's vocabulary?)")
                 : ": an embedding lookup failed: the input (" + std::to_string(len) +
                       " tokens) is probably longer than the model's position table (its context length; "
                       "attnscope.json has no context_length to check it before running), or an id is beyond "
                       "its vocabulary";
    TORCH_CHECK(false, last, hint, "\n(raised in the model's forward; TorchScript traceback:\n", msg, ")");
  }
  torch::Tensor logits;
  if (out.isTensor()) logits = out.toTensor();
  else if (out.isTuple() && !out.toTupleRef().elements().empty() &&
           out.toTupleRef().elements()[0].isTensor())
    logits = out.toTupleRef().elements()[0].toTensor();
  else if (out.isList() && !out.toListRef().empty() && out.toListRef()[0].isTensor())
    logits = out.toListRef()[0].toTensor();
  else if (out.isGenericDict()) {
    auto d = out.toGenericDict();
    auto it = d.find(c10::IValue(std::string("logits")));
    if (it == d.end() && d.size() > 0) it = d.begin();
    if (it != d.end() && it->value().isTensor()) logits = it->value().toTensor();
  }
  const char* what = info_.output == "logits" ? "logits [B, T, V]" : "hidden states [B, T, D]";
  TORCH_CHECK(logits.defined(), "forward returned ", out.tagKind(), "; expected ", what,
              " or a tuple/list/dict whose first element is that");
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == batch && logits.size(1) == len,
              "forward returned a tensor of shape ", logits.sizes(), "; expected ", what,
              " with B = ", batch, ", T = ", len);
  // What the output is, from this run; written into the model's facts only by the dry run at
  // load (single-threaded), so concurrent runs never write shared state.
  std::string output = info_.output;
  if (output == "logits" && info_.vocab_size > 0 && logits.size(2) != info_.vocab_size &&
      std::find(info_.inferred.begin(), info_.inferred.end(), "vocab_size (embedding table)") !=
          info_.inferred.end()) {
    // No attnscope.json, and the last dim is not the vocabulary: an encoder's hidden states.
    output = "hidden_states";
    if (loading_) {
      info_.output = output;
      info_.inferred.push_back("output: hidden states (last dim " + std::to_string(logits.size(2)) +
                               " != the " + std::to_string(info_.vocab_size) + " embedding rows)");
    }
  }
  const bool has_logits = output == "logits";
  if (has_logits && info_.vocab_size < 0 && loading_) {
    info_.vocab_size = logits.size(2);
    info_.inferred.push_back("vocab_size (logits)");
  }
  if (has_logits)
    TORCH_CHECK(hi < logits.size(2), "token id ", hi, " out of range: vocabulary has ",
                logits.size(2), " entries");

  RecordResult res = rec.finish();
  // The graph wins over attnscope.json: a stated head count the captured shapes do not have
  // would split every map at the wrong head.
  if (info_.n_heads > 0)
    for (size_t l = 0; l < res.heads.size(); ++l)
      TORCH_CHECK_VALUE(res.heads[l] <= 0 || res.heads[l] == info_.n_heads, "attnscope.json says num_heads ",
                        info_.n_heads, ", but layer ", l, "'s attention has ", res.heads[l],
                        " heads: fix or remove num_heads");
  Trace t;
  t.spec = spec;
  t.input_ids = ids;
  t.attention_mask = mask;
  const auto nan_at_pads = [&](const torch::Tensor& x) {  // [B, T, ...]: undefined at padding
    if (!ctx.has_padding) return x;
    auto ok = mask.to(torch::kBool).to(x.device());
    while (ok.dim() < x.dim()) ok = ok.unsqueeze(-1);
    return torch::where(ok, x, std::numeric_limits<float>::quiet_NaN());
  };
  // Predictive entropy and top-k in one pass over the logits (each block in fp32 once).
  const int64_t k = has_logits ? std::min<int64_t>(spec.top_k, logits.size(2)) : 0;
  auto ps = predictive_stats(logits, has_logits && spec.predictive_entropy, k, spec.temperature);
  if (ps.entropy.defined()) {
    t.entropy = nan_at_pads(ps.entropy);
  } else {  // not asked for, or no next-token distribution: NaN
    t.entropy = torch::full({batch, len}, std::numeric_limits<float>::quiet_NaN(),
                            torch::dtype(torch::kFloat).device(logits.device()));
  }
  if (k > 0) {
    t.topk_probs = nan_at_pads(ps.probs);
    t.topk_ids = ps.ids;
  }
  t.captures = std::move(res.captures);

  // The trace gets the facts this run saw; the model's own facts are fixed at load (from
  // attnscope.json and the dry run), so concurrent runs never write shared state except the
  // idle-site list, which is guarded.
  int64_t h = -1, kv = -1;
  for (int64_t x : res.heads) if (x > 0) { h = x; break; }
  for (int64_t x : res.kv_heads) if (x > 0) { kv = x; break; }
  t.n_layers = res.layers_run;
  t.n_heads = info_.n_heads > 0 ? info_.n_heads : h;
  t.n_kv_heads = info_.n_kv_heads > 0 ? info_.n_kv_heads : (kv > 0 ? kv : t.n_heads);
  if (t.n_heads > 0 && t.n_kv_heads > 0 && t.n_heads % t.n_kv_heads == 0)
    t.kv_head_of = torch::arange(t.n_heads, torch::kLong).div(t.n_heads / t.n_kv_heads, "floor");
  {
    std::set<int64_t> ran(res.site_of_layer.begin(), res.site_of_layer.end());
    std::vector<int64_t> idle;
    for (const auto& s : sites_)
      if (!ran.count(s.id)) idle.push_back(s.id);
    std::lock_guard<std::mutex> lock(*idle_mutex_);
    idle_sites_ = std::move(idle);
  }
  for (int64_t site : res.site_of_layer)
    t.layer_paths.push_back(site >= 0 && site < static_cast<int64_t>(sites_.size()) ? sites_[site].path : "");
  if (!vocab_.empty()) {
    auto acc = ids.accessor<int64_t, 2>();
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < len; ++i) t.tokens.push_back(vocab_.token(acc[b][i]));
  }
  t.warnings = collect.messages;
  if (spec.to_cpu) {
    t.entropy = t.entropy.cpu();
    if (t.topk_probs.defined()) { t.topk_probs = t.topk_probs.cpu(); t.topk_ids = t.topk_ids.cpu(); }
    for (auto& kv : t.captures) kv.second = kv.second.cpu();
  }
  return t;
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
    << ", vocab: " << num(info_.vocab_size) << "\n"
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
