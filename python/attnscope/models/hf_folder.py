"""A Hugging Face checkpoint folder -> (transformers model, tokenizer), believed only after its
config and weights are checked against each other: a config transformers cannot build, a
layer count or vocabulary the safetensors cannot hold (checked from their headers, before a
model of those sizes is allocated), and any weight transformers reports missing, unexpected or
of the wrong shape (it would fill or replace them with random numbers) are refused by name."""
import glob
import json
import os
import re

def load_folder(src, dtype=None):
    """(model, tokenizer) from a checkpoint folder: a causal LM class when config.architectures
    names one, else the base model (encoders such as BERT / MiniLM). dtype: a torch dtype to
    load the weights in (None: the checkpoint's own)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    try:
        cfg = AutoConfig.from_pretrained(src)
    except (ZeroDivisionError, TypeError, KeyError, AttributeError) as e:  # a config transformers cannot build
        raise ValueError(f"{src}: config.json is not a config transformers can build "
                         f"({type(e).__name__}: {e}){_config_zeros(src)}") from None
    _check_sizes(src, cfg)  # before transformers allocates a model of the config's sizes
    archs = getattr(cfg, "architectures", None) or []
    causal_lm = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or not archs
    # ignore_mismatched_sizes: transformers then lists the mismatches, and _check_loading refuses them by name
    model, info = (AutoModelForCausalLM if causal_lm else AutoModel).from_pretrained(
        src, output_loading_info=True, ignore_mismatched_sizes=True, **({"dtype": dtype} if dtype is not None else {}))
    _check_loading(src, info, causal_lm)
    tok = AutoTokenizer.from_pretrained(src) if os.path.isfile(os.path.join(src, "tokenizer.json")) else None
    return model, tok


def _config_zeros(src):
    """'; num_attention_heads is 0' etc. for the size keys of config.json that are below 1."""
    try:
        with open(os.path.join(src, "config.json")) as f:
            c = json.load(f)
    except (OSError, ValueError):
        return ""
    bad = [f"{k} is {v!r}" for k, v in c.items() if isinstance(c, dict) and (k.startswith("num_") or k.endswith("_size"))
           and isinstance(v, int) and not isinstance(v, bool) and v < 1] if isinstance(c, dict) else []
    return f": {', '.join(bad)} (expected >= 1)" if bad else ""


def _check_sizes(src, cfg):
    """config.json's layer count and vocabulary against what the folder's safetensors hold (their
    headers only): a config of 100000 layers or a vocabulary of 5e7 next to small weights is
    refused by name before transformers allocates the model it describes."""
    from safetensors import safe_open
    names, held = [], 0
    for f in sorted(glob.glob(os.path.join(src, "*.safetensors"))):
        try:
            with safe_open(f, "pt") as st:
                for k in st.keys():
                    n = 1
                    for d in st.get_slice(k).get_shape():
                        n *= int(d)
                    names.append(k)
                    held += n
        except Exception as e:  # noqa: BLE001 - the reader's own message names the problem
            raise ValueError(f"{src}: {os.path.basename(f)} is not a readable safetensors file ({e})") from None
    tc = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for key in ("num_attention_heads", "num_key_value_heads", "hidden_size", "num_hidden_layers", "vocab_size",
                "intermediate_size", "head_dim"):
        v = getattr(tc, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:  # 0 heads would divide by zero in transformers
            raise ValueError(f"{src}: config.json's {key} is {v}: expected an integer >= 1")
    n_layers = getattr(tc, "num_hidden_layers", None)
    # Layer indices in the weight names: the number after a layers / h / layer / blocks component.
    idx = [int(m) for k in names for m in re.findall(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.", k)]
    if isinstance(n_layers, int) and idx and n_layers > max(idx) + 1:
        raise ValueError(f"{src}: config.json says {n_layers} layers, but the weights hold layers "
                         f"0..{max(idx)} only")
    # The embedding's width: hidden_size, or embedding_size where it is factorised (ALBERT, ELECTRA).
    vocab, hidden = getattr(tc, "vocab_size", None), getattr(tc, "embedding_size", None) or getattr(tc, "hidden_size", None)
    if isinstance(vocab, int) and isinstance(hidden, int) and vocab > 0 and hidden > 0 and vocab * hidden > held:
        raise ValueError(f"{src}: config.json's vocabulary of {vocab} x hidden size {hidden} is more than all "
                         f"{held} numbers the weights hold: the config does not describe these weights")


# Checkpoint entries that are not weights of the model (buffers older versions saved) or heads
# an encoder's base model leaves out: never the reason to refuse a folder.
_HARMLESS = ("rotary_emb.inv_freq", ".masked_bias", ".attn.bias", "position_ids")
_ENCODER_HEADS = ("cls.", "lm_head.", "classifier.", "pooler.", "qa_outputs.")


def _check_loading(src, info, causal_lm):
    """Refuses a checkpoint folder whose weights do not make the model: transformers fills what
    is missing or mismatched with random numbers (and only logs it), and a figure of random
    weights is the worst output an attention tool can give."""
    def first(keys):
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(_HARMLESS)]
    if missing:
        raise ValueError(f"{src}: the checkpoint lacks {len(missing)} weight(s) the model needs ({first(missing)}); "
                         "transformers would fill them with random numbers. Check the safetensors files and "
                         "config.json's model_type")
    mismatched = info.get("mismatched_keys", [])
    if mismatched:
        names = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
        raise ValueError(f"{src}: {len(names)} weight(s) have shapes that do not match config.json "
                         f"({first(names)}); transformers would replace them with random numbers")
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith(_HARMLESS)
                  and (causal_lm or not k.startswith(_ENCODER_HEADS))]
    if unexpected:
        raise ValueError(f"{src}: the checkpoint holds {len(unexpected)} weight(s) the model does not use "
                         f"({first(unexpected)}): config.json (model_type, layer count) does not describe "
                         "these weights")
