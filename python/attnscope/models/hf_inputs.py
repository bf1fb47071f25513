"""How an archive traced from a transformers model calls it, and the inputs its export is checked on.

Positions come from the attention mask: a left-padded row must compute what the same tokens
compute alone. transformers' own forward numbers positions from the padded edge unless it is
given `position_ids`; its `generate` passes `attention_mask.cumsum(-1) - 1` (0 under padding)
to every causal LM whose forward takes `position_ids`, and the archive does the same in its
forward and its decode method. Padded positions also carry the model's pad token, as a
tokenizer pads, so a model that derives positions from the ids (RoBERTa) sees the same thing.
Whether a model's positions really follow the mask is not assumed: the export checks every
padded row against the row alone (hf_verify).
"""
import inspect

import torch


def mask_positions(mask):
    """position_ids [B, T] of a 0/1 mask [B, T]: real tokens count 0, 1, ... from each row's first
    real token; padded positions get 0 (transformers' generate)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


def takes_positions(model):
    """True when the model's forward accepts position_ids (the archive then passes them)."""
    return "position_ids" in inspect.signature(model.forward).parameters


def pad_token(model):
    """The config's pad token id when it is a valid token id, else None."""
    tc = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    pad, vocab = getattr(tc, "pad_token_id", None), getattr(tc, "vocab_size", 0)
    return pad if isinstance(pad, int) and 0 <= pad < vocab else None


class Call:
    """Keyword arguments of the archive's calls into the model: ids with padded positions set to
    the pad token, the mask, and position_ids from the mask when `positions`."""

    def __init__(self, positions: bool, pad_id):
        self.positions, self.pad_id = bool(positions), pad_id

    def describe(self):
        return "from the attention mask (position_ids)" if self.positions else "the model's own"

    def kwargs(self, input_ids, attention_mask, new_tokens=None):
        """new_tokens: the number of trailing positions input_ids holds (a decode step), or None."""
        mask = attention_mask
        ids = input_ids
        if self.pad_id is not None:
            tail = mask[:, mask.shape[1] - ids.shape[1]:]
            ids = ids.masked_fill(tail == 0, self.pad_id)
        kw = {"input_ids": ids, "attention_mask": mask}
        if self.positions:
            pos = mask_positions(mask)
            kw["position_ids"] = pos if new_tokens is None else pos[:, pos.shape[1] - new_tokens:]
        return kw


def spans(config):
    """Every window, chunk or capacity (in tokens) the config states: int attributes whose name
    says window, chunk or capacity, at any nesting of sub-configs' plain attributes."""
    found = set()
    for name, value in vars(config).items():
        if isinstance(value, bool):
            continue
        low = name.lower()
        if isinstance(value, int) and value > 1 and any(w in low for w in ("window", "chunk", "capacity")):
            found.add(value)
    return sorted(found)


def _not_a_multiple(n, of):
    while any(s > 1 and n % s == 0 for s in of):
        n += 1
    return n


def check_lengths(config, traced_length, max_length):
    """Lengths the export is checked on besides the traced one: a short one and one longer than
    every stated window/chunk/capacity, neither a multiple of any of them; (lengths, what the
    cap left unchecked or None)."""
    s = spans(config)
    ctx = getattr(config, "max_position_embeddings", None)
    cap = min(max_length, ctx) if isinstance(ctx, int) and ctx > 4 else max_length
    short = _not_a_multiple(max(3, traced_length // 2 + 1), s)
    long = _not_a_multiple(max([traced_length + 5, *[x + 3 for x in s]]), s)
    unchecked = None
    if long > cap:
        unchecked = (f"a window/chunk of {max(s)} tokens is longer than the longest checked length ({cap})")
        long = _not_a_multiple(cap - 2, s) if cap - 2 > traced_length else traced_length
    return sorted({short, long} - {traced_length}), unchecked


def batch(vocab, length, seed, device, pad_id, pad=None, side="left"):
    """ids [2, length] of random tokens, mask [2, length]: row 0 whole, row 1 padded on `side` by
    `pad` (default length // 4, at least 1) positions that hold the pad token (or random ids)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, length), generator=g)
    mask = torch.ones_like(ids)
    n = max(1, length // 4) if pad is None else pad
    cut = slice(0, n) if side == "left" else slice(length - n, length)
    mask[1, cut] = 0
    if pad_id is not None:
        ids[1, cut] = pad_id
    return ids.to(device), mask.to(device)
