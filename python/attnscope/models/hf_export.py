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
traced; it passes positions from the attention mask (hf_inputs), so a left-padded row computes
what its tokens compute alone. The check (hf_verify) compares the archive's maps and predictive
entropy with eager `output_attentions` of a correct eager reference (a fresh eager copy for
models that cannot switch attention) run on each row alone, on the traced example and on other
ids, lengths and paddings.
"""
import contextlib
import json
import os
import warnings

import torch

from . import hf_attention
from .export import FORMAT_VERSION, save_archive, trace_with_decode
from .hf_attention import exact_causal, register  # noqa: F401  (re-exported)
from .hf_decode import WithDecode, cache_shape, check_decode, tracer_warnings
from .hf_decode import trace_with_decode as trace_hf_decode
from .hf_errors import describe_error, gist
from .hf_facts import differential, facts_of, observe_model, refuse_layouts
from .hf_folder import load_folder
from .hf_inputs import Call, batch, pad_token, takes_positions
from .hf_verify import (attention_diffs, can_switch_attention, eager_attentions, eager_reference,  # noqa: F401
                        text_config)
from . import hf_verify

ATTENTIONS = ("sdpa", "eager")
ROUTES = ("transformers", "graph", "attnscope-module")
# Families the project's own Llama-family module covers (the last route).
FALLBACK_FAMILIES = ("llama", "qwen2", "mistral")


class _Outputs(torch.nn.Module):
    """forward(input_ids, attention_mask) -> logits [B, T, V], or hidden states [B, T, D];
    positions and padded ids as `call` (hf_inputs.Call) says."""

    def __init__(self, model, output, call):
        super().__init__()
        self.model, self.output, self.call = model, output, call

    def forward(self, input_ids, attention_mask):
        out = self.model(**self.call.kwargs(input_ids, attention_mask), use_cache=False)
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


def _example(model, length, device):
    """The traced example: ids [2, length], row 1 left-padded (as generation pipelines pad)."""
    return batch(text_config(model).vocab_size, length, 0, device, pad_token(model))


def _nodes(block):
    """Every node of a graph or block, inside if/loop blocks too."""
    for n in block.nodes():
        yield n
        for b in n.blocks():
            yield from _nodes(b)


def _python_calls(traced, method="forward"):
    """Python functions a traced module's `method` calls (TorchScript cannot save them)."""
    graph = traced.inlined_graph if method == "forward" else getattr(traced, method).inlined_graph
    return sorted({n.pyname() for n in _nodes(graph) if n.kind() == "prim::PythonOp"})


def _trace_module(module, ids, mask, warned=None):
    with torch.no_grad(), tracer_warnings([] if warned is None else warned), _inline_autograd_functions():
        traced = torch.jit.trace(module, (ids, mask), check_trace=False)
    calls = _python_calls(traced)
    if calls:
        raise ValueError(f"the traced forward calls Python function(s) {', '.join(calls)}, which "
                         "TorchScript cannot save")
    return traced


def _trace_forward(model, facts, ids, mask, call):
    """The traced forward, with the KV-cache decode method (hf_decode) for a causal LM whose
    traced decode reproduces its forward; otherwise the forward alone, and facts["decode"] says
    why. Cache facts (cache_heads, cache_k_dim, cache_v_dim) and the tracer's warnings about
    control flow frozen from the example (tracer_warnings) go into `facts`."""
    warned = facts.setdefault("tracer_warnings", [])
    forward = _Outputs(model, facts["output"], call)
    why = ("not a causal LM" if facts["output"] != "logits" or not facts["causal"] else None)
    shape = None
    if why is None:
        try:
            shape = cache_shape(model, facts["num_layers"], ids.device)
            why = None if shape else "its cache is not one keys/values shape per layer"
        except Exception as e:  # noqa: BLE001 - no cache to trace: the forward alone
            why = f"no cache ({describe_error(e)})"
    if why is None:
        try:
            with _inline_autograd_functions():
                traced = trace_hf_decode(WithDecode(model, facts["num_layers"], call), ids, mask, shape,
                                         facts["num_layers"], warned)
            calls = _python_calls(traced) or _python_calls(traced, "decode")
            if calls:
                raise ValueError(f"it calls Python function(s) {', '.join(calls)}")
            check_decode(traced, ids, mask, shape, facts["num_layers"])
            other = batch(facts["vocab_size"], ids.shape[1] + 3, 5, ids.device, call.pad_id)
            check_decode(traced, *other, shape, facts["num_layers"])  # other ids and length than traced
            facts.update(decode="transformers DynamicCache", cache_heads=shape[0], cache_k_dim=shape[1],
                         cache_v_dim=shape[2])
            return traced
        except Exception as e:  # noqa: BLE001 - reported in attnscope.json; generation runs a forward per step
            why = f"the traced decode failed: {describe_error(e)}"
    facts["decode"] = f"none: {why}"
    return _trace_module(forward, ids, mask, warned)


def _capture_ops(traced):
    return sum(n.kind().startswith("attnscope::") for n in _nodes(traced.inlined_graph))


def trace_hf(model, *, attention="sdpa", example_length=16, route="transformers", causal=None, positions=None,
             observed=None):
    """(traced ScriptModule forward(input_ids, attention_mask) -> logits or hidden states,
    attnscope.json facts) of a transformers model; the traced module shares the model's
    parameters (no copy). route "transformers" uses attnscope's attention functions, "graph"
    the model's own attention (attnscope.load instruments it). attnscope.from_module(traced,
    info=facts) runs it without an archive (how bench/device_check.py handles a 7B model).
    causal: the model's causality (None: observed from its eager attentions). positions: pass
    position_ids from the attention mask (hf_inputs; None: when the forward takes them).
    observed: (causal, attention layers) that export_hf already observed (None: observed here)."""
    import transformers
    if attention not in ATTENTIONS:
        raise ValueError(f"attention {attention!r}: expected one of {ATTENTIONS}")
    if route not in ROUTES[:2]:
        raise ValueError(f"route {route!r}: expected 'transformers' or 'graph'")
    register()
    tc, facts = facts_of(model)
    device = next(model.parameters()).device
    model.eval()
    if observed is None:
        seen = observe_model(model, facts, device)
    else:
        seen = observed[0]
        if observed[1] is not None:
            facts["attention_layers"] = observed[1]
    facts["causal"] = seen if causal is None else bool(causal)
    facts.update(format_version=FORMAT_VERSION, transformers=transformers.__version__, torch=torch.__version__,
                 route=route, attention_requested=attention,
                 dtype=str(next(model.parameters()).dtype).replace("torch.", ""))
    differential(model, facts)
    ids, mask = _example(model, example_length, device)
    call = Call(takes_positions(model) if positions is None else positions, pad_token(model))
    facts["positions"] = call.describe()
    switch = can_switch_attention(model)
    if route == "transformers" and not switch:
        raise ValueError(f"{type(model).__name__} does not use transformers' attention interface, so "
                         "attnscope's attention functions cannot be plugged in")
    old_impl = model.config._attn_implementation
    # A model without an SDPA attention (GPT-OSS: its learned sinks) runs its eager attention on
    # the graph route, as transformers itself advises; export_hf reports the substitution.
    own = attention
    if route == "graph" and switch and attention == "sdpa" and not getattr(model, "_supports_sdpa", True):
        own = "eager"
    model.eval()
    hf_attention.used.clear()
    try:
        if route == "transformers":
            model.set_attn_implementation(f"attnscope_{attention}")
        elif switch:
            model.set_attn_implementation(own)
        traced = _trace_forward(model, facts, ids, mask, call)
    finally:
        hf_attention._last[:] = [None, None, None]
        if switch:
            model.set_attn_implementation(old_impl)
    if route == "transformers":
        if _capture_ops(traced) == 0:
            raise ValueError("no attention call of the model went through attnscope's attention functions")
        ran = sorted(hf_attention.used.get(f"attnscope_{attention}", {attention}))
        facts["attention"] = " + ".join(ran)
    else:
        facts["attention"] = (f"{own} (the model's own)" if switch and own == attention else
                              f"{own} (the model's own: {type(model).__name__} has no {attention} attention)" if switch else
                              f"{old_impl} (the model's own: {type(model).__name__} cannot switch attention)")
    return traced, facts


def export_hf(model, tokenizer, path, *, attention="sdpa", verify=True, fallback=True,
              example_length=16, tol=None, prefer_cache=False, dtype=None):
    """Exports a transformers model (a PreTrainedModel, or a checkpoint folder) to a TorchScript
    archive at `path` that attnscope.load captures exactly.

    attention: "sdpa" (fast kernel, probabilities recomputed by the recorder) or "eager".
    Routes (module docstring): "transformers" first; with fallback=True, "graph" and then, for
    FALLBACK_FAMILIES, "attnscope-module" when a route fails to trace or to pass the check.
    The archive holds attnscope.json (layers, heads, head_dim, vocab, BOS/EOS, family, causal —
    observed from eager attentions —, output "logits"/"hidden_states", context_length,
    versions, route, attention requested and used) and tokenizer.json when `tokenizer` is given
    (tokens.json, the id -> token strings, for a tokenizer that has no tokenizer.json).
    Positions come from the attention mask (hf_inputs), so a padded row computes what its tokens
    compute alone. verify=True compares the archive's maps and predictive entropy with a correct
    eager reference run on each row alone, on the traced example and on other ids, lengths and
    paddings (hf_verify; tol: 1e-5 for fp32, 2e-2 for bf16/fp16); an archive that fails is
    removed. prefer_cache=True (what load(folder) uses): for FALLBACK_FAMILIES,
    "attnscope-module" first — attnscope's own module with the KV-cache decode method, so
    generation costs a token per step; checked the same way. Returns a dict: path, route,
    attention (what runs), positions, max_abs_diff, checked (the inputs), reason (why earlier
    routes failed, or None). A refusal's ValueError gives the gist; its __cause__ every route's
    whole error. dtype: for a checkpoint folder, the torch dtype its weights are loaded and
    exported in (None: the checkpoint's own); a model object is exported as it is."""
    import transformers
    if attention not in ATTENTIONS:
        raise ValueError(f"attention {attention!r}: expected one of {ATTENTIONS}")
    if isinstance(model, (str, os.PathLike)):
        src = os.fspath(model)
        if not os.path.isdir(src):
            raise ValueError(f"model: {src!r} is not a checkpoint folder (config.json + weights); attnscope "
                             "never downloads from a model hub")
        model, tok = load_folder(src, dtype=dtype)
        tokenizer = tokenizer if tokenizer is not None else tok
    elif dtype is not None:
        raise ValueError("dtype= applies to a checkpoint folder; convert a model object yourself (model.to(dtype))")
    if not isinstance(model, transformers.PreTrainedModel):
        raise ValueError(f"model: expected a transformers PreTrainedModel or a checkpoint folder, got {type(model).__name__}")
    tc, facts = facts_of(model)
    family = facts["family"]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    tol = tol if tol is not None else (1e-5 if dtype == torch.float32 else 2e-2)
    extra = _tokenizer_files(tokenizer)
    model.eval()
    refuse_layouts(model, tc, facts)
    causal = observe_model(model, facts, device)  # a hybrid it cannot place is refused here
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
    ids, mask = _example(model, example_length, device)
    routes = ["transformers", "graph"] if can_switch_attention(model) else ["graph"]
    if family in FALLBACK_FAMILIES and facts["output"] == "logits":
        if prefer_cache:
            routes.insert(0, "attnscope-module")
        else:
            routes.append("attnscope-module")
    if not fallback:
        routes = routes[:1]
    job = dict(model=model, tc=tc, facts=facts, attention=attention, example_length=example_length, causal=causal,
               ids=ids, mask=mask, path=path, tol=tol, verify=verify, files=extra, common=common)
    failures, details, last = [], [], None
    for route in routes:
        # Positions from the mask first; a model whose position_ids mean something else (RoBERTa
        # offsets them past its pad token) fails the check and is tried with its own positions.
        variants = [None, False] if route != "attnscope-module" and takes_positions(model) else ["own module"]
        for positions in variants:
            label = f"route {route}" + {None: " (positions from the mask)", False: " (the model's own positions)",
                                        "own module": ""}[positions]
            try:
                meta, checked = _attempt(job, route, positions, failures)
            except Exception as e:  # noqa: BLE001 - reported, then the next route or a clear error
                said = gist(e)
                failures.append(f"{label}: " + ("the same" if any(f.endswith(": " + said) for f in failures) else said))
                details.append(f"{label}: {describe_error(e)}")
                last = e
                if getattr(e, "kind", None) in ("example", "padding") and positions is None:
                    continue  # the same route with the model's own positions
                if route != routes[-1]:
                    warnings.warn(f"export_hf: {failures[-1]}; trying the {routes[routes.index(route) + 1]} route")
                break  # the next route
            return _result(job, route, meta, checked, failures)
    _refuse(job, routes, failures, details, last)


def _attempt(job, route, positions, failures):
    """Traces `route`, saves the archive and checks it: (attnscope.json facts, hf_verify.verify's
    result or None). Raises what went wrong."""
    model, ids, mask, path = job["model"], job["ids"], job["mask"], job["path"]
    if route == "attnscope-module":
        traced, meta = _own_module(model, job["tc"], job["attention"], ids, mask, job["facts"])
    else:
        traced, meta = trace_hf(model, attention=job["attention"], example_length=job["example_length"], route=route,
                                causal=job["causal"], positions=positions,
                                observed=(job["causal"], job["facts"].get("attention_layers")))
    meta.update(job["common"])
    if failures:
        meta["fallback_reason"] = "; ".join(failures)
    _save(traced, path, {**job["files"], "attnscope.json": json.dumps(meta)})
    checked = _verify(model, path, ids, mask, job["tol"], meta) if job["verify"] else None
    if checked and checked["padding"]:  # stated in the archive; runs of padded batches warn
        meta["padding"] = checked["padding"]
        _save(traced, path, {**job["files"], "attnscope.json": json.dumps(meta)})
    return meta, checked


def _result(job, route, meta, checked, failures):
    """export_hf's result, with a warning for each thing the user asked for and did not get."""
    attention = job["attention"]
    if not meta["attention"].startswith(attention):
        warnings.warn(f"export_hf: attention={attention!r} was not used: the archive runs {meta['attention']}")
    if checked and checked["unchecked"]:
        warnings.warn(f"export_hf: {checked['unchecked']}: the archive is checked up to that length only")
    if checked and checked["padding"]:
        warnings.warn(f"export_hf: {checked['padding']}")
    return {"path": str(job["path"]), "route": route, "attention": meta["attention"],
            "positions": meta.get("positions", "from the attention mask"),
            "max_abs_diff": checked["max_abs_diff"] if checked else None,
            "checked": checked["checked"] if checked else [], "reason": "; ".join(failures) or None}


def _refuse(job, routes, failures, details, last):
    """Removes the failed archive and raises the refusal: a few lines, every route's whole error
    in __cause__."""
    import transformers
    model = job["model"]
    with contextlib.suppress(OSError):
        os.remove(job["path"])  # an archive that failed its check is never kept
    # Only advice that works is given: the graph route is what tracing the model yourself would
    # give, so once it has failed there is no workaround to offer.
    hint = ("Retry with fallback=True to try the graph route." if "graph" not in routes else
            "A traced archive cannot follow it, so attnscope refuses this model rather than give numbers that hold "
            "for the traced example only." if getattr(last, "kind", None) in ("ids", "length") else
            "The graph route is what tracing the model yourself (torch.jit.trace with eager attention) would give, "
            "so that is no workaround: attnscope does not support this attention yet (docs/export.md lists the "
            "families not supported).")
    low = next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
    if low and isinstance(last, hf_verify.VerifyError):  # the mechanism named may be the dtype's own rounding
        hint = (f"In {str(next(model.parameters()).dtype).replace('torch.', '')} attention weights round by about the "
                f"check's tolerance ({job['tol']:g}), so the difference may be that rounding rather than the mechanism "
                "named: export in float32 (attnscope.load(path, dtype='float32'), or export_hf(model.float(), ...)), "
                "checked to 1e-5. " + hint)
    raise ValueError(f"cannot export this {job['facts']['family']} model ({type(model).__name__}, transformers "
                     f"{transformers.__version__}, attention={job['attention']!r}): " + "; ".join(failures) + ". "
                     + hint) from ExportFailure("\n".join(details))


class ExportFailure(Exception):
    """Every route's whole error (TorchScript tracebacks included): the __cause__ of export_hf's
    ValueError, whose message keeps the gist."""


VERIFY_MAX_LENGTH = 512  # longest checked input: eager references hold L x H x T x T attentions


def _verify(model, archive, ids, mask, tol, meta):
    """hf_verify.verify: the archive against eager attentions of every row alone, on the traced
    example and other ids, lengths and paddings."""
    call = Call(meta.get("positions", "").startswith("from the attention mask"), pad_token(model))
    return hf_verify.verify(model, archive, ids, mask, tol, call=call, max_length=VERIFY_MAX_LENGTH,
                            tracer_warnings=list(meta.get("tracer_warnings", ())))


def _own_module(model, tc, attention, ids, mask, facts):
    import transformers
    from .llama import LlamaConfig, LlamaForCausalLM
    own = LlamaForCausalLM(LlamaConfig.from_hf(tc.to_dict()), attention=attention)
    own.load_hf_state_dict({k: v.detach() for k, v in model.state_dict().items()})
    own = own.to(device=ids.device, dtype=next(model.parameters()).dtype).eval()
    meta = {**facts, "format_version": FORMAT_VERSION, "attention": attention, "attention_requested": attention,
            "transformers": transformers.__version__, "torch": torch.__version__, "route": "attnscope-module",
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "config": own.cfg.to_dict(),
            "positions": "from the attention mask"}
    meta.setdefault("num_kv_heads", own.cfg.num_kv_heads)
    return trace_with_decode(own), meta  # forward and the KV-cache decode method


def _save(traced, path, extra):
    save_archive(traced, path, extra)
