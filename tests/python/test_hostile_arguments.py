"""Every public function with a number or a choice among its arguments, against every hostile
class of value: negative, zero where a count is needed, NaN, infinity, a float where an int is
needed, a bool, a string, None where a value is needed, and an absurdly large one. Each must be a
ValueError that names the argument (never a TypeError, IndexError or RuntimeError from inside,
a crash, a hang or an allocation of gigabytes)."""
import math

import matplotlib
import pytest

import attnscope

matplotlib.use("Agg")
HOSTILE = {"negative": -3, "nan": math.nan, "inf": math.inf, "float": 1.5, "bool": True, "str": "2",
           "huge": 10 ** 12}


@pytest.fixture(scope="module")
def toy(toy_model):
    return toy_model  # conftest: the toy archive (3 layers, 4 heads, word-level tokenizer)


@pytest.fixture(scope="module")
def answer(toy):
    return toy.generate("the cat sat", max_new_tokens=6, progress=False, stop=[])


@pytest.fixture(scope="module")
def trace(toy):
    return toy.run("the cat sat on the mat and the dog sat too")


# (function name, argument, call(model, trace, answer, value)); None where any value is fine for a class.
CALLS = [
    ("generate", "max_new_tokens", lambda m, t, a, v: m.generate([5, 6], max_new_tokens=v, progress=False)),
    ("generate", "temperature", lambda m, t, a, v: m.generate([5, 6], max_new_tokens=1, temperature=v, progress=False)),
    ("generate", "top_k", lambda m, t, a, v: m.generate([5, 6], max_new_tokens=1, top_k=v, progress=False)),
    ("generate", "top_p", lambda m, t, a, v: m.generate([5, 6], max_new_tokens=1, top_p=v, progress=False)),
    ("generate", "seed", lambda m, t, a, v: m.generate([5, 6], max_new_tokens=1, seed=v, progress=False)),
    ("head_atlas", "length", lambda m, t, a, v: m.head_atlas(length=v)),
    ("head_atlas", "batch", lambda m, t, a, v: m.head_atlas(batch=v)),
    ("turning_points", "k", lambda m, t, a, v: attnscope.turning_points(a, k=v, progress=False)),
    ("turning_points", "alternatives", lambda m, t, a, v: attnscope.turning_points(a, alternatives=v, progress=False)),
    ("turning_points", "max_new_tokens", lambda m, t, a, v: attnscope.turning_points(a, k=1, alternatives=1,
                                                                                     max_new_tokens=v, progress=False)),
    ("turning_points", "positions", lambda m, t, a, v: attnscope.turning_points(a, positions=[v], progress=False)),
    ("branch", "position", lambda m, t, a, v: a.branch(v, rank=2)),
    ("branch", "rank", lambda m, t, a, v: a.branch(a.prompt_len, rank=v)),
    ("branch", "token", lambda m, t, a, v: a.branch(a.prompt_len, token=v)),
    ("branch", "max_new_tokens", lambda m, t, a, v: a.branch(a.prompt_len, rank=2, max_new_tokens=v)),
    ("token_profile", "position", lambda m, t, a, v: attnscope.token_profile(t, v)),
    ("token_profile", "batch", lambda m, t, a, v: attnscope.token_profile(t, 2, batch=v)),
    ("token_profile", "top", lambda m, t, a, v: attnscope.token_profile(t, 2, top=v)),
    ("token_profile", "baseline", lambda m, t, a, v: attnscope.token_profile(t, 2, baseline=v)),
    ("profile_table", "position", lambda m, t, a, v: attnscope.profile_table(t, [v])),
    ("profile_table", "batch", lambda m, t, a, v: attnscope.profile_table(t, [2], batch=v)),
    ("profile_table", "baseline", lambda m, t, a, v: attnscope.profile_table(t, [2], baseline=v)),
    ("attention_from", "position", lambda m, t, a, v: t.attention_from(v)),
    ("show", "max_cells", lambda m, t, a, v: attnscope.show(t, max_cells=v)),
    ("show", "batch", lambda m, t, a, v: attnscope.show(t, batch=v)),
    ("show", "live", lambda m, t, a, v: attnscope.show(t, live=v)),
    ("load", "dtype", lambda m, t, a, v: attnscope.load(dtype=v, progress=False)),
    ("visualize_attention", "layers_heads", lambda m, t, a, v: attnscope.visualize_attention(t, [(v, 0)])),
    ("visualize_attention_patterns", "token_idx", lambda m, t, a, v: attnscope.visualize_attention_patterns(
        t, [(0, 0)], "specific_token", token_idx=v)),
    ("visualize_attention_layers", "head_idx", lambda m, t, a, v: attnscope.visualize_attention_layers(
        t, [0], head_idx=v)),
    ("high_entropy_positions", "max_marks", lambda m, t, a, v: attnscope.high_entropy_positions(t, max_marks=v)),
    ("high_entropy_positions", "entropy_quantile",
     lambda m, t, a, v: attnscope.high_entropy_positions(t, entropy_quantile=v)),
    ("knockout", "position", lambda m, t, a, v: attnscope.knockout(t, v, keys=[0])),
    ("knockout", "keys", lambda m, t, a, v: attnscope.knockout(t, 8, keys=[v])),
    ("knockout", "layers", lambda m, t, a, v: attnscope.knockout(t, 8, keys=[0], layers=[v])),
    ("knockout", "heads", lambda m, t, a, v: attnscope.knockout(t, 8, keys=[0], heads=v)),
    ("knockout", "target", lambda m, t, a, v: attnscope.knockout(t, 8, keys=[0], target=v)),
    ("knockout", "batch", lambda m, t, a, v: attnscope.knockout(t, 8, keys=[0], batch=v)),
    ("logits", "remove", lambda m, t, a, v: m.logits(t.input_ids, remove=v)),
    ("logits", "ablate", lambda m, t, a, v: m.logits(t.input_ids, ablate=v)),
    ("logits", "ablate_mode", lambda m, t, a, v: m.logits(t.input_ids, ablate_mode=v)),
    ("logits", "past", lambda m, t, a, v: m.logits(t.input_ids, past=v)),
    ("knockout_sweep", "position", lambda m, t, a, v: attnscope.knockout_sweep(t, v)),
    ("knockout_sweep", "keys", lambda m, t, a, v: attnscope.knockout_sweep(t, 8, keys=[v])),
    ("knockout_sweep", "bands", lambda m, t, a, v: attnscope.knockout_sweep(t, 8, bands=v)),
    ("knockout_sweep", "layers", lambda m, t, a, v: attnscope.knockout_sweep(t, 8, layers=[v])),
    ("knockout_sweep", "heads", lambda m, t, a, v: attnscope.knockout_sweep(t, 8, heads=[v])),
    ("knockout_sweep", "batch", lambda m, t, a, v: attnscope.knockout_sweep(t, 8, batch=v)),
    ("head_effects", "position", lambda m, t, a, v: attnscope.head_effects(t, position=v, progress=False)),
    ("head_effects", "mode", lambda m, t, a, v: attnscope.head_effects(t, mode=v, progress=False)),
    ("head_effects", "layers", lambda m, t, a, v: attnscope.head_effects(t, layers=[v], progress=False)),
    ("head_effects", "heads", lambda m, t, a, v: attnscope.head_effects(t, heads=[v], progress=False)),
    ("head_effects", "batch", lambda m, t, a, v: attnscope.head_effects(t, batch=v, progress=False)),
    ("visualize_knockout", "target", lambda m, t, a, v: attnscope.visualize_knockout(
        attnscope.knockout_sweep(t, 4), target=v)),
    ("visualize_knockout", "top_k", lambda m, t, a, v: attnscope.visualize_knockout(
        attnscope.knockout_sweep(t, 4), top_k=v)),
    ("visualize_head_effects", "top", lambda m, t, a, v: attnscope.visualize_head_effects(
        attnscope.head_effects(t, layers=[0], heads=[0], progress=False), top=v)),
    ("visualize_rollout", "token_idx", lambda m, t, a, v: attnscope.visualize_rollout(t, v)),
    ("visualize_rollout", "top_k", lambda m, t, a, v: attnscope.visualize_rollout(t, top_k=v)),
    ("visualize_rollout", "batch", lambda m, t, a, v: attnscope.visualize_rollout(t, batch=v)),
    ("aggregate_dataset", "length", lambda m, t, a, v: attnscope.aggregate_dataset(m, [[1, 2, 3, 4]], length=v,
                                                                                   num=None, progress=False)),
    ("aggregate_dataset", "batch_size", lambda m, t, a, v: attnscope.aggregate_dataset(
        m, [[1, 2, 3, 4]], length=4, num=None, batch_size=v, progress=False)),
    ("aggregate_dataset", "epsilon", lambda m, t, a, v: attnscope.aggregate_dataset(
        m, [[1, 2, 3, 4]], length=4, num=None, epsilon=v, progress=False)),
]
# Values a function takes on purpose: a negative position counts from the end, a float
# temperature/top_p/epsilon is its type, a top_k of 10**12 means "no limit" in effect, …
FINE = {("generate", "temperature", "float"), ("generate", "top_p", "huge"), ("generate", "top_k", "huge"),
        ("generate", "seed", "huge"), ("token_profile", "position", "negative"), ("profile_table", "position", "negative"), ("attention_from", "position", "negative"),
        ("show", "max_cells", "huge"), ("show", "live", "bool"), ("aggregate_dataset", "epsilon", "negative"),
        ("visualize_attention_patterns", "token_idx", "negative"), ("branch", "token", "str"),
        ("token_profile", "top", "huge"), ("generate", "temperature", "huge"), ("turning_points", "k", "huge"),
        ("high_entropy_positions", "max_marks", "huge"), ("aggregate_dataset", "batch_size", "huge"),
        ("knockout", "position", "negative"), ("knockout", "keys", "negative"), ("knockout", "target", "str"),
        ("knockout_sweep", "position", "negative"), ("knockout_sweep", "keys", "negative"),
        ("head_effects", "position", "negative"), ("visualize_rollout", "token_idx", "negative"),
        ("visualize_knockout", "top_k", "huge"), ("visualize_head_effects", "top", "huge"),
        ("visualize_rollout", "top_k", "huge")}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("fn,arg,call", CALLS, ids=[f"{f}-{a}" for f, a, _ in CALLS])
def test_a_hostile_argument_is_a_value_error_naming_it(toy, trace, answer, fn, arg, call, kind):
    import matplotlib.pyplot as plt
    if (fn, arg, kind) in FINE:
        pytest.skip("a value this argument takes on purpose")
    try:
        call(toy, trace, answer, HOSTILE[kind])
    except ValueError as e:
        assert arg.split("_")[0] in str(e) or arg in str(e), f"{fn}({arg}={HOSTILE[kind]!r}): {e}"
    else:
        pytest.fail(f"{fn}({arg}={HOSTILE[kind]!r}) was accepted")
    finally:
        plt.close("all")
