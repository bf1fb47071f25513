"""Differential attention (Differential Transformer, Ye et al. 2024; DiffLlama in transformers):
a head's output is (A₁ − λ·A₂)·V, two softmax maps over the same keys and one learned λ per layer.

In transformers 5.17's DiffLlama the two maps of differential head h (h < H/2) are the captured
heads h and h + H/2 of one softmax map; export_hf states each layer's λ in attnscope.json
("differential"). A difference of maps is no distribution — rows sum to 1 − λ and entries may be
negative — so it has no entropy: each softmax map keeps its own (attn_entropy of heads h and
h + H/2), and what the difference gives is linear in the maps: its weights D = A₁ − λ·A₂ and
the attention each key receives, received(D) = received(A₁) − λ·received(A₂) over the same
real queries.
"""


def differential_heads(trace):
    """{"lambda": {layer: λ}, "pairs": H/2} of the trace's model, or None when its model has no
    differential attention (or the trace was loaded from a file and has no model)."""
    model = trace.model
    d = (getattr(model, "metadata", None) or {}).get("differential")
    if not d:
        return None
    return {"lambda": {int(k): float(v) for k, v in d["lambda"].items()}, "pairs": int(d["pairs"])}


def _checked(trace, layer, head):
    d = differential_heads(trace)
    if d is None:
        raise ValueError("this trace's model has no differential attention (its attnscope.json states no "
                         "'differential'; a trace loaded from a file has no model)")
    if layer not in d["lambda"]:
        raise ValueError(f"layer {layer!r}: the differential layers are {sorted(d['lambda'])}")
    if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < d["pairs"]:
        raise ValueError(f"head {head!r}: a differential head is 0..{d['pairs'] - 1} (its maps are heads h and "
                         f"h + {d['pairs']})")
    return d["lambda"][layer], head + d["pairs"]


def differential_map(trace, layer, head, *, batch=0):
    """(A₁, A₂, D = A₁ − λ·A₂, λ) of differential head `head` (< H/2) in `layer`: Tensor[T, T]
    each (row `batch`; NaN rows at padded queries, as the maps)."""
    lam, second = _checked(trace, layer, head)
    names = [f"head_map/L{layer}H{head}", f"head_map/L{layer}H{second}"]
    trace.ensure(names)
    a1, a2 = (trace.get(n)[batch].double() for n in names)
    return a1, a2, a1 - lam * a2, lam


def differential_received(trace, layer, head, *, batch=0):
    """Tensor[T]: the mean attention each key receives from the difference D of differential head
    `head` in `layer`, received_mean(A₁) − λ·received_mean(A₂) over the same real queries."""
    lam, second = _checked(trace, layer, head)
    trace.ensure(["received_mean"])
    layers = trace.get("aggregate_layers").tolist()
    rm = trace.get("received_mean")[layers.index(layer), batch].double()
    return rm[head] - lam * rm[second]
