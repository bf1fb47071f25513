"""attnscope's attention functions for transformers' attention interface.

Registered as "attnscope_sdpa" and "attnscope_eager" (attention and mask functions):
  attnscope_sdpa:  attnscope::sdpa(q, k, v, mask, ...): SDPA when nothing is captured; while
                   capturing, the recorder recomputes what it needs (and, on the CPU, the output);
  attnscope_eager: softmax(q·kᵀ·scale [softcapped] + mask) in fp32 -> capture(probs, layer) -> ·V.
Attention logit softcapping (Gemma2: tanh(s / c) · c before the mask) has no SDPA kernel, so
attnscope_sdpa computes such a layer like attnscope_eager and says so in `used`.
"""
from typing import Optional

import torch

# Keyword arguments of transformers' attention calls that change the math and that neither
# function implements: a model passing one is exported by the graph route instead.
UNSUPPORTED_KWARGS = ("sinks", "s_aux", "position_bias")
# What the functions actually ran, per requested function: {"attnscope_sdpa": {"sdpa", "eager (softcap)"}}.
used = {}
# The last call's (module, query, key): a module that calls the attention again on the same q and
# k (DiffLlama: the same softmax map over each half of V) is captured once.
_last = [None, None, None]


def _repeat(module, query, key):
    """True when this call repeats the previous one's module, query and key (same map)."""
    same = _last[0] is module and _last[1] is query and _last[2] is key
    _last[:] = [module, query, key]
    return same


def _layer(module):
    idx = getattr(module, "layer_idx", None)
    if idx is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx: attnscope needs the layer index "
                         "of each attention module")
    return int(idx)


def _check_kwargs(module, kwargs):
    for k in UNSUPPORTED_KWARGS:
        if kwargs.get(k) is not None:
            raise NotImplementedError(f"{type(module).__name__} passes {k}=...: attention with {k} "
                                      "is not implemented by attnscope's attention functions")


@torch.jit.script
def exact_causal(mask: torch.Tensor, tq: int, tk: int) -> bool:
    """True when a bool mask [B, 1|H, T, T] (True = attend) is exactly the causal one."""
    if mask.dtype != torch.bool or tq != tk or mask.size(-1) != tk or mask.size(-2) != tq:
        return False
    full = mask.size(0) * mask.size(1) * tq * (tq + 1) // 2
    return (not bool(torch.triu(mask, 1).any())) and int(mask.sum()) == full


_SDPA_CAPTURE = None


def _sdpa_capture_fn():
    """TorchScript function (scripted, so its branch survives tracing): a mask that is exactly
    causal (what transformers builds for unpadded input while tracing) becomes is_causal=True
    with no mask, so SDPA keeps its flash kernel and the recorder skips the upper triangle;
    any other mask (padding, sliding window, bidirectional) is passed on as it is."""
    global _SDPA_CAPTURE
    if _SDPA_CAPTURE is None:
        from .. import _core  # noqa: F401  (registers the capture operators)

        def sdpa_capture(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                         scale: float, layer: int, causal: bool) -> torch.Tensor:
            exact = False
            if mask is not None:
                exact = exact_causal(mask, q.size(2), k.size(2))
            # attnscope::sdpa is SDPA itself when nothing is captured (K/V repeated on CUDA as
            # before); while capturing on the CPU the recorder's probabilities give the output too.
            gqa = q.size(1) != k.size(1)
            if mask is None or exact:
                is_causal = causal or exact
                return torch.ops.attnscope.sdpa(q, k, v, None, 0.0, is_causal, scale, gqa, layer)
            return torch.ops.attnscope.sdpa(q, k, v, mask, 0.0, False, scale, gqa, layer)

        _SDPA_CAPTURE = torch.jit.script(sdpa_capture)
    return _SDPA_CAPTURE


def _note(fn, what):
    used.setdefault(fn, set()).add(what)


def attnscope_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                   is_causal=None, softcap=None, **kwargs):
    """transformers attention function: capture_sdpa on the query, then SDPA (see _sdpa_capture_fn)."""
    _check_kwargs(module, kwargs)
    if dropout and module.training:
        raise NotImplementedError("attention dropout in training mode: export the model in eval()")
    if softcap is not None:  # no fused kernel softcaps: materialise this layer
        _note("attnscope_sdpa", "eager (attention logit softcapping has no SDPA kernel)")
        return attnscope_eager(module, query, key, value, attention_mask, scaling=scaling, softcap=softcap,
                               **kwargs)
    _note("attnscope_sdpa", "sdpa")
    # K/V keep their KV heads: attnscope::sdpa groups them (enable_gqa), the recorder maps query
    # heads to KV heads itself.
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    mask = attention_mask
    if mask is not None and mask.shape[-1] != key.shape[2]:
        mask = mask[..., : key.shape[2]]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(query.shape[2] > 1 and causal)
    if _repeat(module, query, key):  # the same map again: computed, not captured twice
        gqa = int(query.shape[1]) != int(key.shape[1])
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                               is_causal=causal and mask is None, scale=scale,
                                                               enable_gqa=gqa)
        return out.transpose(1, 2).contiguous(), None
    out = _sdpa_capture_fn()(query, key, value, mask, scale, _layer(module), causal)
    return out.transpose(1, 2).contiguous(), None


def attnscope_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
                    **kwargs):
    """transformers attention function: materialised softmax in fp32 -> capture -> · V."""
    _check_kwargs(module, kwargs)
    again = _repeat(module, query, key)  # before key is repeated for its query heads
    if softcap is None:
        _note("attnscope_eager", "eager")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each KV head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:  # Gemma2: logits squashed into (-softcap, softcap) before the mask
        _note("attnscope_eager", "eager with attention logit softcapping")
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        m = attention_mask[:, :, :, : key.shape[-2]]
        scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min) if m.dtype == torch.bool else scores + m
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if not again:  # the same map again (DiffLlama's second call): not captured twice
        probs = torch.ops.attnscope.capture(probs, _layer(module))
    out = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return out, probs


def register():
    """Registers attnscope_sdpa / attnscope_eager (attention and mask functions) with transformers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
    from .. import _core  # noqa: F401  (registers the capture operators)
    AttentionInterface.register("attnscope_sdpa", attnscope_sdpa)
    AttentionInterface.register("attnscope_eager", attnscope_eager)
    AttentionMaskInterface.register("attnscope_sdpa", sdpa_mask)
    AttentionMaskInterface.register("attnscope_eager", eager_mask)
