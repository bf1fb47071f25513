"""Model.generate on the default model (SmolLM2-135M-Instruct): greedy tokens equal transformers'
greedy generate on the same GGUF; the KV-cache decode path equals a full forward per step;
seeded sampling repeats; the chat template renders as transformers renders it; the capture run
over prompt + response holds the entropy of the distributions the tokens came from; bad
arguments are refused by message."""

import pytest
import torch

import attnscope
from conftest import gguf_reference

transformers = pytest.importorskip("transformers")
from attnscope.models import default_gguf  # noqa: E402

try:
    GGUF = default_gguf()
except FileNotFoundError as e:  # pragma: no cover - set-up installs it
    pytest.skip(str(e), allow_module_level=True)

PROMPTS = ["The capital of France is Paris, and the capital of Italy is",
           "def fibonacci(n):",
           "Once upon a time, in a small village,"]
CHATS = ["Is 3599 prime? Think step by step.", [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Name three colours."}]]


@pytest.fixture(scope="module")
def model():
    return attnscope.load(device="cpu")


@pytest.fixture(scope="module")
def reference():
    return gguf_reference(GGUF)


def test_greedy_equals_transformers(model, reference):
    tok, ref = reference
    for text in PROMPTS:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                                eos_token_id=None, pad_token_id=2)[0, ids.shape[1]:].tolist()
        t = model.generate(ids, max_new_tokens=24, stop=[], capture={})
        assert t.input_ids[0, ids.shape[1]:].tolist() == want, text
        assert t.prompt_len == ids.shape[1] and t.generation["kv_cache"] is True


def test_cache_equals_full_forward_and_entropy_is_the_sampling_distribution(model):
    a = model.generate(PROMPTS[0], max_new_tokens=12, stop=[])
    b = model.generate(PROMPTS[0], max_new_tokens=12, stop=[], use_cache=False)
    assert a.input_ids.tolist() == b.input_ids.tolist() and b.generation["kv_cache"] is False
    # the capture run's distributions are those the tokens were drawn from: greedy tokens are
    # the top-1 of the position before them, and the entropy is that of the same logits
    p = a.prompt_len
    assert torch.equal(a.topk_ids[0, p - 1:-1, 0], a.input_ids[0, p:])
    ref = model.run(a.input_ids)  # the same capture as generate's run: the same numbers
    assert torch.equal(a.entropy, ref.entropy) and torch.isfinite(a.entropy[0]).all()
    # A run that captures nothing leaves the output to the fused SDPA kernel, the capturing run
    # computes it from the recorder's probabilities: they agree to kernel-level rounding (the
    # size of transformers' own eager-vs-SDPA difference on this model, ~6e-6 nats).
    plain = model.run(a.input_ids, capture={})
    assert (a.entropy - plain.entropy).abs().max() < 1e-4


def test_seeded_sampling_repeats(model):
    kw = dict(max_new_tokens=16, temperature=0.9, top_k=40, top_p=0.95, stop=[], capture={})
    a = model.generate(PROMPTS[2], seed=7, **kw)
    b = model.generate(PROMPTS[2], seed=7, **kw)
    c = model.generate(PROMPTS[2], seed=8, **kw)
    assert a.input_ids.tolist() == b.input_ids.tolist()
    assert a.input_ids.tolist() != c.input_ids.tolist()
    assert a.generation["temperature"] == 0.9 and a.generation["seed"] == 7


def test_chat_template_ids_equal_transformers(model, reference):
    tok, _ = reference
    for chat in CHATS:
        msgs = [{"role": "user", "content": chat}] if isinstance(chat, str) else chat
        want = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
        text = model.apply_chat_template(chat)
        assert model.encode(text) == list(want)


def test_chat_answer_stops_at_end_of_turn(model):
    t = model.generate("What is the capital of France?", chat=True, max_new_tokens=40)
    assert "Paris" in t.response
    assert t.generation["stop_reason"] == ["stop token"]
    assert t.input_ids[0, -1].item() in model.stop_ids()
    assert "".join(t.labels[0][:t.prompt_len]).endswith("assistant↵")


def test_batch_is_left_padded_and_rows_stop_apart(model):
    t = model.generate(["Hi", "Write the numbers from one to twenty:"], max_new_tokens=10, stop=[])
    P = t.prompt_len
    assert t.attention_mask[0, 0] == 0 and t.attention_mask[1, 0] == 1   # left padding of the shorter prompt
    assert t.attention_mask[:, P:].all()
    alone = model.generate("Write the numbers from one to twenty:", max_new_tokens=10, stop=[])
    assert t.input_ids[1, P:].tolist() == alone.input_ids[0, alone.prompt_len:].tolist()
    assert isinstance(t.response, list) and len(t.response) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "empty prompt"),
    (dict(prompt="hi", max_new_tokens=0), "max_new_tokens 0 must be an int >= 1"),
    (dict(prompt="hi", temperature=-0.5), "temperature -0.5 must be >= 0"),
    (dict(prompt="hi", top_p=0.0), r"top_p 0.0 must be in \(0, 1\]"),
    (dict(prompt="hi", top_p=1.5), r"top_p 1.5 must be in \(0, 1\]"),
    (dict(prompt="hi", top_k=-1), "top_k -1 must be an int >= 0"),
    (dict(prompt="word " * 9000), "prompt of 9001 tokens does not fit the model's context of 8192 tokens"),
    (dict(prompt="hi", seed=-1), r"seed -1 must be an int in 0..2\*\*63-1"),
    (dict(prompt="hi", seed=2 ** 63), r"seed 9223372036854775808 must be an int in 0..2\*\*63-1"),
    (dict(prompt="hi", seed=2 ** 70), r"seed 1180591620717411303424 must be an int"),
    (dict(prompt="hi", seed=1.5), r"seed 1.5 must be an int"),
    (dict(prompt="hi", seed="7"), r"seed '7' must be an int"),
    (dict(prompt="hi", top_k=10 ** 20), r"top_k 100000000000000000000 must be an int >= 0"),
    (dict(prompt="hi", temperature=float("inf")), r"temperature inf must be a finite number"),
    (dict(prompt="hi", use_cache="no"), r"use_cache 'no' must be True or False"),
    (dict(prompt="hi", stop=["a"]), r"stop: 'a' is not a token id of this model"),
    (dict(prompt="hi", stop=[99999]), r"stop: 99999 is not a token id of this model \(expected ints in 0..49151\)"),
    (dict(prompt=[-1]), r"token id -1 at position 0 is out of range: ids must be in \[0, 49152\)"),
    (dict(prompt=torch.tensor([[5, 49152]])), r"token id 49152 at position 1 is out of range"),
])
def test_bad_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.generate(**kwargs)


def test_chat_without_template(tmp_path):
    from test_export_hf import make  # a random Llama without a chat template
    attnscope.export_hf(make("llama"), None, tmp_path / "l.pt")
    m = attnscope.load(str(tmp_path / "l.pt"), device="cpu")
    with pytest.raises(ValueError, match="chat=True, but this model has no chat template"):
        m.generate([1, 2, 3], chat=True)
    t = m.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, stop=[])   # transformers' cache, traced
    assert t.generation["kv_cache"] is True and t.input_ids.shape == (1, 6)


def test_researchers_loop_without_a_capture_spec(model):
    """The specification's workflow on one run and on one generation: heads, received max,
    the layers grid, in any order, with no capture= anywhere."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for t in (model.run("The cat sat on the mat because it was warm."),
              model.generate("Is 3599 prime? Think step by step.", chat=True, max_new_tokens=24)):
        f1 = attnscope.visualize_attention(t, [(0, 0), (14, 0), (29, 8)])
        f2 = attnscope.visualize_attention_patterns(t, [(14, 0)], "max")
        f3 = attnscope.visualize_attention_layers(t, [0, 1, 2, 9, 14, 18, 23, 29])
        f4 = attnscope.visualize_attention_patterns(t, [(14, 0)], "specific_token", token_idx=-1)
        assert [a.get_title() for a in f1.axes if a.get_title()] == ["Layer 0 Head 0", "Layer 14 Head 0", "Layer 29 Head 8"]
        assert len([a for a in f3.axes if a.get_images()]) == 8 and f2.axes[0].get_title() == "L14H0 Max"
        assert f4.axes[0].get_title().startswith(f"L14H0 From {t.input_ids.shape[1] - 1}")
        marks = attnscope.high_entropy_positions(t)
        assert 1 <= len(marks) <= 8
        if t.is_generated:
            assert marks.min() >= t.prompt_len - 1
        plt.close("all")


def test_text_batches_are_right_padded_for_run(model):
    t = model.run(["Hi", "Hello there, how are you?"])
    assert t.attention_mask[0, -1] == 0 and t.attention_mask[0, 0] == 1 and t.attention_mask[1].all()
    alone = model.run("Hi")
    n = alone.input_ids.shape[1]
    assert torch.allclose(t.get("received_mean")[:, 0, :, :n], alone.get("received_mean")[:, 0], atol=1e-5)


def test_unbounded_generation_is_refused_without_a_context_length(toy_model):
    assert toy_model.context_length <= 0
    with pytest.raises(ValueError, match=r"max_new_tokens 1000000000: the model states no context length, so at most "
                                         r"1,048,576 new tokens"):
        toy_model.generate([5, 6], max_new_tokens=10 ** 9)
