// Model::run: one forward with the capture spec's recorder installed, then the Trace
// (captures, predictive entropy and top-k, warnings). Steps: checked inputs, recorded
// forward, its output tensor, the stated facts checked against the graph, trace assembly.
#include <attnscope/model.h>

#include <attnscope/block_cache.h>
#include <attnscope/entropy.h>
#include <attnscope/memory_budget.h>
#include <attnscope/recorder.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

namespace attnscope {

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

// A forward's failure, led by its final error line: the interpreter wraps errors (ours from the
// capture ops included) in a TorchScript traceback, so the cause is read first.
[[noreturn]] void forward_failed(const std::exception& e, int64_t len, int64_t context_length) {
  std::string msg = e.what();
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  std::string last = msg.substr(msg.rfind('\n') == std::string::npos ? 0 : msg.rfind('\n') + 1);
  const std::string prefix = "RuntimeError: ";
  if (last.rfind(prefix, 0) == 0) last = last.substr(prefix.size());
  std::string hint;
  if (last.find("index out of range in self") != std::string::npos)  // an embedding lookup failed
    hint = context_length > 0
               ? std::string(": an embedding lookup failed (an id beyond the model's vocabulary?)")
               : ": an embedding lookup failed: the input (" + std::to_string(len) +
                     " tokens) is probably longer than the model's position table (its context length; "
                     "attnscope.json has no context_length to check it before running), or an id is beyond "
                     "its vocabulary";
  TORCH_CHECK(false, last, hint, "\n(raised in the model's forward; TorchScript traceback:\n", msg, ")");
}

// The tensor [B, T, D] a forward returned: itself, or the first element of a tuple, list or dict
// ("logits" first).
torch::Tensor output_tensor(const c10::IValue& out, const std::string& kind, int64_t batch, int64_t len) {
  torch::Tensor logits;
  if (out.isTensor())
    logits = out.toTensor();
  else if (out.isTuple() && !out.toTupleRef().elements().empty() && out.toTupleRef().elements()[0].isTensor())
    logits = out.toTupleRef().elements()[0].toTensor();
  else if (out.isList() && !out.toListRef().empty() && out.toListRef()[0].isTensor())
    logits = out.toListRef()[0].toTensor();
  else if (out.isGenericDict()) {
    auto d = out.toGenericDict();
    auto it = d.find(c10::IValue(std::string("logits")));
    if (it == d.end() && d.size() > 0) it = d.begin();
    if (it != d.end() && it->value().isTensor()) logits = it->value().toTensor();
  }
  const char* what = kind == "logits" ? "logits [B, T, V]" : "hidden states [B, T, D]";
  TORCH_CHECK(logits.defined(), "forward returned ", out.tagKind(), "; expected ", what,
              " or a tuple/list/dict whose first element is that");
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == batch && logits.size(1) == len,
              "forward returned a tensor of shape ", logits.sizes(), "; expected ", what, " with B = ", batch,
              ", T = ", len);
  return logits;
}

// The first positive entry of per-layer counts (-1 when no layer has one).
int64_t first_positive(const std::vector<int64_t>& v) {
  for (int64_t x : v)
    if (x > 0) return x;
  return -1;
}

}  // namespace

RunOptions RunOptions::from_environment() {
  RunOptions o;
  if (const char* env = std::getenv("ATTNSCOPE_SDPA_ROUTE"); env && *env) o.sdpa_route = env;
  TORCH_CHECK(o.sdpa_route == "auto" || o.sdpa_route == "blocks" || o.sdpa_route == "softmax",
              "ATTNSCOPE_SDPA_ROUTE=", o.sdpa_route, " is not a route: expected auto, blocks or softmax");
  const char* cache = std::getenv("ATTNSCOPE_BLOCK_CACHE");
  const std::string v = cache ? cache : "1";
  TORCH_CHECK_VALUE(v == "0" || v == "1", "ATTNSCOPE_BLOCK_CACHE=", v,
                    ": expected 1 (reuse freed blocks "
                    "during a run, the default) or 0 (leave every allocation to the process's allocator)");
  o.block_cache = v == "1";
  return o;
}

torch::Tensor checked_ids(const torch::Tensor& input_ids, int64_t vocab_size) {
  TORCH_CHECK(input_ids.defined(), "input_ids is undefined");
  TORCH_CHECK(!input_ids.is_floating_point() && !input_ids.is_complex() &&
                  input_ids.scalar_type() != torch::kBool,
              "input_ids must be integer token ids, got dtype ", input_ids.scalar_type());
  TORCH_CHECK(input_ids.dim() == 1 || input_ids.dim() == 2, "input_ids must be [T] or [B, T], got ",
              input_ids.sizes());
  auto ids = (input_ids.dim() == 1 ? input_ids.unsqueeze(0) : input_ids).to(torch::kLong).cpu();
  const int64_t len = ids.size(1);
  TORCH_CHECK(ids.size(0) > 0 && len > 0, "empty sequence: input_ids has shape ", input_ids.sizes(),
              "; at least one token is needed");
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  TORCH_CHECK(lo >= 0, "token id ", lo, " at position ", ids.argmin().item<int64_t>() % len,
              " is negative: ids must be in [0, vocab_size)");
  if (vocab_size > 0)
    TORCH_CHECK(hi < vocab_size, "token id ", hi, " at position ", ids.argmax().item<int64_t>() % len,
                " out of range: vocabulary has ", vocab_size, " entries");
  return ids;
}

torch::Tensor checked_mask(const torch::Tensor& attention_mask, const torch::Tensor& ids) {
  if (!attention_mask.defined()) return torch::ones_like(ids);
  auto am = attention_mask.dim() == 1 ? attention_mask.unsqueeze(0) : attention_mask;
  TORCH_CHECK(am.sizes() == ids.sizes(), "attention_mask shape ", attention_mask.sizes(), " does not match input_ids ",
              ids.sizes());
  TORCH_CHECK_VALUE(!at::isFloatingType(am.scalar_type()) && !at::isComplexType(am.scalar_type()),
                    "attention_mask has dtype ", am.scalar_type(),
                    ": expected bool or an integer type holding 0 "
                    "(padding) and 1 (token); a fractional mask is not a padding layout");
  auto mask = am.to(torch::kLong).cpu();
  const auto bad = (mask != 0).logical_and(mask != 1);
  TORCH_CHECK_VALUE(!bad.any().item<bool>(), "attention_mask must hold only 0 (padding) and 1 (token); got ",
                    mask.masked_select(bad)[0].item<int64_t>(), " in row ",
                    bad.any(1).to(torch::kLong).argmax().item<int64_t>());
  TORCH_CHECK_VALUE((mask.sum(1) > 0).all().item<bool>(),
                    "attention_mask has a row with no tokens: every sequence needs at least one");
  // Positions are taken from the mask (left padding) or run past the tokens (right padding); a
  // gap inside a row is neither.
  auto first = mask.argmax(1), count = mask.sum(1);
  auto pos = torch::arange(ids.size(1), torch::kLong).unsqueeze(0);
  auto contiguous = (pos >= first.unsqueeze(1)).logical_and(pos < (first + count).unsqueeze(1));
  TORCH_CHECK_VALUE(mask.to(torch::kBool).equal(contiguous),
                    "attention_mask: each row's tokens must be "
                    "one contiguous run (left or right padding); row ",
                    (mask.to(torch::kBool) != contiguous).any(1).to(torch::kLong).argmax().item<int64_t>(),
                    " has padding between tokens");
  return mask;
}

Trace Model::run(const torch::Tensor& input_ids, const CaptureSpec& spec, const torch::Tensor& attention_mask) {
  const auto ids = checked_ids(input_ids, info_.vocab_size);  // [B, T]
  const auto mask = checked_mask(attention_mask, ids);        // [B, T]
  const int64_t len = ids.size(1);
  TORCH_CHECK_VALUE(info_.context_length <= 0 || len <= info_.context_length, "input of ", len,
              " tokens is longer than the model's context of ", info_.context_length,
              " tokens (attnscope.json context_length): shorten the text or split it");
  spec.validate(info_.n_layers, info_.n_heads, len);
  if (info_.n_layers > 0 && info_.n_heads > 0)
    check_bytes(spec.kept_bytes(info_.n_layers, ids.size(0), info_.n_heads, len),
                "capturing " + std::to_string(ids.size(0)) + " x " + std::to_string(len) + " tokens with " +
                    std::to_string(spec.heads.size() + spec.layer_maps.size()) + " full maps" +
                    (spec.pooled_maps > 0 ? " and pooled_maps " + std::to_string(std::min(spec.pooled_maps, len)) : ""),
                "ask for fewer maps or layers, a smaller pooled_maps, or fewer or shorter texts per run");
  const RunOptions options = RunOptions::from_environment();

  CollectWarnings collect(c10::WarningUtils::get_warning_handler());
  c10::WarningUtils::WarningHandlerGuard warning_guard(&collect);
  if (spec.pooled_maps > len)  // said, not silent: n x n tiles of a T-token map are its T x T cells
    TORCH_WARN("pooled_maps ", spec.pooled_maps, " is more than the ", len, " tokens: each map is kept whole (", len,
               " x ", len, ")");
  RunContext ctx = run_context(ids, mask);
  ctx.sdpa_route = options.sdpa_route;
  Recorder rec(spec, ctx, /*layer_from_order=*/instrumented_);
  const auto logits = recorded_forward(ids, mask, ctx.has_padding, options.block_cache, rec);
  const bool has_logits = output_kind(logits) == "logits";
  if (has_logits) {
    const int64_t top = ids.max().item<int64_t>();
    TORCH_CHECK(top < logits.size(2), "token id ", top, " out of range: vocabulary has ", logits.size(2), " entries");
  }
  RecordResult res = rec.finish();
  check_stated_facts(res);

  Trace t;
  t.spec = spec;
  t.input_ids = ids;
  t.attention_mask = mask;
  add_predictions(t, logits, has_logits, ctx.has_padding);
  t.captures = std::move(res.captures);
  add_run_facts(t, res);
  t.routes = res.routes;
  t.warnings = collect.messages;
  if (spec.to_cpu) {
    t.entropy = t.entropy.cpu();
    if (t.topk_probs.defined()) {
      t.topk_probs = t.topk_probs.cpu();
      t.topk_ids = t.topk_ids.cpu();
    }
    for (auto& kv : t.captures) kv.second = kv.second.cpu();
  }
  return t;
}

RunContext Model::run_context(const torch::Tensor& ids, const torch::Tensor& mask) const {
  RunContext ctx;
  ctx.valid = mask.to(torch::kBool).to(device_);
  ctx.has_padding = !mask.all().item<bool>();
  ctx.causal = info_.causal;
  ctx.ids = ids;
  ctx.attention_layers = info_.attention_layers;
  return ctx;
}

torch::Tensor Model::recorded_forward(const torch::Tensor& ids, const torch::Tensor& mask, bool has_padding,
                                      bool block_cache, Recorder& rec) {
  std::vector<torch::jit::IValue> inputs{ids.to(device_)};
  if (takes_mask_) inputs.emplace_back(mask.to(device_));
  TORCH_CHECK(takes_mask_ || !has_padding,
              "attention_mask has padding but the model's "
              "forward takes no attention_mask argument");
  // Layers reuse each other's freed blocks instead of fresh pages (block_cache.h).
  const bool use_blocks = device_.is_cpu() && block_cache;
  c10::IValue out;
  try {
    torch::NoGradGuard no_grad;
    RecorderScope scope(&rec);
    std::optional<BlockCacheScope> blocks;
    if (use_blocks) blocks.emplace();
    out = module_.forward(inputs);
  } catch (const std::exception& e) {
    TORCH_CHECK_VALUE(rec.refusal().empty(), rec.refusal());  // an operator's refusal, as it was raised
    forward_failed(e, ids.size(1), info_.context_length);
  }
  return output_tensor_of(out, ids.size(0), ids.size(1));
}

torch::Tensor Model::output_tensor_of(const c10::IValue& out, int64_t batch, int64_t len) const {
  return output_tensor(out, info_.output, batch, len);
}

std::string Model::output_kind(const torch::Tensor& logits) {
  // Written into the model's facts only by the dry run at load (single-threaded), so concurrent
  // runs never write shared state.
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
  if (output == "logits" && info_.vocab_size < 0 && loading_) {
    info_.vocab_size = logits.size(2);
    info_.inferred.push_back("vocab_size (logits)");
  }
  return output;
}

void Model::check_stated_facts(const RecordResult& res) const {
  // The graph wins over attnscope.json: a stated head count the captured shapes do not have
  // would split every map at the wrong head.
  if (info_.n_heads > 0)
    for (size_t l = 0; l < res.heads.size(); ++l)
      TORCH_CHECK_VALUE(res.heads[l] <= 0 || res.heads[l] == info_.n_heads, "attnscope.json says num_heads ",
                        info_.n_heads, ", but layer ", l, "'s attention has ", res.heads[l],
                        " heads: fix or remove num_heads");
  // A site whose k has fewer heads than q shows the KV-head count itself (one repeated to the
  // query count first, as eager GQA does, shows nothing): a wrong one would pair heads wrongly.
  for (size_t l = 0; l < res.kv_heads.size() && l < res.heads.size(); ++l)
    TORCH_CHECK_VALUE(info_.n_kv_heads <= 0 || res.kv_heads[l] <= 0 || res.kv_heads[l] == res.heads[l] ||
                          res.kv_heads[l] == info_.n_kv_heads,
                      "attnscope.json says num_kv_heads ", info_.n_kv_heads, ", but layer ", l, "'s keys have ",
                      res.kv_heads[l], " heads for ", res.heads[l], " query heads: fix or remove num_kv_heads");
  // Head widths likewise, where a site shows them (SDPA: q and v): a wrong stated width would
  // shape the KV cache of generation wrongly and misreport the model.
  const int64_t v_dim = info_.v_head_dim > 0 ? info_.v_head_dim : info_.head_dim;
  for (size_t l = 0; l < res.qk_dims.size(); ++l) {
    TORCH_CHECK_VALUE(info_.head_dim <= 0 || res.qk_dims[l] <= 0 || res.qk_dims[l] == info_.head_dim,
                      "attnscope.json says head_dim ", info_.head_dim, ", but layer ", l,
                      "'s q and k have ", res.qk_dims[l], " per head: fix or remove head_dim");
    TORCH_CHECK_VALUE(v_dim <= 0 || res.v_dims[l] <= 0 || res.v_dims[l] == v_dim, "attnscope.json says ",
                      info_.v_head_dim > 0 ? "v_head_dim " : "head_dim ", v_dim,
                      info_.v_head_dim > 0 ? "" : " and no v_head_dim", ", but layer ", l, "'s v has ",
                      res.v_dims[l], " per head: ",
                      info_.v_head_dim > 0 ? "fix or remove v_head_dim" : "state v_head_dim");
  }
}

void Model::add_predictions(Trace& t, const torch::Tensor& logits, bool has_logits, bool has_padding) const {
  const auto& mask = t.attention_mask;
  const auto nan_at_pads = [&](const torch::Tensor& x) {  // [B, T, ...]: undefined at padding
    if (!has_padding) return x;
    auto ok = mask.to(torch::kBool).to(x.device());
    while (ok.dim() < x.dim()) ok = ok.unsqueeze(-1);
    return torch::where(ok, x, std::numeric_limits<float>::quiet_NaN());
  };
  // Predictive entropy and top-k in one pass over the logits (each block in fp32 once).
  const int64_t k = has_logits ? std::min<int64_t>(t.spec.top_k, logits.size(2)) : 0;
  auto ps = predictive_stats(logits, has_logits && t.spec.predictive_entropy, k, t.spec.temperature);
  if (ps.entropy.defined()) {
    t.entropy = nan_at_pads(ps.entropy);
  } else {  // not asked for, or no next-token distribution: NaN
    t.entropy = torch::full(mask.sizes(), std::numeric_limits<float>::quiet_NaN(),
                            torch::dtype(torch::kFloat).device(logits.device()));
  }
  if (k > 0) {
    t.topk_probs = nan_at_pads(ps.probs);
    t.topk_ids = ps.ids;
  }
}

void Model::add_run_facts(Trace& t, const RecordResult& res) {
  // The trace gets the facts this run saw; the model's own facts are fixed at load (from
  // attnscope.json and the dry run), so concurrent runs never write shared state except the
  // idle-site list, which is guarded.
  const int64_t h = first_positive(res.heads), kv = first_positive(res.kv_heads);
  // A hybrid's trace spans the model's layers; only its attention layers hold captures.
  t.n_layers = info_.attention_layers.empty() ? res.layers_run : std::max(res.layers_run, info_.n_layers);
  for (int64_t l = 0; l < static_cast<int64_t>(res.heads.size()); ++l)
    if (res.heads[l] >= 0) t.attention_layers.push_back(l);
  if (static_cast<int64_t>(t.attention_layers.size()) == t.n_layers) t.attention_layers.clear();  // all of them
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
  if (!t.layer_paths.empty()) t.layer_paths.resize(t.n_layers);
  t.tokens = tokens_of(t.input_ids);
  t.model_id = model_id_, t.model_name = model_name_;
}

}  // namespace attnscope
