"""Byte-level BPE tokenizers from GGUF metadata (the same construction transformers uses for
GGUF files, so ids agree) or from a tokenizer.json."""
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

CONTROL = 3  # GGUF token_type of special tokens


def tokenizer_from_gguf(meta):
    """meta: the tokenizer dict of read_gguf(). Returns a `tokenizers.Tokenizer`."""
    if meta.get("model") != "gpt2":
        raise ValueError(f"GGUF tokenizer model {meta.get('model')!r} unsupported: expected 'gpt2' (byte-level BPE)")
    tokens, merges = meta["tokens"], meta["merges"] or []
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], dropout=None,
                        continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=meta.get("add_space_prefix", False))
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    types = meta.get("token_type") or []
    special = [AddedToken(tokens[i], normalized=False, special=True) for i, ty in enumerate(types) if ty == CONTROL]
    if special:
        tok.add_special_tokens(special)
    return tok


def tokenizer_from_file(path):
    return Tokenizer.from_file(str(path))
