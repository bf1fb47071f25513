"""aggregate_dataset / DatasetTrace: running sums against per-sequence captures, Gu et al.'s
Sink₁ on hand-made attention, save/load/merge, padding, and the error paths."""
import os

import pytest
import torch
from conftest import BUILD

import attnscope
from attnscope import _core

FIX = os.path.join(BUILD, "fixtures")


def _load(name):
    path = os.path.join(FIX, name)
    if not os.path.exists(path):
        pytest.skip("fixtures not built (ctest runs make_fixtures first)")
    return attnscope.load(path, device="cpu")


@pytest.fixture(scope="module")
def llama():
    return _load("hf_llama_eager.pt")  # transformers LlamaForCausalLM, random weights


@pytest.fixture(scope="module")
def toy():
    return _load("toy_hf_eager.pt")  # 3 layers, 4 heads, word-level tokenizer.json


def _ids(n, t, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, t), generator=g)


def test_means_equal_per_sequence_captures(llama):
    ids = _ids(7, 12, llama.vocab_size)
    d = attnscope.aggregate_dataset(llama, ids, length=10, num=7, batch_size=3, progress=False,
                                    capture={"layer_maps": True, "head_maps": True, "received": True,
                                             "attn_entropy": True})
    L, H = llama.n_layers, llama.n_heads
    assert (d.n_sequences, d.length, d.n_layers, d.n_heads) == (7, 10, L, H)
    runs = [llama.run(ids[i:i + 1, :10], capture={"layer_maps": list(range(L)), "heads": [(1, 2)],
                                                  "received": True, "attn_entropy": True})
            for i in range(7)]
    for l in range(L):
        ref = torch.stack([r.get(f"layer_map/L{l}")[0] for r in runs]).mean(0)
        assert (d.get(f"layer_map/L{l}")[0] - ref).abs().max() < 1e-6
    ref = torch.stack([r.get("head_map/L1H2")[0] for r in runs]).mean(0)
    assert (d.get("head_map/L1H2")[0] - ref).abs().max() < 1e-6
    recv = torch.stack([r.get("received_mean")[:, 0] for r in runs])      # [N, L, H, T]
    assert (d.alpha - recv.mean(0)).abs().max() < 1e-6
    rmax = torch.stack([r.get("received_max")[:, 0] for r in runs]).amax(0)
    assert (d.get("received_max")[:, 0] - rmax).abs().max() < 1e-6
    ent = torch.stack([r.get("attn_entropy")[:, 0] for r in runs])        # [N, L, H, T]
    assert (d.head_entropy - ent.mean((0, 3))).abs().max() < 1e-5
    pred = torch.stack([r.entropy[0] for r in runs]).mean(0)
    assert (d.predictive_entropy - pred).abs().max() < 1e-5
    hits = (recv[..., 0] > 0.3).float()                                    # [N, L, H]
    assert (d.sink_rate - hits.mean(0)).abs().max() < 1e-6
    assert abs(d.sink1 - hits.mean().item()) < 1e-6


def test_whole_sequences_padded_per_batch(llama):
    """length=None: sequences keep their lengths, batches are right-padded; each map cell is
    averaged over the sequences that have both positions."""
    lens = [5, 9, 7, 3]
    seqs = [_ids(1, n, llama.vocab_size, seed=n)[0].tolist() for n in lens]
    d = attnscope.aggregate_dataset(llama, seqs, length=None, num=None, batch_size=4, progress=False)
    assert d.length == 9 and d.n_sequences == 4
    L = llama.n_layers
    runs = [llama.run([s], capture={"layer_maps": list(range(L)), "received": True}) for s in seqs]
    total, count = torch.zeros(9, 9), torch.zeros(9, 9)
    for r, n in zip(runs, lens):
        total[:n, :n] += r.get("layer_map/L1")[0]
        count[:n, :n] += 1
    assert (d.get("layer_map/L1")[0] - total / count).abs().max() < 1e-6
    k = 6  # key 6 exists in the sequences of length 9 and 7 only
    ref = (runs[1].get("received_mean")[:, 0, :, k] + runs[2].get("received_mean")[:, 0, :, k]) / 2
    assert (d.alpha[..., k] - ref).abs().max() < 1e-6


def _hand_made_model(attn, path):
    """A TorchScript model whose attention is `attn [N, L, H, T, T]`: sequence b uses
    attn[ids[b, 0]]; the probabilities go through attnscope's capture operator."""
    class HandMade(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("attn", attn)

        def forward(self, input_ids):
            t = input_ids.shape[1]
            a = self.attn[input_ids[:, 0]][..., :t, :t]
            s = torch.zeros(())
            for l in range(a.shape[1]):
                s = s + torch.ops.attnscope.capture(a[:, l].contiguous(), l).sum() * 0
            return torch.zeros(input_ids.shape[0], input_ids.shape[1], 16) + s  # vocab > N

    torch.jit.script(HandMade()).save(str(path))
    return attnscope.load(str(path), device="cpu")


def test_sink1_equals_gu_et_al_formula(tmp_path):
    N, L, H, T, eps = 6, 3, 4, 8, 0.3
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(N, L, H, T, T, generator=g) * 2
    logits[..., 0] += torch.rand(N, L, H, 1, generator=g) * 6 - 1   # some heads sink, some not
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    attn = logits.masked_fill(~causal, float("-inf")).softmax(-1)
    model = _hand_made_model(attn, tmp_path / "hand.pt")
    ids = torch.arange(N).unsqueeze(1).expand(N, T)
    d = attnscope.aggregate_dataset(model, ids, length=T, num=N, batch_size=4, epsilon=eps,
                                    capture={"received": True}, progress=False)
    # Gu et al. (1-indexed): alpha_k = 1/(T-k+1) sum_{i=k}^{T} A[i, k];
    # Sink_k = 1/L sum_l 1/H sum_h 1(alpha_k > eps), per sequence, averaged over sequences.
    alpha = torch.zeros(N, L, H, T)
    for k in range(1, T + 1):
        alpha[..., k - 1] = attn[..., k - 1:, k - 1].sum(-1) / (T - k + 1)
    sink = [(alpha[n, ..., 0] > eps).float().mean().item() for n in range(N)]
    assert 0.1 < sum(sink) / N < 0.9  # the hand-made heads are a mix
    assert abs(d.sink1 - sum(sink) / N) < 1e-6
    assert abs(d.sink1_of_mean_alpha - (alpha[..., 0].mean(0) > eps).float().mean().item()) < 1e-6
    per_layer = (alpha[..., 0] > eps).float().mean((0, 2))
    assert (d.sink1_per_layer - per_layer).abs().max() < 1e-6
    assert (d.alpha - alpha.mean(0)).abs().max() < 1e-6


def test_save_load_merge(llama, tmp_path):
    ids = _ids(8, 10, llama.vocab_size, seed=5)
    kw = dict(length=10, num=None, batch_size=3, progress=False)
    whole = attnscope.aggregate_dataset(llama, ids, **kw)
    a = attnscope.aggregate_dataset(llama, ids[:5], **kw)
    b = attnscope.aggregate_dataset(llama, ids[5:], **kw)
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    m = attnscope.DatasetTrace.load(tmp_path / "a.safetensors").merge(
        attnscope.DatasetTrace.load(tmp_path / "b.safetensors"))
    assert m.n_sequences == 8
    for name in ("layer_map/L0", "received_mean", "received_max", "attn_entropy"):
        assert (m.get(name) - whole.get(name)).abs().max() < 1e-6, name
    assert m.sink1 == pytest.approx(whole.sink1)
    other = attnscope.aggregate_dataset(llama, ids, epsilon=0.5, **kw)
    with pytest.raises(RuntimeError, match=r"epsilon differs \(0.3 vs 0.5\)"):
        whole.merge(other)


def test_trace_file_is_not_a_dataset(toy, tmp_path):
    toy.run([1, 2, 3], capture="all").save(tmp_path / "t.safetensors")
    with pytest.raises(RuntimeError, match=r"format is 'attnscope-trace', expected 'attnscope-dataset'"):
        attnscope.DatasetTrace.load(tmp_path / "t.safetensors")


def test_bad_inputs(toy, tmp_path):
    with pytest.raises(ValueError, match="the dataset is empty"):
        attnscope.aggregate_dataset(toy, [], progress=False)
    with pytest.raises(ValueError, match=r"sequence 1 has 2 tokens, fewer than length=4.*skip_short=True"):
        attnscope.aggregate_dataset(toy, [[1, 2, 3, 4], [5, 6]], length=4, num=None, progress=False)
    with pytest.raises(ValueError, match=r"only 1 of 2 sequences have at least 4 tokens \(1 shorter\); num=5"):
        attnscope.aggregate_dataset(toy, [[1, 2, 3, 4], [5, 6]], length=4, num=5, skip_short=True,
                                    progress=False)
    with pytest.raises(ValueError, match=r"only 2 sequences given, num=5 asked: give more data or pass num=None"):
        attnscope.aggregate_dataset(toy, [[1, 2, 3, 4], [5, 6]], length=None, num=5, progress=False)
    with pytest.raises(ValueError, match="for a file use attnscope.read_texts"):
        attnscope.aggregate_dataset(toy, "some text", progress=False)
    with pytest.raises(ValueError, match=r"capture: unknown part 'maps'"):
        attnscope.aggregate_dataset(toy, [[1, 2]], capture={"maps": True}, progress=False)
    with pytest.raises(ValueError, match=r"length 0: expected a positive int"):
        attnscope.aggregate_dataset(toy, [[1, 2]], length=0, progress=False)
    with pytest.raises(ValueError, match="bos=True but the model archive names no BOS token"):
        attnscope.aggregate_dataset(toy, [[1, 2]], length=2, num=1, bos=True, progress=False)
    with pytest.raises(ValueError, match=r"epsilon 1.5 out of range"):
        attnscope.aggregate_dataset(toy, [[1, 2]], length=2, num=1, epsilon=1.5, progress=False)
    d = attnscope.aggregate_dataset(toy, [[1, 2, 3]], length=3, num=1, capture={"received": True},
                                    progress=False)
    with pytest.raises(ValueError, match=r"no 'layer_map/L0': aggregate with capture=\{'layer_maps': True\}"):
        d.get("layer_map/L0")


def test_read_texts(tmp_path):
    (tmp_path / "a.txt").write_text("one two\n\nthree\n")
    assert attnscope.read_texts(tmp_path / "a.txt") == ["one two", "three"]
    (tmp_path / "a.jsonl").write_text('{"text": "x y"}\n"z"\n')
    assert attnscope.read_texts(tmp_path / "a.jsonl") == ["x y", "z"]


@pytest.mark.parametrize("name,content,message", [
    ("bad.jsonl", b'{"text": "x"}\n{oops\n', r"bad.jsonl:2: not JSON"),
    ("num.jsonl", b'{"body": 3}\n', r"num.jsonl:1: expected a JSON string or an object with a \"text\""),
    ("missing.txt", None, r"missing.txt: cannot read it"),
    ("bin.txt", b"\xff\xfe\x00\x81", r"bin.txt: cannot read it as UTF-8"),
    ("empty.txt", b"\n\n", r"empty.txt: has no texts"),
    ("x.csv", b"a\n", r"expected a .txt .* or .jsonl file, not '.csv'"),
])
def test_read_texts_errors(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        attnscope.read_texts(tmp_path / name)


def test_state_names_match_core():
    assert _core.DatasetStats.max_state_names() == ["received_max"]


def test_head_atlas_of_a_dataset(llama, tmp_path):
    """The dataset atlas = the atlas of all sequences run as one batch: means of the row
    statistics over every row where they are defined, whatever the batching; kept through
    save, load and merge. Repeated halves give duplicate and induction rows."""
    half = _ids(6, 6, llama.vocab_size, seed=3)
    ids = torch.cat([half, half], 1)                                       # [6, 12]
    kw = dict(length=12, num=None, batch_size=4, progress=False)
    d = attnscope.aggregate_dataset(llama, ids, **kw)
    atlas = attnscope.head_atlas(d)
    want = attnscope.head_atlas(llama.run(ids))                            # one batch of 6
    for name in ("self", "prev", "distance", "local", "duplicate", "induction", "entropy", "sink"):
        assert torch.allclose(atlas[name], want[name], atol=1e-5, rtol=1e-5, equal_nan=True), name
    assert atlas.counts["induction"].sum() == want.counts["induction"].sum() > 0
    a = attnscope.aggregate_dataset(llama, ids[:2], **kw)
    b = attnscope.aggregate_dataset(llama, ids[2:], **kw)
    a.save(tmp_path / "a.safetensors")
    m = attnscope.DatasetTrace.load(tmp_path / "a.safetensors").merge(b)
    assert torch.allclose(attnscope.head_atlas(m)["induction"], atlas["induction"], atol=1e-6, equal_nan=True)
    no_rows = attnscope.aggregate_dataset(llama, ids, capture={"received": True}, **kw)
    with pytest.raises(ValueError, match="this dataset has no row statistics"):
        attnscope.head_atlas(no_rows)
    with pytest.raises(ValueError, match="rows= applies to a trace"):
        attnscope.head_atlas(d, rows=(0, 4))
