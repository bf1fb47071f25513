#include <attnscope/recorder.h>

#include <attnscope/sdpa_blocks.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace attnscope {

namespace {
thread_local Recorder* g_active = nullptr;
}

Recorder* Recorder::active() { return g_active; }

RecorderScope::RecorderScope(Recorder* r) : prev_(g_active) { g_active = r; }
RecorderScope::~RecorderScope() { g_active = prev_; }

Recorder::Recorder(const CaptureSpec& spec, RunContext ctx, bool layer_from_order)
    : spec_(spec), ctx_(std::move(ctx)), layer_from_order_(layer_from_order) {
  if (spec_.value_weighted) {  // the aggregates the weighted rows feed, over the same layers
    vw_spec_.received = vw_spec_.attn_entropy = true;
    vw_spec_.layers = spec_.layers;
    vw_spec_.chunk_elements = spec_.chunk_elements;
  }
}

int64_t Recorder::next_layer(int64_t op_layer) const {
  const std::vector<int64_t>& ids = ctx_.attention_layers;
  if (!layer_from_order_) return op_layer;
  if (ids.empty()) return sites_run_;
  return sites_run_ < static_cast<int64_t>(ids.size()) ? ids[sites_run_] : -1;
}

int64_t Recorder::resolve_layer(int64_t op_layer) {
  const std::vector<int64_t>& ids = ctx_.attention_layers;
  int64_t layer;
  if (layer_from_order_) {
    TORCH_CHECK(ids.empty() || sites_run_ < static_cast<int64_t>(ids.size()), "the model ran more attention "
                "sites than the ", ids.size(), " attention_layers its attnscope.json states");
    layer = ids.empty() ? sites_run_ : ids[sites_run_];
    ++sites_run_;
  } else {
    TORCH_CHECK(op_layer >= 0, "capture operator called with layer ", op_layer,
                ": expected a layer index >= 0");
    TORCH_CHECK(ids.empty() || std::binary_search(ids.begin(), ids.end(), op_layer), "capture operator called "
                "with layer ", op_layer, ", which is not among the attention_layers attnscope.json states");
    TORCH_CHECK(op_layer >= static_cast<int64_t>(result_.heads.size()) ||
                    result_.heads[op_layer] < 0,
                "layer ", op_layer, " was captured twice in one forward: its attention computes more than "
                "one softmax map (e.g. differential attention), or two attention modules share a layer index; "
                "attnscope captures one map per layer");
    layer = op_layer;
  }
  if (static_cast<int64_t>(result_.heads.size()) <= layer) {
    result_.heads.resize(layer + 1, -1);
    result_.kv_heads.resize(layer + 1, -1);
    result_.qk_dims.resize(layer + 1, -1);
    result_.v_dims.resize(layer + 1, -1);
    result_.site_of_layer.resize(layer + 1, -1);
    result_.routes.resize(layer + 1);
  }
  if (layer_from_order_) result_.site_of_layer[layer] = op_layer;
  result_.layers_run = std::max<int64_t>(result_.layers_run, layer + 1);
  return layer;
}

LayerAccumulator* Recorder::accumulator(int64_t layer, int64_t heads, int64_t tq, int64_t tk,
                                        const torch::Device& device, bool whole_rows) {
  result_.heads[layer] = heads;
  auto acc = std::make_unique<LayerAccumulator>(spec_, layer, ctx_.valid.size(0), heads, tq,
                                                tk, device, whole_rows);
  if (acc->idle()) return nullptr;
  return (acc_[layer] = std::move(acc)).get();
}

int64_t Recorder::chunk_rows(int64_t batch, int64_t heads, int64_t tk, const torch::Device& device) {
  // On the CPU, blocks of ~1 MB keep the aggregate passes in cache and avoid page-faulting
  // fresh large temporaries; on a GPU, bigger blocks mean fewer kernel launches, as big as the
  // memory left allows (measured once per run: later layers reuse the same buffers).
  constexpr int64_t kCpuBlock = int64_t(1) << 18;
  if (device.is_cpu()) {
    device_block_ = std::min(spec_.chunk_elements, kCpuBlock);
  } else if (device_block_ < 0) {
    device_block_ = device_block_elements(device, spec_.chunk_elements);
  }
  const int64_t budget = device_block_;
  return std::max<int64_t>(1, budget / std::max<int64_t>(1, batch * heads * tk));
}

void Recorder::on_probs(const torch::Tensor& probs_in, int64_t op_layer, bool sink) {
  const int64_t layer = resolve_layer(op_layer);
  if (spec_.value_weighted && spec_.aggregates_layer(layer))
    remembering([&] {
      TORCH_CHECK_VALUE(false, "value_weighted: layer ", layer,
                        "'s attention is a softmax site (eager attention), "
                        "whose value vectors attnscope does not see; value-weighted attention needs SDPA sites "
                        "(export with attention='sdpa')");
    });
  result_.routes[layer] = "probabilities";
  const int64_t batch = ctx_.valid.size(0);
  torch::Tensor probs = probs_in;
  if (probs.dim() == 3) {  // bmm style: [B*H, Tq, Tk]
    TORCH_CHECK(probs.size(0) % batch == 0, "capture: attention of shape ", probs.sizes(),
                " at layer ", layer, " does not split into batch ", batch, " x heads");
    probs = probs.view({batch, probs.size(0) / batch, probs.size(1), probs.size(2)});
  }
  TORCH_CHECK(probs.dim() == 4 && probs.size(0) == batch, "capture: expected attention "
              "probabilities [B, H, Tq, Tk] with B = ", batch, " at layer ", layer, ", got ",
              probs_in.sizes());
  const int64_t heads = probs.size(1), tq = probs.size(2), tk = probs.size(3);
  TORCH_CHECK(tk <= ctx_.valid.size(1) && tq <= tk, "capture: attention ", probs.sizes(),
              " at layer ", layer, " does not match the ", ctx_.valid.size(1), " input tokens");
  LayerAccumulator* acc = accumulator(layer, heads, tq, tk, probs.device());
  if (!acc) return;
  torch::Tensor sel = probs;
  if (!acc->block_heads().empty())
    sel = probs.index_select(1, torch::tensor(acc->block_heads(), torch::kLong).to(probs.device()));
  const int64_t step = chunk_rows(batch, sel.size(1), tk, probs.device());
  const int64_t off = tk - tq;
  // Causal trimming: keys after a block's last query are skipped. Checked, not assumed, on the
  // layer's first block (the one with the most keys to skip): if any is non-zero there the
  // layer is processed untrimmed (checking every block costs more: docs/performance.md); a mask
  // that is causal in the first block and not later (prefix-LM with a prefix longer than one
  // block) would need `"causal": false` in attnscope.json. CPU only: the check synchronises.
  bool trim = ctx_.causal && !probs.is_cuda();
  torch::NoGradGuard no_grad;
  for (int64_t r0 = 0; r0 < tq; r0 += step) {
    const int64_t rows = std::min(step, tq - r0);
    auto block = sel.narrow(2, r0, rows);
    const int64_t keys = std::min(tk, off + r0 + rows);
    if (trim && r0 == 0) {
      // Checked on the layer's first block (whole rows): any weight above the diagonal means
      // the layer is not causal. Padded query rows may attend anywhere (transformers gives them
      // a uniform row): only real queries decide.
      auto upper = torch::ones({rows, tk}, torch::dtype(torch::kBool).device(block.device())).triu(off + 1);
      auto ok = upper.view({1, 1, rows, tk});
      if (ctx_.has_padding)
        ok = ok.logical_and(ctx_.valid.narrow(1, off, rows).view({batch, 1, rows, 1}));
      trim = torch::where(ok, block, torch::zeros({}, block.options())).amax().item<float>() == 0.0f;
      if (!trim)
        TORCH_WARN("layer ", layer, " attends to keys after the query (above the diagonal) although ",
                   "the model is treated as causal (attnscope.json \"causal\": true, or a dry run at load): ",
                   "the aggregates follow the attention as it is; an encoder's archive should say ",
                   "\"causal\": false");
    }
    if (trim && keys < tk) block = block.narrow(3, 0, keys);
    if (block.scalar_type() != torch::kFloat) {  // bf16/fp16 models: fp32 accumulation
      auto f = ws_.get(1, block.sizes(), block.device());
      f.copy_(block);
      block = f;
    }
    acc->add_block(block, r0, ctx_, ws_);
  }
  if (sink) acc->add_sink_share(probs);
  fold_rollout(*acc);
}

namespace {
// Additive masks hide a key with -inf or the dtype's lowest value (transformers' convention);
// anything above half of it (ALiBi-style biases included) lets the key through.
double hidden_below_of(const torch::Tensor& m) {
  if (!m.defined() || m.scalar_type() == torch::kBool) return 0.0;
  switch (m.scalar_type()) {
    case torch::kHalf:
      return -65504.0 / 2;
    case torch::kBFloat16:
      return -3.3895313892515355e38 / 2;
    case torch::kDouble:
      return -std::numeric_limits<double>::max() / 2;
    default:
      return -std::numeric_limits<float>::max() / 2.0;
  }
}

// An SDPA mask as [B or 1, H or 1, Tq, Tk] (undefined when the site has none).
torch::Tensor mask_4d(const std::optional<torch::Tensor>& mask) {
  if (!mask.has_value() || !mask->defined()) return {};
  torch::Tensor m = *mask;
  while (m.dim() < 4) m = m.unsqueeze(0);
  return m;
}
}  // namespace

void Recorder::check_sdpa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t layer) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4, "capture_sdpa: expected q [B, H, Tq, D] and k "
              "[B, Hkv, Tk, D] at layer ", layer, ", got q ", q.sizes(), " and k ", k.sizes());
  const int64_t batch = q.size(0), hq = q.size(1), tq = q.size(2), dim = q.size(3);
  const int64_t hkv = k.size(1), tk = k.size(2);
  TORCH_CHECK(batch == ctx_.valid.size(0) && k.size(0) == batch, "capture_sdpa: batch of q ",
              q.sizes(), " / k ", k.sizes(), " at layer ", layer, " differs from the input batch ",
              ctx_.valid.size(0));
  TORCH_CHECK(hkv > 0 && hq % hkv == 0, "capture_sdpa: ", hq, " query heads are not a "
              "multiple of ", hkv, " key heads at layer ", layer);
  TORCH_CHECK(k.size(3) == dim, "capture_sdpa: q head dim ", dim, " != k head dim ", k.size(3));
  TORCH_CHECK(tk <= ctx_.valid.size(1) && tq <= tk, "capture_sdpa: q ", q.sizes(), " / k ",
              k.sizes(), " at layer ", layer, " do not match the ", ctx_.valid.size(1),
              " input tokens");
  result_.kv_heads[layer] = hkv;
  result_.qk_dims[layer] = dim;
  if (v.defined() && v.dim() == 4) result_.v_dims[layer] = v.size(3);
}

Recorder::SdpaHeads Recorder::sdpa_heads(const LayerAccumulator& acc, const torch::Tensor& q, const torch::Tensor& k,
                                         bool fused) const {
  const int64_t hq = q.size(1), group = hq / k.size(1);
  SdpaHeads h;
  h.heads = acc.block_heads();
  h.all = h.heads.empty();
  if (h.all) {
    // repeat_interleave: no index tensor to ship to the device.
    for (int64_t i = 0; i < hq; ++i) h.heads.push_back(i);
    h.q = q.to(torch::kFloat);
    if (fused) {  // the fused route maps heads itself: no copies of K
      h.k = k.to(torch::kFloat);
      h.k_group = group;
    } else {
      h.k = (group == 1 ? k : k.repeat_interleave(group, 1)).to(torch::kFloat);
    }
    return h;
  }
  // A subset (full maps of a few heads): q head i reads kv head i / group.
  std::vector<int64_t> kv_idx;
  for (int64_t i : h.heads) kv_idx.push_back(i / group);
  h.index = torch::tensor(h.heads, torch::kLong).to(q.device());
  h.q = q.index_select(1, h.index).to(torch::kFloat);
  h.k = k.index_select(1, torch::tensor(kv_idx, torch::kLong).to(q.device())).to(torch::kFloat);
  return h;
}

torch::Tensor Recorder::on_sdpa(const torch::Tensor& q, const torch::Tensor& k,
                                const std::optional<torch::Tensor>& mask, bool is_causal, std::optional<double> scale,
                                int64_t op_layer, const torch::Tensor& v, double dropout_p) {
  const int64_t layer = resolve_layer(op_layer);
  check_sdpa(q, k, v, layer);
  torch::NoGradGuard no_grad;
  const bool fused = q.is_cpu() && ctx_.sdpa_route == "auto";  // fused_sdpa.cpp; else sdpa_blocks.cpp
  LayerAccumulator* acc = accumulator(layer, q.size(1), q.size(2), k.size(2), q.device(), /*whole_rows=*/fused);
  if (!acc) return {};
  SdpaHeads h = sdpa_heads(*acc, q, k, fused);
  const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  torch::Tensor m = mask_4d(mask);
  const torch::Tensor m_all = m;  // every head's mask, for the device's kernel
  if (m.defined() && m.size(1) > 1 && !h.all) m = m.index_select(1, h.index);
  const double hidden_below = hidden_below_of(m);
  if (spec_.value_weighted && spec_.aggregates_layer(layer))
    remembering([&] { value_weighted_pass(layer, q, k, v, m_all, is_causal, s); });
  if (fused) {
    result_.routes[layer] = "fused";
    torch::Tensor out = fused_route(*acc, h, m, hidden_below, is_causal, s, v, dropout_p, q);
    fold_rollout(*acc);
    return out;
  }
  // Elsewhere (CUDA, other devices, or the CPU when asked): ATen ops block by block
  // (sdpa_blocks.cpp), with the site's output and each row's log-sum-exp from the device's
  // fused kernel when V is given, so the site's attention runs once.
  SdpaBlocks site;
  site.q = h.q;
  site.k = h.k;
  site.mask = m;
  site.hidden_below = hidden_below;
  site.is_causal = is_causal;
  site.scale = s;
  AttentionLse fa;
  if (v.defined() && dropout_p == 0.0 && ctx_.sdpa_route != "softmax") {
    fa = attention_with_lse(q, k, v, m_all, is_causal, s);
    if (fa.lse.defined()) site.lse = h.all ? fa.lse : fa.lse.index_select(1, h.index);
  }
  result_.routes[layer] = site.lse.defined() ? "blocks" : "softmax";
  const int64_t step = chunk_rows(q.size(0), static_cast<int64_t>(h.heads.size()), k.size(2), q.device());
  add_sdpa_blocks(*acc, site, step, ctx_, ws_);
  fold_rollout(*acc);
  return fa.out;  // undefined: the site runs SDPA itself
}

torch::Tensor Recorder::fused_route(LayerAccumulator& acc, const SdpaHeads& h, const torch::Tensor& m,
                                    double hidden_below, bool is_causal, double scale, const torch::Tensor& v,
                                    double dropout_p, const torch::Tensor& q) {
  // The whole layer at once (fused_sdpa.cpp).
  const int64_t batch = q.size(0), hq = q.size(1), tq = q.size(2), hkv = h.k.size(1), tk = h.k.size(2);
  torch::Tensor mf;  // the mask as bool / fp32 [B, H, Tq, Tk] view
  if (m.defined()) {
    mf = m.scalar_type() == torch::kBool || m.scalar_type() == torch::kFloat ? m : m.to(torch::kFloat);
    mf = mf.expand({batch, static_cast<int64_t>(h.heads.size()), tq, tk});
    if (mf.stride(3) > 1) mf = mf.contiguous();
  }
  // The output too (P·V from the same probabilities) when every head is computed in fp32 and
  // nothing is random: the site's SDPA is then not run a second time.
  torch::Tensor out, vf;
  if (v.defined() && h.all && dropout_p == 0.0 && q.scalar_type() == torch::kFloat &&
      h.k.scalar_type() == torch::kFloat && v.scalar_type() == torch::kFloat && v.dim() == 4 && v.size(0) == batch &&
      v.size(1) == hkv && v.size(2) == tk) {
    vf = v;
    // [B, Hq, Tq, Dv] over [B, Tq, Hq, Dv] memory, as the fused kernel lays it out: the
    // model's usual transpose(1, 2).reshape(B, Tq, Hq * Dv) is then a view, not a copy.
    out = torch::empty({batch, tq, hq, v.size(3)}, q.options()).transpose(1, 2);
  }
  LayerAccumulator::SdpaInputs in;
  in.q = h.q, in.k = h.k, in.group = h.k_group, in.scale = scale, in.mask = mf, in.v = vf, in.out = out;
  in.hidden_below = static_cast<float>(hidden_below), in.causal = is_causal;
  if (m.defined()) in.row_keys = masks_.row_keys(m, hidden_below, tq);
  acc.add_sdpa(in, ctx_, ws_);
  if (acc.wants_visibility()) acc.add_counts(masks_.visible_counts(m, ctx_.valid, hidden_below, is_causal, tq, tk));
  return out;
}

void Recorder::value_weighted_pass(int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& mask, bool is_causal, double scale) {
  TORCH_CHECK_VALUE(v.defined() && v.dim() == 4 && v.size(2) == k.size(2), "value_weighted: layer ", layer,
                    "'s SDPA call is one attnscope only observes (an archive from before attnscope::sdpa): its "
                    "value vectors are not shown to the operators; re-export the model");
  const int64_t hq = q.size(1), group = hq / k.size(1);
  auto acc =
      std::make_unique<LayerAccumulator>(vw_spec_, layer, ctx_.valid.size(0), hq, q.size(2), k.size(2), q.device());
  SdpaBlocks site;  // a pass of its own over every head: softmax per block, then the weights
  site.q = q.to(torch::kFloat);
  site.k = (group == 1 ? k : k.repeat_interleave(group, 1)).to(torch::kFloat);
  site.mask = mask;
  site.hidden_below = hidden_below_of(mask);
  site.is_causal = is_causal;
  site.scale = scale;
  const auto norms = v.to(torch::kFloat).norm(2, -1);  // [B, Hkv, Tk]: ‖v_j‖ of each KV head
  site.key_weight = group == 1 ? norms : norms.repeat_interleave(group, 1);
  add_sdpa_blocks(*acc, site, chunk_rows(q.size(0), hq, k.size(2), q.device()), ctx_, ws_);
  vw_acc_[layer] = std::move(acc);
  vw_norms_[layer] = site.key_weight;
}

RecordResult Recorder::finish() {
  const int64_t n = result_.layers_run;
  std::vector<int64_t> ran;  // layers whose attention ran (every layer but a hybrid's others)
  for (int64_t l = 0; l < n; ++l)
    if (result_.heads[l] >= 0) ran.push_back(l);
  auto need = [&](int64_t l, const char* what) {
    TORCH_CHECK(l < n, what, ": layer ", l, " out of range: model has ", n,
                " layers (0..", n - 1, ") with attention");
    if (result_.heads[l] >= 0) return;
    std::ostringstream list;
    for (size_t i = 0; i < ran.size(); ++i) list << (i ? ", " : "") << ran[i];
    TORCH_CHECK_VALUE(false, what, ": layer ", l, " has no softmax attention in this model (a layer of another kind); "
                "its attention layers are ", list.str());
  };
  for (const auto& lh : spec_.heads) need(lh.first, "heads");
  for (int64_t l : spec_.layer_maps) need(l, "layer_maps");
  for (int64_t l : spec_.layers) need(l, "layers");

  std::vector<int64_t> agg_layers;
  if (spec_.wants_aggregates()) agg_layers = spec_.layers.empty() ? ran : spec_.layers;
  for (int64_t l : agg_layers)
    TORCH_CHECK(acc_.count(l), "layers: layer ", l, " ran no capture");
  // Layer by layer: each layer's results go straight into the stacked [L, ...] tensors and its
  // accumulators are freed before the next, so the run's peak (the logits are alive here) holds
  // one copy of the aggregates, not three (accumulators, finished layers, stack).
  std::map<std::string, torch::Tensor>& out = result_.captures;
  auto stack = [&](std::map<int64_t, std::unique_ptr<LayerAccumulator>>& accs, const std::string& prefix) {
    for (auto& kv : accs) {
      const int64_t l = kv.first;
      auto done = kv.second->finish(ctx_);
      kv.second.reset();
      for (auto& nt : done) {
        const std::string name = prefix + nt.first;
        if (nt.first.find('/') != std::string::npos) {  // maps keep their own names
          out[name] = std::move(nt.second);
          continue;
        }
        if (!prefix.empty() && nt.first == "received_count") continue;  // the plain one's divisor, the same
        for (size_t i = 0; i < agg_layers.size(); ++i) {                // a layer may be listed twice
          if (agg_layers[i] != l) continue;
          auto it = out.find(name);
          if (it == out.end()) {
            std::vector<int64_t> sizes{static_cast<int64_t>(agg_layers.size())};
            for (int64_t d : nt.second.sizes()) sizes.push_back(d);
            // NaN for layers that do not give this name (sink_share: layers without sinks)
            it = out.emplace(name, torch::full(sizes, std::numeric_limits<float>::quiet_NaN(), nt.second.options()))
                     .first;
          }
          // Layers differ in head count only in exotic models: refused by name, not broadcast.
          TORCH_CHECK(it->second.sizes().slice(1) == nt.second.sizes(), name, ": layer ", l, " gives ",
                      nt.second.sizes(), " but an earlier layer gave ", it->second.sizes().slice(1),
                      " (layers with different head counts cannot be stacked)");
          it->second.select(0, static_cast<int64_t>(i)).copy_(nt.second);
        }
      }
    }
  };
  stack(acc_, "");
  stack(vw_acc_, "vw_");
  if (!vw_norms_.empty()) out["vw_value_norm"] = stacked_value_norms(agg_layers);
  if (!agg_layers.empty())
    result_.captures["aggregate_layers"] = torch::tensor(agg_layers, torch::kLong);
  if (spec_.rollout) {
    TORCH_CHECK_VALUE(rollout_.defined(), "rollout: no attention layer ran in this forward");
    out["rollout"] = ctx_.has_padding ? torch::where(ctx_.valid.unsqueeze(2), rollout_,
                                                     std::numeric_limits<float>::quiet_NaN())
                                      : rollout_;  // rows of padded queries are undefined, as in maps
    rollout_ = torch::Tensor();
  }
  acc_.clear();
  return result_;
}

}  // namespace attnscope
