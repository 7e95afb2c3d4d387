"""K-fold cross-validation by prefix for probes on plain row tensors: the held-out score an
analysis outside the probe table (factored geometry, transfer) reports, as mean ± s.e.

Folds are ``prefix_folds``': a prefix lies in exactly one fold, and lengths with too few distinct
prefixes stay in every training set. Each fold's probe is fitted on every other row and scored
on its own; the score is the mean over folds with its standard error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.metrics import mean_se
from belief_lens.probing.data import prefix_folds
from belief_lens.probing.estimator import AffineProbe

__all__ = ["CrossValidated", "cross_validate", "fold_scores"]


@dataclass(frozen=True)
class CrossValidated:
    """A probe's held-out score over prefix folds: R^2 and MSE as mean ± standard error over
    ``folds``, and the probe fitted on every row (``probe``: its directions, in-sample)."""

    r2: float
    r2_se: float
    mse: float
    mse_se: float
    folds: int
    probe: AffineProbe = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "r2_heldout": self.r2,
            "r2_heldout_se": self.r2_se,
            "mse_heldout": self.mse,
            "mse_heldout_se": self.mse_se,
            "folds": self.folds,
        }


def fold_scores(
    tokens: Int[Tensor, "n L"],
    n_folds: int,
    seed: int,
    score: Callable[[Tensor, Tensor], dict[str, float]],
) -> tuple[dict[str, tuple[float, float]], int]:
    """``score(train_mask, test_mask)`` over the prefix folds of ``tokens``: each metric's mean
    and standard error over the folds that hold rows out, and their number (at least 2)."""
    folds = prefix_folds(tokens, n_folds, seed)
    runs = [score(folds != k, folds == k) for k in range(n_folds) if bool((folds == k).any())]
    if len(runs) < 2:
        raise BeliefLensError(
            f"cross-validation needs at least 2 folds with held-out rows; {n_folds} folds over "
            f"tokens {tuple(tokens.shape)} gave {len(runs)} (too few distinct prefixes)"
        )
    return {k: mean_se([r[k] for r in runs]) for k in runs[0]}, len(runs)


def cross_validate(
    X: Float[Tensor, "n L d"],
    Y: Float[Tensor, "n L S"],
    tokens: Int[Tensor, "n L"],
    *,
    n_folds: int = 5,
    seed: int = 0,
    ridge: float = 0.0,
) -> CrossValidated:
    """Held-out R^2 and MSE of an affine probe ``X -> Y``, over ``n_folds`` prefix folds of
    ``tokens`` (mean ± s.e.), and the probe fitted on every row."""
    tokens = torch.as_tensor(tokens)
    if X.shape[:2] != tokens.shape or Y.shape[:2] != tokens.shape:
        raise BeliefLensError(
            f"X {tuple(X.shape)} and Y {tuple(Y.shape)} must lead with tokens' shape "
            f"{tuple(tokens.shape)}"
        )

    def score(train: Tensor, test: Tensor) -> dict[str, float]:
        m = AffineProbe(ridge=ridge).fit(X[train], Y[train]).metrics(X[test], Y[test])
        return {"r2": float(m["r2"]), "mse": float(m["mse"])}

    stats, k = fold_scores(tokens, n_folds, seed, score)
    whole = AffineProbe(ridge=ridge).fit(X.reshape(-1, X.shape[-1]), Y.reshape(-1, Y.shape[-1]))
    return CrossValidated(*stats["r2"], *stats["mse"], k, whole)
