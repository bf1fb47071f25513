#include <attnscope/model_info.h>

#include <attnscope/json.h>

#include <torch/cuda.h>

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
  info.n_kv_heads = v.get_int("num_kv_heads", -1, 1, 65536);  // unstated: the first run's keys say
  TORCH_CHECK_VALUE(info.n_heads < 0 || info.n_kv_heads < 0 ||
                        (info.n_kv_heads <= info.n_heads && info.n_heads % info.n_kv_heads == 0),
                    "attnscope.json: num_kv_heads ", info.n_kv_heads, " must divide num_heads ", info.n_heads);
  info.head_dim = v.get_int("head_dim", -1, 1, 65536);
  info.v_head_dim = v.get_int("v_head_dim", -1, 1, 65536);
  info.cache_heads = v.get_int("cache_heads", -1, 1, 65536);
  info.cache_k_dim = v.get_int("cache_k_dim", -1, 1, 1 << 20);
  info.cache_v_dim = v.get_int("cache_v_dim", -1, 1, 1 << 20);
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
  if (const json::Value* a = v.find("attention_layers"); a && !a->is_null()) {
    TORCH_CHECK_VALUE(a->is_array() && !a->arr.empty() && info.n_layers > 0, "attnscope.json: attention_layers "
                      "must be a non-empty list of layer indices, with num_layers stated");
    for (size_t i = 0; i < a->arr.size(); ++i) {
      const int64_t l = a->arr[i].as_int("'attention_layers'[" + std::to_string(i) + "]", 0, info.n_layers - 1);
      TORCH_CHECK_VALUE(info.attention_layers.empty() || l > info.attention_layers.back(), "attnscope.json: "
                        "attention_layers must increase, but ", l, " follows ", info.attention_layers.back());
      info.attention_layers.push_back(l);
    }
  }
  return info;
}

}  // namespace attnscope
