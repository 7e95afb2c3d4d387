"""In-context belief tracking: how a model's predictions and belief code evolve with context.

A pretrained model shown HMM text (through a ``TokenMap``) can only learn the process in context.
Two measurements, each a function of the number of symbols seen:

- ``in_context_curve``: the model's next-symbol distribution (its softmax restricted to the mapped
  tokens) against the Bayes-optimal ``P(. | belief)``: KL, cross-entropy on the sampled next
  symbol, the optimal cross-entropy, and the probability mass outside the mapped tokens.
- ``fit_position_probes`` (from ``belief_lens.probing.positions``, re-exported here): affine
  probes from the residual stream at symbol positions to beliefs, one per context window, since
  a pretrained model's belief code may drift with position.

Both stream over sequences in batches under a memory bound (``memory_limit_bytes``), on the
model's device.

Alignment follows ``TokenMap``: beliefs are read at symbol positions, predictions at the last
position before the next symbol; with BOS, the BOS prediction of symbol 0 is the first point of
the learning curve (``n_seen = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.activations import check_tokens, model_device, require_eval_mode
from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.metrics import RunningStats, entropy, kl_divergence
from belief_lens.probing.positions import (
    DEFAULT_MEMORY_LIMIT,
    PositionProbeTable,
    batch_size_within,
    check_length,
    check_token_map,
    fit_position_probes,
    forward_bytes_per_sequence,
)
from belief_lens.token_map import TokenMap

__all__ = [
    "InContextResult",
    "PositionProbeTable",
    "fit_position_probes",
    "in_context_curve",
]


# ---------------------------------------------------------------------------------- the curve
@dataclass
class InContextResult:
    """The in-context learning curve of a model on HMM text, against the Bayes-optimal predictor.

    Every curve is indexed by prediction ``p``: the prediction of the next symbol after
    ``n_seen[p]`` symbols. Without BOS, ``n_seen = 1..L``; with BOS the BOS prediction of
    symbol 0 comes first (``n_seen = 0..L``). Means and standard deviations are over sequences,
    in nats.

    Attributes:
        n_seen: ``[P]`` symbols read before each prediction.
        kl_mean, kl_std: ``KL(P(. | belief) || model restricted to the mapped tokens)``.
        model_ce_mean, model_ce_std: ``-log q(x_next)``, the model's cross-entropy on the sampled
            next symbol (restricted, renormalised distribution).
        bayes_ce_mean, bayes_ce_std: ``-log P(x_next | belief)`` on the same symbols.
        optimal_entropy: mean ``H[P(. | belief)]``, an unbiased estimate of the optimal loss
            ``h(n_seen)`` (``myopic_entropy``); ``model_ce_mean - bayes_ce_mean`` is the excess.
        off_map_mass_mean, off_map_mass_std: probability the full softmax puts on unmapped tokens.
        n_sequences: sequences averaged.
        meta: process, token map, length, seed.
    """

    n_seen: Int[Tensor, " P"]
    kl_mean: Float[Tensor, " P"]
    kl_std: Float[Tensor, " P"]
    model_ce_mean: Float[Tensor, " P"]
    model_ce_std: Float[Tensor, " P"]
    bayes_ce_mean: Float[Tensor, " P"]
    bayes_ce_std: Float[Tensor, " P"]
    optimal_entropy: Float[Tensor, " P"]
    off_map_mass_mean: Float[Tensor, " P"]
    off_map_mass_std: Float[Tensor, " P"]
    n_sequences: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def excess_ce(self) -> Float[Tensor, " P"]:
        """Model minus Bayes cross-entropy on the same sampled symbols (nats)."""
        return self.model_ce_mean - self.bayes_ce_mean

    def summary(self) -> dict[str, float]:
        """Means over positions of each curve, plus the last position's KL."""
        return {
            "kl_mean": float(self.kl_mean.mean()),
            "kl_last": float(self.kl_mean[-1]),
            "model_ce_mean": float(self.model_ce_mean.mean()),
            "bayes_ce_mean": float(self.bayes_ce_mean.mean()),
            "optimal_entropy_mean": float(self.optimal_entropy.mean()),
            "off_map_mass_mean": float(self.off_map_mass_mean.mean()),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready lists and numbers."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            out[name] = value.tolist() if isinstance(value, Tensor) else value
        return out


def _curve_symbols(
    model: Any,
    hmm: HMM,
    token_map: TokenMap,
    n_sequences: int,
    length: int,
    seed: int,
    symbols: Tensor | None,
) -> Int[Tensor, "n L_plus_1"]:
    """``symbols`` checked, or ``n_sequences`` sequences of ``length + 1`` sampled with ``seed``."""
    if symbols is None:
        if n_sequences < 1:
            raise BeliefLensError(f"n_sequences must be >= 1, got {n_sequences}")
        check_length(model, token_map, length)
        return sample_sequences(hmm, n_sequences, length + 1, seed)
    symbols = hmm.check_tokens(symbols)
    if symbols.ndim != 2 or symbols.shape[1] < 2:
        raise BeliefLensError(
            f"symbols must be [n, length + 1] with length >= 1, got {tuple(symbols.shape)}"
        )
    check_length(model, token_map, symbols.shape[1] - 1)
    return symbols


def _score_batch(
    model: Any, hmm: HMM, token_map: TokenMap, batch: Int[Tensor, "n L_plus_1"]
) -> dict[str, Float[Tensor, "n P"]]:
    """One batch's per-prediction KL to theory, model and Bayes cross-entropy on the sampled
    next symbol, optimal entropy and off-map mass."""
    length, with_bos = batch.shape[1] - 1, token_map.bos is not None
    device = model_device(model)

    def to_device(t: Tensor) -> Tensor:
        # Pinned host memory lets the copy run without waiting for the device to finish.
        return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t

    beliefs = belief_states(hmm, batch[:, :length], include_start=with_bos)  # [n, P, S]
    theory = to_device(hmm.next_token_probs(beliefs))  # [n, P, V]
    nxt = to_device(batch[:, 1:] if not with_bos else batch)[..., None]  # the symbols scored on
    tokens = to_device(check_tokens(model, token_map.encode(batch[:, :length])))
    probs, off = token_map.predictions(model(tokens), length, include_initial=with_bos)
    q = probs.to(torch.float64).clamp_min(1e-300)
    return {
        "kl": kl_divergence(theory, q),
        "model_ce": -q.log().gather(-1, nxt)[..., 0],
        "bayes_ce": -theory.clamp_min(1e-300).log().gather(-1, nxt)[..., 0],
        "entropy": entropy(theory),
        "off": off,
    }


@torch.no_grad()
def in_context_curve(
    model: Any,
    hmm: HMM,
    token_map: TokenMap,
    n_sequences: int,
    length: int,
    seed: int = 0,
    batch_size: int | None = None,
    *,
    symbols: Int[Tensor, "n L_plus_1"] | None = None,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT,
) -> InContextResult:
    """The model's next-symbol predictions against ``P(. | belief)`` at every context length.

    Samples ``n_sequences`` sequences of ``length + 1`` symbols from ``hmm`` (``seed``), feeds the
    first ``length`` through ``token_map``, and scores the restricted prediction after each symbol
    against the exact belief's prediction and against the next sampled symbol. ``symbols`` gives
    the sequences instead (``[n, length + 1]``). Batches are sized so that the logits stay within
    ``memory_limit_bytes`` (``batch_size`` caps them). The model must be in eval mode.
    """
    require_eval_mode(model)
    check_token_map(model, hmm, token_map)
    symbols = _curve_symbols(model, hmm, token_map, n_sequences, length, seed, symbols)
    n_sequences, length = symbols.shape[0], symbols.shape[1] - 1
    with_bos = token_map.bos is not None
    P = length + int(with_bos)
    device = model_device(model)
    per_seq = forward_bytes_per_sequence(model, token_map.model_length(length), 0, logits=True)
    size = batch_size_within(
        batch_size, memory_limit_bytes, per_seq, "in_context_curve", n_sequences
    )
    stats = {k: RunningStats(P, device) for k in ("kl", "model_ce", "bayes_ce", "entropy", "off")}
    for lo in range(0, n_sequences, size):
        for key, values in _score_batch(model, hmm, token_map, symbols[lo : lo + size]).items():
            stats[key].add(values)
    n_seen = torch.arange(P) + int(not with_bos)
    return InContextResult(
        n_seen=n_seen,
        kl_mean=stats["kl"].mean(),
        kl_std=stats["kl"].std(),
        model_ce_mean=stats["model_ce"].mean(),
        model_ce_std=stats["model_ce"].std(),
        bayes_ce_mean=stats["bayes_ce"].mean(),
        bayes_ce_std=stats["bayes_ce"].std(),
        optimal_entropy=stats["entropy"].mean(),
        off_map_mass_mean=stats["off"].mean(),
        off_map_mass_std=stats["off"].std(),
        n_sequences=n_sequences,
        meta={
            "process": hmm.name,
            "token_map": repr(token_map),
            "length": length,
            "seed": seed,
            "batch_size": size,
        },
    )
