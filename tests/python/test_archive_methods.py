"""An archive's methods are checked like its forward: a `decode` (KV-cache) method that returns
the wrong number of values or shapes is refused by name, never read past its end."""
import pytest
import torch

import attnscope

V, L, KV, D = 16, 1, 1, 4


class Honest(torch.nn.Module):
    """forward(ids, mask) -> logits [B, T, V]; decode -> (logits, k, v), caches [L, B, KV, T, D]."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 16)

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        q = x[:, :, :4].unsqueeze(1)  # one head of width 4: the attention site the core captures
        a = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return x + a.squeeze(1).sum(-1, keepdim=True)

    def grown(self, past, input_ids):
        return torch.cat([past, torch.zeros(1, input_ids.shape[0], 1, input_ids.shape[1], 4)], 3)

    @torch.jit.export
    def decode(self, input_ids, attention_mask, past_k, past_v):
        return self.emb(input_ids), self.grown(past_k, input_ids), self.grown(past_v, input_ids)


class TwoValues(Honest):
    @torch.jit.export
    def decode(self, input_ids, attention_mask, past_k, past_v):
        return self.emb(input_ids), self.grown(past_k, input_ids)


class NarrowV(Honest):
    @torch.jit.export
    def decode(self, input_ids, attention_mask, past_k, past_v):
        k = self.grown(past_k, input_ids)
        return self.emb(input_ids), k, k[:, :, :, :, :1]


class FlatLogits(Honest):
    @torch.jit.export
    def decode(self, input_ids, attention_mask, past_k, past_v):
        return self.emb(input_ids)[:, :, 0], self.grown(past_k, input_ids), self.grown(past_v, input_ids)


KINDS = {0: Honest, 1: TwoValues, 2: NarrowV, 3: FlatLogits}


def model(kind):
    info = {"family": "toy", "num_layers": L, "num_heads": 1, "num_kv_heads": KV, "head_dim": D, "vocab_size": V}
    return attnscope.from_module(torch.jit.script(KINDS[kind]()), device="cpu", info=info)


@pytest.mark.parametrize("kind,msg", [
    (1, r"decode method returned 2 values; expected \(logits \[B, t, V\], k_cache, v_cache\)"),
    (2, r"decode method returned caches of shapes \[1, 1, 1, 3, 4\] and \[1, 1, 1, 3, 1\]"),
    (3, r"decode method returned logits of shape \[1, 3\]; expected \[1, 3, V\]"),
])
def test_a_decode_that_lies_is_refused_by_name(kind, msg):
    m = model(kind)
    with pytest.raises(ValueError, match=msg):
        m.generate([[1, 2, 3]], max_new_tokens=2, progress=False, capture={"top_k": 0})
    with pytest.raises(ValueError, match=msg):
        m.prefill(torch.tensor([[1, 2, 3]]))


def test_an_honest_decode_generates():
    t = model(0).generate([[1, 2, 3]], max_new_tokens=2, progress=False, capture={"top_k": 0}, stop=[])
    assert t.input_ids.shape == (1, 5) and t.generation["kv_cache"] is True
    k, v = model(0).prefill(torch.tensor([[1, 2, 3]]))
    assert k.shape == (L, 1, KV, 3, D)


def rewritten(src, dst, edit):
    """A copy of the archive `src` with each member's bytes passed through edit(name, bytes): a
    zip with valid CRCs (Python's writer), so only the records lie."""
    import zipfile
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))
    return str(dst)


def first_storage(pkl):
    """(key, byte offset and length of the numel argument) of the pickle's first storage."""
    import pickletools
    ops = [op for op in pickletools.genops(pkl) if op[0].name not in ("BINPUT", "LONG_BINPUT", "MEMOIZE")]
    for i, (op, arg, pos) in enumerate(ops):
        if op.name == "BINPERSID":  # MARK 'storage' torch.FloatStorage key device numel TUPLE BINPERSID
            key, numel, end = ops[i - 4], ops[i - 2], ops[i - 1]
            return key[1], numel[2], end[2] - numel[2]
    raise AssertionError("no storage in the pickle")


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "honest.pt"
    torch.jit.save(torch.jit.script(Honest()), str(path))
    return path


@pytest.mark.parametrize("cut", ["empty", "half"])
def test_a_weight_record_shorter_than_its_tensor_is_refused_before_it_is_read(saved, tmp_path, cut):
    # Before: an empty record crashed torch::jit::load (SIGSEGV); a half one ran on the bytes past it.
    import zipfile
    pkl = next(zipfile.ZipFile(saved).read(n) for n in zipfile.ZipFile(saved).namelist() if n.endswith("/data.pkl"))
    key = first_storage(pkl)[0]

    def edit(name, b):
        return (b"" if cut == "empty" else b[: len(b) // 2]) if name.endswith(f"/data/{key}") else b
    bad = rewritten(saved, tmp_path / "short.pt", edit)
    held = 0 if cut == "empty" else 512
    msg = rf"short\.pt': damaged TorchScript archive: record 'honest/data/{key}' holds {held} bytes, but data\.pkl " \
          r"declares a Float storage of 256 elements \(1024 bytes\) there"
    with pytest.raises(ValueError, match=msg):
        attnscope.load(bad)
    assert attnscope.load(str(saved)).run([[1, 2, 3]]).input_ids.shape == (1, 3)  # the original loads


def test_a_tensor_reaching_past_its_storage_is_refused(saved, tmp_path):
    # The storage's declared size and its record agree (128 floats), the tensor on it says 16 x 16.
    import zipfile
    pkl_name = next(n for n in zipfile.ZipFile(saved).namelist() if n.endswith("/data.pkl"))
    key, at, width = first_storage(zipfile.ZipFile(saved).read(pkl_name))
    assert width == 3  # BININT2 256

    def edit(name, b):
        if name == pkl_name:
            return b[:at] + b"M" + (128).to_bytes(2, "little") + b[at + 3:]
        return b[:512] if name.endswith(f"/data/{key}") else b
    bad = rewritten(saved, tmp_path / "past.pt", edit)
    with pytest.raises(ValueError, match=r"a tensor in data\.pkl \(offset 0, sizes \[16, 16\], strides \[16, 1\]\) "
                                         rf"reaches element 255 of record 'honest/data/{key}', which holds 128"):
        attnscope.load(bad)
