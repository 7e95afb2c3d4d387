"""Factored belief geometry: does a network hold each factor's belief in its own subspace?

Tests the two hypotheses of Shai et al., "Transformers learn factored representations" (arXiv
2602.02385) on activations: per-factor affine probes (held out), the joint-belief probe against
the factored one (all marginals side by side), principal angles between the factors' encoding
subspaces, the paper's "vary-one" subspace overlap beside its random-subspace baseline, and the
effective dimension of the activations (PCA) against both predicted dimensions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from belief_lens.activations import residual_stream
from belief_lens.errors import BeliefLensError
from belief_lens.factors import FactoredBeliefs, PredictedDims, factored_beliefs, vary_one_tokens
from belief_lens.hmm import HMM
from belief_lens.metrics import principal_cosines
from belief_lens.probes import AffineProbe, cross_validate, split_prefixes

__all__ = [
    "FactoredGeometry",
    "GeometryOverTraining",
    "SubspacePair",
    "cumulative_explained_variance",
    "dims_for",
    "factored_geometry",
    "geometry_over_training",
    "model_factored_geometry",
    "vary_one_overlap",
]

Verdict = Literal["factored", "joint", "unclear"]

#: Above this principal-angle cosine two factors' subspaces no longer count as orthogonal.
ORTHOGONAL_COSINE = 0.2


@dataclass(frozen=True)
class SubspacePair:
    """How two factors' encoding subspaces sit relative to each other.

    ``cosines`` are the cosines of the principal angles between the probes' encoding subspaces,
    largest first (0 = orthogonal, 1 = a shared direction). ``overlap`` is the paper's vary-one
    overlap ``||V_i V_j^T||_F^2 / k`` of the top-``k`` principal directions of activations in
    which only one factor varies (None without vary-one data); ``baseline`` is its value for
    random ``k``-dimensional subspaces of ``R^d``, ``k / d``.
    """

    factors: tuple[int, int]
    cosines: tuple[float, ...]
    overlap: float | None
    baseline: float


@dataclass(frozen=True)
class FactoredGeometry:
    """One layer's factored-geometry measurements; all R^2 are on held-out sequences."""

    hook: str | None
    factor_r2: tuple[float, ...]  # probe to each factor's marginal belief
    joint_r2: float  # probe to the joint belief
    factored_r2: float  # probe to all marginals side by side
    pairs: tuple[SubspacePair, ...]
    explained_variance: tuple[float, ...]  # cumulative, by number of principal components
    dims_95: int
    dims_99: int
    predicted: PredictedDims
    #: standard errors over prefix folds, and their number (None for one split)
    factor_r2_se: tuple[float, ...] | None = None
    joint_r2_se: float | None = None
    factored_r2_se: float | None = None
    folds: int | None = None

    @property
    def max_subspace_cosine(self) -> float:
        """The largest principal-angle cosine over all pairs of factors (0 if one factor)."""
        return max((p.cosines[0] for p in self.pairs if p.cosines), default=0.0)

    @property
    def verdict(self) -> Verdict:
        """``"factored"``: at most one dimension beyond the factored prediction holds 95% of the
        variance and the factors' subspaces are orthogonal (cosine <= 0.2); ``"joint"``: the
        95% dimension is nearer the joint prediction and at most one beyond it; else
        ``"unclear"`` (an untrained network's activations fill many more dimensions)."""
        p, d95 = self.predicted, self.dims_95
        if d95 <= p.factored + 1 and self.max_subspace_cosine <= ORTHOGONAL_COSINE:
            return "factored"
        if abs(d95 - p.joint) < abs(d95 - p.factored) and d95 <= p.joint + 1:
            return "joint"
        return "unclear"

    def to_dict(self) -> dict[str, Any]:
        """The measurements as JSON-ready values (R^2 keys end in ``_heldout``)."""
        return {
            "hook": self.hook,
            "factor_r2_heldout": list(self.factor_r2),
            "joint_r2_heldout": self.joint_r2,
            "factored_r2_heldout": self.factored_r2,
            "factor_r2_heldout_se": None if self.factor_r2_se is None else list(self.factor_r2_se),
            "joint_r2_heldout_se": self.joint_r2_se,
            "factored_r2_heldout_se": self.factored_r2_se,
            "folds": self.folds,
            "max_subspace_cosine": self.max_subspace_cosine,
            "subspace_cosines": [list(p.cosines) for p in self.pairs],
            "vary_one_overlap": [p.overlap for p in self.pairs],
            "vary_one_random_baseline": [p.baseline for p in self.pairs],
            "dims_95": self.dims_95,
            "dims_99": self.dims_99,
            "predicted_dims_factored": self.predicted.factored,
            "predicted_dims_joint": self.predicted.joint,
            "verdict": self.verdict,
            "explained_variance": list(self.explained_variance),
        }


@dataclass(frozen=True)
class GeometryOverTraining:
    """:class:`FactoredGeometry` at each training step, in step order."""

    steps: tuple[int, ...]
    geometries: tuple[FactoredGeometry, ...]

    def series(self, name: str) -> list[Any]:
        """One field or property of every step's geometry, e.g. ``series("dims_95")``."""
        return [getattr(g, name) for g in self.geometries]

    def to_dict(self) -> dict[str, Any]:
        """The course of the headline measurements, one list entry per step."""
        return {
            "steps": list(self.steps),
            "dims_95": self.series("dims_95"),
            "dims_99": self.series("dims_99"),
            "max_subspace_cosine": self.series("max_subspace_cosine"),
            "factor_r2_heldout": [list(r) for r in self.series("factor_r2")],
            "joint_r2_heldout": self.series("joint_r2"),
        }


# ----------------------------------------------------------------------------- pure measures


def _top_directions(acts: Tensor, k: int) -> Tensor:
    """The top-``k`` principal directions ``[k, d]`` of per-position centred activations."""
    centred = acts - acts.mean(0, keepdim=True)  # the other factors are frozen per position
    return torch.linalg.svd(centred.reshape(-1, acts.shape[-1]), full_matrices=False)[2][:k]


def vary_one_overlap(
    acts_i: Float[Tensor, "n L d"], acts_j: Float[Tensor, "n L d"], k: int
) -> float:
    """The paper's vary-one overlap ``||V_i V_j^T||_F^2 / k`` in [0, 1].

    ``acts_i`` are activations of sequences in which only factor ``i`` varies (the others are
    the same in every row); ``V_i`` are their top-``k`` principal directions after subtracting
    each position's mean. 0 means orthogonal subspaces, 1 the same subspace, and random
    subspaces give about ``k / d``.
    """
    acts_i = torch.as_tensor(acts_i, dtype=torch.float64)
    acts_j = torch.as_tensor(acts_j, dtype=torch.float64)
    if acts_i.ndim != 3 or acts_j.ndim != 3 or acts_i.shape[-1] != acts_j.shape[-1]:
        raise BeliefLensError(
            "vary-one activations must be [n, L, d] with the same d, got "
            f"{tuple(acts_i.shape)} and {tuple(acts_j.shape)}"
        )
    if not 1 <= k <= acts_i.shape[-1]:
        raise BeliefLensError(f"k must be in [1, d={acts_i.shape[-1]}], got {k}")
    Vi, Vj = _top_directions(acts_i, k), _top_directions(acts_j, k)
    return float((Vi @ Vj.T).pow(2).sum() / k)


def cumulative_explained_variance(acts: Float[Tensor, "... d"]) -> Float[Tensor, " d"]:
    """Cumulative fraction of the activations' variance in their first 1, 2, ... principal
    components (all rows pooled, centred)."""
    X = torch.as_tensor(acts, dtype=torch.float64)
    X = X.reshape(-1, X.shape[-1])
    X = X - X.mean(0, keepdim=True)
    var = torch.linalg.svdvals(X).pow(2)
    total = var.sum()
    if not total > 0:
        raise BeliefLensError("activations have zero variance; no explained-variance curve")
    return var.cumsum(0) / total


def dims_for(curve: Sequence[float] | Tensor, level: float) -> int:
    """The fewest principal components whose cumulative explained variance reaches ``level``."""
    if not 0 < level <= 1:
        raise BeliefLensError(f"level must be in (0, 1], got {level}")
    c = torch.as_tensor(curve, dtype=torch.float64)
    return int((c < level - 1e-12).sum()) + 1


# ----------------------------------------------------------------------------- probes


def _held_out_r2(
    X: Tensor, Y: Tensor, split: Tensor, ridge: float, n_folds: int | None, seed: int
) -> tuple[float, float | None, AffineProbe]:
    """Held-out R^2 (and its s.e.) and the probe whose directions are read: over prefix folds
    of the tokens ``split`` (the all-rows probe), or on one split's mask ``split``."""
    if n_folds is None:
        probe = AffineProbe(ridge=ridge).fit(X[~split], Y[~split])
        return probe.score(X[split], Y[split]), None, probe
    cv = cross_validate(X, Y, split, n_folds=n_folds, seed=seed, ridge=ridge)
    return cv.r2, cv.r2_se, cv.probe


def _resolve_split(
    test_mask: Tensor | None,
    tokens: Tensor | None,
    n_folds: int | None,
    test_fraction: float,
    seed: int,
    shape: tuple[int, int],
) -> tuple[Tensor, int | None]:
    """The tokens to cross-validate over and the folds, or one split's mask and None."""
    if test_mask is None and tokens is None:
        raise BeliefLensError("give tokens to cross-validate by prefix, or a test_mask")
    if test_mask is None and n_folds is not None:
        return torch.as_tensor(tokens), n_folds
    if test_mask is None:
        test_mask = split_prefixes(tokens, test_fraction, seed)
    split = torch.as_tensor(test_mask, dtype=torch.bool)
    if tuple(split.shape) != shape or split.all() or not split.any():
        raise BeliefLensError(
            f"test_mask must be [n, L] = {list(shape)} with both train and test rows, "
            f"got shape {tuple(split.shape)} with {int(split.sum())} held out"
        )
    return split, None


def factored_geometry(
    acts: Float[Tensor, "n L d"],
    beliefs: FactoredBeliefs,
    *,
    test_mask: Bool[Tensor, "n L"] | None = None,
    tokens: Tensor | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    n_folds: int | None = 5,
    vary_one: Sequence[Float[Tensor, "m L d"]] | None = None,
    ridge: float = 0.0,
    hook: str | None = None,
) -> FactoredGeometry:
    """Measure the factored geometry of ``acts`` against ``beliefs``.

    With ``tokens``, R^2 is cross-validated over ``n_folds`` prefix folds (mean, with its
    standard error in the ``_se`` fields; the subspaces are the all-rows probes'); with
    ``n_folds=None``, or an explicit ``test_mask`` (True = held out), probes are fitted on the
    training rows and scored on the held-out rows of that one split (by default
    ``split_prefixes(tokens, test_fraction, seed)``). ``vary_one[i]`` are activations of
    sequences in which only factor ``i`` varies (see :func:`belief_lens.factors.vary_one_tokens`);
    without them the vary-one overlaps are None. Effective dimension uses all rows. ``hook``
    names where ``acts`` were read.
    """
    acts = torch.as_tensor(acts, dtype=torch.float64)
    n, L = beliefs.joint.shape[:2]
    if acts.ndim != 3 or acts.shape[:2] != (n, L):
        raise BeliefLensError(
            f"acts must be [n, L, d] with n, L = {n}, {L} as the beliefs, got {tuple(acts.shape)}"
        )
    n_factors = len(beliefs.marginals)
    if vary_one is not None and len(vary_one) != n_factors:
        raise BeliefLensError(f"vary_one needs one activation set per factor ({n_factors})")
    split, n_folds = _resolve_split(test_mask, tokens, n_folds, test_fraction, seed, (n, L))

    factor_r2, factor_se, bases = [], [], []
    for marginal in beliefs.marginals:
        r2, se, probe = _held_out_r2(acts, marginal, split, ridge, n_folds, seed)
        factor_r2.append(r2)
        factor_se.append(se)
        bases.append(probe.belief_basis("encoding"))
    joint_r2, joint_se, _ = _held_out_r2(acts, beliefs.joint, split, ridge, n_folds, seed)
    factored_r2, factored_se, _ = _held_out_r2(
        acts, beliefs.concatenated, split, ridge, n_folds, seed
    )

    d = acts.shape[-1]
    pairs = []
    for i in range(n_factors):
        for j in range(i + 1, n_factors):
            k = min(bases[i].shape[1], bases[j].shape[1])
            overlap = None
            if vary_one is not None and k > 0:
                overlap = vary_one_overlap(vary_one[i], vary_one[j], k)
            pairs.append(
                SubspacePair(
                    factors=(i, j),
                    cosines=tuple(principal_cosines(bases[i], bases[j]).tolist()),
                    overlap=overlap,
                    baseline=k / d,
                )
            )
    curve = cumulative_explained_variance(acts)
    return FactoredGeometry(
        hook=hook,
        factor_r2=tuple(factor_r2),
        joint_r2=joint_r2,
        factored_r2=factored_r2,
        pairs=tuple(pairs),
        explained_variance=tuple(curve.tolist()),
        dims_95=dims_for(curve, 0.95),
        dims_99=dims_for(curve, 0.99),
        predicted=beliefs.dims,
        factor_r2_se=None if n_folds is None else tuple(factor_se),
        joint_r2_se=joint_se,
        factored_r2_se=factored_se,
        folds=n_folds,
    )


# ----------------------------------------------------------------------------- on a model


def model_factored_geometry(
    model: Any,
    tokens: Tensor,
    hmm: HMM,
    factors: Sequence[HMM],
    hook: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    n_vary_one: int = 1000,
    ridge: float = 0.0,
) -> FactoredGeometry:
    """:func:`factored_geometry` of ``model``'s activations at ``hook`` on ``tokens`` from
    ``hmm``, a process on the states of ``factors`` (``product(*factors)`` or a broken version).

    Vary-one data is drawn from the independent product of ``factors``.
    """
    if not isinstance(hook, str):
        raise BeliefLensError(f"hook must be a full hook name, got {hook!r}")
    beliefs = factored_beliefs(hmm, [f.n_states for f in factors], tokens)
    acts = residual_stream(model, tokens, hook)[hook]
    vary = [
        residual_stream(
            model, vary_one_tokens(factors, i, n_vary_one, tokens.shape[1], seed=seed + i), hook
        )[hook]
        for i in range(len(factors))
    ]
    return factored_geometry(
        acts,
        beliefs,
        tokens=tokens,
        test_fraction=test_fraction,
        seed=seed,
        vary_one=vary,
        ridge=ridge,
        hook=hook,
    )


def geometry_over_training(
    checkpoints: Iterable[tuple[int, Any]],
    tokens: Tensor,
    hmm: HMM,
    factors: Sequence[HMM],
    hook: str,
    **kwargs: Any,
) -> GeometryOverTraining:
    """:func:`model_factored_geometry` for each ``(step, model)``, e.g. the trainer's step
    checkpoints loaded in turn; the same tokens and split at every step."""
    steps, geoms = [], []
    for step, model in checkpoints:
        steps.append(int(step))
        geoms.append(model_factored_geometry(model, tokens, hmm, factors, hook, **kwargs))
    if not steps:
        raise BeliefLensError("geometry_over_training got no checkpoints")
    order = sorted(range(len(steps)), key=steps.__getitem__)
    if len(set(steps)) != len(steps):
        raise BeliefLensError(f"checkpoint steps repeat: {sorted(steps)}")
    return GeometryOverTraining(
        steps=tuple(steps[k] for k in order), geometries=tuple(geoms[k] for k in order)
    )
