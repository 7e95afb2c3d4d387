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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.beliefs import check_hmm
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM, GeneralizedHMM
from belief_lens.validation import check_float, check_int

__all__ = ["AttentionTheory", "attention_theory", "constrained_beliefs"]


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
