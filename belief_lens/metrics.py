"""The package's measures, each defined once: entropy, KL, (weighted) MSE and R^2, recovery,
principal angles, the sum-zero basis and the effective sample size.

Every analysis (probes, interventions, patching, factored geometry, transfer, discovery) calls
these, so no two paths can disagree about what a number means. Natural logs (nats) throughout;
everything is computed in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.hmm import NEGATIVE_TOL
from belief_lens.validation import check_int, check_real_tensor

__all__ = [
    "RunningStats",
    "effective_sample_size",
    "entropy",
    "free_coordinates",
    "kl_divergence",
    "mean_se",
    "principal_angles_deg",
    "principal_cosines",
    "r2_score",
    "recovery",
    "regression_metrics",
    "sum_zero_basis",
    "weighted_sums",
]


# ------------------------------------------------------------------------------ spread
def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample s.d. over sqrt(n); NaN for one value): the
    spread every cross-validated number carries."""
    t = torch.tensor(values, dtype=torch.float64)
    se = float(t.std() / math.sqrt(len(t))) if len(t) > 1 else math.nan
    return float(t.mean()), se


# ------------------------------------------------------------------------------ information
def entropy(p: Float[Tensor, "... k"], dim: int = -1) -> Float[Tensor, "..."]:
    """Shannon entropy in nats along ``dim``, with ``0 log 0 = 0``.

    Round-off negatives (above ``-1e-10``) are read as zero; larger negative entries or NaN raise.

    >>> entropy(torch.tensor([0.5, 0.5]))
    tensor(0.6931, dtype=torch.float64)
    """
    p = check_real_tensor("p", p)
    dim = check_int("dim", dim)
    if p.ndim == 0 or not -p.ndim <= dim < p.ndim:
        raise BeliefLensError(f"dim must index one of p's {p.ndim} dimensions, got {dim}")
    if p.isnan().any() or (p < -NEGATIVE_TOL).any():
        raise BeliefLensError("p must be probabilities (finite, >= 0); got NaN or negative entries")
    p = p.clamp_min(0)
    return -torch.special.xlogy(p, p).sum(dim)


def kl_divergence(p: Float[Tensor, "... V"], q: Float[Tensor, "... V"]) -> Float[Tensor, "..."]:
    """``KL(p || q)`` in nats along the last axis, with ``0 log 0 = 0`` (and ``inf`` where ``q``
    is 0 but ``p`` is not).

    >>> kl_divergence(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]))
    tensor(0., dtype=torch.float64)
    """
    p, q = p.double(), q.double()
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


# ------------------------------------------------------------------------------- regression
def weighted_sums(
    y_true: Float[Tensor, "n S"],
    y_pred: Float[Tensor, "n S"],
    sample_weight: Float[Tensor, " n"] | None = None,
) -> tuple[Float[Tensor, " S"], Float[Tensor, " S"], float]:
    """``(ss_res, ss_tot, total weight)`` per target: the sufficient statistics of MSE and R^2.

    ``ss_tot`` is about the weighted mean of ``y_true``, as scikit-learn's ``r2_score``.
    """
    Y = torch.as_tensor(y_true).double().reshape(len(y_true), -1)
    P = torch.as_tensor(y_pred).double().reshape(len(y_pred), -1)
    if Y.shape != P.shape:
        raise BeliefLensError(
            f"y_true and y_pred must have the same shape, got {tuple(Y.shape)} and {tuple(P.shape)}"
        )
    w = (
        torch.ones(len(Y), dtype=torch.float64, device=Y.device)
        if sample_weight is None
        else torch.as_tensor(sample_weight, device=Y.device).double().reshape(-1)
    )
    if len(w) != len(Y):
        raise BeliefLensError(f"sample_weight has {len(w)} entries for {len(Y)} rows")
    total = float(w.sum())
    mean = (w @ Y) / total if total > 0 else Y.new_zeros(Y.shape[1])
    ss_res = w @ (Y - P) ** 2
    ss_tot = w @ (Y - mean) ** 2
    return ss_res, ss_tot, total


def regression_metrics(
    ss_res: Float[Tensor, " S"], ss_tot: Float[Tensor, " S"], w: float
) -> dict[str, Any]:
    """MSE over all entries, its root, R^2 averaged uniformly over targets, and per target,
    from the sums of :func:`weighted_sums` (or of ``Moments``).

    A constant target scores R^2 = 1 if predicted exactly, else 0 (as sklearn's ``r2_score``).
    No weight at all gives NaN everywhere: the caller decides whether that is an error.
    """
    S = ss_res.numel()
    if w <= 0:
        nan = float("nan")
        return {
            "mse": nan,
            "rmse": nan,
            "r2": nan,
            "mse_per_target": [nan] * S,
            "r2_per_target": [nan] * S,
        }
    ss_res = ss_res.clamp_min(0).cpu()
    ss_tot = ss_tot.clamp_min(0).cpu()
    mse = float(ss_res.sum()) / (w * S)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / torch.where(ss_tot > 0, ss_tot, 1.0), 0.0)
    r2 = torch.where((ss_tot <= 0) & (ss_res <= 0), 1.0, r2)
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "r2": float(r2.mean()),
        "mse_per_target": (ss_res / w).tolist(),
        "r2_per_target": r2.tolist(),
    }


def r2_score(
    y_true: Float[Tensor, "n S"],
    y_pred: Float[Tensor, "n S"],
    sample_weight: Float[Tensor, " n"] | None = None,
) -> float:
    """R^2 averaged uniformly over targets, as ``sklearn.metrics.r2_score``.

    >>> r2_score(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [1.0]]))
    1.0
    """
    return regression_metrics(*weighted_sums(y_true, y_pred, sample_weight))["r2"]


def effective_sample_size(weights: Float[Tensor, " n"]) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``: how many equally weighted rows the
    weighted rows are worth (``n`` for equal weights, 1 when one row holds all the weight).

    >>> effective_sample_size(torch.ones(4))
    4.0
    """
    w = torch.as_tensor(weights).double().reshape(-1)
    sq = float((w * w).sum())
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


def recovery(value: Tensor | float, clean: float, corrupted: float) -> Tensor:
    """The fraction of the corrupted-to-clean gap closed: 0 at ``corrupted``, 1 at ``clean``.

    For a metric where lower is better (a KL to theory) as for one where higher is; NaN where the
    two runs do not differ.
    """
    gap = clean - corrupted
    value = torch.as_tensor(value, dtype=torch.float64)
    if gap == 0 or not math.isfinite(gap):
        return torch.full_like(value, math.nan)
    return (value - corrupted) / gap


# --------------------------------------------------------------------------------- subspaces
def principal_cosines(
    A: Float[Tensor, "d k1"], B: Float[Tensor, "d k2"]
) -> Float[Tensor, " k_min"]:
    """Cosines of the principal angles between the column spans of ``A`` and ``B``, largest
    first (``A`` and ``B`` need not be orthonormal).

    >>> principal_cosines(torch.eye(3)[:, :2], torch.eye(3)[:, 1:])
    tensor([1., 0.], dtype=torch.float64)
    """
    A = torch.as_tensor(A, dtype=torch.float64)
    B = torch.as_tensor(B, dtype=torch.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise BeliefLensError(
            f"A and B must be [d, k] with the same d, got {tuple(A.shape)} and {tuple(B.shape)}"
        )
    if A.shape[1] == 0 or B.shape[1] == 0:
        return A.new_zeros(0)
    Qa, Qb = torch.linalg.qr(A)[0], torch.linalg.qr(B)[0]
    return torch.linalg.svdvals(Qa.T @ Qb).clamp(0.0, 1.0)


def principal_angles_deg(A: Float[Tensor, "d k1"], B: Float[Tensor, "d k2"]) -> Float[Tensor, " k"]:
    """The principal angles between the column spans of ``A`` and ``B`` in degrees, smallest
    first."""
    return torch.rad2deg(torch.arccos(principal_cosines(A, B)))


def sum_zero_basis(n: int) -> Float[Tensor, "n n_minus_1"]:
    """The Helmert basis: an orthonormal ``[n, n-1]`` basis of the sum-zero subspace of R^n.

    Column ``k`` (0-based) is ``(1, ..., 1, -(k+1), 0, ..., 0) / sqrt((k+1)(k+2))`` with ``k+1``
    ones: a fixed, deterministic choice, so free belief coordinates mean the same in every run.

    >>> sum_zero_basis(3)
    tensor([[ 0.7071,  0.4082],
            [-0.7071,  0.4082],
            [ 0.0000, -0.8165]], dtype=torch.float64)
    """
    n = check_int("n", n, low=1)
    Q = torch.zeros(n, n - 1, dtype=torch.float64)
    for k in range(n - 1):
        Q[: k + 1, k] = 1.0
        Q[k + 1, k] = -(k + 1.0)
        Q[:, k] /= math.sqrt((k + 1.0) * (k + 2.0))
    return Q


def free_coordinates(S: int, k: int) -> Float[Tensor, "S k"]:
    """An orthonormal ``[S, k]`` basis of a probe's free target coordinates: the sum-zero
    subspace when ``k = S - 1`` (beliefs, which sum to 1), all coordinates when ``k = S``."""
    if k == S:
        return torch.eye(S, dtype=torch.float64)
    if k != S - 1:
        raise BeliefLensError(
            f"a probe of {S} targets has {S - 1} or {S} free coordinates, not {k}"
        )
    return sum_zero_basis(S)


# ------------------------------------------------------------------------------ running means
class RunningStats:
    """Streaming mean, standard deviation and standard error of a vector quantity over rows
    (sequences), from float64 sums kept on the rows' device until read."""

    def __init__(self, size: int, device: str | torch.device | None = None) -> None:
        self.s = torch.zeros(size, dtype=torch.float64, device=device)
        self.ss = torch.zeros(size, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, values: Float[Tensor, "n size"]) -> None:
        """Add ``n`` rows."""
        values = values.detach().to(self.s.device, torch.float64)
        self.s += values.sum(0)
        self.ss += (values * values).sum(0)
        self.n += values.shape[0]

    def mean(self) -> Float[Tensor, " size"]:
        return (self.s / self.n).cpu()

    def std(self) -> Float[Tensor, " size"]:
        """Sample standard deviation (``n - 1``); NaN below two rows."""
        if self.n < 2:
            return torch.full_like(self.s, float("nan")).cpu()
        var = (self.ss - self.s * self.s / self.n) / (self.n - 1)
        return var.clamp_min(0).sqrt().cpu()

    def sem(self) -> Float[Tensor, " size"]:
        """Standard error of the mean, ``std / sqrt(n)``."""
        return self.std() / math.sqrt(max(self.n, 1))
