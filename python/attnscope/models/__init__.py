"""Model definitions and loaders that produce TorchScript archives with attnscope's capture ops."""
from .export import cache_dir, default_gguf, default_model_path, export, load_gguf, load_hf_folder
from .gguf_loader import read_gguf
from .llama import ATTENTION_BACKENDS, LlamaConfig, LlamaForCausalLM
from .tokenizer import tokenizer_from_gguf

__all__ = ["ATTENTION_BACKENDS", "LlamaConfig", "LlamaForCausalLM", "cache_dir", "default_gguf",
           "default_model_path", "export", "load_gguf", "load_hf_folder", "read_gguf", "tokenizer_from_gguf"]
