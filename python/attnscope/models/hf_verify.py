"""Checks of an exported archive against transformers' eager attentions, on inputs it was not traced on.

A traced graph freezes Python control flow that depends on values or lengths (MoE routing,
windows applied only past some length, chunked scans), so one input that verifies at 0.0 says
little. `verify` runs the archive on the traced example and on batches of other ids at other
lengths (one longer than every window/chunk/capacity the config states, neither a multiple of
any), left- and right-padded, and compares every real row with eager attentions and logits of
the same tokens run alone: a padded row must compute what its tokens compute by themselves.
When the tracer warned about control flow in the model's own file, more ids are checked, and
a mismatch quotes that warning.
"""
import contextlib
import copy
import os

import torch

from .. import _core
from .hf_errors import gist
from .hf_inputs import batch, check_lengths, pad_token


def text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


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


def _layers(core):
    """The model-layer index of each attention layer, in the order of transformers' attentions."""
    return list(core.attention_layers) or list(range(core.n_layers))


def _all_heads(core):
    spec = _core.CaptureSpec()
    spec.heads, spec.top_k = [(l, h) for l in _layers(core) for h in range(core.n_heads)], 0
    return spec


def observe(model, n_layers, vocab, device):
    """(causal, attention layers) from one eager run on 8 unpadded tokens: whether the model
    attends only to earlier tokens, and None when every layer returns an attention map, else the
    model-layer indices (module layer_idx) of the layers whose modules return one. Raises
    NoAttentionMaps when there are none, ValueError when they cannot be told from the others."""
    ids = torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(1)).to(device)
    found = set()

    def hook(module, args, out):
        if isinstance(out, tuple) and any(isinstance(o, torch.Tensor) and o.dim() == 4 and o.shape[-2:] == (8, 8)
                                          for o in out[1:]):
            found.add(int(module.layer_idx))
    with eager_reference(model) as ref, torch.no_grad():
        hooks = [m.register_forward_hook(hook) for m in ref.modules() if isinstance(getattr(m, "layer_idx", None), int)]
        try:
            maps = [a for a in ref(input_ids=ids, output_attentions=True, use_cache=False).attentions if a is not None]
        finally:
            for h in hooks:
                h.remove()
    if not maps:
        raise NoAttentionMaps("its eager forward returns no attention maps (output_attentions=True gives none)")
    causal = all(float(a.float().triu(1).abs().sum()) == 0.0 for a in maps)
    if len(maps) == n_layers:
        return causal, None
    if len(found) != len(maps) or not all(0 <= l < n_layers for l in found):
        raise ValueError(f"{len(maps)} of its {n_layers} layers return attention maps, but the modules that return them "
                         f"(layer_idx {sorted(found)}) do not say which layers they are")
    return causal, sorted(found)


def attention_diffs(am, model, ids, mask):
    """Per layer: max |captured - eager output_attentions| over real query rows (lists `raw`),
    and the same beyond the reference's own rounding (`beyond`: bf16/fp16 references hold 8/11
    significant bits). am: an attnscope Model (or its _core.Model) of `model`; ids/mask [B, T].
    The reference runs the batch as given (transformers' positions)."""
    spec = _all_heads(am)
    if isinstance(am, _core.Model):
        caps = am.run(ids.cpu(), spec, mask.cpu()).captures
    else:
        caps = am.run(ids.cpu(), capture=spec, attention_mask=mask.cpu()).captures
    H = am.n_heads
    ref = eager_attentions(model, ids, mask)
    ulp = {torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}.get(ref[0].dtype, 0.0)
    ok = mask.cpu().bool()[:, None, :, None]
    raw, beyond = [], []
    for i, l in enumerate(_layers(am)):
        got = torch.stack([caps[f"head_map/L{l}H{h}"] for h in range(H)], 1).float()  # [B, H, T, T]
        want = ref[i].float().cpu()
        d = (got - want).abs().masked_fill(~ok, 0)
        raw.append(float(d.max()))
        beyond.append(float((d - want.abs() * ulp).clamp_min(0).max()))
    return raw, beyond


def _entropy(logits):
    logp = logits.double().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def _maps(caps, layers, H, b):
    """[len(layers)][H, T, T] captured maps of row b."""
    return [torch.stack([caps[f"head_map/L{l}H{h}"][b] for h in range(H)]).double() for l in layers]


def rows_alone_diff(core, model, ids, mask):
    """Per row b: (max |captured map - eager map of the row alone| over every layer, head and real
    query, including weight on padded keys, which must be 0; the same for predictive entropy,
    relative to max(1, |entropy|), or None for a model without logits). ids/mask [B, T]."""
    layers, H = _layers(core), core.n_heads
    trace = core.run(ids.cpu(), _all_heads(core), mask.cpu())
    rows = []
    with eager_reference(model) as ref, torch.no_grad():
        for b in range(ids.shape[0]):
            real = mask[b].bool().cpu()
            alone = ids[b][mask[b].bool()][None]
            out = ref(input_ids=alone, attention_mask=torch.ones_like(alone), output_attentions=True, use_cache=False)
            d_map = 0.0
            for l, got in enumerate(_maps(trace.captures, layers, H, b)):
                got = got[:, real]                                 # [H, n, T]
                want = out.attentions[l][0].double().cpu()         # [H, n, n]
                off = got[:, :, ~real]                             # weight on padded keys: must be exactly 0
                d_map = max(d_map, float((got[:, :, real] - want).abs().max()), float(off.abs().max()) if off.numel() else 0.0)
            d_ent = None
            logits = getattr(out, "logits", None)
            if logits is not None and trace.entropy.numel():
                want = _entropy(logits[0].cpu())
                d_ent = float(((trace.entropy[b][real].double() - want).abs() / want.abs().clamp_min(1.0)).max())
            rows.append((d_map, d_ent))
    return rows


def model_padding_diff(core, model, ids, mask, call):
    """(max |eager map of the padded batch - eager map of each row alone|: what the model itself
    does under padding, max |captured - eager map of the padded batch|) over real rows; `call`
    (hf_inputs.Call) passes the archive's positions to the eager batch."""
    layers, H = _layers(core), core.n_heads
    caps = core.run(ids.cpu(), _all_heads(core), mask.cpu()).captures
    itself, archive = 0.0, 0.0
    with eager_reference(model) as ref, torch.no_grad():
        out = ref(**call.kwargs(ids, mask), output_attentions=True, use_cache=False)
        for b in range(ids.shape[0]):
            real = mask[b].bool().cpu()
            alone = ids[b][mask[b].bool()][None]
            solo = ref(input_ids=alone, attention_mask=torch.ones_like(alone), output_attentions=True, use_cache=False)
            for l, got in enumerate(_maps(caps, layers, H, b)):
                want = out.attentions[l][b].double().cpu()[:, real]
                itself = max(itself, float((want[:, :, real] - solo.attentions[l][0].double().cpu()).abs().max()))
                archive = max(archive, float((got[:, real] - want).abs().max()))
    return itself, archive


class NoAttentionMaps(ValueError):
    """The model's eager forward returns no attention maps: nothing to capture or check against."""


class VerifyError(ValueError):
    """The archive does not reproduce the model on one of the checked inputs; `kind` is the
    kind of that input (a key of _MECHANISM)."""

    def __init__(self, message, kind):
        super().__init__(message)
        self.kind = kind


# What a failure on each kind of input says about the traced graph.
_MECHANISM = {
    "example": "the model's attention is not reproduced",
    "ids": "the graph froze a decision that depends on the input values (e.g. top-k routing)",
    "length": "the graph froze a decision that depends on the length (a window, chunk or capacity applied "
              "only past some length, a scan over fixed chunks, or a loop over positions unrolled at the "
              "traced length)",
    "padding": "a padded row differs from the same tokens alone (positions or masks under padding)",
}


def _cases(model, ids, mask, max_length, more_ids):
    """(kind, description, ids, mask) of every checked input, in the order of _MECHANISM's kinds,
    and what the length cap left unchecked (or None)."""
    tc = text_config(model)
    vocab, device, pad_id, T = tc.vocab_size, ids.device, pad_token(model), ids.shape[1]
    lengths, unchecked = check_lengths(tc, T, max_length)
    # Row 0 of each batch is whole and row 1 padded: a failure of the padded rows alone is padding's.
    cases = [("example", f"the traced example ({T} tokens, one row left-padded)", ids, mask)]
    seeds = range(3 if more_ids else 1)
    cases += [("ids", f"other ids, {T} tokens", *batch(vocab, T, 200 + s, device, pad_id, pad=0)) for s in seeds]
    for n, length in enumerate(lengths):
        cases += [("length", f"other ids, {length} tokens, one row left-padded",
                   *batch(vocab, length, 300 + 10 * n + s, device, pad_id)) for s in seeds]
    short = (lengths or [T])[0]
    cases.append(("padding", f"{short} tokens, one row right-padded", *batch(vocab, short, 99, device, pad_id, side="right")))
    return cases, unchecked


def verify(model, archive, ids, mask, tol, *, call, max_length=512, tracer_warnings=()):
    """Checks the archive at `archive` against eager attentions of `model` (module docstring).
    ids/mask: the traced example [B, T]; call: how the archive calls the model (hf_inputs.Call).
    Returns {"max_abs_diff", "checked": [str], "unchecked": str or None, "padding": None, or
    what the model itself does differently under padding (its own forward, reproduced)}; raises
    VerifyError naming the input and the mechanism its failure shows (with the tracer's first
    warning from the model's own code, when there is one)."""
    core = _core.Model.load(os.fspath(archive), str(ids.device))
    own = [w for w in tracer_warnings if "modeling_" in w]
    # masking and cache utilities warn for every model (shape checks the other lengths cover);
    # a warning from the model's own file is what asks for more ids
    cases, unchecked = _cases(model, ids, mask, max_length, more_ids=bool(own))
    worst, padding = 0.0, None
    for kind, what, x, m in cases:
        try:
            rows = rows_alone_diff(core, model, x, m)
        except RuntimeError as e:  # e.g. a loop over the traced length, unrolled into the graph
            if kind == "example":
                raise
            raise VerifyError(f"{_MECHANISM[kind]}: on {what} the archive fails: {gist(e, 200)}", kind) from e
        failed = [b for b, (d_map, d_ent) in enumerate(rows)
                  if not d_map <= tol or (d_ent is not None and not d_ent <= tol)]
        if failed and all(not bool(m[b].all()) for b in failed):
            kind = "padding"  # the whole rows are right: the padded ones are not
        if failed and kind == "padding":
            itself, off = model_padding_diff(core, model, x, m, call)
            if off <= tol and itself > tol:  # the archive does what the model does; the model is not padding-invariant
                padding = (f"a padded row differs from its tokens alone in the model itself (transformers' own "
                           f"forward: maps by {itself:.3g}); attnscope reproduces the padded forward")
                continue
        if failed:
            d_map = max(rows[b][0] for b in failed)
            d_ent = max((rows[b][1] for b in failed if rows[b][1] is not None), default=None)
            bad = [f"maps by {d_map:.3g}"] + ([f"predictive entropy by {d_ent:.3g} (relative)"]
                                               if d_ent is not None and not d_ent <= tol else [])
            warned = f" (the tracer warned: {own[0]})" if own and kind in ("ids", "length") else ""
            raise VerifyError(f"{_MECHANISM[kind]}{warned}: on {what} the archive differs from the model run on "
                              f"each row alone, {' and '.join(bad)} (> {tol:g})", kind)
        worst = max([worst, *(r[0] for r in rows)])
    checked = {}
    for _, what, _, _ in cases:
        checked[what] = checked.get(what, 0) + 1
    return {"max_abs_diff": worst, "checked": [w if n == 1 else f"{w} (x{n})" for w, n in checked.items()],
            "unchecked": unchecked, "padding": padding}
