"""Model definitions and loaders that produce TorchScript archives with attnscope's capture ops."""
from .export import archive_tokenizer, cache_dir, default_gguf, export, load_gguf, load_hf_folder, read_extra_file
from .checkpoints import archive_for, content_hash, default_model_path
from .gguf_loader import read_gguf
from .llama import ATTENTION_BACKENDS, LlamaConfig, LlamaForCausalLM
from .tokenizer import tokenizer_from_gguf

__all__ = ["ATTENTION_BACKENDS", "LlamaConfig", "LlamaForCausalLM", "archive_for", "archive_tokenizer", "content_hash", "cache_dir", "default_gguf",
           "default_model_path", "export", "load_gguf", "load_hf_folder", "read_extra_file", "read_gguf", "tokenizer_from_gguf"]
