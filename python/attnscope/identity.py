"""Which model made a trace, dataset, atlas or profile, and the one check wherever two are
combined: same shape is not the same model. Duck-typed on `.model_id` / `.model_name`
(Model.model_id: "w:<hex>" from an archive's weight records, "m:<hex>" from a module's
tensors; "" = unknown, a file written before ids were kept)."""

__all__ = ["same_model", "model_of", "allow_flag"]


def model_of(x):
    """(model_id, model_name) of anything that carries them ("", "" when it does not)."""
    return getattr(x, "model_id", "") or "", getattr(x, "model_name", "") or ""


def _said(mid, name):
    return f"{name!r} ({mid})" if mid else "an unknown model (a file written before model ids were kept)"


def allow_flag(v):
    """`allow_different_models` checked: True or False, else ValueError."""
    if not isinstance(v, bool):
        raise ValueError(f"allow_different_models {v!r}: expected True or False")
    return v


def same_model(a, b, *, allow_different_models=False, what="compare"):
    """"" when `a` and `b` come from one model. Otherwise a ValueError naming both models, or,
    with allow_different_models=True (a deliberate comparison of two models), the words for a
    figure's title: "different models: 'x.pt' vs 'y.pt'"."""
    allow_flag(allow_different_models)
    (ia, na), (ib, nb) = model_of(a), model_of(b)
    if ia and ia == ib:
        return ""
    if allow_different_models:
        return f"different models: {na or 'unknown'} vs {nb or 'unknown'}"
    raise ValueError(f"{what}: the first comes from {_said(ia, na)}, the second from {_said(ib, nb)}; same shape is "
                     "not the same model: pass allow_different_models=True to compare two models on purpose")
