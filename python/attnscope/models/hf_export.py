"""export_hf: a transformers causal LM -> TorchScript archive with attnscope's capture operators.

Two attention functions are registered with transformers' attention interface:
  "attnscope_sdpa":  capture_sdpa(q, k, mask, is_causal, scale, layer) on the query, then
                     transformers' own SDPA path (the fast kernel keeps running);
  "attnscope_eager": softmax(q·kᵀ·scale + mask) in fp32 -> capture(probs, layer) -> probs·v.
Masks come from transformers' sdpa/eager mask builders, so padding and sliding windows are
the model's own. A thin wrapper returning logits is traced (transformers 5 has no torchscript
flag). The traced capture is then checked against the model's eager `output_attentions`.
"""
import json
import os
import warnings
from typing import Optional

import torch

from .export import FORMAT_VERSION

ATTENTIONS = ("sdpa", "eager")
# Families the project's own Llama-family module covers (the fallback when tracing fails).
FALLBACK_FAMILIES = ("llama", "qwen2", "mistral")
_UNSUPPORTED_KWARGS = ("softcap", "sinks", "s_aux", "position_bias")


def _layer(module):
    idx = getattr(module, "layer_idx", None)
    if idx is None:
        raise ValueError(f"{type(module).__name__} has no layer_idx: attnscope needs the layer index "
                         "of each attention module")
    return int(idx)


def _check_kwargs(module, kwargs):
    for k in _UNSUPPORTED_KWARGS:
        if kwargs.get(k) is not None:
            raise NotImplementedError(f"{type(module).__name__} passes {k}=...: attention with {k} "
                                      "is not supported by attnscope's attention functions")


_SDPA_CAPTURE = None


@torch.jit.script
def exact_causal(mask: torch.Tensor, tq: int, tk: int) -> bool:
    """True when a bool mask [B, 1|H, T, T] (True = attend) is exactly the causal one."""
    if mask.dtype != torch.bool or tq != tk or mask.size(-1) != tk or mask.size(-2) != tq:
        return False
    full = mask.size(0) * mask.size(1) * tq * (tq + 1) // 2
    return (not bool(torch.triu(mask, 1).any())) and int(mask.sum()) == full


def _sdpa_capture_fn():
    """TorchScript function (scripted, so its branch survives tracing): a mask that is exactly
    causal (what transformers builds for unpadded input while tracing) becomes is_causal=True
    with no mask, so SDPA keeps its flash kernel and the recorder skips the upper triangle;
    any other mask (padding, sliding window) is passed on as it is."""
    global _SDPA_CAPTURE
    if _SDPA_CAPTURE is None:
        from .. import _core  # noqa: F401  (registers the capture operators)

        def sdpa_capture(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_rep: torch.Tensor,
                         v_rep: torch.Tensor, mask: Optional[torch.Tensor], scale: float, layer: int,
                         causal: bool) -> torch.Tensor:
            exact = False
            if mask is not None:
                exact = exact_causal(mask, q.size(2), k.size(2))
            if mask is None or exact:
                is_causal = causal or exact
                q = torch.ops.attnscope.capture_sdpa(q, k, None, is_causal, scale, layer)
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k_rep, v_rep, attn_mask=None, dropout_p=0.0, is_causal=is_causal, scale=scale)
            q = torch.ops.attnscope.capture_sdpa(q, k, mask, False, scale, layer)
            return torch.nn.functional.scaled_dot_product_attention(
                q, k_rep, v_rep, attn_mask=mask, dropout_p=0.0, is_causal=False, scale=scale)

        _SDPA_CAPTURE = torch.jit.script(sdpa_capture)
    return _SDPA_CAPTURE


def attnscope_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                   is_causal=None, **kwargs):
    """transformers attention function: capture_sdpa on the query, then SDPA (see _sdpa_capture_fn)."""
    _check_kwargs(module, kwargs)
    if dropout and module.training:
        raise NotImplementedError("attention dropout in training mode: export the model in eval()")
    groups = getattr(module, "num_key_value_groups", 1)
    k_rep, v_rep = key, value
    if groups > 1:  # SDPA gets repeated K/V; the recorder maps query heads to KV heads itself
        k_rep = key.repeat_interleave(groups, dim=1)
        v_rep = value.repeat_interleave(groups, dim=1)
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    mask = attention_mask
    if mask is not None and mask.shape[-1] != key.shape[2]:
        mask = mask[..., : key.shape[2]]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(query.shape[2] > 1 and causal)
    out = _sdpa_capture_fn()(query, key, value, k_rep, v_rep, mask, scale, _layer(module), causal)
    return out.transpose(1, 2).contiguous(), None


def attnscope_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: materialised softmax in fp32 -> capture -> · V."""
    _check_kwargs(module, kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each KV head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        m = attention_mask[:, :, :, : key.shape[-2]]
        scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min) if m.dtype == torch.bool else scores + m
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
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


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _facts(model):
    cfg = model.config
    tc = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = tc.num_attention_heads
    kv = getattr(tc, "num_key_value_heads", None) or heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    return tc, {"num_layers": tc.num_hidden_layers, "num_heads": heads, "num_kv_heads": kv,
                "head_dim": head_dim, "vocab_size": tc.vocab_size,
                "bos_token_id": getattr(tc, "bos_token_id", None),
                "eos_token_id": getattr(tc, "eos_token_id", None), "family": tc.model_type}


def _tokenizer_files(tokenizer):
    """Extra files for the archive: tokenizer.json (fast tokenizers, tokenizers.Tokenizer), or
    for a tokenizer without one tokens.json, the id -> token strings (labels; no text input)."""
    if tokenizer is None:
        return {}
    if hasattr(tokenizer, "to_str"):                      # tokenizers.Tokenizer
        return {"tokenizer.json": tokenizer.to_str()}
    backend = getattr(tokenizer, "backend_tokenizer", None)  # transformers fast tokenizer
    if backend is not None:
        return {"tokenizer.json": backend.to_str()}
    if hasattr(tokenizer, "convert_ids_to_tokens"):       # slow tokenizer: strings only
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        return {"tokens.json": json.dumps([t if isinstance(t, str) else "" for t in tokens])}
    raise ValueError(f"tokenizer {type(tokenizer).__name__}: expected a transformers tokenizer or a "
                     "tokenizers.Tokenizer (or tokenizer=None)")


def _example(vocab, length, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, length), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[1, : length // 4] = 0  # left padding, as generation pipelines pad
    return ids, mask


def attention_diffs(am, model, ids, mask):
    """Per layer: max |captured - transformers eager output_attentions| over real query rows
    (lists `raw`), and the same beyond the reference's own rounding (`beyond`: bf16/fp16
    references hold 8/11 significant bits). am: an attnscope Model of `model`; ids/mask [B, T]."""
    L, H = am.n_layers, am.n_heads
    trace = am.run(ids.cpu(), capture={"heads": [(l, h) for l in range(L) for h in range(H)], "top_k": 0},
                   attention_mask=mask.cpu())
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation(impl)
    ulp = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}.get(ref[0].dtype, 0.0)
    ok = mask.cpu().bool()[:, None, :, None]
    raw, beyond = [], []
    for l in range(L):
        got = torch.stack([trace.get(f"head_map/L{l}H{h}") for h in range(H)], 1).float()  # [B, H, T, T]
        want = ref[l].float().cpu()
        d = (got - want).abs().masked_fill(~ok, 0)
        raw.append(float(d.max()))
        beyond.append(float((d - want.abs() * ulp).clamp_min(0).max()))
    return raw, beyond


def _verify(model, archive, ids, mask, tol):
    """Max |captured - transformers eager output_attentions| over layers, valid query rows."""
    from ..api import load
    worst = max(attention_diffs(load(archive, device=str(ids.device)), model, ids, mask)[0])
    if not worst <= tol:
        raise ValueError(f"captured attention differs from transformers' eager attentions by {worst:.3g} "
                         f"(> {tol:g}): this {model.config.model_type} model's attention is not reproduced")
    return worst


def trace_hf(model, *, attention="sdpa", example_length=16):
    """(traced ScriptModule forward(input_ids, attention_mask) -> logits, attnscope.json facts)
    of a transformers causal LM with attnscope's attention functions; the traced module shares
    the model's parameters (no copy). attnscope.from_module(traced, info=facts) runs it without
    an archive (how bench/device_check.py handles a 7B model)."""
    import transformers
    if attention not in ATTENTIONS:
        raise ValueError(f"attention {attention!r}: expected one of {ATTENTIONS}")
    register()
    _, facts = _facts(model)
    facts.update(format_version=FORMAT_VERSION, causal=True, attention=attention,
                 transformers=transformers.__version__, torch=torch.__version__, route="transformers",
                 dtype=str(next(model.parameters()).dtype).replace("torch.", ""))
    device = next(model.parameters()).device
    ids, mask = _example(facts["vocab_size"], example_length, device)
    old_impl = model.config._attn_implementation
    model.eval()
    try:
        model.set_attn_implementation(f"attnscope_{attention}")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(_LogitsOnly(model), (ids, mask), check_trace=False)
    finally:
        model.set_attn_implementation(old_impl)
    return traced, facts


def export_hf(model, tokenizer, path, *, attention="sdpa", verify=True, fallback=True,
              example_length=16, tol=None):
    """Traces a transformers causal LM (a PreTrainedModel, or a checkpoint folder name) to a
    TorchScript archive at `path` with capture operators at every attention site.

    attention: "sdpa" (transformers' SDPA kernel, probabilities recomputed by the recorder) or
    "eager". The archive holds attnscope.json (layers, heads, KV heads, head_dim, vocab,
    BOS/EOS, family, transformers/torch versions) and tokenizer.json when `tokenizer` is given
    (tokens.json, the id -> token strings, for a tokenizer that has no tokenizer.json).
    With verify=True the archive's captured maps are compared with the model's eager
    output_attentions on a padded example (tol: 1e-5 for fp32, 1e-2 for bf16/fp16). When tracing
    or the check fails and the family is one of FALLBACK_FAMILIES, the project's own
    Llama-family module is exported instead (fallback=False raises). Returns a dict with the
    path, the route taken ("transformers" or "attnscope-module"), the check's max difference
    and the reason for a fallback."""
    import transformers
    if attention not in ATTENTIONS:
        raise ValueError(f"attention {attention!r}: expected one of {ATTENTIONS}")
    if isinstance(model, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        src = os.fspath(model)
        model = AutoModelForCausalLM.from_pretrained(src)
        if tokenizer is None and os.path.isfile(os.path.join(src, "tokenizer.json")):
            tokenizer = AutoTokenizer.from_pretrained(src)
    if not isinstance(model, transformers.PreTrainedModel):
        raise ValueError(f"model: expected a transformers PreTrainedModel or a checkpoint folder, got {type(model).__name__}")
    tc, facts = _facts(model)
    family = facts["family"]
    dtype = next(model.parameters()).dtype
    tol = tol if tol is not None else (1e-5 if dtype == torch.float32 else 2e-2)
    extra = _tokenizer_files(tokenizer)
    tok_meta = {"tokenizer": next(iter(extra), None), "exported_by": "attnscope.export_hf"}
    ids, mask = _example(facts["vocab_size"], example_length, next(model.parameters()).device)
    try:
        traced, meta = trace_hf(model, attention=attention, example_length=example_length)
        meta.update(tok_meta)
        extra["attnscope.json"] = json.dumps(meta)
        _save(traced, path, extra)
        worst = _verify(model, path, ids, mask, tol) if verify else None
        return {"path": str(path), "route": "transformers", "max_abs_diff": worst, "reason": None}
    except Exception as e:  # noqa: BLE001 - reported, then the fallback or a clear error
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if not fallback or family not in FALLBACK_FAMILIES:
            raise ValueError(
                f"cannot export this {family} model with transformers {transformers.__version__} "
                f"(attention={attention!r}): {reason}. "
                + (f"attnscope's own module covers {', '.join(FALLBACK_FAMILIES)} (fallback=True)."
                   if family not in FALLBACK_FAMILIES else "Retry with fallback=True.")
                + " Or export the model yourself so that its softmax/SDPA is visible in the graph "
                  "and load it with attnscope.load (the graph pass inserts the capture operators).") from e
    meta = {**facts, **tok_meta, "format_version": FORMAT_VERSION, "causal": True, "attention": attention,
            "transformers": transformers.__version__, "torch": torch.__version__,
            "dtype": str(dtype).replace("torch.", "")}
    return _fallback(model, tc, path, attention, meta, extra, ids, mask, tol, verify, reason)


def _fallback(model, tc, path, attention, meta, extra, ids, mask, tol, verify, reason):
    from .llama import LlamaConfig, LlamaForCausalLM
    warnings.warn(f"export_hf: tracing the transformers model failed ({reason}); exporting "
                  f"attnscope's Llama-family module with the same weights instead")
    own = LlamaForCausalLM(LlamaConfig.from_hf(tc.to_dict()), attention=attention)
    own.load_hf_state_dict({k: v.detach() for k, v in model.state_dict().items()})
    own = own.to(device=ids.device, dtype=next(model.parameters()).dtype).eval()
    meta.update(route="attnscope-module", fallback_reason=reason, config=own.cfg.to_dict())
    extra["attnscope.json"] = json.dumps(meta)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(own, (ids, mask), check_trace=False)
    _save(traced, path, extra)
    worst = _verify(model, path, ids, mask, tol) if verify else None
    return {"path": str(path), "route": "attnscope-module", "max_abs_diff": worst, "reason": reason}


def _save(traced, path, extra):
    tmp = f"{path}.tmp{os.getpid()}"
    torch.jit.save(traced, tmp, _extra_files=extra)
    os.replace(tmp, path)
