// Model::generate: token-by-token generation (greedy, temperature, top-k, top-p, seeded), with
// the archive's KV-cache `decode` method when it has one, then one capture run over prompt +
// response so the Trace shows the attention and entropy behind every generated token.
#include <attnscope/json.h>
#include <attnscope/model.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <limits>
#include <sstream>

namespace attnscope {

namespace {

/// Next token per row from `logits (Tensor[B, V])`: argmax when greedy, else a draw from the
/// tempered, top-k / top-p filtered distribution with the CPU generator `gen`.
torch::Tensor pick(const torch::Tensor& logits, const GenerateOptions& o, at::Generator& gen) {
  if (o.temperature == 0.0) return logits.argmax(-1);
  auto z = logits.to(torch::kFloat).div(o.temperature).cpu();
  if (o.top_k > 0 && o.top_k < z.size(-1)) {
    auto kth = std::get<0>(z.topk(o.top_k, -1)).narrow(-1, o.top_k - 1, 1);
    z = z.masked_fill(z < kth, -std::numeric_limits<float>::infinity());
  }
  if (o.top_p < 1.0) {
    auto sorted = z.sort(-1, /*descending=*/true);
    auto p = std::get<0>(sorted).softmax(-1);
    // Drop a token when the tokens before it already reach top_p (the first always stays).
    auto drop = (p.cumsum(-1) - p) >= o.top_p;
    auto hide = torch::zeros_like(drop).scatter(-1, std::get<1>(sorted), drop);
    z = z.masked_fill(hide, -std::numeric_limits<float>::infinity());
  }
  return torch::multinomial(z.softmax(-1), 1, /*replacement=*/false, gen).squeeze(-1).to(logits.device());
}

void check_options(const GenerateOptions& o) {
  TORCH_CHECK_VALUE(o.max_new_tokens >= 1, "max_new_tokens ", o.max_new_tokens, " must be >= 1");
  TORCH_CHECK_VALUE(o.temperature >= 0.0, "temperature ", o.temperature, " must be >= 0 (0 = greedy)");
  TORCH_CHECK_VALUE(o.top_p > 0.0 && o.top_p <= 1.0, "top_p ", o.top_p, " must be in (0, 1]");
  TORCH_CHECK_VALUE(o.top_k >= 0, "top_k ", o.top_k, " must be >= 0 (0 = no limit)");
  TORCH_CHECK_VALUE(o.seed <= uint64_t(INT64_MAX), "seed ", o.seed, " must be < 2^63");
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> Model::empty_cache(int64_t batch, const char* who) const {
  const auto cs = info_.cache_shape();
  TORCH_CHECK(info_.n_layers > 0 && cs[0] > 0 && cs[1] > 0 && cs[2] > 0, who, ": the archive's "
              "decode method needs num_layers, num_kv_heads and head_dim in attnscope.json");
  auto dtype = module_.parameters().begin() != module_.parameters().end()
                   ? (*module_.parameters().begin()).scalar_type() : torch::kFloat;
  auto opt = torch::dtype(dtype).device(device_);
  return {torch::zeros({info_.n_layers, batch, cs[0], 0, cs[1]}, opt),
          torch::zeros({info_.n_layers, batch, cs[0], 0, cs[2]}, opt)};
}

std::pair<torch::Tensor, torch::Tensor> Model::prefill(const torch::Tensor& ids_in) {
  TORCH_CHECK_VALUE(has_decode(), "prefill: this archive has no decode method (no KV cache)");
  TORCH_CHECK_VALUE(ids_in.defined() && ids_in.dim() == 2 && ids_in.numel() > 0 && !ids_in.is_floating_point(),
                    "prefill: ids must be a non-empty [B, T] integer tensor");
  torch::NoGradGuard no_grad;
  auto ids = ids_in.to(torch::kLong).to(device_);
  auto empty = empty_cache(ids.size(0), "prefill");
  auto out = decode(ids, torch::ones_like(ids), empty.first, empty.second);
  return {out.k, out.v};
}

Model::Decoded Model::decode(const torch::Tensor& ids, const torch::Tensor& mask, const c10::IValue& k,
                             const c10::IValue& v) {
  const c10::IValue out = module_.get_method("decode")({ids, mask, k, v});
  // An archive's decode is checked like its forward: a wrong arity or shape is refused by name.
  TORCH_CHECK_VALUE(out.isTuple() && out.toTupleRef().elements().size() == 3, "the archive's decode method returned ",
                    out.isTuple() ? std::to_string(out.toTupleRef().elements().size()) + " values" : out.tagKind(),
                    "; expected (logits [B, t, V], k_cache, v_cache)");
  const auto& e = out.toTupleRef().elements();
  TORCH_CHECK_VALUE(e[0].isTensor() && e[1].isTensor() && e[2].isTensor(), "the archive's decode method returned ",
                    e[0].tagKind(), ", ", e[1].tagKind(), ", ", e[2].tagKind(), "; expected three tensors");
  Decoded d{e[0].toTensor(), e[1].toTensor(), e[2].toTensor()};
  const int64_t B = ids.size(0), t = ids.size(1);
  TORCH_CHECK_VALUE(d.logits.dim() == 3 && d.logits.size(0) == B && d.logits.size(1) == t,
                    "the archive's decode "
                    "method returned logits of shape ",
                    d.logits.sizes(), "; expected [", B, ", ", t, ", V]");
  const auto cs = info_.cache_shape();  // KV heads, k and v widths
  TORCH_CHECK_VALUE(d.k.dim() == 5 && d.v.dim() == 5 && d.k.size(0) == info_.n_layers && d.k.size(1) == B &&
                        d.v.sizes().slice(0, 4) == d.k.sizes().slice(0, 4) && d.k.size(2) == cs[0] &&
                        d.k.size(4) == cs[1] && d.v.size(4) == cs[2],
                    "the archive's decode method returned caches of shapes ", d.k.sizes(), " and ", d.v.sizes(),
                    "; expected [", info_.n_layers, ", ", B, ", ", cs[0], ", T, ", cs[1], "] and [..., ", cs[2],
                    "] (attnscope.json's num_layers, num_kv_heads, head_dim, v_head_dim)");
  return d;
}

std::vector<std::string> Model::tokens_of(const torch::Tensor& ids) const {
  std::vector<std::string> out;
  if (vocab_.empty()) return out;
  const auto flat = ids.contiguous().flatten();
  const int64_t* id = flat.data_ptr<int64_t>();
  for (int64_t i = 0; i < flat.numel(); ++i) out.push_back(vocab_.token(id[i]));
  return out;
}

int64_t Model::prefix_length(const GenerateOptions& o, bool cached, const torch::Tensor& mask) const {
  if (!o.past_k.defined() && !o.past_v.defined()) return 0;
  const int64_t batch = mask.size(0), plen = mask.size(1);
  TORCH_CHECK_VALUE(cached,
                    "generate: a prefix KV cache (past_k/past_v) needs use_cache and an archive "
                    "with the decode method");
  TORCH_CHECK_VALUE(mask.all().item<bool>(), "generate: a prefix KV cache needs an unpadded prompt");
  const auto& pk = o.past_k;
  const auto& pv = o.past_v;
  const auto cs = info_.cache_shape();
  TORCH_CHECK_VALUE(pk.defined() && pv.defined() && pk.dim() == 5 && pv.dim() == 5 &&
                        pk.sizes().slice(0, 4) == pv.sizes().slice(0, 4) && pk.size(0) == info_.n_layers &&
                        (pk.size(1) == 1 || pk.size(1) == batch) && pk.size(2) == cs[0] && pk.size(4) == cs[1] &&
                        pv.size(4) == cs[2] && pk.size(3) < plen,
                    "generate: past_k/past_v must be [", info_.n_layers, ", 1 or ", batch, ", ", cs[0], ", P0 < ", plen,
                    ", ", cs[1], "] and [..., ", cs[2], "], got ", pk.sizes(), " and ",
                    pv.defined() ? pv.sizes() : c10::IntArrayRef{});
  return pk.size(3);
}

Trace Model::generate(const torch::Tensor& prompt_ids, const GenerateOptions& o, const CaptureSpec& spec,
                      const torch::Tensor& attention_mask) {
  TORCH_CHECK_VALUE(prompt_ids.defined() && prompt_ids.numel() > 0,
                    "empty prompt: at least one token is needed to generate from");
  TORCH_CHECK_VALUE(!prompt_ids.is_floating_point() && prompt_ids.scalar_type() != torch::kBool,
                    "prompt ids must be integer token ids, got dtype ", prompt_ids.scalar_type());
  TORCH_CHECK_VALUE(prompt_ids.dim() == 1 || prompt_ids.dim() == 2, "prompt ids must be [P] or [B, P], got ",
                    prompt_ids.sizes());
  check_options(o);
  TORCH_CHECK_VALUE(info_.output == "logits", "generate needs a model that returns logits; this one "
                    "returns hidden states (an encoder without LM head)");
  const auto ids = checked_ids(prompt_ids, info_.vocab_size);  // [B, P]
  const auto mask = checked_mask(attention_mask, ids);         // [B, P]
  const int64_t plen = ids.size(1);
  TORCH_CHECK_VALUE(mask.select(1, plen - 1).all().item<bool>(), "generate: prompts must be left-padded "
                    "(every row's last position a real token), so that new tokens follow each prompt");
  TORCH_CHECK_VALUE(info_.context_length <= 0 || plen < info_.context_length, "prompt of ", plen,
                    " tokens does not fit the model's context of ", info_.context_length,
                    " tokens with room to generate: shorten it");
  std::vector<int64_t> stop;
  if (o.stop_ids) stop = *o.stop_ids;
  else if (info_.eos_id >= 0)
    stop.push_back(info_.eos_id);
  const bool cached = o.use_cache && has_decode();
  const int64_t from = prefix_length(o, cached, mask);  // prompt positions already in a given cache
  Generated g = sample(ids, mask, o, stop, cached, from);

  Trace t;
  if (o.capture) {
    t = run(g.ids, spec, g.mask);
  } else {  // the ids and tokens alone: captured later, when looked at
    t.spec = spec;
    t.input_ids = g.ids;
    t.attention_mask = g.mask;
    t.entropy = torch::full(g.ids.sizes(), std::numeric_limits<float>::quiet_NaN(), torch::kFloat);
    t.tokens = tokens_of(g.ids);
    t.model_id = model_id_, t.model_name = model_name_;
    // The model's facts, as a run would state them: the fork is a trace that saves and loads.
    t.n_layers = info_.n_layers, t.n_heads = info_.n_heads;
    t.n_kv_heads = info_.n_kv_heads > 0 ? info_.n_kv_heads : info_.n_heads;
    t.attention_layers = info_.attention_layers;
    if (t.n_heads > 0 && t.n_kv_heads > 0 && t.n_heads % t.n_kv_heads == 0)
      t.kv_head_of = torch::arange(t.n_heads, torch::kLong).div(t.n_heads / t.n_kv_heads, "floor");
  }
  t.prompt_len = plen;
  GenerationInfo info;
  info.temperature = o.temperature, info.top_k = o.top_k, info.top_p = o.top_p, info.seed = int64_t(o.seed);
  info.max_new_tokens = o.max_new_tokens, info.stop_ids = stop, info.kv_cache = cached, info.prefix_cached = from;
  info.steps = g.steps, info.stop_reason = g.reason;
  t.generation = info;
  return t;
}

Model::Generated Model::sample(const torch::Tensor& ids, const torch::Tensor& mask, const GenerateOptions& o,
                               const std::vector<int64_t>& stop, bool cached, int64_t from) {
  const int64_t batch = ids.size(0), plen = ids.size(1);
  int64_t budget = o.max_new_tokens;
  if (info_.context_length > 0) budget = std::min(budget, info_.context_length - plen);
  auto stop_t = torch::tensor(stop.empty() ? std::vector<int64_t>{-1} : stop, torch::kLong).to(device_);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  torch::NoGradGuard no_grad;
  auto ids_d = ids.to(device_), mask_d = mask.to(device_);
  torch::jit::Method fwd = module_.get_method("forward");
  c10::IValue k_cache, v_cache;
  if (cached) {
    auto empty = empty_cache(batch, "generate");  // also the dtype and device of a given prefix
    k_cache = from > 0 ? o.past_k.to(empty.first.options()).expand({-1, batch, -1, -1, -1}).contiguous() : empty.first;
    v_cache =
        from > 0 ? o.past_v.to(empty.second.options()).expand({-1, batch, -1, -1, -1}).contiguous() : empty.second;
  }
  auto step = [&](const torch::Tensor& new_ids) -> torch::Tensor {  // logits [B, t, V]
    if (!cached) {
      std::vector<c10::IValue> in{ids_d};
      if (takes_mask_) in.emplace_back(mask_d);
      return output_tensor_of(fwd(in), ids_d.size(0), ids_d.size(1));
    }
    auto d = decode(new_ids, mask_d, k_cache, v_cache);
    k_cache = d.k;
    v_cache = d.v;
    return d.logits;
  };
  Generated g;
  g.reason.assign(batch, "max_new_tokens");
  auto finished = torch::zeros({batch}, torch::dtype(torch::kBool).device(device_));
  torch::Tensor logits = step(from > 0 ? ids_d.narrow(1, from, plen - from) : ids_d);
  for (; g.steps < budget;) {
    auto next = pick(logits.select(1, logits.size(1) - 1), o, gen);
    next = torch::where(finished, torch::full_like(next, o.pad_id), next);
    ids_d = torch::cat({ids_d, next.unsqueeze(1)}, 1);
    mask_d = torch::cat({mask_d, finished.logical_not().to(torch::kLong).unsqueeze(1)}, 1);
    auto hit = torch::isin(next, stop_t).logical_and(finished.logical_not());
    auto hit_cpu = hit.cpu();
    for (int64_t b = 0; b < batch; ++b)
      if (hit_cpu[b].item<bool>()) g.reason[b] = "stop token";
    finished = finished.logical_or(hit);
    ++g.steps;
    if (o.on_step && !o.on_step(g.steps, next.cpu())) {
      for (int64_t b = 0; b < batch; ++b)
        if (g.reason[b] == "max_new_tokens" && !hit_cpu[b].item<bool>()) g.reason[b] = "stopped by the caller";
      break;
    }
    if (finished.all().item<bool>() || g.steps == budget) break;
    logits = step(next.unsqueeze(1));
  }
  if (budget < o.max_new_tokens)
    for (auto& r : g.reason)
      if (r == "max_new_tokens") r = "context length";
  g.ids = ids_d.cpu();
  g.mask = mask_d.cpu();
  return g;
}

}  // namespace attnscope
