"""Row statistics, head atlas scores and token profiles written from their definitions
(docs/python.md "Head atlas", docs/capture.md "Row statistics") over full attention maps, in
float64: the independent reference the capture is checked against."""
import torch


def row_stats_reference(A, ids, valid, w):
    """The six row statistics [B, H, T] from full attentions `A` [B, H, T, T] (double), written
    from their definitions (docs/capture.md "Row statistics"), NaN where undefined."""
    nan = float("nan")
    n = ids.shape[1]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    d = (i - j).double()
    prev_ok = torch.zeros_like(valid)
    prev_ok[:, 1:] = valid[:, 1:] & valid[:, :-1]                    # key j-1 and j are real
    prev_id = torch.full_like(ids, -1)
    prev_id[:, 1:] = ids[:, :-1]
    dup = (ids[:, None, :] == ids[:, :, None]) & (j < i) & valid[:, None, :]               # [B, T, T]
    ind = (prev_id[:, None, :] == ids[:, :, None]) & (j < i) & prev_ok[:, None, :]
    q = valid[:, None]
    out = {
        "row_self": torch.diagonal(A, dim1=-2, dim2=-1).masked_fill(~q, nan),
        "row_prev": torch.nn.functional.pad(torch.diagonal(A, -1, -2, -1), (1, 0)).masked_fill(~(q & prev_ok[:, None]), nan),
        "row_distance": (A * d.abs()).sum(-1).masked_fill(~q, nan),
        "row_local": (A * (d.abs() <= w)).sum(-1).masked_fill(~q, nan),
        "row_duplicate": (A * dup[:, None]).sum(-1).masked_fill(~(q & dup.any(-1)[:, None]), nan),
        "row_induction": (A * ind[:, None]).sum(-1).masked_fill(~(q & ind.any(-1)[:, None]), nan),
    }
    return out


def atlas_reference(attentions, ids, valid, w, rows=None):
    """{score: Tensor[L, H]}: means over the real query rows (of `rows`, a slice) where each score
    is defined. `attentions`: per layer [B, H, T, T]."""
    sl = rows or slice(None)
    out = {}
    for l, A in enumerate(attentions):
        A = A.double()
        st = row_stats_reference(A, ids, valid, w)
        first = torch.stack([valid[b].nonzero()[0] for b in range(A.shape[0])]).flatten()
        st["row_sink"] = torch.stack([A[b, :, :, first[b]] for b in range(A.shape[0])]).masked_fill(~valid[:, None], float("nan"))
        st["row_entropy"] = (-(A * A.clamp_min(1e-300).log()).sum(-1)).masked_fill(~valid[:, None], float("nan"))
        for name, x in st.items():
            x = x[..., sl]
            out.setdefault(name[4:], []).append(x.nanmean((0, 2)))
    return {k: torch.stack(v) for k, v in out.items()}


def pooled_reference(A, vis, valid, n):
    """("pooled_map" [B, H, n, n], "pooled_uniform" [B, n, n]) from full attentions `A` [B, H, T, T]
    and the mask `vis` [B, 1, T, T] (real query may see real key): tile k covers positions
    floor(k·T/n) .. floor((k+1)·T/n) - 1; means over the tile's cells with a real query and a
    real key; the uniform map gives each query 1/(keys it sees) on each key it sees."""
    T = A.shape[-1]
    n = min(n, T)
    bounds = [k * T // n for k in range(n + 1)]
    U = vis[:, 0].double() / vis[:, 0].sum(-1, keepdim=True).clamp_min(1)          # [B, T, T]
    real = valid.double()
    P = torch.zeros(T, n, dtype=torch.float64)                                     # position -> tile
    for k in range(n):
        P[bounds[k]:bounds[k + 1], k] = 1
    w = real[:, :, None] * real[:, None, :]                                          # [B, T, T] real cells
    sums = torch.einsum("ia,bhij,jc->bhac", P, A.double().nan_to_num(0) * w[:, None], P)
    usum = torch.einsum("ia,bij,jc->bac", P, U * w, P)
    per_tile = real @ P                                                              # [B, n]
    cells = per_tile[:, :, None] * per_tile[:, None, :]
    pm = torch.where(cells[:, None] > 0, sums / cells.clamp_min(1)[:, None], float("nan"))
    pu = torch.where(cells > 0, usum / cells.clamp_min(1), float("nan"))
    return pm, pu


def rows_alone(ref, ids, mask):
    """(eager attentions [L][B, H, T, T], logits [B, T, V] or None) of the batch, where each padded
    row is replaced by the same tokens run alone, put back at their positions (0 on padded keys)."""
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, output_attentions=True, use_cache=False)
        atts = [a.clone() for a in out.attentions]
        logits = out.logits.clone() if getattr(out, "logits", None) is not None else None
        for b in range(ids.shape[0]):
            if bool(mask[b].all()):
                continue
            idx = mask[b].bool().nonzero().flatten()
            alone = ref(input_ids=ids[b, idx][None], output_attentions=True, use_cache=False)
            for l, a in enumerate(atts):
                a[b] = 0
                a[b][:, idx[:, None], idx[None, :]] = alone.attentions[l][0]
            if logits is not None:
                logits[b, idx] = alone.logits[0]
    return atts, logits


def eager_run(model, ids):
    """The model's eager forward on ids [B, T] with attentions (output_attentions), its attention
    implementation switched back afterwards."""
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(input_ids=ids, output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(impl)
