// Model::logits: one forward with nothing captured and, when given, an attention knockout
// applied by the operators (knockout.h): what "does this attention matter?" compares.
#include <attnscope/model.h>

#include <attnscope/recorder.h>

namespace attnscope {

torch::Tensor Model::logits(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                            const Knockout* knockout) {
  const auto ids = checked_ids(input_ids, info_.vocab_size);  // [B, T]
  const auto mask = checked_mask(attention_mask, ids);        // [B, T]
  const int64_t len = ids.size(1);
  TORCH_CHECK_VALUE(info_.context_length <= 0 || len <= info_.context_length, "input of ", len,
                    " tokens is longer than the model's context of ", info_.context_length, " tokens");
  std::vector<int64_t> attention = info_.attention_layers;
  if (attention.empty())
    for (int64_t l = 0; l < info_.n_layers; ++l) attention.push_back(l);
  if (knockout) knockout->validate(ids.size(0), len, info_.n_heads, attention);
  CaptureSpec nothing;
  nothing.top_k = 0;
  nothing.predictive_entropy = false;
  const RunContext ctx = run_context(ids, mask);
  Recorder rec(nothing, ctx, /*layer_from_order=*/instrumented_);
  rec.set_knockout(knockout);
  const auto out = recorded_forward(ids, mask, ctx.has_padding, /*block_cache=*/false, rec);
  TORCH_CHECK_VALUE(output_kind(out) == "logits", "logits: this model's forward returns hidden states (an encoder "
                    "without a language-model head): there is no next-token distribution to compare");
  if (knockout) {  // every layer asked for was intervened in (a site attnscope cannot change is refused earlier)
    for (int64_t l : knockout->layers.empty() ? attention : knockout->layers)
      TORCH_CHECK_VALUE(rec.knocked_layers().count(l), "knockout: layer ", l, "'s attention did not pass through "
                        "an attnscope operator in this forward, so it could not be intervened in");
  }
  return out.to(torch::kFloat).cpu();
}

}  // namespace attnscope
