"""Every captured quantity of the transformers 5.17 families (tiny random configs), exported with
export_hf, against references computed here from eager attentions and the mask each model
really uses (causal or bidirectional, sliding windows per layer type, padding), at a length
other than the traced one, unpadded, left- and right-padded. fp32, 1e-5. A padded row's
reference is the same tokens run alone (transformers' forward given the batch would number a
left-padded row's positions from the padded edge).

The mask is written out from the config (never read back from the capture); the test first
checks that the eager attentions are exactly zero outside it, so a wrong mask fails loudly."""
import copy
import warnings

import pytest
import torch
from hf_families import ENCODERS, FAMILIES, HYBRIDS, V
from reference_stats import pooled_reference, row_stats_reference, rows_alone

import attnscope

transformers = pytest.importorskip("transformers")

T, PAD, SINK = 11, 3, 2
TOL = 1e-5
WINDOW = 2  # row_local half-width: small, so that T = 11 has keys inside and outside it
CAPTURE = {"received": True, "attn_entropy": True, "sink_tokens": SINK, "from_tokens": [-1, 2], "top_k": 0,
           "row_stats": True, "local_window": WINDOW, "pooled_maps": 4}


def eager_reference(model):
    """The same weights computing eager attentions; rebuilt for models whose attention class is
    fixed at construction (Falcon, Bloom, GPT-J: switching them does nothing)."""
    if model._can_set_attn_implementation():
        ref = copy.deepcopy(model)
        ref.set_attn_implementation("eager")
        return ref
    cfg = copy.deepcopy(model.config)
    cfg._attn_implementation = "eager"
    ref = type(model)(cfg).eval()
    ref.load_state_dict(model.state_dict())
    return ref


def windows(model, n_layers):
    """Per layer: (window, chunk). A sliding window w: query i sees keys j with i - j < w; a chunk
    c (Llama 4's chunked attention): only keys of its own chunk, i // c == j // c. None: neither."""
    cfg = model.config
    w = getattr(cfg, "sliding_window", None)
    c = getattr(cfg, "attention_chunk_size", None)
    types = getattr(cfg, "layer_types", None)
    if getattr(cfg, "attention_layers", None):  # GPT-Neo: "local" layers keep window_size keys
        return [(cfg.window_size if t == "local" else None, None) for t in cfg.attention_layers[:n_layers]]
    if types:
        return [(w if t == "sliding_attention" else None, c if t == "chunked_attention" else None)
                for t in types[:n_layers]]
    return [(w, None)] * n_layers


def visibility(valid, causal, window, chunk=None):
    """[B, T, T] bool: real query i may see real key j (positions are indices, as in transformers)."""
    i = torch.arange(valid.shape[1])[:, None]
    j = torch.arange(valid.shape[1])[None, :]
    v = valid[:, :, None] & valid[:, None, :]
    if causal:
        v = v & (j <= i)
    if window is not None:
        v = v & (i - j < window)
    if chunk is not None:  # chunks count from each row's first real token (transformers, left padding)
        first = valid.int().argmax(1)[:, None, None]
        v = v & ((i - first).div(chunk, rounding_mode="floor") == (j - first).div(chunk, rounding_mode="floor"))
    return v


def inputs(kind):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, V, (2, T), generator=g)
    ids[:, 6:] = ids[:, 1:6]  # a repeated run: duplicate and induction keys exist
    mask = torch.ones_like(ids)
    if kind == "left":
        mask[0, :PAD] = 0
    elif kind == "right":
        mask[0, T - PAD:] = 0
    return ids, mask


def close(got, want, what):
    got, want = got.double(), want.double()
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN at different places"
    d = (got.nan_to_num(0) - want.nan_to_num(0)).abs().max().item()
    assert d <= TOL, f"{what}: max abs diff {d:.3g}"


def check_run(m, model, ref, kind, causal):
    ids, mask = inputs(kind)
    L, H = m.n_layers, m.n_heads
    layers = m.attention_layers  # a hybrid's attention layers keep their model index
    cap = dict(CAPTURE, heads=[(l, h) for l in layers for h in range(H)], layer_maps=layers)
    t = m.run(ids, capture=cap, attention_mask=mask)
    assert t.attention_layers == layers and t.captures["aggregate_layers"].tolist() == layers
    attentions, logits = rows_alone(ref, ids, mask)  # transformers lists the attention layers only
    valid = mask.bool()
    nan = float("nan")
    sinks = any(isinstance(getattr(x, "sinks", None), torch.nn.Parameter) for x in model.modules())
    assert ("sink_share" in t.captures) == sinks, "sink_share is captured exactly for models with learned sinks"
    q_ok = valid[:, None, :, None]                                   # [B, 1, T, 1]
    per_layer = windows(model, L)
    for i, l in enumerate(layers):                                   # i: index into stacked aggregates
        win, chunk = per_layer[l]
        A = attentions[i].double()                                   # [B, H, T, T]
        vis = visibility(valid, causal, win, chunk)[:, None]         # [B, 1, T, T]
        where = f"{kind} padding, layer {l}"
        # The mask written out above is the model's: nothing outside it, something inside.
        assert A.masked_fill(~q_ok, 0).masked_fill(vis, 0).abs().max() == 0, f"{where}: mask model wrong"
        assert bool((A > 0)[vis.expand_as(A)].all()), f"{where}: a visible key got exactly 0"
        want_map = A.masked_fill(~q_ok, nan)
        for h in range(H):
            close(t.get(f"head_map/L{l}H{h}"), want_map[:, h], f"{where}, head map {h}")
        close(t.get(f"layer_map/L{l}"), want_map.mean(1), f"{where}, layer map")
        seen = vis & q_ok
        count = seen.sum(2).double()                                 # [B, 1, T]
        close(t.get("received_count")[i], count.expand(-1, H, -1), f"{where}, received divisor")
        recv = (A * seen).sum(2) / count
        close(t.get("received_mean")[i], recv.masked_fill(count == 0, nan), f"{where}, received mean")
        rmax = A.masked_fill(~seen, 0).amax(2)
        close(t.get("received_max")[i], rmax.masked_fill(count == 0, nan), f"{where}, received max")
        ent = -(A * A.clamp_min(1e-300).log()).sum(-1)
        close(t.get("attn_entropy")[i], ent.masked_fill(~valid[:, None], nan), f"{where}, attention entropy")
        # sink keys: the first SINK real tokens of each row, wherever the padding is
        first = torch.stack([valid[b].nonzero().flatten()[:SINK] for b in range(2)])  # [B, SINK]
        sink_rows = torch.stack([A[b][:, :, first[b]].sum(-1) for b in range(2)])     # [B, H, T]
        close(t.get("sink_mass_rows")[i], sink_rows.masked_fill(~valid[:, None], nan), f"{where}, sink rows")
        sink = (sink_rows * valid[:, None]).sum(-1) / valid.sum(1)[:, None]
        close(t.get("sink_mass")[i], sink, f"{where}, sink mass")
        rows = [T - 1, 2]
        frm = torch.stack([A[:, :, r].masked_fill(~valid[:, r, None, None], nan) for r in rows], 2)
        close(t.get("from")[i], frm, f"{where}, from rows")
        if sinks:  # learned sinks: what the real keys did not get, per row
            share = (1 - A.sum(-1)).masked_fill(~valid[:, None], nan)
            assert share.nan_to_num(0).max() > 0.05, f"{where}: the sinks take nothing (test model too weak)"
            close(t.get("sink_share")[i], share, f"{where}, sink share")
        for name, want in row_stats_reference(A, ids, valid, WINDOW).items():
            close(t.get(name)[i], want, f"{where}, {name}")
        pm, pu = pooled_reference(A, vis, valid, 4)
        close(t.get("pooled_map")[i], pm, f"{where}, pooled map")
        close(t.get("pooled_uniform")[i], pu, f"{where}, pooled uniform")
    if m.output == "logits":
        logp = logits.double().log_softmax(-1)
        h = -(logp.exp() * logp).sum(-1).masked_fill(~valid, nan)
        close(t.entropy, h, f"{kind} padding, predictive entropy")
    else:
        assert bool(t.entropy.isnan().all()), "an encoder without LM head has no predictive entropy"


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_quantity_matches_eager_reference(tmp_path, family, attention):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attnscope.export_hf(model, None, tmp_path / "m.pt", attention=attention)
    assert r["max_abs_diff"] <= TOL
    causal = family not in ENCODERS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "attends above the diagonal" warning for a right causal flag
        m = attnscope.load(str(tmp_path / "m.pt"), device="cpu")
        assert m.causal == causal and m.n_heads == 4 and m.n_layers == model.config.num_hidden_layers
        ref = eager_reference(model)
        for kind in ("none", "left", "right"):
            check_run(m, model, ref, kind, causal)


def test_ignored_attention_is_reported(tmp_path):
    """GPT-J's attention class is fixed at build: attention='sdpa' cannot apply, and the result,
    the archive and a warning say what runs instead."""
    torch.manual_seed(0)
    model = FAMILIES["gptj"]().eval()
    with pytest.warns(UserWarning, match=r"attention='sdpa' was not used: the archive runs eager \(the model's own: "
                                         r"GPTJForCausalLM cannot switch attention\)"):
        r = attnscope.export_hf(model, None, tmp_path / "j.pt", attention="sdpa")
    assert r["route"] == "graph" and r["attention"].startswith("eager")
    from attnscope.models import read_extra_file
    import json
    meta = json.loads(read_extra_file(str(tmp_path / "j.pt"), "attnscope.json"))
    assert meta["attention_requested"] == "sdpa" and meta["attention"].startswith("eager")


def test_encoder_marked_causal_warns(tmp_path):
    """An archive whose attnscope.json says causal although its layers attend to later tokens:
    the run warns and the aggregates follow the attention as it is (no trimming)."""
    import json
    torch.manual_seed(0)
    model = FAMILIES["bert"]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attnscope.export_hf(model, None, tmp_path / "b.pt", attention="eager")
    files = {"attnscope.json": ""}
    mod = torch.jit.load(str(tmp_path / "b.pt"), _extra_files=files)
    meta = json.loads(files["attnscope.json"])
    assert meta["causal"] is False
    meta["causal"] = True
    torch.jit.save(mod, str(tmp_path / "wrong.pt"), _extra_files={"attnscope.json": json.dumps(meta)})
    m = attnscope.load(str(tmp_path / "wrong.pt"), device="cpu")
    ids, mask = inputs("none")
    with pytest.warns(UserWarning, match="attends to keys after the query .* although the model is treated as causal"):
        t = m.run(ids, capture={"heads": [(0, 1)]}, attention_mask=mask)
    with torch.no_grad():
        ref = eager_reference(model)(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0][:, 1]
    close(t.get("head_map/L0H1"), ref, "untrimmed map")


@pytest.mark.parametrize("family", ["mpt", "codegen"])
def test_causal_lm_without_is_decoder_is_not_warned_about(tmp_path, family):
    """Mpt and CodeGen configs do not set is_decoder, and their attention modules carry no is_causal:
    their class (…ForCausalLM) says causal, and their eager attentions agree, so no warning."""
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        attnscope.export_hf(FAMILIES[family]().eval(), None, tmp_path / "m.pt")
    assert not [w for w in got if "say causal" in str(w.message)], [str(w.message) for w in got]


def _sigmoid_attention(self, hidden_states, *args, **kwargs):
    """An attention without a softmax or SDPA (sigmoid of q, no keys): nothing attnscope can
    capture, standing in for attention kinds it does not know."""
    return self.o_proj(torch.sigmoid(self.q_proj(hidden_states))), None


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_refusals_tell_the_truth(tmp_path, attention):
    """An attention attnscope does not recognise (it returns no attention maps) is refused before
    tracing and offered no workaround that would fail too (tracing it yourself gives nothing
    more); with fallback=False the one piece of advice given (retry with fallback=True) is
    followed elsewhere in this file."""
    import types
    torch.manual_seed(0)
    model = FAMILIES["llama"]().eval()
    for layer in model.model.layers:
        layer.self_attn.forward = types.MethodType(_sigmoid_attention, layer.self_attn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"cannot export this llama model .* so that is no workaround") as e:
            attnscope.export_hf(model, None, tmp_path / "x.pt", attention=attention)
    assert "(torch.jit.trace with eager attention) would give" in str(e.value) and "Workaround" not in str(e.value)


def test_model_without_attention_is_refused_by_name(tmp_path):
    """Mamba has no attention heads at all: a ValueError saying so, not an AttributeError."""
    model = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                                   state_size=4)).eval()
    with pytest.raises(ValueError, match=r"mamba model \(MambaForCausalLM\) has no attention heads "
                                         r"\(its config has no num_attention_heads\)"):
        attnscope.export_hf(model, None, tmp_path / "m.pt")


def test_sdpa_falls_back_to_eager_for_models_without_it(tmp_path):
    """GPT-OSS has no SDPA attention in transformers (its learned sinks): attention='sdpa' exports
    its eager attention and says so, in a warning and in the result."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"attention='sdpa' was not used: the archive runs eager \(the model's own: "
                                         r"GptOssForCausalLM has no sdpa attention\)"):
        r = attnscope.export_hf(FAMILIES["gpt_oss"]().eval(), None, tmp_path / "o.pt", attention="sdpa")
    assert r["route"] == "graph" and r["attention"].startswith("eager") and r["max_abs_diff"] <= TOL


WINDOWED = ("qwen2_sw", "mistral", "mixtral", "gemma2", "gemma3", "starcoder2", "gpt_oss", "gpt_neo", "llama4")


@pytest.mark.parametrize("family", WINDOWED)
def test_window_longer_than_the_traced_length(tmp_path, family):
    """A sliding window (or Llama 4's attention chunk) of 8 keys, exported from 6-token examples
    (where it cuts nothing) and run at 11 tokens (where it does): the archive must still apply it.
    transformers builds its masks in Python, so a route that baked the short example's mask in
    would fail here."""
    torch.manual_seed(0)
    cfg = FAMILIES[family]().config
    key = {"llama4": "attention_chunk_size", "gpt_neo": "window_size"}.get(family, "sliding_window")
    setattr(cfg, key, 8)
    model = type(FAMILIES[family]())(cfg).eval()
    assert T > getattr(cfg, key) > 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attnscope.export_hf(model, None, tmp_path / "w.pt", example_length=6)
    assert r["max_abs_diff"] <= TOL
    m = attnscope.load(str(tmp_path / "w.pt"), device="cpu")
    ref = eager_reference(model)
    assert any(8 in wc for wc in windows(model, m.n_layers))
    for kind in ("none", "left", "right"):
        check_run(m, model, ref, kind, causal=True)


def test_latent_attention_head_widths(tmp_path):
    """DeepSeek-V3's multi-head latent attention: q·k spans 16 no-rope + 8 rope dims per head and v
    has 16. The archive states both (the config's own head_dim is the rope part, 8), describe()
    says so, and a stated width the captured q/v do not have is refused by name."""
    import json
    torch.manual_seed(0)
    model = FAMILIES["deepseek_v3"]().eval()
    assert model.config.head_dim == 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attnscope.export_hf(model, None, tmp_path / "d.pt", attention="sdpa")
    m = attnscope.load(str(tmp_path / "d.pt"), device="cpu")
    assert (m.head_dim, m.v_head_dim) == (24, 16)
    assert "head dim: 24 (q·k), 16 (v)" in m.describe()
    m.run(torch.arange(3, 9)[None], capture="all")  # the stated widths agree with the SDPA sites
    files = {"attnscope.json": ""}
    mod = torch.jit.load(str(tmp_path / "d.pt"), _extra_files=files)
    for key, value, msg in (("head_dim", 8, r"attnscope.json says head_dim 8, but layer 0's q and k have 24 per head"),
                            ("v_head_dim", 24, r"attnscope.json says v_head_dim 24, but layer 0's v has 16 per head"),
                            ("v_head_dim", None, r"says head_dim 24 and no v_head_dim, but layer 0's v has 16 per head: state v_head_dim")):
        meta = json.loads(files["attnscope.json"])
        if value is None:
            del meta[key]
        else:
            meta[key] = value
        torch.jit.save(mod, str(tmp_path / "wrong.pt"), _extra_files={"attnscope.json": json.dumps(meta)})
        wrong = attnscope.load(str(tmp_path / "wrong.pt"), device="cpu")
        with pytest.raises(ValueError, match=msg):
            wrong.run(torch.arange(3, 9)[None], capture="all")


DECODERS = [f for f in FAMILIES if f not in ENCODERS]


@pytest.mark.parametrize("family", DECODERS)
def test_generation_uses_the_kv_cache(tmp_path, family):
    """Every causal family's archive but the hybrids' carries the KV-cache decode method
    (transformers' own cache, traced): a batch of two prompts gives the greedy ids of the same archive generating with a
    full forward per step; a left-padded batch gives each row's ids alone, with and without the
    cache; an unpadded prompt those of transformers' generate (which stops at EOS)."""
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the same export is checked in test_every_quantity_matches_eager_reference: not again here
        r = attnscope.export_hf(model, None, tmp_path / "g.pt", verify=False)
    m = attnscope.load(str(tmp_path / "g.pt"), device="cpu")
    assert m.has_decode == (family not in HYBRIDS), r  # a hybrid's cache is no keys/values: a forward per step
    ids, mask = inputs("left")
    prompt = ids[:, :7]
    kw = dict(max_new_tokens=6, stop=[], capture={"top_k": 0}, progress=False)
    cached = m.generate(prompt, **kw)
    slow = m.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached.input_ids, slow.input_ids)
    # a left-padded batch: each row generates what it generates alone, with and without the cache
    rows = [prompt[0].tolist(), prompt[1, PAD:].tolist()]
    for use_cache in (True, False):
        batch = m.generate(rows, use_cache=use_cache, **kw)
        for b, row in enumerate(rows):
            alone = m.generate([row], use_cache=use_cache, **kw).input_ids[0]
            got = batch.input_ids[b][batch.attention_mask[b].bool()]
            assert torch.equal(got, alone), f"{family} row {b} (cache {use_cache}): {got.tolist()} vs alone {alone.tolist()}"
    with torch.no_grad():
        ref = model.generate(prompt[:1], attention_mask=torch.ones_like(prompt[:1]), max_new_tokens=6,
                             do_sample=False, pad_token_id=0)
    got = m.generate(prompt[:1], **kw).input_ids
    n = ref.shape[1]
    assert torch.equal(got[:, :n], ref), f"{family}: {got.tolist()} vs transformers {ref.tolist()}"
