"""attnscope: attention capture for TorchScript language models.

`load()` gives a Model (the C++ core, with the archive's tokenizer); `Model.run()` gives a
Trace. `attnscope.models` holds the Llama-family module, the loaders and the export.
"""
from ._lib import library_path, load_library
from .api import CaptureSpec, Model, capture_spec, from_module, load, readable
from .atlas import HeadAtlas, head_atlas, top_heads
from .profile import ProfileTable, TokenProfile, profile_table, token_profile
from .ablation import HeadEffects, head_effects
from .value_weighted import value_weighted_map
from .knockout import KeySweep, KnockoutEffect, knockout, knockout_sweep
from .branches import TurningPoints, final_answer, turning_points
from .streaming import TokenStream
from .trace import Fork, GenerationInfo, Trace
from .view import AttentionView, show
from .dataset import DatasetTrace, aggregate_dataset, merge_datasets, read_texts
from .differential import differential_heads, differential_map, differential_received

# The figure functions import matplotlib on first use, so capture-only pipelines (and GPU
# machines without matplotlib) import attnscope without it.
_PLOTTING = ("high_entropy_positions", "visualize_attention", "visualize_attention_layers",
             "visualize_attention_patterns", "visualize_entropy", "visualize_attention_diff",
             "visualize_turning_points", "visualize_head_summary", "visualize_head_atlas",
             "visualize_token_profile", "visualize_differential_attention", "visualize_knockout",
             "visualize_head_effects", "visualize_rollout")


def __getattr__(name):
    if name in _PLOTTING:
        from . import plotting
        return getattr(plotting, name)
    raise AttributeError(f"module 'attnscope' has no attribute {name!r}")


__version__ = "0.1.0"


def export_hf(model, tokenizer, path, **kwargs):
    """A transformers causal LM -> TorchScript archive with capture operators (see
    attnscope.models.hf_export.export_hf; imports transformers on first use)."""
    from .models.hf_export import export_hf as _export_hf
    return _export_hf(model, tokenizer, path, **kwargs)


__all__ = ["Model", "CaptureSpec", "capture_spec", "Trace", "GenerationInfo", "Fork", "TokenStream", "turning_points", "TurningPoints", "final_answer", "load", "from_module", "readable", "visualize_attention",
           "visualize_attention_patterns", "visualize_attention_layers", "visualize_entropy", "visualize_attention_diff", "visualize_turning_points", "high_entropy_positions",
           "visualize_head_summary", "visualize_head_atlas", "HeadAtlas", "head_atlas", "top_heads",
           "visualize_token_profile", "TokenProfile", "token_profile", "ProfileTable", "profile_table", "knockout", "KnockoutEffect", "knockout_sweep", "KeySweep", "head_effects", "HeadEffects", "value_weighted_map", "aggregate_dataset", "DatasetTrace", "merge_datasets", "read_texts",
           "differential_heads", "differential_map", "differential_received", "visualize_differential_attention",
           "export_hf", "show", "AttentionView", "library_path", "load_library", "__version__"]
