"""Llama-architecture GGUF files (llama.cpp) -> LlamaConfig, transformers-named state dict,
tokenizer. Dequantisation is done by the `gguf` package."""
import numpy as np
import torch

# GGML quantisation types this loader is tested with (others may dequantise but are refused).
SUPPORTED_QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K")

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def _reader(path):
    try:
        import gguf
    except ImportError as e:
        raise ImportError("reading GGUF needs the `gguf` package: pip install gguf") from e
    from .gguf_check import check_gguf_header
    check_gguf_header(path)  # lengths, sizes and offsets against the file, before gguf believes them
    try:
        return gguf, gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError, struct_error()) as e:  # gguf's own errors for a bad header
        raise ValueError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def struct_error():
    import struct
    return struct.error


def _int_field(reader, path, key, default=None, *, least=1):
    """An integer field >= least; ValueError naming the key otherwise (a head_count of 0 would
    divide by zero later)."""
    v = _field(reader, key, default)
    if v is None:
        raise ValueError(f"{path}: GGUF field {key!r} is missing")
    try:
        i = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: GGUF field {key!r} is {v!r}, expected an integer") from None
    if i < least:
        raise ValueError(f"{path}: GGUF field {key!r} is {i}, expected >= {least}")
    return i


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _check_shapes(path, r, c):
    """The config's sizes against the tensors the file holds, before any is dequantised or a model
    of that config is built: every layer 0..block_count-1 has each of its tensors, and each tensor
    has the shape the sizes give (GGUF lists dims innermost first)."""
    hd, h, kv, d, ff, V = (c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"],
                           c["intermediate_size"], c["vocab_size"])
    want = {"token_embd.weight": (V, d), "output_norm.weight": (d,), "output.weight": (V, d)}
    per_layer = {"attn_norm.weight": (d,), "attn_q.weight": (h * hd, d), "attn_k.weight": (kv * hd, d),
                 "attn_v.weight": (kv * hd, d), "attn_output.weight": (d, h * hd), "ffn_norm.weight": (d,),
                 "ffn_gate.weight": (ff, d), "ffn_up.weight": (ff, d), "ffn_down.weight": (d, ff)}
    have = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in r.tensors}
    layers = {int(n.split(".")[1]) for n in have if n.startswith("blk.") and n.split(".")[1].isdigit()}
    n = c["num_hidden_layers"]
    if len(layers) != n or (layers and (min(layers) != 0 or max(layers) != n - 1)):  # never range(n): n may be 2^32
        raise ValueError(f"{path}: GGUF block_count is {c['num_hidden_layers']}, but the file holds tensors of "
                         f"{len(layers)} layers ({min(layers, default='-')}..{max(layers, default='-')})")
    for i in range(c["num_hidden_layers"]):
        for k, shape in per_layer.items():
            want[f"blk.{i}.{k}"] = shape
    for name, shape in want.items():
        if name not in have:
            if name == "output.weight":
                continue  # tied to the embedding
            raise ValueError(f"{path}: GGUF tensor {name} is missing")
        if have[name] != shape:
            raise ValueError(f"{path}: GGUF tensor {name} has shape {list(have[name])}, but the header's sizes "
                             f"(vocab {V}, embedding {d}, heads {h}/{kv} x {hd}, feed-forward {ff}) give {list(shape)}")


def unpermute_rotary(w, n_head):
    """Undoes llama.cpp's converter, which reorders Q/K rows per head from the Hugging Face
    rotate-half layout to interleaved pairs. w [n_head * head_dim, in]."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def read_gguf(path):
    """Returns (config_dict in transformers' config.json form, state_dict with transformers'
    LlamaForCausalLM names as fp32 tensors, tokenizer_meta dict)."""
    gguf, r = _reader(path)
    arch = _field(r, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: GGUF architecture {arch!r} unsupported: expected 'llama' "
                         "(Llama, SmolLM2, Mistral-as-llama)")
    a = "llama."
    n_head = _int_field(r, path, a + "attention.head_count")
    n_kv = _int_field(r, path, a + "attention.head_count_kv", n_head)
    hidden = _int_field(r, path, a + "embedding_length")
    if n_head % n_kv or hidden % n_head:
        raise ValueError(f"{path}: GGUF head_count {n_head}, head_count_kv {n_kv} and embedding_length {hidden} "
                         "disagree: KV heads must divide heads, heads must divide the embedding")
    tokens = _field(r, "tokenizer.ggml.tokens")
    config = {
        "model_type": "llama",
        "vocab_size": int(_field(r, a + "vocab_size", len(tokens) if tokens else 0)),
        "hidden_size": hidden,
        "intermediate_size": _int_field(r, path, a + "feed_forward_length"),
        "num_hidden_layers": _int_field(r, path, a + "block_count", least=0),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": int(_field(r, a + "rope.dimension_count", hidden // n_head)),
        "rms_norm_eps": float(_field(r, a + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(r, a + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_field(r, a + "context_length", 2048)),
        "bos_token_id": _field(r, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(r, "tokenizer.ggml.eos_token_id"),
        "hidden_act": "silu",
    }
    if _field(r, a + "rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{path}: rope scaling {_field(r, a + 'rope.scaling.type')!r} unsupported")
    for t in r.tensors:
        qname = t.tensor_type.name
        if qname not in SUPPORTED_QUANTS:
            raise ValueError(f"{path}: tensor {t.name} has quantization {qname}, unsupported: "
                             f"expected one of {', '.join(SUPPORTED_QUANTS)}")
    embd = next((t for t in r.tensors if t.name == "token_embd.weight"), None)
    if not config["vocab_size"] and embd is not None and len(embd.shape) == 2:
        config["vocab_size"] = int(embd.shape[1])  # no vocab_size field and no tokens: the embedding's rows
    _check_shapes(path, r, config)
    sd = {}
    for t in r.tensors:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = torch.from_numpy(w.copy()).reshape([int(d) for d in reversed(t.shape)])
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        elif t.name.startswith("blk."):
            _, i, rest = t.name.split(".", 2)
            if rest not in _LAYER_NAMES:
                raise ValueError(f"{path}: unexpected tensor {t.name}")
            name = f"model.layers.{i}.{_LAYER_NAMES[rest]}"
            if rest == "attn_q.weight":
                w = unpermute_rotary(w, n_head)
            elif rest == "attn_k.weight":
                w = unpermute_rotary(w, n_kv)
        else:
            continue  # rope_freqs and the like are recomputed
        sd[name] = w
    config["tie_word_embeddings"] = "lm_head.weight" not in sd
    tok = {
        "model": _field(r, "tokenizer.ggml.model"),
        "tokens": tokens,
        "merges": _field(r, "tokenizer.ggml.merges"),
        "token_type": _field(r, "tokenizer.ggml.token_type"),
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "add_space_prefix": bool(_field(r, "tokenizer.ggml.add_space_prefix", False)),
        "chat_template": _field(r, "tokenizer.chat_template"),
    }
    return config, sd, tok
