"""The figure functions. Data come from a Trace (computed by the C++ core); this package only
selects, validates and draws: data.py (selection and checks), style.py (colour scales, masked
cells, legends), maps.py (heatmaps and the layers grid), patterns.py (bars), entropy.py (the entropy
curve), diff.py (two traces compared), heads.py (per-head grid), atlas.py (the head atlas),
profile.py (a token's profile across layers), effects.py (knockout sweeps and head ablation), rollout.py (attention rollout).

High-entropy tokens (attnscope.marks): the predictive entropy at position i is the entropy of
the distribution that predicts token i+1 (nats); by default the top 20 % of the sequence, at
most 8, get yellow marks on heatmaps (edge markers, labels, thin row/column lines) and yellow bars.
"""
from ..marks import ENTROPY_QUANTILE, HIGH_ENTROPY_COLOR, MAX_MARKS, high_entropy_positions
from .atlas import visualize_head_atlas
from .branches import visualize_turning_points
from .diff import visualize_attention_diff
from .effects import visualize_head_effects, visualize_knockout
from .differential import visualize_differential_attention
from .entropy import visualize_entropy
from .heads import HEAD_METRICS, visualize_head_summary
from .maps import visualize_attention, visualize_attention_layers
from .patterns import PATTERN_TYPES, visualize_attention_patterns
from .profile import visualize_token_profile
from .rollout import visualize_rollout
from .style import MASKED_COLOR

__all__ = ["visualize_attention", "visualize_attention_patterns", "visualize_attention_layers", "visualize_entropy",
           "visualize_attention_diff", "visualize_differential_attention", "visualize_turning_points",
           "visualize_head_summary", "visualize_head_atlas", "visualize_token_profile", "visualize_knockout", "visualize_head_effects", "visualize_rollout",
           "high_entropy_positions", "PATTERN_TYPES", "HEAD_METRICS",
           "MASKED_COLOR", "ENTROPY_QUANTILE", "HIGH_ENTROPY_COLOR", "MAX_MARKS"]
