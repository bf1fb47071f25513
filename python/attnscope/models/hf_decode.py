"""The KV-cache `decode` method for archives traced from transformers models (the transformers and
graph routes of export_hf), so that generation from any causal family costs a token per step.

decode(input_ids [B, t], attention_mask [B, P + t], past_k [L, B, Hc, P, Dk], past_v [L, B, Hc, P, Dv])
  -> (logits [B, t, V], k [L, B, Hc, P + t, Dk], v [L, B, Hc, P + t, Dv])

is what attnscope::Model::generate calls (the signature of attnscope's own Llama-family module).
The cache is transformers' own DynamicCache, rebuilt from the stacked tensors at each step and
without the config, so every layer keeps every position (a sliding-window layer's mask hides
the old ones, as in the forward); positions come from the attention mask, as in the forward
(hf_inputs). Hc, Dk and
Dv are whatever the model caches (DeepSeek-V3 caches compressed latents, Falcon one head), read
off a real call and stated in attnscope.json (cache_heads, cache_k_dim, cache_v_dim).

A traced decode is kept only when it reproduces the traced forward (check_decode): prefill and
two single-token steps of a left-padded batch against the forward's logits."""
import contextlib
import os
import warnings

import torch

# Tolerance of decode against forward, relative to the largest |logit| (at least 1): the same
# model on shorter inputs, whose kernels may accumulate in another order (bf16: 8 bits of mantissa).
DECODE_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 1e-2}


@contextlib.contextmanager
def tracer_warnings(into):
    """While tracing: each TracerWarning (control flow the trace froze from the example's values
    or shapes) is appended to `into` once as 'message (file:line)', the model's own files first;
    other warnings are dropped."""
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        yield into
    for w in got:
        # attnscope's own scripted branches (hf_attention) survive tracing: not evidence
        if issubclass(w.category, torch.jit.TracerWarning) and os.sep + "attnscope" + os.sep not in w.filename:
            text = f"{str(w.message).split(' might ')[0].split('. ')[0].strip()} ({os.path.basename(w.filename)}:{w.lineno})"
            if text not in into:
                into.append(text)
    into.sort(key=lambda t: "modeling_" not in t)


class WithDecode(torch.nn.Module):
    """forward(input_ids, attention_mask) -> logits (as export_hf's forward) and decode (above);
    positions and padded ids as `call` (hf_inputs.Call) says."""

    def __init__(self, model, n_layers, call):
        super().__init__()
        self.model, self.n_layers, self.call = model, n_layers, call

    def forward(self, input_ids, attention_mask):
        return self.model(**self.call.kwargs(input_ids, attention_mask), use_cache=False).logits

    def decode(self, input_ids, attention_mask, past_k, past_v):
        from transformers import DynamicCache
        cache = DynamicCache()
        for layer in range(self.n_layers):
            cache.update(past_k[layer], past_v[layer], layer)
        kw = self.call.kwargs(input_ids, attention_mask, new_tokens=input_ids.shape[1])
        out = self.model(**kw, past_key_values=cache, use_cache=True)
        layers = out.past_key_values.layers
        return (out.logits, torch.stack([layers[i].keys for i in range(self.n_layers)]),
                torch.stack([layers[i].values for i in range(self.n_layers)]))


def cache_shape(model, n_layers, device):
    """(Hc, Dk, Dv) of what `model` caches per layer, from one 3-token call; None when its cache
    is not a per-layer keys/values DynamicCache of one shape (then no decode is traced)."""
    ids = torch.arange(3, device=device)[None] % max(2, model.config.get_text_config().vocab_size)
    with torch.no_grad():
        pkv = model(input_ids=ids, use_cache=True).past_key_values
    layers = getattr(pkv, "layers", None)
    if layers is None or len(layers) != n_layers:
        return None
    shapes = {(tuple(x.keys.shape), tuple(x.values.shape)) for x in layers}
    if len(shapes) != 1:
        return None
    (kb, kh, kt, kd), (vb, vh, vt, vd) = next(iter(shapes))
    return (kh, kd, vd) if (kb, kt) == (1, 3) and (vb, vh, vt) == (1, kh, 3) else None


def trace_with_decode(module, ids, mask, shape, n_layers, warned):
    """torch.jit.trace_module of `module` (a WithDecode) with forward on (ids, mask) and decode on
    a step of 2 tokens after 3 cached positions of row 0 (a general shape: no branch of a
    1-token step or an empty cache is baked in). The tracer's warnings go to `warned`."""
    hc, dk, dv = shape
    p = next(module.parameters())
    past_k = torch.zeros(n_layers, 1, hc, 3, dk, dtype=p.dtype, device=p.device)
    past_v = torch.zeros(n_layers, 1, hc, 3, dv, dtype=p.dtype, device=p.device)
    step = ids[:1, 3:5]
    with torch.no_grad(), tracer_warnings(warned):
        return torch.jit.trace_module(module, {"forward": (ids, mask),
                                               "decode": (step, torch.ones(1, 5, dtype=mask.dtype, device=mask.device),
                                                          past_k, past_v)}, check_trace=False)


def check_decode(traced, ids, mask, shape, n_layers):
    """Max |decode - forward| over the logits of a prefill of all but the last 2 positions and
    two 1-token steps, on the left-padded example batch. Raises ValueError above DECODE_TOL (× the largest |logit|)."""
    hc, dk, dv = shape
    p = next(traced.parameters())
    B, T = ids.shape
    empty_k = torch.zeros(n_layers, B, hc, 0, dk, dtype=p.dtype, device=p.device)
    empty_v = torch.zeros(n_layers, B, hc, 0, dv, dtype=p.dtype, device=p.device)
    real = mask.bool()
    with torch.no_grad():
        full = traced.forward(ids, mask).float()
        n = T - 2
        logits, k, v = traced.decode(ids[:, :n], mask[:, :n], empty_k, empty_v)
        worst = (logits.float() - full[:, :n]).masked_fill(~real[:, :n, None], 0).abs().max().item()
        for t in range(n, T):
            logits, k, v = traced.decode(ids[:, t:t + 1], mask[:, :t + 1], k, v)
            worst = max(worst, (logits.float()[:, 0] - full[:, t]).abs().max().item())
    scale = max(1.0, full.masked_fill(~real[..., None], 0).abs().max().item())
    tol = DECODE_TOL.get(p.dtype, 3e-2) * scale
    if not worst <= tol:
        raise ValueError(f"the traced decode differs from the forward by {worst:.3g} (> {tol:.3g}, "
                         f"{DECODE_TOL.get(p.dtype, 3e-2):g} of the largest logit)")
    return worst
