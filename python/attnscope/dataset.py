"""Dataset-level attention statistics: `aggregate_dataset()` runs many sequences through the C++
core and keeps running sums (attnscope._core.DatasetStats), never per-sequence maps.

Definitions (Gu et al., "When Attention Sink Emerges in Language Models", 2025):
  α_k(l, h)  = attention key k receives, averaged over the queries that can see it (causal:
               the T - k queries at or after it); reported as its mean over sequences.
  Sink₁^ε    = share of (layer, head) pairs with α₁ > ε, per sequence; reported as its mean
               over sequences (sink1), per layer (sink1_per_layer), and per head as the
               fraction of sequences in which that head is a sink (sink_rate).
Head-mean maps are averaged cell by cell over the sequences that have both positions.
"""
import json
import os
import time
from collections.abc import Mapping

import numpy as np
import torch

from . import _core
from .streaming import Progress
from .identity import allow_flag
from .trace import core_of

PARTS = ("layer_maps", "head_maps", "received", "attn_entropy", "row_stats")


def read_texts(path):
    """Texts of a .txt file (one per non-empty line) or a .jsonl file (one JSON string, or an
    object with a "text" field, per line)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".txt", ".jsonl"):
        raise ValueError(f"{path}: expected a .txt (one text per line) or .jsonl file, not {ext or 'no extension'!r}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if ext == ".txt":
            texts.append(line)
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise ValueError(f"{path}:{n}: expected a JSON string or an object with a \"text\" string")
        texts.append(item)
    if not texts:
        raise ValueError(f"{path}: has no texts")
    return texts


def _parts(capture):
    if capture == "all":
        capture = {"layer_maps": True, "received": True, "attn_entropy": True, "row_stats": True}
    if not isinstance(capture, dict):
        raise ValueError(f"capture={capture!r}: expected 'all' or a dict with some of {PARTS}")
    p = _core.DatasetParts()
    for k in PARTS:
        setattr(p, k, False)
    for k, v in capture.items():
        if k not in PARTS:
            raise ValueError(f"capture: unknown part {k!r}; expected some of {', '.join(PARTS)}")
        setattr(p, k, bool(v))
    return p


def _sequences(model, data, length, num, skip_short, bos):
    """Token id lists: each cut to `length` (None = kept whole), the first `num` that qualify."""
    if isinstance(data, (str, bytes, os.PathLike)):
        raise ValueError("texts_or_ids: expected a list of texts or of token-id lists; for a file "
                         "use attnscope.read_texts(path)")
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise ValueError(f"texts_or_ids: a Tensor must be [N, T] ids, got shape {tuple(data.shape)}")
        data = data.tolist()
    data = list(data)
    if not data:
        raise ValueError("the dataset is empty: give at least one text or id list")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ValueError(f"length {length!r}: expected a positive int (or None: whole sequences)")
    if num is not None and (not isinstance(num, int) or num < 1):
        raise ValueError(f"num {num!r}: expected a positive int (or None: every sequence)")
    if bos and model.bos_id < 0:
        raise ValueError("bos=True but the model archive names no BOS token (attnscope.json bos_id)")
    out, short = [], 0
    for i, item in enumerate(data):
        if isinstance(item, str):
            ids = model.encode(item)
        else:
            bad = [x for x in item if isinstance(x, bool) or not (isinstance(x, (int, np.integer))
                   or (isinstance(x, torch.Tensor) and x.dim() == 0 and not x.is_floating_point()))]
            if bad:  # 3.7 would silently become token 3
                raise ValueError(f"sequence {i}: token ids must be integers, got {bad[0]!r}")
            ids = [int(x) for x in item]
        if bos:
            ids = [model.bos_id] + ids
        if not ids or (length is not None and len(ids) < length):
            if not skip_short:
                raise ValueError(f"sequence {i} has {len(ids)} tokens, fewer than length={length}: "
                                 "drop such sequences with skip_short=True (CLI --skip-short) or lower length")
            short += 1
            continue
        out.append(ids if length is None else ids[:length])
        if num is not None and len(out) == num:
            break
    if num is not None and len(out) < num:
        if length is None:
            raise ValueError(f"only {len(data)} sequences given, num={num} asked: give more data or pass num=None")
        raise ValueError(f"only {len(out)} of {len(data)} sequences have at least {length} tokens "
                         f"({short} shorter); num={num} asked: give more data, lower length, or pass num=None")
    return out


def _batches(seqs, batch_size):
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s:s + batch_size]
        t = max(len(x) for x in chunk)
        ids = torch.zeros(len(chunk), t, dtype=torch.long)
        mask = torch.zeros(len(chunk), t, dtype=torch.long)
        for r, x in enumerate(chunk):  # right padding: positions line up across sequences
            ids[r, :len(x)] = torch.tensor(x)
            mask[r, :len(x)] = 1
        yield ids, mask


def _progress(total, enabled):
    return Progress(total, desc="attnscope dataset", unit="seq") if enabled else None


def all_reduce(stats, group=None):
    """Sums `stats` over the ranks of torch.distributed (in place): MAX for maxima, SUM else."""
    import torch.distributed as dist
    length = torch.tensor([stats.length], dtype=torch.long, device=stats.state["n_sequences"].device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX, group=group)
    stats.resize(int(length.item()))
    maxed = set(_core.DatasetStats.max_state_names())
    for name, t in sorted(stats.state.items()):  # same order on every rank
        dist.all_reduce(t, op=dist.ReduceOp.MAX if name in maxed else dist.ReduceOp.SUM, group=group)
    return stats


def aggregate_dataset(model, texts_or_ids, *, length=16, num=256, capture="all", batch_size=16,
                      epsilon=0.3, skip_short=False, bos=False, progress=True, group=None):
    """Attention statistics over a dataset -> DatasetTrace.

    model: an attnscope Model (or a path for attnscope.load). texts_or_ids: texts, id lists, or
    a Tensor [N, T]. Each sequence is cut to its first `length` tokens (None: kept whole, padded
    per batch); the first `num` sequences with enough tokens are used (None: all). capture:
    "all" (layer maps, received attention, attention entropy, row statistics: the head atlas)
    or a dict of parts {"layer_maps", "head_maps", "received", "attn_entropy", "row_stats"}. Under torch.distributed (torchrun)
    each rank takes every world_size-th sequence and the sums are all-reduced, so every rank
    returns the whole dataset's result."""
    from .api import Model, load
    if not isinstance(model, Model):
        model = load(model)
    if model.n_layers > 0 and list(model.attention_layers) != list(range(model.n_layers)):
        raise ValueError(f"this {model.family or 'model'} is a hybrid (attention on layers "
                         f"{', '.join(map(str, model.attention_layers))} of {model.n_layers}): dataset statistics stack "
                         "every layer and do not take hybrids yet; run its sequences one by one (Model.run) instead")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r}: expected a positive int")
    parts = _parts(capture)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise ValueError(f"epsilon {epsilon!r}: expected a number in [0, 1)")
    stats = _core.DatasetStats(parts, float(epsilon))  # checks its range
    seqs = _sequences(model, texts_or_ids, length, num, skip_short, bos)
    rank, world = 0, 1
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        if len(seqs) < world:
            raise ValueError(f"{len(seqs)} sequences for {world} processes: every rank needs at least one")
    n_layers, n_heads = model.n_layers, model.n_heads
    if n_layers < 0 or n_heads < 0:  # archive without attnscope.json: one short run tells
        probe = model.run(torch.tensor([seqs[0]]), capture={"top_k": 0})
        n_layers, n_heads = probe.n_layers, probe.n_heads
    spec = _core.dataset_capture_spec(parts, n_layers, n_heads)
    mine = seqs[rank::world]
    start = time.perf_counter()
    bar = _progress(len(seqs), progress and rank == 0)
    for ids, mask in _batches(mine, batch_size):
        stats.add(core_of(model.run(ids, capture=spec, attention_mask=mask)))
        if bar is not None:
            bar.update(len(ids) * world)
    if bar is not None:
        bar.close()
    if world > 1:
        all_reduce(stats, group)
    return DatasetTrace(stats, meta={"num": len(seqs), "length": length, "bos": bool(bos),
                                     "world_size": world,
                                     "elapsed_s": round(time.perf_counter() - start, 3)})


class _Captures(Mapping):
    """Trace-style capture names computed on demand from the sums (batch dimension of 1)."""

    def __init__(self, stats):
        self._s = stats
        p, L, H = stats.parts, stats.n_layers, stats.n_heads
        names = []
        if p.layer_maps:
            names += [f"layer_map/L{l}" for l in range(L)]
        if p.head_maps:
            names += [f"head_map/L{l}H{h}" for l in range(L) for h in range(H)]
        if p.received:
            names += ["received_mean", "received_max", "aggregate_layers"]
        if p.attn_entropy:
            names += ["attn_entropy", "aggregate_layers"]
        self._names = list(dict.fromkeys(names))
        self._cache = {}

    def __len__(self):
        return len(self._names)

    def __iter__(self):
        return iter(self._names)

    def __getitem__(self, name):
        if name not in self._names:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = self._compute(name)
        return self._cache[name]

    def _compute(self, name):
        s = self._s
        if name.startswith("layer_map/L"):
            return s.layer_map(int(name[11:])).cpu().unsqueeze(0)
        if name.startswith("head_map/L"):
            l, h = name[10:].split("H")
            return s.layer_map(int(l), int(h)).cpu().unsqueeze(0)
        if name == "aggregate_layers":
            return torch.arange(s.n_layers)
        t = {"received_mean": s.alpha, "received_max": s.received_max, "attn_entropy": s.attn_entropy}[name]()
        return t.cpu().unsqueeze(1)  # [L, 1, H, T]


class DatasetTrace:
    """Statistics of a dataset, shaped like a one-sequence Trace for the figure functions
    (`captures` holds mean maps [1, T, T] and profiles [L, 1, H, T]; labels are positions).

    Results: `alpha` [L, H, T] (α_k, mean over sequences), `sink_rate` [L, H], `sink1_per_layer`
    [L] and `sink1` (fractions; `sink1_of_mean_alpha` thresholds the mean α₁ instead), `head_entropy` [L, H] and `attn_entropy_profile` [L, H, T]
    (nats), `predictive_entropy` [T], `n_sequences`, `length`, `epsilon`."""

    is_dataset = True

    def __init__(self, stats, meta=None):
        self.stats, self.meta = stats, dict(meta or {})
        T = stats.length
        self.captures = _Captures(stats)
        self.input_ids = torch.zeros(1, T, dtype=torch.long)
        self.attention_mask = torch.ones(1, T, dtype=torch.long)
        self.entropy = torch.full((1, T), float("nan"))  # no per-token crosshairs on averages
        self.labels = [[str(i) for i in range(T)]]
        self.tokens = self.labels
        self.spec = {}

    n_layers = property(lambda self: self.stats.n_layers)
    attention_layers = property(lambda self: list(range(self.stats.n_layers)))
    n_heads = property(lambda self: self.stats.n_heads)
    n_sequences = property(lambda self: self.stats.n_sequences)
    length = property(lambda self: self.stats.length)
    epsilon = property(lambda self: self.stats.epsilon)
    alpha = property(lambda self: self.stats.alpha().cpu())
    sink_rate = property(lambda self: self.stats.sink_rate().cpu())
    sink1_per_layer = property(lambda self: self.stats.sink1_per_layer().cpu())
    sink1 = property(lambda self: self.stats.sink1())
    # Sink₁ of the dataset-mean α₁ (threshold after averaging; docs/model_card uses this one)
    sink1_of_mean_alpha = property(lambda self: float((self.alpha[..., 0] > self.epsilon).float().mean()))
    head_entropy = property(lambda self: self.stats.head_entropy().cpu())
    attn_entropy_profile = property(lambda self: self.stats.attn_entropy().cpu())
    predictive_entropy = property(lambda self: self.stats.predictive_entropy().cpu())

    def get(self, name):
        """Captured-style tensor `name`; ValueError naming the part to enable if absent."""
        if name not in self.captures:
            part = _core.DatasetParts.part_of(name) or "?"
            raise ValueError(f"the dataset trace has no {name!r}: aggregate with capture="
                             f"{{'{part}': True}}; it holds {sorted(self.captures)}")
        return self.captures[name]

    def missing_hint(self, name):
        return f"aggregate_dataset(..., capture={{'{_core.DatasetParts.part_of(name) or '?'}': True}})"

    def summary(self):
        """Sink₁ per layer and head entropy as a dict of plain numbers (for JSON)."""
        out = {"n_sequences": self.n_sequences, "length": self.length, "epsilon": self.epsilon,
               "n_layers": self.n_layers, "n_heads": self.n_heads, **self.meta}
        p = self.stats.parts
        if p.received:
            out["sink1"] = self.sink1
            out["sink1_of_mean_alpha"] = self.sink1_of_mean_alpha
            out["sink1_per_layer"] = self.sink1_per_layer.tolist()
            out["alpha1_per_layer"] = self.alpha[..., 0].mean(1).tolist()
        if p.attn_entropy:
            out["head_entropy_per_layer"] = self.head_entropy.mean(1).tolist()
        return out

    def save(self, path):
        self.stats.save(str(path))

    @classmethod
    def load(cls, path):
        return cls(_core.DatasetStats.load(str(path)))

    @property
    def model_id(self):
        """The model the sums come from (Model.model_id; "mixed" when pooled on purpose)."""
        return self.stats.model_id

    @property
    def model_name(self):
        return self.stats.model_name

    def merge(self, *others, allow_different_models=False):
        """A new DatasetTrace with the sums of this one and `others` (e.g. shards run apart)."""
        return merge_datasets(self, *others, allow_different_models=allow_different_models)

    @classmethod
    def from_traces(cls, traces, *, epsilon=0.3, allow_different_models=False):
        """Statistics of single-run Traces (each must hold every layer's aggregates) of one model;
        allow_different_models=True pools several models on purpose (the file says "mixed")."""
        traces = list(traces)
        if not traces:
            raise ValueError("from_traces: no traces given")
        cores = [core_of(t) for t in traces]
        p = _core.DatasetParts.of_trace(cores[0])
        p.head_maps = False  # L·H·T² sums: aggregate_dataset(capture={"head_maps": True}) asks for them
        if not (p.layer_maps or p.received or p.attn_entropy or p.row_stats):
            raise ValueError("the trace holds neither every layer's map nor aggregates: run with capture='all'")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
            raise ValueError(f"epsilon {epsilon!r}: expected a number in [0, 1)")
        stats = _core.DatasetStats(p, float(epsilon))
        stats.allow_different_models = allow_flag(allow_different_models)
        for c in cores:
            stats.add(c)
        return cls(stats)


def merge_datasets(*traces, allow_different_models=False):
    """One DatasetTrace with the summed statistics of several (same model, parts and ε;
    allow_different_models=True pools several models on purpose)."""
    if not traces:
        raise ValueError("merge_datasets: no dataset traces given")
    for t in traces:
        if not isinstance(t, DatasetTrace):
            raise ValueError(f"merge_datasets: expected DatasetTrace, got {type(t).__name__}")
    lengths = sorted({t.stats.length for t in traces})
    if len(lengths) > 1:
        import warnings
        warnings.warn(f"merge_datasets: sequence lengths differ ({lengths}); positions beyond a dataset's length "
                      "count only the sequences that reach them", stacklevel=2)
    first = traces[0].stats
    stats = _core.DatasetStats(first.parts, first.epsilon)
    stats.allow_different_models = allow_flag(allow_different_models)
    for t in traces:
        stats.merge(t.stats)
    return DatasetTrace(stats, meta=traces[0].meta)
