"""Learned attention sinks (GPT-OSS): a per-head logit joins every softmax row and is dropped
after it, so a row's weights over the real keys sum to 1 - (the sinks' share). The capture keeps
the real keys (as transformers' eager attentions return them) and the share per row
(`sink_share`); the atlas, token profiles, figures and view show it. References here come from
transformers' eager attentions, fp32, 1e-5."""
import base64
import json
import warnings

import matplotlib
import numpy as np
import pytest
import torch
from hf_families import FAMILIES

import attnscope

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

transformers = pytest.importorskip("transformers")
TOL = 1e-5


@pytest.fixture(scope="module")
def oss(tmp_path_factory):
    """(archive model, transformers model with eager attention, ids, mask, eager attentions [L][B, H, T, T])."""
    torch.manual_seed(0)
    model = FAMILIES["gpt_oss"]().eval()
    path = tmp_path_factory.mktemp("oss") / "oss.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attnscope.export_hf(model, None, path, attention="eager")
    m = attnscope.load(str(path), device="cpu")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 64, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False).attentions
    return m, model, ids, mask, [a.double() for a in att]


def _share(att, mask):
    """[L, B, H, T] 1 - Σ over the real keys, NaN at padded queries: the independent reference."""
    s = torch.stack([1 - a.sum(-1) for a in att])
    return s.masked_fill(~mask.bool()[None, :, None, :], float("nan"))


def test_sites_and_share_match_eager(oss):
    m, _, ids, mask, att = oss
    assert "softmax with sink" in m.describe()
    t = m.run(ids, attention_mask=mask, capture="all")
    want = _share(att, mask)
    got = t.get("sink_share").double()
    assert torch.equal(got.isnan(), want.isnan())
    assert (got - want).nan_to_num(0).abs().max() <= TOL
    assert 0.05 < float(want.nan_to_num(0).max()) < 1, "the sinks take a real share"
    # entropy is over the real keys, without the sink term (docs/capture.md)
    ent = torch.stack([-(a * a.clamp_min(1e-300).log()).sum(-1) for a in att])
    ent = ent.masked_fill(~mask.bool()[None, :, None, :], float("nan"))
    assert (t.get("attn_entropy").double() - ent).nan_to_num(0).abs().max() <= TOL


def test_atlas_and_profile_state_the_sinks(oss):
    m, _, ids, mask, att = oss
    t = m.run(ids[:1], capture="all")
    atlas = attnscope.head_atlas(t)
    want = _share([a[:1] for a in att], mask[:1]).nanmean((1, 3))     # [L, H] over real rows
    assert (atlas["learned_sink"] - want).abs().max() <= TOL
    assert "learned_sink" in atlas.to_pandas().columns
    fig = attnscope.visualize_head_atlas(atlas)
    ax = [a for a in fig.axes if a.get_title().startswith("learned_sink")][0]
    assert ax.get_images()[0].get_clim() == (0.0, 1.0)
    plt.close(fig)
    p = attnscope.token_profile(t, 7)
    assert (p.heads["learned_sink"] - torch.stack([1 - a[0, :, 7].sum(-1) for a in att])).abs().max() <= TOL
    assert "learned sinks" in repr(p)


def test_figures_and_view_show_the_share(oss, tmp_path):
    m, _, ids, mask, att = oss
    t = m.run(ids[:1], capture={"heads": [(1, 2)], "layer_maps": [0, 1], "received": True, "attn_entropy": True})
    share = _share([a[:1] for a in att], mask[:1])[:, 0]             # [L, H, T]
    fig = attnscope.visualize_attention(t, [(1, 2)])
    ax = fig.axes[0]
    assert ax.get_title() == f"Layer 1 Head 2\nsinks {share[1, 2].mean():.0%}"
    strip = [c for c in ax.child_axes if c.get_xlabel() == "sink"][0]
    drawn = strip.get_images()[0].get_array()[:, 0]
    assert abs(drawn - share[1, 2].numpy()).max() <= TOL
    plt.close(fig)
    fig = attnscope.visualize_attention_layers(t, [0, 1])
    assert [a.get_title() for a in fig.axes[:2]] == [f"L{l} Avg · sinks {share[l].mean(0).mean():.0%}" for l in (0, 1)]
    plt.close(fig)
    fig = attnscope.visualize_token_profile(t, 7)
    assert "share taken by learned sinks" in [x.get_label() for x in fig.axes[0].get_lines()]
    plt.close(fig)
    page = attnscope.show(t)._repr_html_()
    data = json.loads(page.split("var D = ", 1)[1].split(";\n", 1)[0])
    assert data["learned_sinks"] is True
    prof = np.frombuffer(base64.b64decode(data["profile"]), "<u2").reshape(6, 2, 12)  # 6 lines, L, T
    assert abs(prof[5] / 65534 - share.mean(1).numpy()).max() <= 1 / 65534   # the hover line: head mean


def test_models_without_sinks_show_none(tmp_path):
    torch.manual_seed(0)
    model = FAMILIES["llama"]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attnscope.export_hf(model, None, tmp_path / "l.pt", attention="eager")
    t = attnscope.load(str(tmp_path / "l.pt"), device="cpu").run(torch.arange(3, 12)[None], capture="all")
    assert "sink_share" not in t.captures and "learned_sink" not in attnscope.head_atlas(t).scores
    fig = attnscope.visualize_attention(t, [(0, 1)])
    assert fig.axes[0].get_title() == "Layer 0 Head 1" and not fig.axes[0].child_axes
    plt.close(fig)
    assert "learned sinks" not in repr(attnscope.token_profile(t, 5))


def test_dataset_atlas_keeps_the_sinks(oss, tmp_path):
    """aggregate_dataset accumulates the learned sinks' share with the row statistics: the dataset
    atlas's learned_sink equals the mean over the real rows of all its sequences (eager reference),
    through save and load."""
    m, _, ids, mask, att = oss
    ds = attnscope.aggregate_dataset(m, [ids[0].tolist(), ids[1, 3:].tolist()], length=None, num=None, capture="all",
                                     batch_size=2, progress=False)
    want = []
    for row, keep in ((0, slice(0, 12)), (1, slice(3, 12))):
        sub = ids[row:row + 1, keep]
        with torch.no_grad():
            a = oss[1](input_ids=sub, output_attentions=True, use_cache=False).attentions
        want.append(torch.stack([1 - x[0].double().sum(-1) for x in a]))          # [L, H, t]
    ref = torch.cat(want, -1).mean(-1)                                             # [L, H]
    got = attnscope.head_atlas(ds)["learned_sink"]
    assert (got - ref).abs().max() <= TOL
    ds.save(str(tmp_path / "d.safetensors"))
    again = attnscope.head_atlas(attnscope.DatasetTrace.load(str(tmp_path / "d.safetensors")))
    assert torch.equal(again["learned_sink"], got)
