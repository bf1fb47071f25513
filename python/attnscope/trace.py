"""Trace: what one run (or generation) produced, with what is missing computed on demand.

A trace made by Model.run / Model.generate keeps its Model (weights shared, no copy) and its
input ids. When a figure asks for a map or aggregate that was not captured, `ensure` re-runs the
model ONCE with everything missing for that call and keeps the result, so the workflow needs
no capture spec: run, then look at any layer or head in any order. Memory: each kept full map
is B·T² floats (a head map, or a layer's head-mean map); `release()` drops the model so
nothing more is computed, `drop(name)` frees one capture. A trace read from a file has no
model: asking it for something missing raises the error that says how to capture it.
"""
from . import _core
from .labels import readable


class Trace:
    """What one run produced. Tensors: `input_ids`/`attention_mask` [B, T], `entropy` [B, T]
    (nats; entry i is the entropy of the distribution predicting token i+1), `topk_ids`/
    `topk_probs` [B, T, k], `captures` {name: Tensor} (docs/capture.md "Capture names").
    Generated traces also have `prompt_len` (columns before it are the prompt), `response`
    (the generated text of each row) and `generation` (the settings, as a dict)."""

    def __init__(self, core, labels=None, *, model=None):
        self._core = core
        self._model = model
        b, t = core.input_ids.shape
        raw = list(core.tokens) or [f"<{i}>" for i in core.input_ids.flatten().tolist()]
        self.tokens = [raw[r * t:(r + 1) * t] for r in range(b)]
        self._labels = labels

    @property
    def labels(self):
        """Readable label of every position [B][T]: the kept model's tokenizer decodes each id
        (computed when first asked for), else the raw token strings made readable."""
        if self._labels is None:
            m = self._model
            if m is not None and m.tokenizer is not None:
                self._labels = [[m.label(i) for i in row] for row in self.input_ids.tolist()]
            else:
                self._labels = [[readable(x) for x in row] for row in self.tokens]
        return self._labels

    def __repr__(self):
        b, t = self.input_ids.shape
        gen = f", prompt_len={self.prompt_len}" if self.is_generated else ""
        return (f"<attnscope.Trace batch={b} tokens={t} layers={self.n_layers} heads={self.n_heads}{gen}, "
                f"{len(self._core.captures)} captures{', model kept' if self._model is not None else ''}>")

    @property
    def model(self):
        """The Model that made this trace (None for a trace loaded from a file)."""
        return self._model

    @property
    def attention_layers(self):
        """Model-layer indices of the layers with softmax attention: every layer 0..n_layers-1,
        or a hybrid's attention layers (the others hold no captures)."""
        return list(self._core.attention_layers) or list(range(self.n_layers))

    # ------------------------------------------------------------------ captures
    @property
    def captures(self):
        return self._core.captures

    @property
    def spec(self):
        """The capture spec that made this trace, as {field: value} (CaptureSpec.fields())."""
        return self._core.spec.to_dict()

    @property
    def capture_spec(self):
        """The CaptureSpec that made this trace (a copy: run(capture=trace.capture_spec) repeats it)."""
        return _core.CaptureSpec.from_json(self._core.spec.to_json())

    @property
    def can_compute(self):
        """True while the trace keeps its model (missing captures are computed on demand)."""
        return self._model is not None

    def get(self, name):
        """Captured tensor `name`, computed now if missing and the model is kept; ValueError
        listing what the trace holds otherwise."""
        self.ensure([name])
        caps = self._core.captures
        if name not in caps:
            raise ValueError(f"trace has no capture {name!r}; it holds {sorted(caps)}")
        return caps[name]

    def ensure(self, names):
        """Makes every capture in `names` present, with one re-run of the model for all that
        are missing (names: "head_map/L{l}H{h}", "layer_map/L{l}", "received_mean", ...).
        No-op for names already present, unknown names, or a trace without its model."""
        have = self._core.captures
        missing = [n for n in dict.fromkeys(names) if n not in have]
        if not missing or self._model is None:
            return
        spec = _core.CaptureSpec.for_captures(missing)
        if not spec.captures_anything():
            return
        got = self._rerun(spec.to_dict())
        for n in missing:
            if n in got:
                self._core.set_capture(n, got[n])
        if "aggregate_layers" in got and "aggregate_layers" not in have:
            self._core.set_capture("aggregate_layers", got["aggregate_layers"])

    def attention_from(self, position, *, batch=0):
        """Attention of query `position` (negative counts from the end) of row `batch`, every
        aggregate layer, head by head -> Tensor[L, H, T] (the rows a "from" capture keeps). Taken
        from the trace's "from" capture when it holds that row, else computed with one run."""
        T = self.input_ids.shape[1]
        if isinstance(position, bool) or not isinstance(position, int) or not -T <= position < T:
            raise ValueError(f"position {position!r} out of range: the trace has {T} tokens (valid: {-T}..{T - 1})")
        if isinstance(batch, bool) or not isinstance(batch, int) or not 0 <= batch < self.input_ids.shape[0]:
            raise ValueError(f"batch {batch!r} out of range: the trace has {self.input_ids.shape[0]} rows")
        position %= T
        have = [p % T for p in self.spec.get("from_tokens", [])]
        caps = self._core.captures
        if "from" in caps and position in have:
            return caps["from"][:, batch, :, have.index(position)]
        if self._model is None:
            raise ValueError(f"the trace has no attention row for position {position} and no model to compute "
                             f"it: capture with from_tokens=[{position}]")
        return self._rerun({"from_tokens": [position]})["from"][:, batch, :, 0]

    def pooled_maps(self, n):
        """(pooled_map Tensor[L, B, H, n', n'], pooled_uniform Tensor[L, B, n', n'], bounds) with
        n' = min(n, T) tiles; tile k covers positions bounds[k] .. bounds[k+1]-1, bounds[k] =
        floor(k·T/n'). Taken from the captures when they hold n' tiles, else computed with one
        run (capture={"pooled_maps": n} keeps them from the start)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 65536:
            raise ValueError(f"pooled maps: n={n!r} tiles, expected an int in 1..65536")
        T = self.input_ids.shape[1]
        m = min(n, T)
        caps = self._core.captures
        if not ("pooled_map" in caps and caps["pooled_map"].shape[-1] == m):
            if self._model is None:
                raise ValueError(f"the trace has no pooled maps of {m} tiles and no model to compute them: "
                                 f"capture with {{'pooled_maps': {n}}}")
            got = self._rerun({"pooled_maps": n})
            for name in ("pooled_map", "pooled_uniform"):
                self._core.set_capture(name, got[name])
            if "aggregate_layers" not in caps:
                self._core.set_capture("aggregate_layers", got["aggregate_layers"])
        caps = self._core.captures  # a fresh view: the dict read above predates the new captures
        return caps["pooled_map"], caps["pooled_uniform"], [k * T // m for k in range(m + 1)]

    def _rerun(self, spec):
        """Captures of one more run of the kept model with `spec`, over the trace's aggregate
        layers and with its local window; no predictive entropy, no top-k (kept from the first
        run)."""
        spec = {**spec, "top_k": 0, "predictive_entropy": False, "local_window": self.spec["local_window"]}
        caps = self._core.captures
        layers = caps["aggregate_layers"].tolist() if "aggregate_layers" in caps else self.spec["layers"]
        if layers and not spec.get("layers"):
            spec["layers"] = layers
        return self._model.run(self.input_ids, capture=spec, attention_mask=self.attention_mask).captures

    def drop(self, name):
        """Frees one capture (it is computed again if asked for while the model is kept)."""
        self._core.drop_capture(name)

    def release(self):
        """Drops the kept model and inputs' link to it: nothing more is computed on demand."""
        self.labels  # noqa: B018 - labels need the model's tokenizer: take them before it goes
        self._model = None

    def token_label(self, token_id, batch=0):
        """Readable label of vocabulary id `token_id` (e.g. a top-k alternative): from the
        model's tokenizer while the trace keeps its model, else the label of a position of row
        `batch` that holds the id, else "<id>"."""
        token_id = int(token_id)
        m = self._model
        if m is not None and getattr(m, "tokenizer", None) is not None:
            return m.label(token_id)
        row = self.input_ids[batch].tolist()
        return self.labels[batch][row.index(token_id)] if token_id in row else f"<{token_id}>"

    # ------------------------------------------------------------------ generation
    @property
    def is_generated(self):
        return self._core.prompt_len >= 0

    @property
    def generation(self):
        """How a generated trace was made, as a dict (temperature, top_k, top_p, seed,
        max_new_tokens, stop_ids, kv_cache, prefix_cached, steps, stop_reason, and a branch's
        fork); None for a trace of given text. `generation_info` is the same, typed."""
        g = self._core.generation
        return g.to_dict() if g is not None else None

    @property
    def generation_info(self):
        """How a generated trace was made (attnscope.GenerationInfo, with its Fork), or None."""
        return self._core.generation

    def set_generation(self, prompt_len, generation):
        """Marks the trace as generated: columns before `prompt_len` are the prompt; `generation`
        is how, a GenerationInfo or a dict as Trace.generation gives (a branch adds its "fork")."""
        if isinstance(generation, dict):
            generation = generation_info(generation)
        self._core.set_generation(prompt_len, generation)

    @property
    def fork(self):
        """A branch of an answer (Trace.branch): where it forked — position, the chosen and the
        forced token with their probabilities and rank; None otherwise."""
        g = self.generation
        return g.get("fork") if g else None

    def branch(self, position, *, rank=None, token=None, max_new_tokens=None, temperature=None, seed=None,
               progress=False):
        """This answer with another token where the model chose at `position` (rank-th most
        likely, or `token`), continued by the model -> Trace (attnscope.branches.branch)."""
        from .branches import branch
        return branch(self, position, rank=rank, token=token, max_new_tokens=max_new_tokens,
                      temperature=temperature, seed=seed, progress=progress)

    @property
    def response(self):
        """Generated text of each row (a str for a batch of one); None for a trace of given text."""
        if not self.is_generated:
            return None
        p = self._core.prompt_len
        texts = []
        for r in range(self.input_ids.shape[0]):
            ids = [i for i, m in zip(self.input_ids[r, p:].tolist(), self.attention_mask[r, p:].tolist()) if m]
            if self._model is not None and self._model.tokenizer is not None:
                texts.append(self._model.tokenizer.decode(ids, skip_special_tokens=True))
            else:
                texts.append("".join(self.tokens[r][p:p + len(ids)]))
        return texts[0] if len(texts) == 1 else texts

    # ------------------------------------------------------------------ files
    def save(self, path):
        if "\x00" in str(path):
            raise ValueError(f"path {str(path)!r} contains a NUL character")
        self._core.save(str(path))

    @classmethod
    def load(cls, path):
        return cls(_core.Trace.load(str(path)))


# What the C++ trace holds, read through (trace.h documents each).
_CORE_FIELDS = {
    "input_ids": "Tensor[B, T] int64 token ids",
    "attention_mask": "Tensor[B, T] int64, 1 = real token, 0 = padding",
    "entropy": "Tensor[B, T] predictive entropy (nats); entry i predicts token i+1",
    "topk_ids": "Tensor[B, T, k] int64 top-k next-token ids (None without top-k)",
    "topk_probs": "Tensor[B, T, k] their probabilities",
    "warnings": "warnings raised while the run computed this trace",
    "prompt_len": "generated traces: where the answer begins (-1 for given text)",
    "model_id": "the model that made it (Model.model_id; '' in files from before ids were kept)",
    "model_name": "that model's name (its archive's file name)",
    "n_layers": "attention layers that ran",
    "n_heads": "query heads per layer",
    "n_kv_heads": "KV heads per layer",
    "kv_head_of": "Tensor[H] int64: the KV head each query head reads",
    "layer_paths": "module path of each layer's attention site",
    "routes": "how each layer's attention was recorded: fused, blocks, softmax, probabilities (trace.h)",
}
for _name, _doc in _CORE_FIELDS.items():
    setattr(Trace, _name, property(lambda self, n=_name: getattr(self._core, n), doc=_doc))


GenerationInfo, Fork = _core.GenerationInfo, _core.Fork


def generation_info(d):
    """GenerationInfo from a dict as Trace.generation gives (unknown keys refused by name)."""
    g, fields = GenerationInfo(), {k for k in dir(GenerationInfo) if not k.startswith("_")} - {"to_dict", "to_json"}
    for k, v in d.items():
        if k not in fields:
            raise ValueError(f"generation: unknown key {k!r}; expected one of {', '.join(sorted(fields))}")
        if k == "fork" and isinstance(v, dict):
            f = Fork()
            for fk, fv in v.items():
                if not hasattr(f, fk) or fk.startswith("_"):
                    raise ValueError(f"generation fork: unknown key {fk!r}")
                setattr(f, fk, fv)
            v = f
        setattr(g, k, v)
    return g


def core_of(trace):
    """The C++ trace (attnscope._core.Trace) a Trace wraps: what the C++ dataset sums take."""
    return trace._core if isinstance(trace, Trace) else trace
