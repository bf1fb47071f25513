// Model::logits and Model::decode_logits: a forward (or a KV-cache decode step) with nothing
// captured and, when given, a knockout applied by the operators (knockout.h): what "does this
// attention matter?" compares.
#include <attnscope/model.h>

#include <attnscope/block_cache.h>
#include <attnscope/recorder.h>

#include <optional>

namespace attnscope {

namespace {
CaptureSpec capture_nothing() {
  CaptureSpec nothing;
  nothing.top_k = 0;
  nothing.predictive_entropy = false;
  return nothing;
}

// Every layer asked for was intervened in (a site attnscope cannot change is refused earlier).
void check_intervened(const Knockout* knockout, const Recorder& rec, const std::vector<int64_t>& attention) {
  if (!knockout) return;
  if (knockout->edges.defined())
    for (int64_t l : knockout->layers.empty() ? attention : knockout->layers)
      TORCH_CHECK_VALUE(rec.knocked_layers().count(l), "knockout: layer ", l,
                        "'s attention did not pass through "
                        "an attnscope operator in this forward, so it could not be intervened in");
  for (int64_t l : attention)
    TORCH_CHECK_VALUE(!knockout->ablates(l) || rec.ablated_layers().count(l), "ablate: layer ", l,
                      "'s attention "
                      "did not pass through an attnscope operator in this forward, so its heads could not be ablated");
}
}  // namespace

std::vector<int64_t> Model::attention_layer_list() const {
  std::vector<int64_t> attention = info_.attention_layers;
  if (attention.empty())
    for (int64_t l = 0; l < info_.n_layers; ++l) attention.push_back(l);
  return attention;
}

torch::Tensor Model::logits(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                            const Knockout* knockout) {
  const auto ids = checked_ids(input_ids, info_.vocab_size);  // [B, T]
  const auto mask = checked_mask(attention_mask, ids);        // [B, T]
  const int64_t len = ids.size(1);
  TORCH_CHECK_VALUE(info_.context_length <= 0 || len <= info_.context_length, "input of ", len,
                    " tokens is longer than the model's context of ", info_.context_length, " tokens");
  const auto attention = attention_layer_list();
  if (knockout) knockout->validate(ids.size(0), len, info_.n_layers, info_.n_heads, attention);
  const CaptureSpec nothing = capture_nothing();
  const RunContext ctx = run_context(ids, mask);
  Recorder rec(nothing, ctx, /*layer_from_order=*/instrumented_);
  rec.set_knockout(knockout);
  const auto out = recorded_forward(ids, mask, ctx.has_padding, /*block_cache=*/false, rec);
  TORCH_CHECK_VALUE(output_kind(out) == "logits", "logits: this model's forward returns hidden states (an encoder "
                    "without a language-model head): there is no next-token distribution to compare");
  check_intervened(knockout, rec, attention);
  return out.to(torch::kFloat).cpu();
}

torch::Tensor Model::decode_logits(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                   const torch::Tensor& past_k, const torch::Tensor& past_v, const Knockout* knockout) {
  TORCH_CHECK_VALUE(has_decode(), "logits over a KV cache: this archive has no decode method");
  TORCH_CHECK_VALUE(!knockout || decode_intervenes_,
                    "knockout over a KV cache: this archive's decode method does not "
                    "run its attention through attnscope operators (its sites are not its forward's): run the whole "
                    "sequence without past");
  const auto ids = checked_ids(input_ids, info_.vocab_size);  // [B, t]
  const int64_t batch = ids.size(0), past = past_k.defined() && past_k.dim() == 5 ? past_k.size(3) : -1;
  TORCH_CHECK_VALUE(past_k.defined() && past_v.defined() && past_k.dim() == 5 && past_v.dim() == 5 &&
                        past_k.size(1) == batch && past_v.size(1) == batch && past_v.size(3) == past,
                    "past: expected the caches k, v [L, ", batch, ", KV, P, D] of the ", batch, " rows, got ",
                    past_k.defined() ? past_k.sizes() : c10::IntArrayRef{}, " and ",
                    past_v.defined() ? past_v.sizes() : c10::IntArrayRef{});
  TORCH_CHECK_VALUE(attention_mask.defined() && attention_mask.dim() == 2 && attention_mask.size(0) == batch &&
                        attention_mask.size(1) == past + ids.size(1),
                    "attention_mask over a KV cache: expected [", batch, ", ", past + ids.size(1),
                    "] (cached + new positions), got ",
                    attention_mask.defined() ? attention_mask.sizes() : c10::IntArrayRef{});
  const auto mask = checked_mask(attention_mask, torch::zeros_like(attention_mask));
  const int64_t len = mask.size(1);
  TORCH_CHECK_VALUE(info_.context_length <= 0 || len <= info_.context_length, "input of ", len,
                    " tokens is longer than the model's context of ", info_.context_length, " tokens");
  const auto attention = attention_layer_list();
  if (knockout) {
    knockout->validate(batch, len, info_.n_layers, info_.n_heads, attention);
    TORCH_CHECK_VALUE(!knockout->ablate.defined() || knockout->ablate_mode == "zero", "ablate mode '",
                      knockout->ablate_mode,
                      "' over a KV cache: a mean over positions needs every position's output; "
                      "run the whole sequence without past");
  }
  // ids: the step's new tokens only; nothing this run captures reads them (no row statistics)
  const RunContext ctx = run_context(ids, mask);
  const CaptureSpec nothing = capture_nothing();
  Recorder rec(nothing, ctx, /*layer_from_order=*/instrumented_);
  rec.set_knockout(knockout);
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    RecorderScope scope(&rec);
    // Each layer's grown cache reuses the block the previous layer freed, not fresh pages.
    std::optional<BlockCacheScope> blocks;
    if (device_.is_cpu()) blocks.emplace();
    try {
      if (decode_logits_fn_) {  // decode without the caches it would stack and return
        const c10::IValue out = (*decode_logits_fn_)(
            {module_._ivalue(), ids.to(device_), mask.to(device_), past_k.to(device_), past_v.to(device_)});
        TORCH_CHECK_VALUE(out.isTensor(), "the archive's decode method returned ", out.tagKind(),
                          " first; expected logits [B, t, V]");
        logits = out.toTensor();
      } else {
        logits = decode(ids.to(device_), mask.to(device_), past_k.to(device_), past_v.to(device_)).logits;
      }
    } catch (const std::exception&) {
      TORCH_CHECK_VALUE(rec.refusal().empty(), rec.refusal());  // an operator's refusal, as it was raised
      throw;
    }
  }
  TORCH_CHECK_VALUE(logits.dim() == 3 && logits.size(0) == batch && logits.size(1) == ids.size(1),
                    "the archive's decode method returned logits of shape ", logits.sizes(), "; expected [", batch,
                    ", ", ids.size(1), ", V]");
  check_intervened(knockout, rec, attention);
  return logits.to(torch::kFloat).cpu();
}

}  // namespace attnscope
