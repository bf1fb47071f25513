"""Reads a trace written by attnscope-cli with the `safetensors` package alone and checks it."""
import json
import sys

from safetensors import safe_open

with safe_open(sys.argv[1], framework="pt") as f:
    meta = f.metadata()
    t = {k: f.get_tensor(k) for k in f.keys()}
assert meta["format"] == "attnscope-trace" and meta["version"] == "1", meta.get("format")
B, T = t["input_ids"].shape
assert t["entropy"].shape == (B, T)
L, H = int(meta["n_layers"]), int(meta["n_heads"])
assert t["captures/received_mean"].shape == (L, B, H, T), t["captures/received_mean"].shape
assert t["captures/head_map/L1H2"].shape == (B, T, T)
assert t["captures/layer_map/L0"].shape == (B, T, T)
assert t["captures/from"].shape == (L, B, H, 1, T)
rows = t["captures/head_map/L1H2"][0].sum(-1)
assert (rows - 1).abs().max() < 1e-5, rows
assert len(json.loads(meta["tokens"])) == B * T and len(json.loads(meta["layer_paths"])) == L
spec = json.loads(meta["spec"])
assert spec["received"] is True and spec["heads"] == [[1, 2]]
print(f"trace OK: {B}x{T} tokens, {L} layers, {H} heads, {len(t)} tensors")
