"""Value-weighted attention (Kobayashi et al. 2020, "Attention is Not Only a Weight"): how much
token j's value actually contributes to token i's head output, ‖α_ij v_j‖ = α_ij‖v_j‖, rows
renormalised. The core captures its aggregates ("vw_received_mean", "vw_received_max",
"vw_attn_entropy") and the weights ("vw_value_norm") at SDPA sites with capture
{"value_weighted": True}; this module turns a head's map into its value-weighted map. The value
vector alone: the head's slice of the output projection is not applied. Duck-typed on a trace."""
import torch

__all__ = ["value_weighted_map"]


def value_weighted_map(trace, layer, head, *, batch=0):
    """Tensor[T, T]: row i = α_ij‖v_j‖ / Σ_j α_ij‖v_j‖ for head `head` of model layer `layer`
    of row `batch` (α the head's map; NaN rows at padding). Computes what the trace lacks when
    it keeps its model (the head's map and "vw_value_norm")."""
    B, T = trace.input_ids.shape
    for name, v, n in (("layer", layer, trace.n_layers), ("head", head, trace.n_heads), ("batch", batch, B)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
            raise ValueError(f"{name} {v!r} out of range: expected 0..{n - 1}")
    if hasattr(trace, "ensure"):
        trace.ensure([f"head_map/L{layer}H{head}", "vw_value_norm"])
    caps = trace.captures
    for name in (f"head_map/L{layer}H{head}", "vw_value_norm"):
        if name not in caps:
            raise ValueError(f"the trace has no {name!r}: run with capture={{'value_weighted': True, "
                             f"'heads': [({layer}, {head})]}}")
    order = caps["aggregate_layers"].tolist()
    if layer not in order:
        raise ValueError(f"layer {layer} has no value norms in this trace (it has {order}): run with "
                         f"capture={{'value_weighted': True}} and layers including {layer}")
    alpha = caps[f"head_map/L{layer}H{head}"][batch].double()                # [T, T]
    norms = caps["vw_value_norm"][order.index(layer), batch, head].double()   # [T]
    w = alpha * torch.nan_to_num(norms, nan=0.0)[None, :]
    return w / w.sum(-1, keepdim=True)
