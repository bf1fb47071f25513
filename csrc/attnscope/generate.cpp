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
  auto out = module_.get_method("decode")({ids, torch::ones_like(ids), empty.first, empty.second}).toTuple();
  return {out->elements()[1].toTensor(), out->elements()[2].toTensor()};
}

Trace Model::generate(const torch::Tensor& prompt_ids, const GenerateOptions& o, const CaptureSpec& spec,
                      const torch::Tensor& attention_mask) {
  TORCH_CHECK_VALUE(prompt_ids.defined() && prompt_ids.numel() > 0,
                    "empty prompt: at least one token is needed to generate from");
  TORCH_CHECK_VALUE(!prompt_ids.is_floating_point() && prompt_ids.scalar_type() != torch::kBool,
                    "prompt ids must be integer token ids, got dtype ", prompt_ids.scalar_type());
  TORCH_CHECK_VALUE(prompt_ids.dim() == 1 || prompt_ids.dim() == 2, "prompt ids must be [P] or [B, P], got ",
                    prompt_ids.sizes());
  TORCH_CHECK_VALUE(o.max_new_tokens >= 1, "max_new_tokens ", o.max_new_tokens, " must be >= 1");
  TORCH_CHECK_VALUE(o.temperature >= 0.0, "temperature ", o.temperature, " must be >= 0 (0 = greedy)");
  TORCH_CHECK_VALUE(o.top_p > 0.0 && o.top_p <= 1.0, "top_p ", o.top_p, " must be in (0, 1]");
  TORCH_CHECK_VALUE(o.top_k >= 0, "top_k ", o.top_k, " must be >= 0 (0 = no limit)");
  TORCH_CHECK_VALUE(info_.output == "logits", "generate needs a model that returns logits; this one "
                    "returns hidden states (an encoder without LM head)");
  auto ids = (prompt_ids.dim() == 1 ? prompt_ids.unsqueeze(0) : prompt_ids).to(torch::kLong).cpu();
  const int64_t batch = ids.size(0), plen = ids.size(1);
  torch::Tensor mask = attention_mask.defined()
                           ? (attention_mask.dim() == 1 ? attention_mask.unsqueeze(0) : attention_mask)
                                 .to(torch::kLong).cpu()
                           : torch::ones_like(ids);
  TORCH_CHECK_VALUE(mask.sizes() == ids.sizes(), "attention_mask shape ", mask.sizes(),
                    " does not match the prompt ids ", ids.sizes());
  TORCH_CHECK_VALUE(mask.select(1, plen - 1).all().item<bool>(), "generate: prompts must be left-padded "
                    "(every row's last position a real token), so that new tokens follow each prompt");
  TORCH_CHECK_VALUE(info_.context_length <= 0 || plen < info_.context_length, "prompt of ", plen,
                    " tokens does not fit the model's context of ", info_.context_length,
                    " tokens with room to generate: shorten it");
  int64_t budget = o.max_new_tokens;
  if (info_.context_length > 0) budget = std::min(budget, info_.context_length - plen);
  std::vector<int64_t> stop;
  if (o.stop_ids) stop = *o.stop_ids;
  else if (info_.eos_id >= 0) stop.push_back(info_.eos_id);
  auto stop_t = torch::tensor(stop.empty() ? std::vector<int64_t>{-1} : stop, torch::kLong);

  const bool cached = o.use_cache && has_decode();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  torch::NoGradGuard no_grad;
  auto ids_d = ids.to(device_), mask_d = mask.to(device_);
  torch::jit::Method fwd = module_.get_method("forward");
  c10::IValue k_cache, v_cache;
  auto step = [&](const torch::Tensor& new_ids) -> torch::Tensor {  // logits [B, t, V]
    if (!cached) {
      std::vector<c10::IValue> in{ids_d};
      if (takes_mask_) in.emplace_back(mask_d);
      c10::IValue out = fwd(in);
      return out.isTensor() ? out.toTensor() : out.toTupleRef().elements()[0].toTensor();
    }
    auto out = module_.get_method("decode")({new_ids, mask_d, k_cache, v_cache}).toTuple();
    k_cache = out->elements()[1];
    v_cache = out->elements()[2];
    return out->elements()[0].toTensor();
  };
  int64_t from = 0;  // prompt positions already in the cache (a shared prefix)
  if (o.past_k.defined() || o.past_v.defined()) {
    TORCH_CHECK_VALUE(cached, "generate: a prefix KV cache (past_k/past_v) needs use_cache and an archive "
                      "with the decode method");
    TORCH_CHECK_VALUE(mask.all().item<bool>(), "generate: a prefix KV cache needs an unpadded prompt");
    const auto& pk = o.past_k;
    const auto& pv = o.past_v;
    const auto cs = info_.cache_shape();
    TORCH_CHECK_VALUE(pk.defined() && pv.defined() && pk.dim() == 5 && pv.dim() == 5 &&
                          pk.sizes().slice(0, 4) == pv.sizes().slice(0, 4) &&
                          pk.size(0) == info_.n_layers && (pk.size(1) == 1 || pk.size(1) == batch) &&
                          pk.size(2) == cs[0] && pk.size(4) == cs[1] && pv.size(4) == cs[2] && pk.size(3) < plen,
                      "generate: past_k/past_v must be [", info_.n_layers, ", 1 or ", batch, ", ", cs[0],
                      ", P0 < ", plen, ", ", cs[1], "] and [..., ", cs[2], "], got ", pk.sizes(), " and ",
                      pv.defined() ? pv.sizes() : c10::IntArrayRef{});
    from = pk.size(3);
  }
  if (cached) {
    auto empty = empty_cache(batch, "generate");  // also the dtype and device of a given prefix
    if (from > 0) {
      k_cache = o.past_k.to(empty.first.options()).expand({-1, batch, -1, -1, -1}).contiguous();
      v_cache = o.past_v.to(empty.second.options()).expand({-1, batch, -1, -1, -1}).contiguous();
    } else {
      k_cache = empty.first;
      v_cache = empty.second;
    }
  }
  auto finished = torch::zeros({batch}, torch::dtype(torch::kBool).device(device_));
  std::vector<std::string> reason(batch, "max_new_tokens");
  torch::Tensor logits = step(from > 0 ? ids_d.narrow(1, from, plen - from) : ids_d);
  int64_t steps = 0;
  for (; steps < budget; ++steps) {
    auto next = pick(logits.select(1, logits.size(1) - 1), o, gen);
    next = torch::where(finished, torch::full_like(next, o.pad_id), next);
    ids_d = torch::cat({ids_d, next.unsqueeze(1)}, 1);
    mask_d = torch::cat({mask_d, finished.logical_not().to(torch::kLong).unsqueeze(1)}, 1);
    auto hit = torch::isin(next, stop_t.to(device_)).logical_and(finished.logical_not());
    auto hit_cpu = hit.cpu();
    for (int64_t b = 0; b < batch; ++b)
      if (hit_cpu[b].item<bool>()) reason[b] = "stop token";
    finished = finished.logical_or(hit);
    if (o.on_step && !o.on_step(steps + 1, next.cpu())) {
      for (int64_t b = 0; b < batch; ++b)
        if (reason[b] == "max_new_tokens" && !hit_cpu[b].item<bool>()) reason[b] = "stopped by the caller";
      ++steps;
      break;
    }
    if (finished.all().item<bool>() || steps + 1 == budget) {
      ++steps;
      break;
    }
    logits = step(next.unsqueeze(1));
  }
  if (budget < o.max_new_tokens)
    for (int64_t b = 0; b < batch; ++b)
      if (reason[b] == "max_new_tokens") reason[b] = "context length";

  Trace t;
  if (o.capture) {
    t = run(ids_d.cpu(), spec, mask_d.cpu());
  } else {
    t.spec = spec;
    t.input_ids = ids_d.cpu();
    t.attention_mask = mask_d.cpu();
    t.entropy = torch::full(t.input_ids.sizes(), std::numeric_limits<float>::quiet_NaN(), torch::kFloat);
    if (!vocab_.empty()) {
      const auto flat = t.input_ids.flatten();
      const int64_t* id = flat.data_ptr<int64_t>();
      for (int64_t i = 0; i < flat.numel(); ++i) t.tokens.push_back(vocab_.token(id[i]));
    }
  }
  t.prompt_len = plen;
  std::ostringstream g;
  g << "{\"temperature\": " << o.temperature << ", \"top_k\": " << o.top_k << ", \"top_p\": " << o.top_p
    << ", \"seed\": " << o.seed << ", \"max_new_tokens\": " << o.max_new_tokens
    << ", \"stop_ids\": " << json::int_array(stop) << ", \"kv_cache\": " << (cached ? "true" : "false")
    << ", \"prefix_cached\": " << from
    << ", \"steps\": " << steps << ", \"stop_reason\": [";
  for (int64_t b = 0; b < batch; ++b) g << (b ? ", " : "") << "\"" << reason[b] << "\"";
  g << "]}";
  t.generation = g.str();
  return t;
}

}  // namespace attnscope
