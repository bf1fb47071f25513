"""export_hf: a transformers model (causal LM or encoder) -> TorchScript archive for attnscope.

Routes, tried in order until one exports and passes the check:
  "transformers":     attnscope's attention functions (hf_attention) registered with transformers'
                      attention interface; the archive carries the capture operators.
  "graph":            the model traced with its own attention (`attention` where the model can
                      switch, else what it was built with); attnscope.load's graph pass finds
                      its softmax / SDPA sites. Works for families outside the interface
                      (GPT-J, Falcon, Bloom) and for attention the functions do not implement.
  "attnscope-module": the project's own Llama-family module with the same weights (Llama,
                      Qwen2, Mistral).
A thin wrapper returning logits (or, for a model without LM head, the last hidden states) is
traced. The check compares the archive's maps with eager `output_attentions` of a correct
eager reference (a fresh eager copy for models that cannot switch attention: transformers
5.17's Falcon built for SDPA adds its bool mask as numbers when asked for attentions).
"""
import contextlib
import copy
import json
import os
import warnings

import torch

from . import hf_attention
from .export import FORMAT_VERSION, save_archive, trace_with_decode
from .hf_attention import exact_causal, register  # noqa: F401  (re-exported)

ATTENTIONS = ("sdpa", "eager")
ROUTES = ("transformers", "graph", "attnscope-module")
# Families the project's own Llama-family module covers (the last route).
FALLBACK_FAMILIES = ("llama", "qwen2", "mistral")


class _Outputs(torch.nn.Module):
    """forward(input_ids, attention_mask) -> logits [B, T, V], or hidden states [B, T, D]."""

    def __init__(self, model, output):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, input_ids, attention_mask):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.logits if self.output == "logits" else out.last_hidden_state


@contextlib.contextmanager
def _inline_autograd_functions():
    """While tracing, run torch.autograd.Function subclasses' forward directly, so their tensor
    ops are recorded instead of a Python call that TorchScript cannot save (Bloom's GeLU).
    The archive is for inference: the backward is not needed."""
    from torch.autograd.function import Function

    class _Ctx:
        needs_input_grad = ()

        def save_for_backward(self, *a):
            pass

        def mark_non_differentiable(self, *a):
            pass

        def set_materialize_grads(self, *a):
            pass

    original = Function.apply.__func__

    def apply(cls, *args, **kwargs):
        if cls.setup_context is not Function.setup_context:  # new style: forward takes no ctx
            return cls.forward(*args, **kwargs)
        return cls.forward(_Ctx(), *args, **kwargs)

    Function.apply = classmethod(apply)
    try:
        yield
    finally:
        Function.apply = classmethod(original)


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _output_kind(model):
    return "logits" if model.get_output_embeddings() is not None else "hidden_states"


def _facts(model):
    tc = _text_config(model)
    heads = tc.num_attention_heads
    kv = getattr(tc, "num_key_value_heads", None)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    facts = {"num_layers": tc.num_hidden_layers, "num_heads": heads, "head_dim": head_dim,
             "vocab_size": tc.vocab_size, "bos_token_id": getattr(tc, "bos_token_id", None),
             "eos_token_id": getattr(tc, "eos_token_id", None), "family": tc.model_type,
             "output": _output_kind(model)}
    if kv:  # else the KV heads are read off the graph's SDPA sites (or equal the heads)
        facts["num_kv_heads"] = kv
    ctx = getattr(tc, "max_position_embeddings", None)
    if isinstance(ctx, int) and ctx > 0:
        facts["context_length"] = ctx
    return tc, facts


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


def can_switch_attention(model):
    """True when the model follows transformers' attention interface (set_attn_implementation works)."""
    f = getattr(model, "_can_set_attn_implementation", None)
    return bool(f()) if f is not None else True


@contextlib.contextmanager
def eager_reference(model):
    """A model computing eager attentions with the same weights: `model` itself switched to
    eager, or a fresh eager copy when it cannot switch (its attention class is fixed at build)."""
    if can_switch_attention(model):
        impl = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            yield model
        finally:
            model.set_attn_implementation(impl)
        return
    cfg = copy.deepcopy(model.config)
    cfg._attn_implementation = "eager"
    ref = type(model)(cfg).to(next(model.parameters()).device).eval()
    ref.load_state_dict(model.state_dict())
    yield ref


def eager_attentions(model, ids, mask):
    """Per layer eager attention weights [B, H, T, T] from a correct eager reference of `model`."""
    with eager_reference(model) as ref, torch.no_grad():
        return ref(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False).attentions


def observed_causal(model, vocab, device):
    """Whether the model attends only to earlier tokens, from eager attentions of an unpadded input."""
    ids = torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(1)).to(device)
    att = eager_attentions(model, ids, torch.ones_like(ids))
    return all(float(a.float().triu(1).abs().sum()) == 0.0 for a in att)


def attention_diffs(am, model, ids, mask):
    """Per layer: max |captured - eager output_attentions| over real query rows (lists `raw`),
    and the same beyond the reference's own rounding (`beyond`: bf16/fp16 references hold 8/11
    significant bits). am: an attnscope Model (or its _core.Model) of `model`; ids/mask [B, T]."""
    from .. import _core
    core = getattr(am, "_core", am)  # an attnscope.Model or the _core.Model it wraps
    L, H = core.n_layers, core.n_heads
    spec = _core.CaptureSpec()
    spec.heads, spec.top_k = [(l, h) for l in range(L) for h in range(H)], 0
    caps = core.run(ids.cpu(), spec, mask.cpu()).captures
    ref = eager_attentions(model, ids, mask)
    ulp = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}.get(ref[0].dtype, 0.0)
    ok = mask.cpu().bool()[:, None, :, None]
    raw, beyond = [], []
    for l in range(L):
        got = torch.stack([caps[f"head_map/L{l}H{h}"] for h in range(H)], 1).float()  # [B, H, T, T]
        want = ref[l].float().cpu()
        d = (got - want).abs().masked_fill(~ok, 0)
        raw.append(float(d.max()))
        beyond.append(float((d - want.abs() * ulp).clamp_min(0).max()))
    return raw, beyond


def describe_error(e):
    """The whole message of `e` and of its causes, on one line: `Type: message <- Cause: message`."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        parts.append(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


def _nodes(block):
    """Every node of a graph or block, inside if/loop blocks too."""
    for n in block.nodes():
        yield n
        for b in n.blocks():
            yield from _nodes(b)


def _python_calls(traced):
    """Python functions a traced graph calls (TorchScript cannot save them)."""
    return sorted({n.pyname() for n in _nodes(traced.inlined_graph) if n.kind() == "prim::PythonOp"})


def _trace_module(module, ids, mask):
    with torch.no_grad(), warnings.catch_warnings(), _inline_autograd_functions():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (ids, mask), check_trace=False)
    calls = _python_calls(traced)
    if calls:
        raise ValueError(f"the traced forward calls Python function(s) {', '.join(calls)}, which "
                         "TorchScript cannot save")
    return traced


def _capture_ops(traced):
    return sum(n.kind().startswith("attnscope::") for n in _nodes(traced.inlined_graph))


def trace_hf(model, *, attention="sdpa", example_length=16, route="transformers", causal=None):
    """(traced ScriptModule forward(input_ids, attention_mask) -> logits or hidden states,
    attnscope.json facts) of a transformers model; the traced module shares the model's
    parameters (no copy). route "transformers" uses attnscope's attention functions, "graph"
    the model's own attention (attnscope.load instruments it). attnscope.from_module(traced,
    info=facts) runs it without an archive (how bench/device_check.py handles a 7B model).
    causal: the model's causality (None: observed from its eager attentions)."""
    import transformers
    if attention not in ATTENTIONS:
        raise ValueError(f"attention {attention!r}: expected one of {ATTENTIONS}")
    if route not in ROUTES[:2]:
        raise ValueError(f"route {route!r}: expected 'transformers' or 'graph'")
    register()
    tc, facts = _facts(model)
    device = next(model.parameters()).device
    model.eval()
    facts["causal"] = observed_causal(model, facts["vocab_size"], device) if causal is None else bool(causal)
    facts.update(format_version=FORMAT_VERSION, transformers=transformers.__version__, torch=torch.__version__,
                 route=route, attention_requested=attention,
                 dtype=str(next(model.parameters()).dtype).replace("torch.", ""))
    ids, mask = _example(facts["vocab_size"], example_length, device)
    switch = can_switch_attention(model)
    if route == "transformers" and not switch:
        raise ValueError(f"{type(model).__name__} does not use transformers' attention interface, so "
                         "attnscope's attention functions cannot be plugged in")
    old_impl = model.config._attn_implementation
    model.eval()
    hf_attention.used.clear()
    try:
        if route == "transformers":
            model.set_attn_implementation(f"attnscope_{attention}")
        elif switch:
            model.set_attn_implementation(attention)
        traced = _trace_module(_Outputs(model, facts["output"]), ids, mask)
    finally:
        if switch:
            model.set_attn_implementation(old_impl)
    if route == "transformers":
        # Models of the attention interface name their KV heads (num_key_value_heads) when they differ.
        facts.setdefault("num_kv_heads", facts["num_heads"])
        if _capture_ops(traced) == 0:
            raise ValueError("no attention call of the model went through attnscope's attention functions")
        ran = sorted(hf_attention.used.get(f"attnscope_{attention}", {attention}))
        facts["attention"] = " + ".join(ran)
    else:
        facts["attention"] = (f"{attention} (the model's own)" if switch else
                              f"{old_impl} (the model's own: {type(model).__name__} cannot switch attention)")
    return traced, facts


def _load_any(src):
    """(model, tokenizer) from a checkpoint folder: a causal LM class when config.architectures
    names one, else the base model (encoders such as BERT / MiniLM)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    try:
        cfg = AutoConfig.from_pretrained(src)
    except (ZeroDivisionError, TypeError, KeyError, AttributeError) as e:  # a config transformers cannot build
        raise ValueError(f"{src}: config.json is not a config transformers can build "
                         f"({type(e).__name__}: {e}){_config_zeros(src)}") from None
    _check_sizes(src, cfg)  # before transformers allocates a model of the config's sizes
    archs = getattr(cfg, "architectures", None) or []
    causal_lm = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or not archs
    # ignore_mismatched_sizes: transformers then lists the mismatches, and _check_loading refuses them by name
    model, info = (AutoModelForCausalLM if causal_lm else AutoModel).from_pretrained(
        src, output_loading_info=True, ignore_mismatched_sizes=True)
    _check_loading(src, info, causal_lm)
    tok = AutoTokenizer.from_pretrained(src) if os.path.isfile(os.path.join(src, "tokenizer.json")) else None
    return model, tok


def _config_zeros(src):
    """'; num_attention_heads is 0' etc. for the size keys of config.json that are below 1."""
    try:
        with open(os.path.join(src, "config.json")) as f:
            c = json.load(f)
    except (OSError, ValueError):
        return ""
    bad = [f"{k} is {v!r}" for k, v in c.items() if isinstance(c, dict) and (k.startswith("num_") or k.endswith("_size"))
           and isinstance(v, int) and not isinstance(v, bool) and v < 1] if isinstance(c, dict) else []
    return f": {', '.join(bad)} (expected >= 1)" if bad else ""


def _check_sizes(src, cfg):
    """config.json's layer count and vocabulary against what the folder's safetensors hold (their
    headers only): a config of 100000 layers or a vocabulary of 5e7 next to small weights is
    refused by name before transformers allocates the model it describes."""
    import glob
    import re

    from safetensors import safe_open
    names, held = [], 0
    for f in sorted(glob.glob(os.path.join(src, "*.safetensors"))):
        try:
            with safe_open(f, "pt") as st:
                for k in st.keys():
                    n = 1
                    for d in st.get_slice(k).get_shape():
                        n *= int(d)
                    names.append(k)
                    held += n
        except Exception as e:  # noqa: BLE001 - the reader's own message names the problem
            raise ValueError(f"{src}: {os.path.basename(f)} is not a readable safetensors file ({e})") from None
    tc = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for key in ("num_attention_heads", "num_key_value_heads", "hidden_size", "num_hidden_layers", "vocab_size",
                "intermediate_size", "head_dim"):
        v = getattr(tc, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:  # 0 heads would divide by zero in transformers
            raise ValueError(f"{src}: config.json's {key} is {v}: expected an integer >= 1")
    n_layers = getattr(tc, "num_hidden_layers", None)
    # Layer indices in the weight names: the number after a layers / h / layer / blocks component.
    idx = [int(m) for k in names for m in re.findall(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.", k)]
    if isinstance(n_layers, int) and idx and n_layers > max(idx) + 1:
        raise ValueError(f"{src}: config.json says {n_layers} layers, but the weights hold layers "
                         f"0..{max(idx)} only")
    # The embedding's width: hidden_size, or embedding_size where it is factorised (ALBERT, ELECTRA).
    vocab, hidden = getattr(tc, "vocab_size", None), getattr(tc, "embedding_size", None) or getattr(tc, "hidden_size", None)
    if isinstance(vocab, int) and isinstance(hidden, int) and vocab > 0 and hidden > 0 and vocab * hidden > held:
        raise ValueError(f"{src}: config.json's vocabulary of {vocab} x hidden size {hidden} is more than all "
                         f"{held} numbers the weights hold: the config does not describe these weights")


# Checkpoint entries that are not weights of the model (buffers older versions saved) or heads
# an encoder's base model leaves out: never the reason to refuse a folder.
_HARMLESS = ("rotary_emb.inv_freq", ".masked_bias", ".attn.bias", "position_ids")
_ENCODER_HEADS = ("cls.", "lm_head.", "classifier.", "pooler.", "qa_outputs.")


def _check_loading(src, info, causal_lm):
    """Refuses a checkpoint folder whose weights do not make the model: transformers fills what
    is missing or mismatched with random numbers (and only logs it), and a figure of random
    weights is the worst output an attention tool can give."""
    def first(keys):
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(_HARMLESS)]
    if missing:
        raise ValueError(f"{src}: the checkpoint lacks {len(missing)} weight(s) the model needs ({first(missing)}); "
                         "transformers would fill them with random numbers. Check the safetensors files and "
                         "config.json's model_type")
    mismatched = info.get("mismatched_keys", [])
    if mismatched:
        names = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
        raise ValueError(f"{src}: {len(names)} weight(s) have shapes that do not match config.json "
                         f"({first(names)}); transformers would replace them with random numbers")
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith(_HARMLESS)
                  and (causal_lm or not k.startswith(_ENCODER_HEADS))]
    if unexpected:
        raise ValueError(f"{src}: the checkpoint holds {len(unexpected)} weight(s) the model does not use "
                         f"({first(unexpected)}): config.json (model_type, layer count) does not describe "
                         "these weights")


def export_hf(model, tokenizer, path, *, attention="sdpa", verify=True, fallback=True,
              example_length=16, tol=None, prefer_cache=False):
    """Exports a transformers model (a PreTrainedModel, or a checkpoint folder) to a TorchScript
    archive at `path` that attnscope.load captures exactly.

    attention: "sdpa" (fast kernel, probabilities recomputed by the recorder) or "eager".
    Routes (module docstring): "transformers" first; with fallback=True, "graph" and then, for
    FALLBACK_FAMILIES, "attnscope-module" when a route fails to trace or to pass the check.
    The archive holds attnscope.json (layers, heads, head_dim, vocab, BOS/EOS, family, causal —
    observed from eager attentions —, output "logits"/"hidden_states", context_length,
    versions, route, attention requested and used) and tokenizer.json when `tokenizer` is given
    (tokens.json, the id -> token strings, for a tokenizer that has no tokenizer.json).
    verify=True compares the archive's maps with a correct eager reference's output_attentions
    on a padded example (tol: 1e-5 for fp32, 2e-2 for bf16/fp16). prefer_cache=True (what
    load(folder) uses): for FALLBACK_FAMILIES, "attnscope-module" first — attnscope's own module
    with the KV-cache decode method, so generation costs a token per step; checked the same way.
    Returns a dict: path, route, attention (what runs), max_abs_diff, reason (why earlier
    routes failed, or None)."""
    import transformers
    if attention not in ATTENTIONS:
        raise ValueError(f"attention {attention!r}: expected one of {ATTENTIONS}")
    if isinstance(model, (str, os.PathLike)):
        src = os.fspath(model)
        if not os.path.isdir(src):
            raise ValueError(f"model: {src!r} is not a checkpoint folder (config.json + weights); attnscope "
                             "never downloads from a model hub")
        model, tok = _load_any(src)
        tokenizer = tokenizer if tokenizer is not None else tok
    if not isinstance(model, transformers.PreTrainedModel):
        raise ValueError(f"model: expected a transformers PreTrainedModel or a checkpoint folder, got {type(model).__name__}")
    tc, facts = _facts(model)
    family = facts["family"]
    sinks = sorted({type(m).__name__ for m in model.modules() if isinstance(getattr(m, "sinks", None), torch.nn.Parameter)})
    if sinks:  # GptOss: a learned logit per head joins every softmax row and is dropped after it
        raise ValueError(f"cannot export this {family} model ({type(model).__name__}): its attention ({', '.join(sinks)}) "
                         "adds a learned sink logit per head to every softmax row, so a row's weights over the real "
                         "keys sum to less than 1; attnscope does not capture attention sinks yet (no route, and no "
                         "workaround: docs/export.md lists the families not supported)")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    tol = tol if tol is not None else (1e-5 if dtype == torch.float32 else 2e-2)
    extra = _tokenizer_files(tokenizer)
    model.eval()
    causal = observed_causal(model, facts["vocab_size"], device)
    # What the model says: a causal-LM class, is_decoder, or attention modules marked causal (Mpt and
    # CodeGen set neither of the last two, so the class name is evidence too).
    stated = (type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")) or bool(getattr(tc, "is_decoder", False))
              or any(getattr(m, "is_causal", False) for m in model.modules()))
    if stated != causal:
        warnings.warn(f"export_hf: the {family} config/modules say causal={stated}, but its eager attentions "
                      f"are {'causal' if causal else 'bidirectional'}; the archive records causal={causal}")
    template = getattr(tokenizer, "chat_template", None)
    common = {"causal": causal, "tokenizer": next(iter(extra), None), "exported_by": "attnscope.export_hf",
              "chat_template": template if isinstance(template, str) else None}
    ids, mask = _example(facts["vocab_size"], example_length, device)
    routes = ["transformers", "graph"] if can_switch_attention(model) else ["graph"]
    if family in FALLBACK_FAMILIES and facts["output"] == "logits":
        if prefer_cache:
            routes.insert(0, "attnscope-module")
        else:
            routes.append("attnscope-module")
    if not fallback:
        routes = routes[:1]
    failures = []
    for route in routes:
        try:
            if route == "attnscope-module":
                traced, meta = _own_module(model, tc, attention, ids, mask, facts)
            else:
                traced, meta = trace_hf(model, attention=attention, example_length=example_length, route=route,
                                        causal=causal)
            meta.update(common)
            if failures:
                meta["fallback_reason"] = "; ".join(failures)
            _save(traced, path, {**extra, "attnscope.json": json.dumps(meta)})
            worst = _verify(model, path, ids, mask, tol) if verify else None
        except Exception as e:  # noqa: BLE001 - reported, then the next route or a clear error
            failures.append(f"route {route}: {describe_error(e)}")
            if route != routes[-1]:
                warnings.warn(f"export_hf: {failures[-1]}; trying the {routes[routes.index(route) + 1]} route")
            continue
        if not meta["attention"].startswith(attention):
            warnings.warn(f"export_hf: attention={attention!r} was not used: the archive runs {meta['attention']}")
        return {"path": str(path), "route": route, "attention": meta["attention"], "max_abs_diff": worst,
                "reason": "; ".join(failures) or None}
    # Only advice that works is given: the graph route is what tracing the model yourself would
    # give, so once it has failed there is no workaround to offer.
    hint = ("Retry with fallback=True to try the graph route." if "graph" not in routes else
            "The graph route is what tracing the model yourself (torch.jit.trace with eager attention) would give, "
            "so that is no workaround: attnscope does not support this attention yet (docs/export.md lists the "
            "families not supported).")
    raise ValueError(f"cannot export this {family} model ({type(model).__name__}) with transformers "
                     f"{transformers.__version__} (attention={attention!r}): " + "; ".join(failures) + ". " + hint)


def _verify(model, archive, ids, mask, tol):
    """Max |captured - eager output_attentions| over layers, real query rows."""
    from .. import _core  # the archive as the C++ core loads it (models never call attnscope.load)
    worst = max(attention_diffs(_core.Model.load(str(archive), str(ids.device)), model, ids, mask)[0])
    if not worst <= tol:
        raise ValueError(f"captured attention differs from the eager reference's attentions by {worst:.3g} "
                         f"(> {tol:g}): this {model.config.model_type} model's attention is not reproduced")
    return worst


def _own_module(model, tc, attention, ids, mask, facts):
    import transformers
    from .llama import LlamaConfig, LlamaForCausalLM
    own = LlamaForCausalLM(LlamaConfig.from_hf(tc.to_dict()), attention=attention)
    own.load_hf_state_dict({k: v.detach() for k, v in model.state_dict().items()})
    own = own.to(device=ids.device, dtype=next(model.parameters()).dtype).eval()
    meta = {**facts, "format_version": FORMAT_VERSION, "attention": attention, "attention_requested": attention,
            "transformers": transformers.__version__, "torch": torch.__version__, "route": "attnscope-module",
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "config": own.cfg.to_dict()}
    meta.setdefault("num_kv_heads", own.cfg.num_kv_heads)
    return trace_with_decode(own), meta  # forward and the KV-cache decode method


def _save(traced, path, extra):
    save_archive(traced, path, extra)
