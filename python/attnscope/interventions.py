"""Model.logits' intervention arguments checked once and turned into the core's Knockout
(knockout.h): edges removed before the softmax, heads ablated."""
import torch

from . import _core

__all__ = ["core_knockout"]


def _index_list(v, name):
    """None -> [] (all), an int -> [it], a list of ints -> itself; else ValueError naming `name`."""
    if v is None:
        return []
    items = [v] if isinstance(v, int) and not isinstance(v, bool) else v
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise ValueError(f"{name} {v!r}: expected an int, a list of ints or None (all)")
    items = list(items)
    bad = [x for x in items if isinstance(x, bool) or not isinstance(x, int) or x < 0]
    if bad:
        raise ValueError(f"{name}: {bad[0]!r} is not an index >= 0")
    return items


def core_knockout(shape, *, remove, layers, heads, ablate, ablate_mode):
    """The core Knockout of these arguments, or None when nothing is asked. shape = (rows B, key
    positions K, layers L, heads H): remove must be bool [B, K, K], ablate bool [B, L, H]."""
    B, K, L, H = shape
    for arg, name, want in ((remove, "remove", (B, K, K)), (ablate, "ablate", (B, L, H))):
        if arg is not None and (not isinstance(arg, torch.Tensor) or arg.dtype != torch.bool
                                or tuple(arg.shape) != want):
            got = f"{tuple(arg.shape)} {arg.dtype}" if isinstance(arg, torch.Tensor) else repr(arg)
            raise ValueError(f"{name}: expected a bool Tensor{list(want)}, got {got}")
    if remove is None and (layers is not None or heads is not None):
        raise ValueError("layers=/heads= choose where `remove` applies: give remove= too")
    if ablate_mode not in ("zero", "mean"):
        raise ValueError(f"ablate_mode {ablate_mode!r}: expected 'zero' or 'mean'")
    if remove is None and ablate is None:
        return None
    knock = _core.Knockout()
    if remove is not None:
        knock.edges = remove
        knock.layers = _index_list(layers, "layers")
        knock.heads = _index_list(heads, "heads")
    if ablate is not None:
        knock.ablate, knock.ablate_mode = ablate, ablate_mode
    return knock
