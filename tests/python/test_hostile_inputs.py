"""Hostile files and careless values: trace/dataset safetensors with bad headers, offsets or
sizes, JSON that is not JSON or holds absurd numbers, tokenizer.json / attnscope.json that ask
for huge allocations, masks that are not 0/1. Each is a ValueError naming the value, raised
before anything is allocated from the file's word."""
import json
import os
import struct
import time
import zipfile

import numpy as np
import pytest
import torch
from conftest import BUILD

import attnscope
from attnscope import _core

FIX = os.path.join(BUILD, "fixtures")


def st_file(path, header, data=b"", raw_len=None):
    h = json.dumps(header).encode() if isinstance(header, dict) else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h) if raw_len is None else raw_len) + h + data)
    return str(path)


META = {"format": "attnscope-trace", "version": "1", "n_layers": "2", "n_heads": "2", "n_kv_heads": "2", "spec": "{}",
        "layer_paths": "[]", "tokens": "[]"}


@pytest.mark.parametrize("header,data,msg", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
     b"\0" * 12, r"tensor 'b' starts at byte 4 of the data, expected 8 \(tensors must be contiguous and not overlap\)"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, r"data_offsets \[0, 8\) outside the data section of 4 bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"", r"data_offsets\[0\]: -8 out of range"),
    ({"a": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 8]}}, b"\0" * 8,
     r"holds 8 bytes, but dtype F32 x its shape needs more than the file"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
     b"\0" * 24, r"tensor 'a' holds 8 bytes, but dtype F32 x its shape needs 16"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, r"the tensors cover 8 of the 12 data bytes"),
    ({"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}, b"\0" * 8, r"shape\[0\]: expected an integer, got 2.5"),
    ({"__metadata__": {"n": 3}}, b"", r"__metadata__ 'n' is 3, expected a string"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, r"unsupported dtype 'Q4'"),
])
def test_bad_safetensors_headers(tmp_path, header, data, msg):
    path = st_file(tmp_path / "t.safetensors", header, data)
    with pytest.raises(ValueError, match=msg):
        attnscope.Trace.load(path)


def test_bad_lengths_and_truncation(tmp_path):
    (tmp_path / "7.safetensors").write_bytes(b"\x08\0\0\0\0\0\0")
    with pytest.raises(ValueError, match=r"7 bytes, less than its 8-byte header length"):
        attnscope.Trace.load(str(tmp_path / "7.safetensors"))
    path = st_file(tmp_path / "big.safetensors", b"{}", raw_len=1 << 40)
    with pytest.raises(ValueError, match=r"header length 1099511627776 for a file of 10 bytes"):
        attnscope.Trace.load(path)
    path = st_file(tmp_path / "arr.safetensors", b"[1]   ")
    with pytest.raises(ValueError, match=r"does not start with '\{'"):
        attnscope.Trace.load(path)
    path = st_file(tmp_path / "nan.safetensors", b'{"a": NaN}')
    with pytest.raises(ValueError, match=r"malformed JSON at byte 6"):
        attnscope.Trace.load(path)


def test_trace_metadata_checked(tmp_path, toy):
    t = toy.run([1, 2, 3])
    good = tmp_path / "good.safetensors"
    t.save(good)
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(good))
    from safetensors import safe_open
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    for key, value, msg in [("n_heads", "1e8", r"metadata 'n_heads' is '1e8', expected an integer"),
                            ("n_layers", "0", r"metadata 'n_layers' 0 out of range: expected 1..100000"),
                            ("version", "x", r"metadata 'version' is 'x', expected an integer"),
                            ("prompt_len", "99", r"metadata 'prompt_len' 99 out of range: expected -1..3")]:
        bad = tmp_path / f"{key}.safetensors"
        save_file(tensors, str(bad), metadata={**meta, key: value})
        with pytest.raises(ValueError, match=msg):
            attnscope.Trace.load(str(bad))
    bad = tmp_path / "shape.safetensors"
    save_file({**tensors, "entropy": torch.zeros(1, 5)}, str(bad), metadata=meta)
    with pytest.raises(ValueError, match=r"entropy must be \[1, 3\], got \[1, 5\]"):
        attnscope.Trace.load(str(bad))


def test_trace_strings_that_are_not_utf8_or_json(tmp_path, toy):
    """Token strings are data: bytes that are not UTF-8 (a GGUF vocabulary, a C++-written or
    edited file) load as "\\xNN" text; a generation field that is not a JSON object is refused."""
    t = toy.run([1, 2, 3])
    good = tmp_path / "good.safetensors"
    t.save(good)
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n]
    tok = json.loads(json.loads(header)["__metadata__"]["tokens"])[1]
    needle = json.dumps(tok).encode()[1:-1]                       # the token as written in the header
    assert header.count(needle) >= 1 and len(needle) >= 2
    bad_bytes = (b"\xff\xc3" + b"a" * len(needle))[:len(needle)]  # a lone byte, then a lead byte without its pair
    bad = tmp_path / "utf8.safetensors"
    bad.write_bytes(raw[:8] + header.replace(needle, bad_bytes, 1) + raw[8 + n:])
    got = attnscope.Trace.load(str(bad))
    assert got.tokens[0][1].startswith("\\xff\\xc3") and got.labels[0][1].startswith("\\xff")
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    path = tmp_path / "gen.safetensors"
    save_file(load_file(str(good)), str(path), metadata={**meta, "generation": "not json"})
    with pytest.raises(ValueError, match=r"generation.*(malformed JSON|JSON object)"):
        attnscope.Trace.load(str(path))


def test_dataset_length_must_match_its_tensors(tmp_path, toy):
    d = attnscope.aggregate_dataset(toy, [[1, 2, 3, 4]], length=4, num=None)
    d.save(str(tmp_path / "d.safetensors"))
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(tmp_path / "d.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file(load_file(str(tmp_path / "d.safetensors")), str(tmp_path / "bad.safetensors"),
              metadata={**meta, "length": "100000000"})
    with pytest.raises(ValueError, match=r"length 100000000 make it Double"):
        attnscope.DatasetTrace.load(str(tmp_path / "bad.safetensors"))


@pytest.mark.parametrize("text,msg", [
    ('{"heads": [[0, NaN]]}', r"malformed JSON at byte 15: unexpected character"),
    ('{"heads": [[0, 1e300]]}', r"'heads'\[0\] head: expected an integer, got 1.0000000000000001e\+300"),
    ('{"heads": [[0, 2.9]]}', r"'heads'\[0\] head: expected an integer, got 2.8999999999999999"),
    ('{"heads": [[0, 0x10]]}', r"malformed JSON at byte 16"),
    ('{"heads": [[0, +3]]}', r"malformed JSON at byte 15: unexpected character"),
    ('{"heads": [[0, inf]]}', r"malformed JSON at byte 15: unexpected character"),
    ('{"heads": "all"}', r"'heads': expected an array, got \"all\""),
    ('{"heads": [[0, -1]]}', r"head: -1 out of range"),
    ('{"top_k": 1e300}', r"'top_k': expected an integer"),
    ('{"top_k": 012}', r"leading zero"),
    ('{"received": 1}', r"'received': expected true or false, got 1"),
    ('{"temperature": 0}', r"'temperature': 0 must be > 0"),
    ('{"bogus": 1}', r"capture spec: unknown key 'bogus'"),
    ('{"a": "\x01"}', r"unescaped control character"),
    ('{"a": "\\ud800"}', r"lone high surrogate"),
    ('{"layers": [1e999]}', r"number out of range of a double"),
])
def test_capture_spec_json_is_strict(text, msg):
    with pytest.raises(ValueError, match=msg):
        _core.CaptureSpec.from_json(text)


def test_capture_spec_json_still_reads_good_specs():
    s = _core.CaptureSpec.from_json('{"heads": [[0, 1], [2, 3]], "layers": [0], "temperature": 0.5e0, "top_k": 0, '
                                    '"from_tokens": [-1], "chunk_elements": 1024}')
    assert s.heads == [(0, 1), (2, 3)] and s.temperature == 0.5 and s.top_k == 0 and s.from_tokens == [-1]


def with_extra(tmp_path, name, extra):
    """A copy of the toy fixture whose extra file `extra` is replaced."""
    src = os.path.join(FIX, "toy_hf_eager.pt")
    out = tmp_path / name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            base = item.filename.split("/extra/")[-1] if "/extra/" in item.filename else None
            if base in extra:
                continue
            zout.writestr(item, zin.read(item.filename))
        prefix = zin.namelist()[0].split("/")[0]
        for k, v in extra.items():
            zout.writestr(f"{prefix}/extra/{k}", v)
    return str(out)


@pytest.fixture(scope="module")
def toy():
    path = os.path.join(FIX, "toy_hf_eager.pt")
    if not os.path.exists(path):
        pytest.skip("fixtures not built")
    return attnscope.load(path, device="cpu")


@pytest.mark.parametrize("extra,msg", [
    ({"attnscope.json": '{"num_heads": 100000000}'}, r"'num_heads': 100000000 out of range: expected 1..65536"),
    ({"attnscope.json": '{"num_layers": 1e300}'}, r"'num_layers': expected an integer, got 1.0000000000000001e\+300"),
    ({"attnscope.json": '{"num_layers": 0}'}, r"'num_layers': 0 out of range"),
    ({"attnscope.json": '{"num_heads": 4, "num_kv_heads": 3}'}, r"num_kv_heads 3 must divide num_heads 4"),
    ({"attnscope.json": '{"family": 3}'}, r"'family': expected a string, got 3"),
    ({"tokenizer.json": '{"model": {"vocab": {"a": 50000000}}}'},
     r"token id 50000000 \('a'\) is beyond what its 1 entries can number \(ids below 1025\)"),
    ({"tokenizer.json": '{"model": {"vocab": {"a": 1e12}}}'}, r"model.vocab\['a'\]: expected an integer, got 1000000000000"),
    ({"tokenizer.json": '{"added_tokens": [{"id": -5, "content": "x"}]}'}, r"'id': -5 out of range"),
])
def test_archive_extras_are_validated(tmp_path, extra, msg, toy):
    with pytest.raises(ValueError, match=msg):
        _core.Model.load(with_extra(tmp_path, "bad.pt", extra), "cpu")


@pytest.mark.parametrize("mask,msg", [
    (torch.tensor([[1.0, 0.5, 1.0]]), r"attention_mask has dtype Float: expected bool or an integer type"),
    (torch.tensor([[1, 2, 1]]), r"attention_mask must hold only 0 \(padding\) and 1 \(token\); got 2 in row 0"),
    (torch.tensor([[1, 0, 1]]), r"has padding between tokens"),
])
def test_attention_mask_only_zero_one(toy, mask, msg):
    with pytest.raises((ValueError, RuntimeError), match=msg):
        toy.run(torch.tensor([[1, 2, 3]]), attention_mask=mask)


def test_threads_calling_run_on_one_model_give_the_serial_results():
    # The binding releases the GIL: runs really overlap. The model's facts are fixed at load.
    from concurrent.futures import ThreadPoolExecutor
    path = os.path.join(FIX, "toy_hf_eager.pt")
    if not os.path.exists(path):
        pytest.skip("fixtures not built")
    m = attnscope.load(path, device="cpu")
    inputs = [torch.tensor([[(i * 7 + j) % 50 + 1 for j in range(5 + i % 7)]]) for i in range(24)]
    spec = {"heads": [(1, 2)], "received": True}
    serial = [m.run(x, capture=spec) for x in inputs]
    with ThreadPoolExecutor(6) as pool:
        for _ in range(3):
            got = list(pool.map(lambda x: m.run(x, capture=spec), inputs))
            for a, b in zip(serial, got):
                assert torch.equal(a.entropy, b.entropy)
                assert torch.equal(a.captures["head_map/L1H2"], b.captures["head_map/L1H2"])
                assert torch.equal(a.captures["received_mean"], b.captures["received_mean"])
                assert (b.n_layers, b.n_heads) == (m.n_layers, m.n_heads)


def test_save_killed_midway_leaves_the_old_or_the_new_file(tmp_path):
    # A writer saving a ~40 MB trace again and again is SIGKILLed at random moments: the file
    # always loads (old or new, complete), and the next save removes the dead writer's temporary.
    import random
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    path = tmp_path / "t.safetensors"
    script = (
        "import sys, torch, attnscope\n"
        "m = attnscope.load(sys.argv[1], device='cpu')\n"
        "t = m.run(torch.randint(1, 60, (1, 60)), capture={'heads': [(l, h) for l in range(3) for h in range(4)]})\n"
        "t._core.set_capture('from', torch.zeros(3, 1, 4, 13_900, 60))  # 10M floats of padding\n"
        "t.save(sys.argv[2]); print('saved', flush=True)\n"
        "while True: t.save(sys.argv[2])\n")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    rng = random.Random(0)
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", script, os.path.join(FIX, "toy_hf_eager.pt"), str(path)],
                             env=env, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "saved"
        time.sleep(rng.uniform(0.05, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait()
        t = attnscope.Trace.load(str(path))  # complete: validated header, offsets and sizes
        assert t.captures["from"].numel() == 3 * 4 * 13_900 * 60
    leftovers = [f.name for f in tmp_path.iterdir() if ".tmp" in f.name]
    attnscope.Trace.load(str(path)).save(str(path))
    assert not [f.name for f in tmp_path.iterdir() if ".tmp" in f.name], leftovers


def test_stale_export_temporaries_are_removed(tmp_path):
    from attnscope.models.checkpoints import remove_stale_temporaries
    dead = subprocess_pid_that_exited()
    for name in (f"a.pt.tmp{dead}", f"b-sdpa.pt.partial{dead}", f"b-sdpa.pt.partial{dead}.tmp{dead}",
                 f"live.pt.tmp{os.getpid()}", "keep.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert sorted(remove_stale_temporaries(str(tmp_path))) == sorted(
        [f"a.pt.tmp{dead}", f"b-sdpa.pt.partial{dead}", f"b-sdpa.pt.partial{dead}.tmp{dead}"])
    assert sorted(f.name for f in tmp_path.iterdir()) == ["keep.pt", f"live.pt.tmp{os.getpid()}"]


def subprocess_pid_that_exited():
    import subprocess
    import sys
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("args,msg", [
    (["--top-k", "x"], "--top-k: 'x' is not an integer"),
    (["--temperature", "1e999"], "--temperature: '1e999' is not a finite number"),
    (["--heads", "0:x"], "--heads head: 'x' is not an integer"),
    (["--pad-id", "3.5"], "--pad-id: '3.5' is not an integer"),
    (["--ids", "1,2x"], "--ids: '2x' is not an integer"),
])
def test_cpp_cli_names_bad_numbers(args, msg):
    import subprocess
    cli = os.path.join(BUILD, "attnscope-cli")
    if not os.path.exists(cli):
        pytest.skip("attnscope-cli not built")
    base = ["--model", os.path.join(FIX, "toy_hf_eager.pt"), "--ids", "1,2"]
    r = subprocess.run([cli, *base, *args], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == f"attnscope-cli: {msg}", r.stderr


def test_damaged_archive_is_refused_by_name(tmp_path):
    src = os.path.join(FIX, "toy_hf_eager.pt")
    if not os.path.exists(src):
        pytest.skip("fixtures not built")
    raw = bytearray(open(src, "rb").read())
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("toy_hf_eager/data/3")
    n_name, n_extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])  # local header
    start = info.header_offset + 30 + n_name + n_extra  # the member's bytes (stored, not compressed)
    raw[start + 2] ^= 0xFF
    bad = tmp_path / "damaged.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"damaged.pt: damaged TorchScript archive \(Bad CRC-32 for file 'toy_hf_eager/data/3'\)"):
        attnscope.load(str(bad), device="cpu")
    cli = os.path.join(BUILD, "attnscope-cli")  # the C++ CLI checks the CRCs too, and runs nothing
    if os.path.exists(cli):
        import subprocess
        r = subprocess.run([cli, "--model", str(bad), "--ids", "1,2"], capture_output=True, text=True)
        assert r.returncode == 1 and "ran " not in r.stdout, r.stdout
        assert r.stderr.strip().startswith(f"attnscope-cli: '{bad}': damaged TorchScript archive: member "
                                           "'toy_hf_eager/data/3' fails its CRC-32"), r.stderr
        ok = subprocess.run([cli, "--model", src, "--ids", "1,2"], capture_output=True, text=True)
        assert ok.returncode == 0 and "ran 1 x 2 tokens" in ok.stdout, ok.stderr
    latin = with_extra(tmp_path, "latin.pt", {"attnscope.json": b"{\"family\": \"caf\xe9\"}"})
    from attnscope.models import read_extra_file
    with pytest.raises(ValueError, match=r"latin.pt: extra file 'attnscope.json' is not UTF-8 text"):
        read_extra_file(latin, "attnscope.json")


def test_dataset_merge_and_ids_checked(toy, tmp_path):
    a = attnscope.aggregate_dataset(toy, [[1, 2, 3, 4]], length=4, num=None)
    b = attnscope.aggregate_dataset(toy, [[5, 6, 7, 8]], length=4, num=None)
    assert a.merge(b).n_sequences == 2
    c = attnscope.aggregate_dataset(toy, [[1, 2, 3, 4, 5, 6]], length=6, num=None)
    with pytest.warns(UserWarning, match=r"sequence lengths differ \(\[4, 6\]\)"):
        a.merge(c)
    with pytest.raises(ValueError, match=r"sequence 0: token ids must be integers, got 3.7"):
        attnscope.aggregate_dataset(toy, [[1, 2, 3.7, 4]], length=4, num=None)


@pytest.mark.parametrize("fields,msg", [
    ({"llama.attention.head_count": 0}, r"GGUF field 'llama.attention.head_count' is 0, expected >= 1"),
    ({"llama.attention.head_count": 3}, r"head_count 3, head_count_kv 3 and embedding_length 8 disagree"),
])
def test_gguf_header_values_checked(tmp_path, fields, msg):
    gguf = pytest.importorskip("gguf")
    from attnscope.models import read_gguf
    path = str(tmp_path / "bad.gguf")
    w = gguf.GGUFWriter(path, "llama")
    base = {"llama.attention.head_count": 2, "llama.embedding_length": 8, "llama.block_count": 1,
            "llama.feed_forward_length": 16, "llama.context_length": 32}
    for k, v in {**base, **fields}.items():
        w.add_uint32(k, v)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=msg):
        read_gguf(path)
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(ValueError, match=r"junk.gguf: not a readable GGUF file"):
        read_gguf(str(tmp_path / "junk.gguf"))


def test_stated_layers_must_match_the_graph(tmp_path):
    # toy_hf_eager has no capture ops of its own: the graph pass finds its 3 attention sites.
    with pytest.raises(ValueError, match=r"attnscope.json says num_layers 5, but the model's graph has 3 attention sites"):
        _core.Model.load(with_extra(tmp_path, "l.pt", {"attnscope.json": '{"num_layers": 5}'}), "cpu")


def test_stated_heads_must_match_the_captured_shapes(tmp_path, toy):
    # The toy has 4 heads; a file saying 2 would split every map wrongly: the first run says so.
    m = _core.Model.load(with_extra(tmp_path, "h.pt", {"attnscope.json": '{"num_heads": 2, "num_kv_heads": 2}'}), "cpu")
    with pytest.raises(ValueError, match=r"attnscope.json says num_heads 2, but layer 0's attention has 4 heads"):
        m.run(torch.tensor([[1, 2, 3]]), _core.CaptureSpec(), None)


@pytest.mark.parametrize("kv,ok", [(1, False), (2, True), (4, False)])
def test_stated_kv_heads_must_match_the_keys(kv, ok):
    # toy_sdpa_gqa: 4 query heads over 2 key/value heads. Before, any count was taken as said,
    # and kv_head_of paired query heads with the wrong cache heads.
    m = attnscope.from_module(torch.jit.load(os.path.join(FIX, "toy_sdpa_gqa.pt")), device="cpu",
                              info={"num_heads": 4, "num_kv_heads": kv})
    if ok:
        assert m.run([[1, 2, 3]]).n_kv_heads == 2
        return
    with pytest.raises(ValueError, match=rf"attnscope.json says num_kv_heads {kv}, but layer 0's keys have 2 heads "
                                         r"for 4 query heads: fix or remove num_kv_heads"):
        m.run([[1, 2, 3]])


def test_position_table_overflow_says_context(tmp_path):
    # An archive without context_length (a user's own trace): the forward's embedding error gets a hint.
    m = attnscope.load(os.path.join(FIX, "hf_gpt2_sdpa.pt"), device="cpu")
    assert m.metadata.get("context_length") is None
    with pytest.raises(RuntimeError, match=r"index out of range in self: an embedding lookup failed: the input "
                                           r"\(200 tokens\) is probably longer than the model's position table"):
        m.run(torch.randint(1, 50, (1, 200)))


def _edited_traces():
    """(what was edited, tensors edit, metadata edit, the message Trace.load must give)."""
    def put(name, value):
        return lambda t: {**t, name: value}

    def scale(name, by):
        return lambda t: {**t, name: t[name] * by}
    keep = lambda t: t  # noqa: E731
    return [
        ("negative id", lambda t: {**t, "input_ids": t["input_ids"] - 5}, {}, r"token id -\d+ is negative"),
        ("mask of 2", lambda t: {**t, "attention_mask": t["attention_mask"] * 2}, {},
         r"attention_mask holds 2: only 0 \(padding\) and 1 \(token\) are allowed"),
        ("mask all zero", lambda t: {**t, "attention_mask": t["attention_mask"] * 0}, {},
         r"row 0 of attention_mask has no real token"),
        ("mask with a hole", put("attention_mask", torch.tensor([[1, 0, 1, 1]])), {},
         r"row 0 of attention_mask has a hole"),
        ("float mask", lambda t: {**t, "attention_mask": t["attention_mask"].float()}, {},
         r"attention_mask must hold integers 0/1"),
        ("map of the wrong shape", put("captures/head_map/L0H1", torch.zeros(1, 3, 3)), {},
         r"head_map/L0H1 must be a float \[1, 4, 4\] map, got \[1, 3, 3\]"),
        ("map values above 1", scale("captures/head_map/L0H1", 3.0), {},
         r"head_map/L0H1 holds values outside \[0, 1\]"),
        ("map of a head that does not exist", lambda t: {**t, "captures/head_map/L0H9": t["captures/head_map/L0H1"].clone()},
         {}, r"head_map/L0H9: head 9 out of range: the trace has 4 heads"),
        ("map of a layer that does not exist", lambda t: {**t, "captures/layer_map/L7": t["captures/head_map/L0H1"].clone()},
         {}, r"layer_map/L7: layer 7 out of range: the trace has 3 layers"),
        ("aggregate values above 1", scale("captures/received_mean", 4.0), {},
         r"received_mean holds values outside \[0, 1\]"),
        ("aggregate of the wrong shape", lambda t: {**t, "captures/attn_entropy": t["captures/attn_entropy"][:, :, :1].contiguous()},
         {}, r"attn_entropy must be a float \[3, 1, 4, 4\] tensor"),
        ("unknown capture", lambda t: {**t, "captures/secret": torch.zeros(1)}, {}, r"unknown capture 'secret'"),
        ("kv_head_of out of range", lambda t: {**t, "kv_head_of": t["kv_head_of"] + 9}, {},
         r"kv_head_of holds a KV head outside 0..\d"),
        ("n_heads against the tensors", keep, {"n_heads": "3", "n_kv_heads": "1"},
         r"kv_head_of must be \[3\] integers|must be a float \[3, 1, 3, 4\]"),
        ("n_layers against the tensors", keep, {"n_layers": "1", "layer_paths": '["a"]'},
         r"aggregate_layers names a layer outside 0..0|layer 1 out of range"),
        ("a spec naming layer 99", keep, {"spec": None},
         r"its capture spec does not fit the trace: layers: layer 99 out of range: model has 3 layers"),
        ("tokens of the wrong length", keep, {"tokens": '["a", "b"]'}, r"2 token strings for 1 x 4 ids"),
        ("tokens that are not strings", keep, {"tokens": "[1, 2, 3, 4]"},
         r"trace tokens must be a JSON array of strings; element 0 is not a string"),
        ("top-k of another length", lambda t: {**t, "topk_probs": t["topk_probs"][:, :2].clone(),
                                                 "topk_ids": t["topk_ids"][:, :2].clone()},
         {}, r"topk_probs \(float\) and topk_ids \(int\) must both be \[1, 4, k\]"),
    ]


@pytest.mark.parametrize("what,edit,meta_edit,msg", _edited_traces(), ids=[e[0] for e in _edited_traces()])
def test_edited_trace_is_refused_by_name(tmp_path, toy, what, edit, meta_edit, msg):
    """Trace.load checks a trace against itself: every edit that would later fail or mislead a
    figure is refused at load, naming the file and what does not fit."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    t = toy.run([1, 2, 3, 4], capture={"heads": [(0, 1)], "received": True, "attn_entropy": True, "top_k": 3})
    good = tmp_path / "good.safetensors"
    t.save(good)
    attnscope.Trace.load(str(good))  # the unedited trace loads
    tensors = load_file(str(good))
    with safe_open(str(good), "pt") as f:
        original = f.metadata()
    meta = {**original, **meta_edit}
    if "spec" in meta_edit:
        meta["spec"] = json.dumps({**json.loads(original["spec"]), "layers": [99]})
    bad = tmp_path / "bad.safetensors"
    save_file(edit(tensors), str(bad), metadata=meta)
    with pytest.raises(ValueError, match=msg):
        attnscope.Trace.load(str(bad))


@pytest.mark.parametrize("template,msg", [
    ("{{ 'x' * 1000000000 }}", r"refused, '\*' would make 1000000000 items"),
    ("{{ [0] * 10**9 }}", r"refused, '\*' would make 1000000000 items"),
    ("{{ 2 ** (10 ** 10) }}", r"refused, '\*\*' would make a number of about"),
    ("{{ 'a'.ljust(10**10) }}", r"refused, ljust\(\) was given 10000000000"),
    ("{{ 'a'|center(10**10) }}", r"refused, filter 'center' was given 10000000000"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     r"refused, rendering took more than 5 s"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxx{% endfor %}{% endfor %}",
     r"refused, the rendered text passed 4194304 characters"),
    ("{{ ''.__class__.__mro__ }}", r"SecurityError: access to attribute '__class__'"),
    ("{% for m in messages %}{{ m.content.upper() }}{% endfor %}{{ raise_exception('no system role') }}",
     r"TemplateError: no system role"),
    ("{{ 1 / 0 }}", r"ZeroDivisionError"),
    ("{% if %}", r"TemplateSyntaxError"),
])
def test_chat_templates_render_within_bounds(template, msg):
    """A chat template is a program from a file: loops, multiplications, padding and output are
    bounded, and whatever it breaks is one ValueError naming where the template came from."""
    from attnscope.chat import render
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"^chat template of evil\.gguf: " + msg):
        render(template, [{"role": "user", "content": "hi"}], source="evil.gguf")
    assert time.monotonic() - t0 < 20


def test_generate_renders_the_template_only_for_chat(monkeypatch, tmp_path):
    """Without chat=True the template is never rendered (its end-of-turn id is a chat matter), so a
    template that would hang cannot stall a plain generate."""
    import attnscope.chat
    model = attnscope.load(device="cpu", progress=False)
    model.metadata = {**model.metadata, "chat_template": "{% for i in range(100000) %}{% for j in range(100000) %}"
                      "{% endfor %}{% endfor %}"}

    def refuse(*a, **k):
        raise AssertionError("the chat template was rendered for a plain generate")
    monkeypatch.setattr(attnscope.chat, "render", refuse)
    t = model.generate("Hello", max_new_tokens=2, progress=False, capture=None)
    assert t.generation["stop_ids"] == [model.metadata["eos_token_id"]]
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"chat template of SmolLM2-135M-Instruct.Q4_1.gguf: refused, rendering took"):
        model.generate("Hello", chat=True, max_new_tokens=2, progress=False)


def _valid_tiny_gguf(path, **override):
    """A 1-layer llama GGUF whose header and tensors agree (d=8, 2 heads of 4, ff 16, vocab 12)."""
    gguf = pytest.importorskip("gguf")
    fields = {"llama.block_count": 1, "llama.embedding_length": 8, "llama.feed_forward_length": 16,
              "llama.attention.head_count": 2, "llama.attention.head_count_kv": 2, "llama.context_length": 32,
              "llama.vocab_size": 12, **override}
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in fields.items():
        w.add_uint32(k, v)
    w.add_array("tokenizer.ggml.token_type", [1] * 12)
    z = lambda *s: np.zeros(s, dtype=np.float32)  # noqa: E731 - shapes as numpy gives them (outermost first)
    for name, shape in {"token_embd.weight": (12, 8), "output_norm.weight": (8,), "blk.0.attn_norm.weight": (8,),
                        "blk.0.attn_q.weight": (8, 8), "blk.0.attn_k.weight": (8, 8), "blk.0.attn_v.weight": (8, 8),
                        "blk.0.attn_output.weight": (8, 8), "blk.0.ffn_norm.weight": (8,),
                        "blk.0.ffn_gate.weight": (16, 8), "blk.0.ffn_up.weight": (16, 8),
                        "blk.0.ffn_down.weight": (8, 16)}.items():
        w.add_tensor(name, z(*shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _patch_after(raw, needle, skip, value, fmt="<Q"):
    """raw with the integer `skip` bytes after the first `needle` replaced by `value`."""
    at = raw.index(needle) + len(needle) + skip
    return raw[:at] + struct.pack(fmt, value) + raw[at + struct.calcsize(fmt):]


def _rewrite(path, edit):
    path.write_bytes(edit(path.read_bytes()))
    return path


def _overlapping(path):
    """The GGUF at `path` with attn_q's data offset set to attn_k's: two weights, the same bytes.
    A tensor's description: name, n_dims (u32), 2 dims (u64), type (u32), offset (u64)."""
    raw = path.read_bytes()
    k_at = raw.index(b"blk.0.attn_k.weight") + len(b"blk.0.attn_k.weight") + 4 + 16 + 4
    path.write_bytes(_patch_after(raw, b"blk.0.attn_q.weight", 4 + 16 + 4, struct.unpack("<Q", raw[k_at:k_at + 8])[0]))
    return path


@pytest.mark.parametrize("what,make,msg", [
    ("block_count 2^32-1", lambda p: _valid_tiny_gguf(p, **{"llama.block_count": 2 ** 32 - 1}),
     r"GGUF block_count is 4294967295, but the file holds tensors of 1 layers"),
    ("feed_forward_length 2^31", lambda p: _valid_tiny_gguf(p, **{"llama.feed_forward_length": 2 ** 31}),
     r"GGUF tensor blk.0.ffn_gate.weight has shape \[16, 8\], but the header's sizes .* give \[2147483648, 8\]"),
    ("vocab_size 5e7", lambda p: _valid_tiny_gguf(p, **{"llama.vocab_size": 50_000_000}),
     r"GGUF tensor token_embd.weight has shape \[12, 8\], but the header's sizes \(vocab 50000000"),
    ("an array of 2^40 token types",  # the array's element type (u32), then its u64 length
     lambda p: _rewrite(_valid_tiny_gguf(p), lambda raw: _patch_after(raw, b"tokenizer.ggml.token_type", 8, 2 ** 40)),
     r"GGUF array 'tokenizer.ggml.token_type' of 1099511627776 elements needs 4398046511104 bytes"),
    ("overlapping tensors", lambda p: _overlapping(_valid_tiny_gguf(p)),
     r"GGUF tensors 'blk.0.attn_\w\.weight' and 'blk.0.attn_\w\.weight' overlap"),
    ("a truncated file", lambda p: _rewrite(_valid_tiny_gguf(p), lambda raw: raw[:-100]),
     r"GGUF tensor 'blk.0.ffn_down.weight' \(512 bytes at data offset \d+\) runs past the end of the file"),
])
def test_gguf_sizes_checked_against_the_file(tmp_path, what, make, msg):
    """Every size a GGUF header states is checked against what the file holds before anything is
    allocated from it, and overlapping tensor data is refused: by name, in well under a second."""
    from attnscope.models import read_gguf
    assert read_gguf(str(_valid_tiny_gguf(tmp_path / "good.gguf")))[1]  # the untouched file reads
    path = make(tmp_path / "bad.gguf")
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=msg):
        read_gguf(str(path))
    assert time.monotonic() - t0 < 5


def test_archive_write_failure_is_one_error_and_leaves_nothing(tmp_path):
    """A write that fails midway (here a file-size limit, as a full disk does): one OSError naming
    the archive, no temporary left beside it, no file under the final name, and no abort (torch's
    own file writer terminates the process when a write fails)."""
    import subprocess
    import sys
    script = (
        "import resource, signal, sys, torch\n"
        "from attnscope.models.export import save_archive\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "m = torch.jit.script(torch.nn.Linear(200, 200))\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "try:\n"
        "    save_archive(m, sys.argv[1], {'attnscope.json': '{}'})\n"
        "except OSError as e:\n"
        "    print(e)\n")
    from conftest import ROOT
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.pt")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == f"cannot write {str(tmp_path / 'm.pt')!r}: File too large; its old contents (if any) " \
                               "are kept"
    assert list(tmp_path.iterdir()) == []
