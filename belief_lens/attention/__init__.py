"""Attention as constrained belief updating (arXiv 2502.01954): the prediction from the process
(:mod:`.theory`, with :func:`token_sum_profile`, the check of its first-order assumption) and its
measurement on any TransformerLens model (:mod:`.measure`)."""

from belief_lens.attention.measure import (
    AttentionComparison,
    HeadMeasurement,
    LayerMeasurement,
    SlopeFit,
    compare_to_theory,
    fit_log_slope,
    measure_attention,
)
from belief_lens.attention.theory import (
    FIRST_ORDER_TOLERANCE,
    AttentionTheory,
    TokenSumProfile,
    attention_theory,
    constrained_beliefs,
    token_sum_profile,
)

__all__ = [
    "FIRST_ORDER_TOLERANCE",
    "AttentionComparison",
    "AttentionTheory",
    "HeadMeasurement",
    "LayerMeasurement",
    "SlopeFit",
    "TokenSumProfile",
    "attention_theory",
    "compare_to_theory",
    "constrained_beliefs",
    "fit_log_slope",
    "measure_attention",
    "token_sum_profile",
]
