"""Model definitions and loaders that produce TorchScript archives with attnscope's capture ops."""
from .llama import ATTENTION_BACKENDS, LlamaConfig, LlamaForCausalLM

__all__ = ["ATTENTION_BACKENDS", "LlamaConfig", "LlamaForCausalLM"]
