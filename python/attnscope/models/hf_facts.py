"""What an archive exported from a transformers model states about it (attnscope.json): sizes,
layouts attnscope refuses before tracing, a hybrid's attention layers, a differential
attention's λ per layer."""
import torch

from .hf_errors import gist
from .hf_verify import NoAttentionMaps, observe, text_config


def refuse_layouts(model, tc, facts):
    """Refuses by name the layouts attnscope does not capture yet, before anything is traced."""
    name = f"this {facts['family']} model ({type(model).__name__})"
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{name} is an encoder-decoder: attnscope captures decoder-only and encoder-only models; "
                         "encoder self-attention, decoder self-attention and cross-attention are not captured yet "
                         "(docs/export.md)")


def observe_model(model, facts, device):
    """The model's causality, observed from one eager run (hf_verify.observe), with a hybrid's
    attention layers put into facts["attention_layers"]; refused by name when the model has no
    attention maps, when its layers cannot be placed, or when its own eager forward fails."""
    name = f"{facts['family']} model ({type(model).__name__})"
    try:
        causal, layers = observe(model, facts["num_layers"], facts["vocab_size"], device)
    except NoAttentionMaps as e:
        raise ValueError(f"cannot export this {name}: {e}, so there is no softmax attention to capture or check "
                         "against. Tracing the model yourself (torch.jit.trace with eager attention) would give "
                         "nothing more, so that is no workaround: attnscope does not support this attention yet "
                         "(docs/export.md lists the families not supported).") from None
    except ValueError as e:
        tc = text_config(model)
        types = sorted({str(t) for t in (getattr(tc, "layer_types", None) or getattr(tc, "layers_block_type", None) or [])})
        raise ValueError(f"this {name} is a hybrid{' (layer types: ' + ', '.join(types) + ')' if types else ''}: "
                         f"{e}, so attnscope cannot number its attention layers") from None
    except Exception as e:  # noqa: BLE001 - the model itself: nothing to export
        raise ValueError(f"this {name} fails in its own eager forward on 8 tokens, before anything is traced: "
                         f"{gist(e, 300)}") from e
    if layers is not None:
        facts["attention_layers"] = layers
    return causal


def differential(model, facts):
    """Differential attention (DiffLlama: (softmax_1 − λ·softmax_2)·V, paired over heads h and
    h + H/2 of one map): each layer's λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init into
    facts["differential"], so traces can show the difference the model uses."""
    lam = {}
    for m in model.modules():
        if all(isinstance(getattr(m, a, None), torch.Tensor) for a in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")):
            with torch.no_grad():
                l1 = torch.exp((m.lambda_q1.float() * m.lambda_k1.float()).sum())
                l2 = torch.exp((m.lambda_q2.float() * m.lambda_k2.float()).sum())
            lam[str(int(m.layer_idx))] = float(l1 - l2 + float(m.lambda_init))
    if lam:
        facts["differential"] = {"lambda": lam, "pairs": facts["num_heads"] // 2}


def output_kind(model):
    return "logits" if model.get_output_embeddings() is not None else "hidden_states"


def facts_of(model):
    tc = text_config(model)
    heads = getattr(tc, "num_attention_heads", None)
    if not isinstance(heads, int) or heads <= 0:
        raise ValueError(f"this {tc.model_type} model ({type(model).__name__}) has no attention heads (its config has "
                         f"no num_attention_heads{'' if heads is None else ': ' + repr(heads)}): attnscope captures "
                         "attention, and there is none to capture")
    kv = getattr(tc, "num_key_value_heads", None)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
    # Multi-head latent attention (DeepSeek-V2/V3, Kimi): q·k spans the no-rope and rope parts,
    # and the config's head_dim is the rope part alone; v has its own width.
    nope, rope = getattr(tc, "qk_nope_head_dim", None), getattr(tc, "qk_rope_head_dim", None)
    if isinstance(nope, int) and isinstance(rope, int):
        head_dim = nope + rope
    v_dim = getattr(tc, "v_head_dim", None)
    facts = {"num_layers": tc.num_hidden_layers, "num_heads": heads, "head_dim": head_dim,
             "vocab_size": tc.vocab_size, "bos_token_id": getattr(tc, "bos_token_id", None),
             "eos_token_id": getattr(tc, "eos_token_id", None), "family": tc.model_type,
             "output": output_kind(model)}
    if isinstance(v_dim, int) and v_dim != head_dim:
        facts["v_head_dim"] = v_dim
    if kv and kv != heads:  # else the first run's keys say (Falcon's multi-query config states every head)
        facts["num_kv_heads"] = kv
    ctx = getattr(tc, "max_position_embeddings", None)
    if isinstance(ctx, int) and ctx > 0:
        facts["context_length"] = ctx
    return tc, facts
