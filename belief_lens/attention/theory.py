"""What attention should do on an HMM, from the process alone (Piotrowski, Riechers, Filan & Shai,
"Constrained belief updates explain geometric structures in transformer representations",
ICML 2025, arXiv 2502.01954).

Attention sums one vector per past token, so it cannot multiply the matrices of Bayes' rule. The
paper's constrained update replaces the product by a sum of per-token corrections, each the
one-token update from the stationary belief ``pi`` carried forward by the unconditioned dynamics
``T = T.sum(0)``:

    eta_d  ~  pi + sum_{s <= d} (pi_{x_s} T^(d - s) - pi),     pi_x = pi T^(x) / (pi T^(x) 1).

Where every correction ``delta_x = pi_x - pi`` is an eigenvector of ``T`` with one shared
eigenvalue ``lam`` (Mess3: ``T = (1 - 3x) I + x 11^T``, so ``lam = 1 - 3x``), the term of the
token ``n`` steps back is ``lam^n delta_x``: each past token's contribution decays geometrically,
with log-slope ``ln|lam|`` per step, along the direction ``delta_x`` (the OV vector in belief
coordinates); the embedding of token ``x`` sits at ``pi_x`` (the exact belief after one token).
Softmax weights are positive, so a negative ``lam`` (alternating sign) needs a second head: one
for even distances, one for odd with its OV output negated.

Outside that family (corrections mixing eigenvalues, complex or unit-modulus ones, generalized
HMMs) the single-rate derivation does not apply, and :func:`attention_theory` refuses.

Inside it the constrained update is the first-order expansion of Bayes' rule in the emission
contrast: the products of per-token corrections that Bayes' rule multiplies in are dropped. It is
accurate only where those corrections are small beside the decay (Mess3: emission ``alpha`` near
1/3). :func:`token_sum_profile` checks that assumption on the process alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.beliefs import belief_states, check_hmm, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM, GeneralizedHMM
from belief_lens.validation import check_float, check_int, check_seed

__all__ = [
    "FIRST_ORDER_TOLERANCE",
    "AttentionTheory",
    "TokenSumProfile",
    "attention_theory",
    "constrained_beliefs",
    "token_sum_profile",
]

#: The largest relative gap between the best token sum's log-slope and ``ln|lam|`` at which the
#: first-order derivation counts as describing the process (the acceptance's 20%).
FIRST_ORDER_TOLERANCE = 0.2


@dataclass(frozen=True)
class AttentionTheory:
    """The constrained-update prediction for one process (see the module docstring).

    ``eigenvalue`` is ``lam``; ``corrections[x]`` is ``delta_x = pi_x - pi`` (the OV direction of
    token ``x`` in belief coordinates); ``one_step_beliefs[x]`` is ``pi_x`` (where the embedding of
    ``x`` sits); ``token_probs[x]`` is ``P(x)`` under ``pi``.
    """

    process: str
    eigenvalue: float
    stationary: Float[Tensor, " S"]
    one_step_beliefs: Float[Tensor, "V S"]
    corrections: Float[Tensor, "V S"]
    token_probs: Float[Tensor, " V"]

    @property
    def log_slope(self) -> float:
        """``ln|lam|``: the predicted change of the log contribution per step of distance."""
        if self.eigenvalue == 0:
            raise BeliefLensError(
                f"{self.process}: the eigenvalue is 0, so only the current token contributes and "
                "there is no log-slope to predict"
            )
        return math.log(abs(self.eigenvalue))

    @property
    def heads_needed(self) -> int:
        """1 where ``lam >= 0`` (one positive geometric profile), 2 where ``lam < 0`` (signs
        alternate with distance; softmax weights cannot)."""
        return 1 if self.eigenvalue >= 0 else 2

    def profile(self, n_distances: int) -> Float[Tensor, " n"]:
        """``lam^n`` for ``n = 0..n_distances-1``: the predicted contribution by distance."""
        n = check_int("n_distances", n_distances, low=1)
        return self.eigenvalue ** torch.arange(n, dtype=torch.float64)

    def ov_directions(self) -> Float[Tensor, "V S"]:
        """The corrections as unit vectors: the predicted OV direction of each token."""
        return self.corrections / self.corrections.norm(dim=-1, keepdim=True)

    def to_dict(self) -> dict:
        """JSON-ready numbers."""
        return {
            "process": self.process,
            "eigenvalue": self.eigenvalue,
            "log_slope_predicted": self.log_slope if self.eigenvalue != 0 else None,
            "heads_needed": self.heads_needed,
            "corrections": self.corrections.tolist(),
            "one_step_beliefs": self.one_step_beliefs.tolist(),
        }


def attention_theory(hmm: HMM, tol: float = 1e-8) -> AttentionTheory:
    """The constrained-update prediction for ``hmm``: the shared eigenvalue of its token
    corrections, the corrections and the one-step beliefs.

    Refuses (``BeliefLensError``) a generalized HMM, a correction that vanishes, corrections that
    are not eigenvectors of ``T.sum(0)`` with one shared real eigenvalue (to ``tol``, relative), or
    an eigenvalue of modulus 1 (no decay): the derivation's single-rate family.

    >>> from belief_lens.processes import mess3
    >>> round(attention_theory(mess3(0.05, 0.85)).eigenvalue, 6)
    0.85
    """
    check_hmm(hmm)
    tol = check_float("tol", tol, low=0, low_open=True)
    if isinstance(hmm, GeneralizedHMM):
        raise BeliefLensError(
            f"{hmm.name} is a generalized HMM; the constrained-update derivation needs a "
            "probability HMM (non-negative T)"
        )
    T = hmm.T.double()
    pi = hmm.stationary_distribution.double()
    joint = torch.einsum("s,vst->vt", pi, T)  # [V, S]: pi T^(x)
    probs = joint.sum(-1)
    keep = probs > 0
    if not bool(keep.all()):
        raise BeliefLensError(
            f"{hmm.name}: tokens {torch.nonzero(~keep).flatten().tolist()} have probability 0 "
            "under the stationary distribution; every token needs a correction"
        )
    one_step = joint / probs[:, None]
    delta = one_step - pi
    norms = delta.norm(dim=-1)
    if bool((norms <= tol).any()):
        raise BeliefLensError(
            f"{hmm.name}: tokens {torch.nonzero(norms <= tol).flatten().tolist()} leave the "
            "belief at pi; the derivation needs every token to move it"
        )
    moved = delta @ hmm.transition_matrix.double()
    lams = (moved * delta).sum(-1) / norms**2  # the Rayleigh quotient of each correction
    residual = (moved - lams[:, None] * delta).norm(dim=-1) / norms
    spread = float(lams.max() - lams.min())
    if float(residual.max()) > tol or spread > tol * max(1.0, float(lams.abs().max())):
        raise BeliefLensError(
            f"{hmm.name}: the token corrections are not eigenvectors of T.sum(0) with one shared "
            f"eigenvalue (Rayleigh quotients {[round(v, 6) for v in lams.tolist()]}, largest "
            f"residual {float(residual.max()):.2g}); the single-rate derivation covers a "
            "Mess3-like family only"
        )
    lam = float(lams.mean())
    lam = 0.0 if abs(lam) < tol else lam
    if abs(lam) >= 1 - tol:
        raise BeliefLensError(
            f"{hmm.name}: the corrections' eigenvalue is {lam:.6g}; with modulus 1 nothing decays "
            "and the derivation (an ergodic process) does not apply"
        )
    return AttentionTheory(hmm.name, lam, pi, one_step, delta, probs)


def constrained_beliefs(
    theory: AttentionTheory, tokens: Int[Tensor, "n L"]
) -> Float[Tensor, "n L S"]:
    """The constrained update ``pi + sum_{s <= d} lam^(d - s) delta_{x_s}`` at every position
    ``d`` (equal to the Bayesian belief at ``d = 0``)."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2:
        raise BeliefLensError(f"tokens must be an integer tensor [n, L], got {tokens!r:.60}")
    V = theory.corrections.shape[0]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= V):
        raise BeliefLensError(f"tokens must lie in 0..{V - 1}, got {tokens.min()}..{tokens.max()}")
    L = tokens.shape[1]
    d = torch.arange(L)
    power = (d[:, None] - d[None, :]).clamp(min=0).double()
    weights = torch.where(d[:, None] >= d[None, :], theory.eigenvalue**power, 0.0)  # [d, s]
    terms = theory.corrections[tokens.long()]  # [n, s, S]
    return theory.stationary + torch.einsum("ds,nsk->ndk", weights, terms)


@dataclass(frozen=True)
class TokenSumProfile:
    """How the best sum of one vector per past token reads the exact belief, by distance.

    ``coefficient_norms[d]`` is the norm of the least-squares coefficients of the token ``d``
    steps back (``[V, S]``, centred across tokens), for ``d = 0..n_ctx-1``; ``slope`` (± ``se``,
    the OLS standard error of the line through the points, not a sampling error) is the fitted
    change of their log per step over ``distances``; ``predicted`` is ``ln|lam|``; ``r2`` the share
    of the belief's variance the token sum explains. ``applies``: the relative gap is within
    :data:`FIRST_ORDER_TOLERANCE`, so the first-order derivation's decay describes the optimum.
    """

    process: str
    n_ctx: int
    n_sequences: int
    seed: int
    coefficient_norms: tuple[float, ...]
    distances: tuple[int, int]
    slope: float
    se: float
    predicted: float
    r2: float

    @property
    def rel_gap(self) -> float:
        """``|slope - ln|lam|| / |ln|lam||``."""
        return abs(self.slope - self.predicted) / abs(self.predicted)

    @property
    def applies(self) -> bool:
        return self.rel_gap <= FIRST_ORDER_TOLERANCE

    def to_dict(self) -> dict:
        """JSON-ready numbers."""
        return {
            "process": self.process,
            "n_ctx": self.n_ctx,
            "n_sequences": self.n_sequences,
            "seed": self.seed,
            "coefficient_norms": list(self.coefficient_norms),
            "distances": list(self.distances),
            "slope": self.slope,
            "se": self.se,
            "predicted": self.predicted,
            "rel_gap": self.rel_gap,
            "tolerance": FIRST_ORDER_TOLERANCE,
            "applies": self.applies,
            "r2": self.r2,
        }


def token_sum_profile(
    hmm: HMM,
    n_ctx: int = 16,
    n_sequences: int = 20000,
    seed: int = 0,
    distances: tuple[int, int] = (1, 6),
) -> TokenSumProfile:
    """Check the derivation's first-order assumption on ``hmm`` alone (no model).

    Regress the exact belief at the last of ``n_ctx`` positions, over ``n_sequences`` sampled
    sequences, on the one-hot token at every distance at once (partial coefficients, one
    intercept), and fit the log of each distance's coefficient norm against the distance over
    ``distances`` (inclusive). Why: attention from the last position with position-only weights
    sums one vector per past token, and this regression is the best such sum in squared error on
    the exact beliefs. Where its decay disagrees with ``lam^d``, the first-order derivation does
    not describe the optimum, and a trained model cannot be expected to follow ``lam^d``.
    Refuses what :func:`attention_theory` refuses, ``lam = 0``, and sizes too small to fit.
    """
    theory = attention_theory(hmm)
    predicted = theory.log_slope
    if not isinstance(distances, tuple | list) or len(distances) != 2:
        raise BeliefLensError(f"distances must be a pair (first, last), got {distances!r:.60}")
    lo = check_int("distances[0]", distances[0], low=1)
    hi = check_int("distances[1]", distances[1], low=lo + 2)  # three points for a standard error
    n_ctx = check_int("n_ctx", n_ctx, low=hi + 1)
    V = hmm.n_symbols
    n_sequences = check_int("n_sequences", n_sequences, low=2 * (1 + n_ctx * (V - 1)))
    seed = check_seed("seed", seed)
    tokens = sample_sequences(hmm, n_sequences, n_ctx, seed=seed)
    target = belief_states(hmm, tokens)[:, -1].double()  # [n, S]
    onehot = torch.nn.functional.one_hot(tokens.flip(1), V).double()  # [n, d, V]: d steps back
    X = torch.cat([torch.ones(n_sequences, 1, dtype=torch.float64), onehot[..., 1:].flatten(1)], 1)
    solution = torch.linalg.lstsq(X, target).solution  # token 0 at each distance is the reference
    coef = torch.cat(
        [
            torch.zeros(n_ctx, 1, hmm.n_states, dtype=torch.float64),
            solution[1:].reshape(n_ctx, V - 1, -1),
        ],
        dim=1,
    )
    coef = coef - coef.mean(1, keepdim=True)  # centred across tokens: free of the reference
    norms = coef.flatten(1).norm(dim=1)
    fit = norms[lo : hi + 1]
    if bool((fit <= 0).any()):
        raise BeliefLensError(
            f"{hmm.name}: coefficient norms at distances {lo}..{hi} must be positive to take "
            f"logs, got {fit.tolist()}"
        )
    slope, se = _line_slope(torch.arange(lo, hi + 1, dtype=torch.float64), fit.log())
    residual = target - X @ solution
    r2 = 1.0 - float((residual**2).sum() / ((target - target.mean(0)) ** 2).sum())
    return TokenSumProfile(
        hmm.name,
        n_ctx,
        n_sequences,
        seed,
        tuple(norms.tolist()),
        (lo, hi),
        slope,
        se,
        predicted,
        r2,
    )


def _line_slope(x: Tensor, y: Tensor) -> tuple[float, float]:
    """Ordinary least-squares slope of ``y`` on ``x`` (with an intercept) and its standard error."""
    xc, yc = x - x.mean(), y - y.mean()
    sxx = float((xc * xc).sum())
    slope = float((xc * yc).sum()) / sxx
    se = math.sqrt(float(((yc - slope * xc) ** 2).sum()) / (len(x) - 2) / sxx)
    return slope, se
