"""Llama-family causal LM (Llama, Qwen2, Mistral, SmolLM2) that calls attnscope's capture ops.

Config-driven: RMSNorm, rotary embeddings (theta, linear scaling), grouped-query attention,
SwiGLU MLP, tied or untied embeddings, optional q/k/v (and o) biases, optional sliding window.
Two attention back ends, both numbering layers 0..L-1:
  "eager": softmax materialised in fp32 -> attnscope::capture(probs, layer)
  "sdpa":  attnscope::sdpa (scaled_dot_product_attention with the capture built in)
"""
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._lib import load_library
from .hf_inputs import mask_positions

ATTENTION_BACKENDS = ("eager", "sdpa")


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_linear_factor: float = 1.0
    tie_embeddings: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: Optional[int] = None
    max_position_embeddings: int = 2048
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    family: str = "llama"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_heads
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

    @classmethod
    def from_hf(cls, d):
        """From a Hugging Face config dict (config.json) of a Llama, Qwen2 or Mistral model.

        Honoured: vocab_size, hidden_size, intermediate_size, num_hidden_layers,
        num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps, rope_theta /
        rope_parameters.rope_theta, rope_scaling or rope_parameters of type default/linear,
        tie_word_embeddings, attention_bias, sliding_window (+ use_sliding_window),
        max_position_embeddings, bos/eos_token_id. Refused with ValueError: other model types,
        hidden_act other than silu, mlp_bias, other rope types.
        """
        mt = d.get("model_type", "llama")
        if mt not in ("llama", "qwen2", "mistral"):
            raise ValueError(f"model_type {mt!r} is not a Llama-family model: expected llama, qwen2 or mistral")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {d.get('hidden_act')!r} unsupported: the Llama-family MLP uses silu")
        if d.get("mlp_bias"):
            raise ValueError("mlp_bias=True unsupported")
        rope = dict(d.get("rope_parameters") or {})
        rope.update(d.get("rope_scaling") or {})
        rtype = rope.get("rope_type", rope.get("type", "default"))
        if rtype not in ("default", "linear"):
            raise ValueError(f"rope type {rtype!r} unsupported: expected default or linear")
        window = d.get("sliding_window")
        if mt == "qwen2" and not d.get("use_sliding_window", False):
            window = None
        heads = d["num_attention_heads"]
        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
            num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)),
            rope_linear_factor=float(rope.get("factor", 1.0)) if rtype == "linear" else 1.0,
            tie_embeddings=d.get("tie_word_embeddings", True),
            qkv_bias=mt == "qwen2" or bool(d.get("attention_bias", False)),
            o_bias=mt != "qwen2" and bool(d.get("attention_bias", False)),
            sliding_window=window, max_position_embeddings=d.get("max_position_embeddings", 2048),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"), family=mt)

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


_SDPA = None


def _sdpa_fn():
    """The SDPA core, scripted so that the traced archive keeps both branches: an exactly causal
    batch (no padding, no window reached) uses is_causal, which lets the fused kernels skip the
    blocks above the diagonal (about half the work at long T, as transformers does); otherwise
    the explicit mask. Scripted lazily: attnscope's ops must be registered first."""
    global _SDPA
    if _SDPA is None:
        def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                 causal_ok: torch.Tensor, scale: float, layer: int, window: int, gqa: bool) -> torch.Tensor:
            # attnscope::sdpa: SDPA itself when nothing is captured; while capturing on the CPU
            # the recorder's probabilities give the output too (the attention is computed once).
            if q.size(2) == k.size(2) and (window <= 0 or k.size(2) <= window) and bool(causal_ok):
                return torch.ops.attnscope.sdpa(q, k, v, None, 0.0, True, scale, gqa, layer)
            return torch.ops.attnscope.sdpa(q, k, v, allowed, 0.0, False, scale, gqa, layer)
        _SDPA = torch.jit.script(sdpa)
    return _SDPA


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg, layer, backend):
        super().__init__()
        self.layer, self.backend = layer, backend
        self.h, self.kv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.h * self.d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv * self.d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv * self.d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=cfg.o_bias)
        self.scale = self.d ** -0.5
        self.window = cfg.sliding_window or 0
        if backend == "sdpa":
            self.sdpa = _sdpa_fn()

    def forward(self, x, cos, sin, allowed, causal_ok):
        """x [B, T, C]; cos/sin [B, 1, T, D]; allowed [B, 1, T, T] bool (True = may attend);
        causal_ok [] bool: no padding (then `allowed` is the causal mask, or its window)."""
        return self.attend(x, cos, sin, allowed, causal_ok, None, None)[0]

    def attend(self, x, cos, sin, allowed, causal_ok, past_k: Optional[torch.Tensor], past_v: Optional[torch.Tensor]):
        """Attention of x [B, t, C] (the last t of P + t positions; cos/sin [B, 1, t, D] at their
        positions from the mask) over P cached keys/values past_k/past_v [B, KV, P, D] (None:
        P = 0); allowed [B, 1, t, P + t].
        Returns (out [B, t, C], k [B, KV, P + t, D], v): the cache grown by t positions."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if past_k is not None:
            k = torch.cat((past_k, k), dim=2)
            v = torch.cat((past_v, v), dim=2)
        n = k.shape[2]
        if self.backend == "eager":
            g = self.h // self.kv
            kr = k[:, :, None].expand(b, self.kv, g, n, self.d).reshape(b, self.h, n, self.d)
            vr = v[:, :, None].expand(b, self.kv, g, n, self.d).reshape(b, self.h, n, self.d)
            w = torch.matmul(q, kr.transpose(2, 3)) * self.scale
            w = w.masked_fill(~allowed, torch.finfo(w.dtype).min)
            p = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
            p = torch.ops.attnscope.capture(p, self.layer)
            out = torch.matmul(p, vr)
        else:
            out = self.sdpa(q, k, v, allowed, causal_ok, self.scale, self.layer, self.window, self.kv != self.h)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.h * self.d)), k, v


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg, layer, backend):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer, backend)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, allowed, causal_ok):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed, causal_ok)
        return x + self.mlp(self.post_attention_layernorm(x))

    def step(self, x, cos, sin, allowed, past_k: Optional[torch.Tensor], past_v: Optional[torch.Tensor]):
        # the cached case keeps the explicit mask (SDPA's is_causal is top-left aligned)
        no = torch.zeros((), dtype=torch.bool, device=x.device)
        a, k, v = self.self_attn.attend(self.input_layernorm(x), cos, sin, allowed, no, past_k, past_v)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class LlamaForCausalLM(nn.Module):
    """forward(input_ids [B, T] int64, attention_mask [B, T]) -> logits [B, T, V].

    Positions count from each row's first real token (attention_mask), as transformers'
    generate passes them, so a left-padded row computes what it computes alone; a padded query
    may attend to itself so no softmax row is empty (padded positions carry no meaning and
    attnscope ignores them).
    """

    def __init__(self, cfg: LlamaConfig, attention: str = "sdpa"):
        super().__init__()
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention={attention!r}: expected one of {ATTENTION_BACKENDS}")
        load_library()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, attention) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
        self.register_buffer("inv_freq", inv / cfg.rope_linear_factor, persistent=False)

    def _rope(self, positions, like):
        """cos, sin [B, 1, t, D] at positions [B, t] (counted from each row's first real token)."""
        freqs = positions.to(torch.float32)[:, :, None] * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(like.dtype), emb.sin().to(like.dtype)

    def _allowed(self, start: int, t: int, attention_mask):
        """[B, 1, t, start + t]: query at position start + q may see key j (causal, window, real)."""
        i = torch.arange(start, start + t, device=attention_mask.device)[:, None]
        j = torch.arange(start + t, device=attention_mask.device)[None, :]
        allowed = j <= i
        if self.cfg.sliding_window is not None:
            allowed = allowed & (j > i - self.cfg.sliding_window)
        # a padded query may attend to itself so that no softmax row is empty
        return (allowed[None, None] & attention_mask.bool()[:, None, None, :]) | (j == i)[None, None]

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        x = self.embed_tokens(input_ids)
        cos, sin = self._rope(mask_positions(attention_mask), x)
        allowed = self._allowed(0, t, attention_mask)
        causal_ok = attention_mask.bool().all()
        for layer in self.layers:
            x = layer(x, cos, sin, allowed, causal_ok)
        return self.lm_head(self.norm(x))

    def decode(self, input_ids, attention_mask, past_k, past_v):
        """Incremental forward for generation (exported as the archive's `decode` method):
        input_ids [B, t] at the last t of P + t positions after P cached ones, attention_mask
        [B, P + t], past_k/past_v [L, B, KV, P, D] (P may be 0). Returns (logits [B, t, V],
        k [L, B, KV, P + t, D], v): the same logits as forward over the whole sequence."""
        b, t = input_ids.shape
        start = past_k.shape[3]
        x = self.embed_tokens(input_ids)
        cos, sin = self._rope(mask_positions(attention_mask)[:, start:], x)
        allowed = self._allowed(start, t, attention_mask)
        ks, vs = [], []
        for n, layer in enumerate(self.layers):
            x, k, v = layer.step(x, cos, sin, allowed, past_k[n], past_v[n])
            ks.append(k)
            vs.append(v)
        return self.lm_head(self.norm(x)), torch.stack(ks), torch.stack(vs)

    def load_hf_state_dict(self, sd):
        """Loads transformers' LlamaForCausalLM/Qwen2/Mistral parameter names (model.* + lm_head)."""
        mine = {}
        for k, v in sd.items():
            k2 = k[len("model."):] if k.startswith("model.") else k
            mine[k2] = v
        if self.cfg.tie_embeddings:
            mine.pop("lm_head.weight", None)
            mine["lm_head.weight"] = mine["embed_tokens.weight"]
        missing, unexpected = self.load_state_dict(mine, strict=False)
        missing = [m for m in missing if m != "inv_freq"]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        return self
