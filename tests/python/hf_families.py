"""Tiny random configs of transformers 5.17 families for the export matrix (tests/python/test_hf_matrix.py).
The families tried and their status are listed in docs/export.md ("Families checked").

Each builder returns a fresh model; sizes are small enough for CI (2-3 layers, 4 heads, hidden 32)."""
import transformers as T
V = 64


def small(**kw):
    d = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    d.update(kw); return d


def _sinks(model):
    """Sink logits drawn N(0, 1) (a fresh model's are zeros), so that heads differ."""
    import torch
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "sinks", None), torch.nn.Parameter):
                m.sinks.normal_()
    return model


FAMILIES = {
 "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**small(num_key_value_heads=2))),
 "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**small(num_key_value_heads=1))),
 "qwen2_sw": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**small(num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=1))),
 "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**small(num_key_value_heads=2, head_dim=8))),
 "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**small(num_key_value_heads=2, sliding_window=4))),
 "mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(**small(num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1, sliding_window=5))),
 "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(**small(num_key_value_heads=1, head_dim=8))),
 "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**small(num_key_value_heads=2, head_dim=8, sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=30.0, query_pre_attn_scalar=8))),
 "gemma3": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**small(num_hidden_layers=3, num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=8, layer_types=["sliding_attention","full_attention","sliding_attention"]))),
 "phi": lambda: T.PhiForCausalLM(T.PhiConfig(**small(partial_rotary_factor=0.5))),
 "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(**small(num_key_value_heads=2))),
 "opt": lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=V, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
 "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)),
 "gpt_neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**small())),
 "gptj": lambda: T.GPTJForCausalLM(T.GPTJConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, bos_token_id=1, eos_token_id=2)),
 "falcon": lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, bos_token_id=1, eos_token_id=2)),
 # local layers: a window of window_size keys on every other layer (attention_layers)
 "gpt_neo": lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(vocab_size=V, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)),
 "bloom": lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)),
 "stablelm": lambda: T.StableLmForCausalLM(T.StableLmConfig(**small(num_key_value_heads=2))),
 "starcoder2": lambda: T.Starcoder2ForCausalLM(T.Starcoder2Config(**small(num_key_value_heads=2, sliding_window=4))),
 "olmo2": lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**small(num_key_value_heads=2))),
 "cohere": lambda: T.CohereForCausalLM(T.CohereConfig(**small(num_key_value_heads=2))),
 "bert": lambda: T.BertModel(T.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)),
 # added for issue 22's wider matrix
 "mpt": lambda: T.MptForCausalLM(T.MptConfig(vocab_size=V, d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=64)),
 "codegen": lambda: T.CodeGenForCausalLM(T.CodeGenConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, bos_token_id=1, eos_token_id=2)),
 "gpt_bigcode": lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, multi_query=True, bos_token_id=1, eos_token_id=2)),
 "granite": lambda: T.GraniteForCausalLM(T.GraniteConfig(**small(num_key_value_heads=2, attention_multiplier=0.3))),
 "olmo": lambda: T.OlmoForCausalLM(T.OlmoConfig(**small())),
 "qwen2_moe": lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(**small(num_key_value_heads=2, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32))),
 "qwen3_moe": lambda: T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(**small(num_key_value_heads=2, head_dim=8, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32))),
 "glm": lambda: T.GlmForCausalLM(T.GlmConfig(**small(num_key_value_heads=2, head_dim=8))),
 "helium": lambda: T.HeliumForCausalLM(T.HeliumConfig(**small(num_key_value_heads=2, head_dim=8))),
 "nemotron": lambda: T.NemotronForCausalLM(T.NemotronConfig(**small(num_key_value_heads=2))),
 "persimmon": lambda: T.PersimmonForCausalLM(T.PersimmonConfig(**small())),
 "smollm3": lambda: T.SmolLM3ForCausalLM(T.SmolLM3Config(**small(num_key_value_heads=2))),
 # chunked attention: a query sees the earlier keys of its own chunk of 4 on chunked layers
 "llama4": lambda: T.Llama4ForCausalLM(T.Llama4TextConfig(**small(num_key_value_heads=2, head_dim=8, attention_chunk_size=4, num_local_experts=2, num_experts_per_tok=1, intermediate_size_mlp=64, interleave_moe_layer_step=1, layer_types=["chunked_attention", "full_attention"]))),
 # learned attention sinks: a per-head logit joins every softmax row and is dropped after it
 "gpt_oss": lambda: _sinks(T.GptOssForCausalLM(T.GptOssConfig(**small(num_key_value_heads=2, head_dim=8, num_local_experts=2, num_experts_per_tok=1, sliding_window=4, layer_types=["sliding_attention", "full_attention"])))),
 "xglm": lambda: T.XGLMForCausalLM(T.XGLMConfig(vocab_size=V, d_model=32, ffn_dim=64, num_layers=2, attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
 # multi-head latent attention: q·k per head = 16 (no rope) + 8 (rope) = 24, v per head = 16
 "deepseek_v3": lambda: T.DeepseekV3ForCausalLM(T.DeepseekV3Config(**small(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=16, first_k_dense_replace=1))),
 # learned absolute positions (numbered from the padded edge unless given position_ids)
 "biogpt": lambda: T.BioGptForCausalLM(T.BioGptConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
 # latent attention: MiniCPM3 (q and kv low-rank), DeepSeek-V2 (kv low-rank, routed experts)
 "minicpm3": lambda: T.MiniCPM3ForCausalLM(T.MiniCPM3Config(**small(num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8))),
 "deepseek_v2": lambda: T.DeepseekV2ForCausalLM(T.DeepseekV2Config(**small(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=2, num_experts_per_tok=1, n_group=1, topk_group=1, moe_intermediate_size=16, first_k_dense_replace=1))),
 # hybrids: softmax attention on some layers, short convolutions (LFM2) or gated delta-net linear
 # attention (Qwen3-Next) on the others; layers keep their model index (attention at layer 1)
 "lfm2": lambda: T.Lfm2ForCausalLM(T.Lfm2Config(**small(num_hidden_layers=3, num_key_value_heads=2, layer_types=["conv", "full_attention", "conv"]))),
 "qwen3_next": lambda: T.Qwen3NextForCausalLM(T.Qwen3NextConfig(**small(num_key_value_heads=2, head_dim=8, layer_types=["linear_attention", "full_attention"], linear_num_value_heads=2, linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=2, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=16, shared_expert_intermediate_size=16))),
 # differential attention: (softmax_1 − λ·softmax_2)·V over head pairs h, h + H/2 of one map
 "diffllama": lambda: T.DiffLlamaForCausalLM(T.DiffLlamaConfig(**small(num_key_value_heads=2))),
 "roberta": lambda: T.RobertaModel(T.RobertaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=70)),
 "distilbert": lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64)),
 "electra": lambda: T.ElectraModel(T.ElectraConfig(vocab_size=V, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)),
}

# Bidirectional families (encoders without LM head): every other family is causal.
ENCODERS = ("bert", "roberta", "distilbert", "electra")
# Hybrids: attention on some layers only (their caches are not keys/values: no decode method).
HYBRIDS = ("lfm2", "qwen3_next")
