"""Attention as constrained belief updating (arXiv 2502.01954): the prediction from the process
(:mod:`.theory`) and its measurement on any TransformerLens model (:mod:`.measure`)."""

from belief_lens.attention.measure import (
    AttentionComparison,
    HeadMeasurement,
    LayerMeasurement,
    SlopeFit,
    compare_to_theory,
    fit_log_slope,
    measure_attention,
)
from belief_lens.attention.theory import AttentionTheory, attention_theory, constrained_beliefs

__all__ = [
    "AttentionComparison",
    "AttentionTheory",
    "HeadMeasurement",
    "LayerMeasurement",
    "SlopeFit",
    "attention_theory",
    "compare_to_theory",
    "constrained_beliefs",
    "fit_log_slope",
    "measure_attention",
]
