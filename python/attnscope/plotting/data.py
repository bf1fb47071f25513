"""Data for the figures: checks of layer/head/batch arguments and selection of maps and
aggregates from a Trace (computed on demand by the trace, never here)."""
import numpy as np

from ..windows import token_range, token_window


def _check_layer(trace, layer):
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < trace.n_layers:
        raise ValueError(f"layer {layer!r} out of range: the trace has {trace.n_layers} layers "
                         f"(0..{trace.n_layers - 1})")
    attention = trace.attention_layers
    if layer not in attention:
        raise ValueError(f"layer {layer} has no softmax attention in this model (a layer of another kind): its "
                         f"attention layers are {', '.join(map(str, attention))}")


def _check_head(trace, head):
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)) or not 0 <= head < trace.n_heads:
        raise ValueError(f"head {head!r} out of range: the trace has {trace.n_heads} heads "
                         f"(0..{trace.n_heads - 1})")


def _layers(trace, layer_indices, head_idx):
    """The layers of a per-layer figure, checked (and the head, when one is asked for)."""
    layers = list(layer_indices)
    if not layers:
        raise ValueError("layer_indices is empty: give at least one layer")
    for l in layers:
        _check_layer(trace, l)
    if head_idx is not None:
        _check_head(trace, head_idx)
    return layers


def _pairs(trace, layers_heads):
    pairs = list(layers_heads)
    if not pairs:
        raise ValueError("layers_heads is empty: give at least one (layer, head) pair")
    for p in pairs:
        if len(p) != 2:
            raise ValueError(f"layers_heads entry {p!r} is not a (layer, head) pair")
        _check_layer(trace, p[0])
        _check_head(trace, p[1])
    return pairs


def _check_batch(trace, batch):
    B = trace.input_ids.shape[0]
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 0 <= batch < B:
        raise ValueError(f"batch {batch!r} out of range: the trace has {B} sequence(s) (0..{B - 1})")


def _ensure(trace, names):
    """Asks the trace to compute what this figure needs and lacks, in one run (a Trace that
    keeps its model does; files and dataset traces have what they have)."""
    ensure = getattr(trace, "ensure", None)
    if ensure is not None:
        ensure(names)


def _has_from(trace, token_idx):
    pos = [p % trace.input_ids.shape[1] for p in trace.spec.get("from_tokens", [])] if "from" in trace.captures else []
    return token_idx in pos


def _capture(trace, name, hint):
    if name not in trace.captures:
        if getattr(trace, "is_dataset", False):
            raise ValueError(f"the dataset trace has no {name!r}: {trace.missing_hint(name)}")
        why = (" (it was read from a file or released its model, so it cannot compute it)"
               if hasattr(trace, "can_compute") and not trace.can_compute else "")
        raise ValueError(f"the trace has no {name!r}{why}: run with capture={hint}")
    return trace.captures[name]


def _head_map(trace, layer, head, batch):
    return _capture(trace, f"head_map/L{layer}H{head}", f"{{'heads': [({layer}, {head})]}}")[batch]


def _layer_map(trace, layer, head, batch):
    if head is None:
        return _capture(trace, f"layer_map/L{layer}", f"{{'layer_maps': [{layer}]}}")[batch]
    name = f"head_map/L{layer}H{head}"
    if name in trace.captures:
        return trace.captures[name][batch]
    if f"layer_map/L{layer}" in trace.captures and trace.spec.get("layer_map_head") == head:
        return trace.captures[f"layer_map/L{layer}"][batch]
    if getattr(trace, "is_dataset", False):
        raise ValueError(f"the dataset trace has no map of layer {layer} head {head}: "
                         f"{trace.missing_hint(f'head_map/L{layer}H{head}')}")
    raise ValueError(f"the trace has no map of layer {layer} head {head}: run with "
                     f"capture={{'heads': [({layer}, {head})]}}")


def _aggregate(trace, name, layer, head, batch):
    t = _capture(trace, name, "'all'")
    layers = trace.captures["aggregate_layers"].tolist()
    if layer not in layers:
        raise ValueError(f"layer {layer} has no aggregates in this trace (it has {layers}): "
                         f"run with capture={{'received': True}} and layers including {layer}")
    return t[layers.index(layer), batch, head]


def _sink_rows(trace, layer, head, batch, s, e):
    """Share of each query row's softmax that learned sink logits took (GPT-OSS), rows s..e-1 of
    `sink_share` (head mean when head is None; NaN at padding), or None: no learned sinks captured."""
    caps = trace.captures
    if "sink_share" not in caps or "aggregate_layers" not in caps:
        return None
    order = caps["aggregate_layers"].tolist()
    if layer not in order:
        return None
    x = caps["sink_share"][order.index(layer), batch]          # [H, T]
    return (x.mean(0) if head is None else x[head]).double().numpy()[s:e]


def _labels(trace, batch):
    return list(trace.labels[batch])


# The window checks are shared with the view and the atlas (attnscope.windows).
_window = token_window
_range = token_range
