"""Ground truth for a non-ergodic mixture of processes: which component is running, and how much
each token says about it.

A sequence of ``mixture(components, weights)`` comes from one component for its whole length, so
the Bayes-optimal predictor does two things at once: it filters each component's hidden state
(the within-component belief) and it infers the component (in-context learning, Riechers et al.
2025, arXiv 2505.18373). Everything here is exact, from the components' own filters:

- the component posterior ``P(c | x_0..x_t) = softmax(log w + sum_{u<=t} log P(x_u | x_<u, c))``
  and its log-odds; every token adds its log-likelihood under each component (its *evidence*);
- the mixture's next-token distribution, the posterior-weighted mix of the components';
- two closed forms of activation steering with one scale ``s``: a shift ``alpha * s`` of the
  log prior toward one component (``"log_odds"``: steering as a change of prior, Bigelow et al.
  2025, arXiv 2511.00617), or a contraction of the component posterior toward that component's
  vertex of the simplex by ``1 - exp(-alpha * s)`` (``"simplex"``: steering as a move of the
  belief itself, which a residual stream that holds beliefs linearly makes);
- per position, the optimal loss, the loss of the predictor that never updates its component
  belief (fixed prior weights, each component's own belief still filtered), and the loss of the
  oracle that knows the component, each estimated on sampled prefixes with its standard error.

No TransformerLens here: models are compared with these numbers elsewhere
(:mod:`belief_lens.steering_dynamics`, :mod:`belief_lens.experiments.icl`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.beliefs import belief_states, log_probs
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.metrics import entropy
from belief_lens.processes import mixture
from belief_lens.validation import check_int, check_option

__all__ = [
    "STEERING_FORMS",
    "ExcessFit",
    "MixtureBeliefs",
    "ReferenceLosses",
    "SteeringForm",
    "fit_excess_loss",
    "mixture_beliefs",
    "reference_losses",
]

#: How steering with strength ``alpha`` acts on the component posterior (see
#: :meth:`MixtureBeliefs.posterior`).
SteeringForm = Literal["log_odds", "simplex"]
STEERING_FORMS: tuple[str, ...] = get_args(SteeringForm)


@dataclass(frozen=True)
class MixtureBeliefs:
    """The exact beliefs of a mixture on a batch of sequences, aligned as ``belief_states``:
    index ``t`` is after reading tokens ``0..t``.

    Attributes:
        tokens: ``[n, L]`` the sequences.
        log_weights: ``[K]`` log prior weights of the components.
        log_likelihood: ``[n, L, K]`` ``log P(x_0..x_t | c)`` (``-inf`` once ``c`` is ruled out).
        within: one ``[n, L, S_c]`` per component: its own belief after ``x_0..x_t`` (NaN once
            it is ruled out).
        component_next: ``[n, L, K, V]`` each component's ``P(x_{t+1} | x_0..x_t, c)`` (zeros once
            it is ruled out).
    """

    tokens: Int[Tensor, "n L"]
    log_weights: Float[Tensor, " K"]
    log_likelihood: Float[Tensor, "n L K"]
    within: tuple[Float[Tensor, "n L S_c"], ...]
    component_next: Float[Tensor, "n L K V"]

    @property
    def n_components(self) -> int:
        return int(self.log_weights.shape[0])

    @property
    def evidence(self) -> Float[Tensor, "n L K"]:
        """``log P(x_t | x_<t, c)``: what token ``t`` adds to component ``c``'s log-posterior
        (``-inf`` from the token that rules ``c`` out on)."""
        prev = torch.cat(
            [torch.zeros_like(self.log_likelihood[:, :1]), self.log_likelihood[:, :-1]], 1
        )
        out = self.log_likelihood - prev
        return torch.where(torch.isinf(prev), float("-inf"), out)

    def log_likelihood_ratio(self, a: int = 0, b: int = 1) -> Float[Tensor, "n L"]:
        """Token ``t``'s evidence for component ``a`` over ``b``: ``log P(x_t | x_<t, a) / P(x_t |
        x_<t, b)``, the log-odds' increment (while both are possible)."""
        e = self.evidence
        return e[..., self._component(a)] - e[..., self._component(b)]

    def _component(self, k: int) -> int:
        return check_int("component", k, low=0, high=self.n_components - 1)

    def log_posterior(
        self, alpha: float | Tensor = 0.0, s: float = 1.0, toward: int = 0
    ) -> Float[Tensor, "*A n L K"]:
        """``log P(c | x_0..x_t, alpha) = log_softmax(log w + alpha * s * e_toward + log
        P(x_0..x_t | c))``: the posterior after steering adds ``alpha * s`` to component
        ``toward``'s log prior (so to its log-odds against any other). ``alpha`` may be a 1-D
        grid, giving a leading axis."""
        k = self._component(toward)
        a = torch.as_tensor(alpha, dtype=torch.float64)
        shift = torch.zeros(self.n_components, dtype=torch.float64)
        shift[k] = 1.0
        logits = self.log_weights + self.log_likelihood  # [n, L, K]
        logits = logits + (a * float(s))[..., None, None, None] * shift  # [*A, n, L, K]
        return torch.log_softmax(logits, -1)

    def posterior(
        self,
        alpha: float | Tensor = 0.0,
        s: float = 1.0,
        toward: int = 0,
        form: SteeringForm = "log_odds",
    ) -> Float[Tensor, "*A n L K"]:
        """``P(c | x_0..x_t, alpha)``, ``[*A, n, L, K]``. ``"log_odds"``: the prior shifted (see
        ``log_posterior``). ``"simplex"``: ``(1 - lam) P(c | x_0..x_t) + lam * target`` with
        ``lam = 1 - exp(-|alpha * s|)``, the target component ``toward``'s vertex when ``alpha *
        s >= 0``, else the posterior over the other components: the one-parameter family of
        affine maps of the simplex toward a vertex whose steps of one sign compose (``alpha``
        then ``beta`` is ``alpha + beta``), as the log-odds shifts do in their coordinates."""
        form = check_option("form", form, SteeringForm)
        if form == "log_odds":
            return self.log_posterior(alpha, s, toward).exp()
        k = self._component(toward)
        x = (torch.as_tensor(alpha, dtype=torch.float64) * float(s))[..., None, None, None]
        p = self.log_posterior().exp()  # [n, L, K]
        vertex = torch.zeros_like(p)
        vertex[..., k] = 1.0
        rest = p.clone()
        rest[..., k] = 0.0
        mass = rest.sum(-1, keepdim=True)
        rest = torch.where(mass > 0, rest / mass.clamp_min(1e-300), p)  # no other: stays put
        target = torch.where(x >= 0, vertex, rest)
        lam = -torch.expm1(-x.abs())
        return (1 - lam) * p + lam * target

    def log_odds(self, component: int = 0) -> Float[Tensor, "n L"]:
        """``log P(c | x_0..x_t) / (1 - P(c | x_0..x_t))`` for ``c = component``, unsteered."""
        lp = self.log_posterior()
        k = self._component(component)
        others = torch.cat([lp[..., :k], lp[..., k + 1 :]], -1).logsumexp(-1)
        return lp[..., k] - others

    def predict(
        self,
        alpha: float | Tensor = 0.0,
        s: float = 1.0,
        toward: int = 0,
        form: SteeringForm = "log_odds",
    ) -> Float[Tensor, "*A n L V"]:
        """The next-token distribution after ``x_0..x_t``: the components' own next-token
        distributions mixed with the (steered) posterior. At ``alpha = 0`` it is the mixture's
        exact ``P(x_{t+1} | x_0..x_t)`` in either form."""
        post = self.posterior(alpha, s, toward, form)
        return (post[..., None] * self.component_next).sum(-2)

    def never_updating(self) -> Float[Tensor, "n L V"]:
        """The prediction of a model that keeps the prior weights: ``sum_c w_c P(. | x_0..x_t,
        c)``, each component's own belief filtered, its component belief never updated."""
        w = self.log_weights.exp()
        return (w[:, None] * self.component_next).sum(-2)

    def at_positions(self, positions: Sequence[int] | Tensor) -> MixtureBeliefs:
        """The same beliefs at ``positions`` only (index ``i`` is then after reading tokens
        ``0..positions[i]``; ``tokens`` holds the token read there)."""
        idx = torch.as_tensor(positions, dtype=torch.long).flatten()
        L = self.tokens.shape[1]
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= L:
            raise BeliefLensError(f"positions must lie in [0, {L - 1}], got {idx.tolist()}")
        return MixtureBeliefs(
            tokens=self.tokens[:, idx],
            log_weights=self.log_weights,
            log_likelihood=self.log_likelihood[:, idx],
            within=tuple(w[:, idx] for w in self.within),
            component_next=self.component_next[:, idx],
        )

    def oracle_entropy(self) -> Float[Tensor, "n L"]:
        """The expected loss of a predictor told the component: ``sum_c P(c | x) H[P(. | x,
        c)]``, whose mean over sampled prefixes estimates that oracle's loss per position."""
        return (self.posterior() * _entropy_rows(self.component_next)).sum(-1)


def _entropy_rows(p: Tensor) -> Tensor:
    """Entropy of each ``[..., V]`` row, 0 for the all-zero rows of ruled-out components."""
    return torch.where(p.sum(-1) > 0, entropy(p.clamp_min(0)), 0.0)


def _check_components(components: Sequence[HMM], weights: Sequence[float] | None) -> HMM:
    """The mixture of ``components`` (its checks: HMMs with one alphabet, weights summing to 1);
    components must be plain HMMs (their beliefs are probabilities)."""
    mix = mixture(components, weights)
    if any(c.generalized for c in components):
        raise BeliefLensError("mixture_beliefs takes HMM components, not generalized HMMs")
    if mix.n_symbols != components[0].n_symbols:
        raise BeliefLensError("mixture_beliefs needs components on one shared alphabet")
    return mix


def mixture_beliefs(
    components: Sequence[HMM],
    weights: Sequence[float] | None,
    tokens: Int[Tensor, "n L"],
) -> MixtureBeliefs:
    """Exact component posteriors, evidence and within-component beliefs of ``tokens`` under
    ``mixture(components, weights)`` (uniform weights for None).

    A sequence impossible under every component raises (as ``belief_states`` does); one
    impossible under some components only rules those out from the token that does.

    >>> from belief_lens.processes import mess3
    >>> mb = mixture_beliefs([mess3(), mess3(x=0.25, alpha=0.5)], [0.5, 0.5], torch.tensor([[0]]))
    >>> float(mb.posterior()[0, 0].sum())
    1.0
    """
    mix = _check_components(components, weights)
    tokens = mix.check_tokens(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 1:
        raise BeliefLensError(f"tokens must be [n, L] with L >= 1, got {tuple(tokens.shape)}")
    belief_states(mix, tokens)  # raises, naming the position, if impossible under every component
    w = torch.as_tensor(
        [1 / len(components)] * len(components) if weights is None else list(weights),
        dtype=torch.float64,
    )
    loglik, within, nxt = [], [], []
    for comp in components:
        eta = belief_states(comp, tokens, impossible="mask")
        loglik.append(log_probs(comp, tokens, impossible="mask"))
        within.append(eta)
        nxt.append(torch.nan_to_num(comp.next_token_probs(eta.nan_to_num(0.0)), nan=0.0))
    return MixtureBeliefs(
        tokens=tokens,
        log_weights=w.log(),
        log_likelihood=torch.stack(loglik, -1),
        within=tuple(within),
        component_next=torch.stack(nxt, -2),
    )


# ------------------------------------------------------------------------ losses per position
@dataclass(frozen=True)
class ReferenceLosses:
    """Per-position losses (nats) of three predictors on sampled prefixes, each the mean over
    sequences of the expected cross-entropy of the mixture's next token (an unbiased estimate of
    the expected loss, as ``estimate_optimal_loss``), with its standard error.

    Position ``t`` predicts token ``t + 1`` from tokens ``0..t`` (``n_seen = t + 1``).

    Attributes:
        optimal, optimal_se: the Bayes-optimal predictor (``h(t + 1)`` of the mixture).
        never_updating, never_updating_se: fixed prior weights on the components.
        oracle, oracle_se: told the component (each component's own filter).
        gap_se: standard error of ``never_updating - optimal`` (paired on the same prefixes).
        n_sequences: sequences averaged.
    """

    optimal: Float[Tensor, " L"]
    optimal_se: Float[Tensor, " L"]
    never_updating: Float[Tensor, " L"]
    never_updating_se: Float[Tensor, " L"]
    oracle: Float[Tensor, " L"]
    oracle_se: Float[Tensor, " L"]
    gap_se: Float[Tensor, " L"]
    n_sequences: int

    @property
    def gap(self) -> Float[Tensor, " L"]:
        """What in-context inference of the component is worth at each position."""
        return self.never_updating - self.optimal

    def gap_recovered(self, loss: Float[Tensor, " L"]) -> Float[Tensor, " L"]:
        """``(never_updating - loss) / (never_updating - optimal)``: 1 for an optimal model, 0
        for one that never updates its component belief. NaN where the gap is not resolved (not
        above 3 standard errors: e.g. after one token of components with the same single-token
        statistics, where the two references coincide)."""
        loss = torch.as_tensor(loss, dtype=torch.float64)
        if loss.shape != self.optimal.shape:
            raise BeliefLensError(
                f"loss must have one value per position {tuple(self.optimal.shape)}, got "
                f"{tuple(loss.shape)}"
            )
        resolved = self.gap > torch.clamp_min(3 * self.gap_se, 1e-12)
        return torch.where(resolved, (self.never_updating - loss) / self.gap, float("nan"))

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            k: v.tolist() for k, v in self.__dict__.items() if isinstance(v, Tensor)
        }
        out["n_sequences"] = self.n_sequences
        return out


def _mean_se(x: Tensor) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    se = x.std(0) / math.sqrt(n) if n > 1 else torch.zeros_like(x[0])
    return x.mean(0), se


def reference_losses(beliefs: MixtureBeliefs) -> ReferenceLosses:
    """The optimal, never-updating and oracle losses per position on ``beliefs``' sequences
    (which must be samples of the mixture for the means to estimate expected losses)."""
    if not isinstance(beliefs, MixtureBeliefs):
        raise BeliefLensError(f"expected MixtureBeliefs, got {type(beliefs).__name__}")
    n = beliefs.tokens.shape[0]
    check_int("sequences (for a standard error)", n, low=2)
    p = beliefs.predict()  # [n, L, V]
    q = beliefs.never_updating()
    h = entropy(p)
    ce = -(torch.special.xlogy(p, q.clamp_min(1e-300))).sum(-1)
    oracle = beliefs.oracle_entropy()
    (opt, opt_se), (nu, nu_se), (orc, orc_se) = map(_mean_se, (h, ce, oracle))
    gap_se = _mean_se(ce - h)[1]
    return ReferenceLosses(opt, opt_se, nu, nu_se, orc, orc_se, gap_se, n)


# ------------------------------------------------------------------------ the excess-loss fit
@dataclass(frozen=True)
class ExcessFit:
    """A decay fitted to an excess loss ``e(n) > 0`` over context lengths ``n``: a power law
    ``a n^-b`` or an exponential ``a exp(-n / b)``, by least squares on ``log e``.

    Attributes:
        form: ``"power"`` or ``"exponential"``.
        a, b: the parameters (``b`` the exponent, or the decay length in tokens).
        rmse: root-mean-square error of the fit in nats, on ``e`` itself.
        rel_rmse: the same relative to ``e`` (``e_fit / e - 1``).
        n_points: points fitted (those with ``e > 0``).
    """

    form: str
    a: float
    b: float
    rmse: float
    rel_rmse: float
    n_points: int

    def __call__(self, n: Tensor) -> Tensor:
        n = torch.as_tensor(n, dtype=torch.float64)
        return self.a * (n ** (-self.b) if self.form == "power" else torch.exp(-n / self.b))


def fit_excess_loss(
    n_seen: Sequence[int] | Tensor, excess: Sequence[float] | Tensor
) -> tuple[ExcessFit, ExcessFit]:
    """Power-law and exponential fits of ``excess`` against ``n_seen``, the better (lower RMSE)
    first. Points with ``excess <= 0`` are left out; at least three must remain."""
    n = torch.as_tensor(n_seen, dtype=torch.float64).flatten()
    e = torch.as_tensor(excess, dtype=torch.float64).flatten()
    if n.shape != e.shape or not torch.isfinite(e).all() or (n <= 0).any():
        raise BeliefLensError(
            f"n_seen (positive) and excess (finite) must match, got {tuple(n.shape)} and "
            f"{tuple(e.shape)}"
        )
    keep = e > 0
    if int(keep.sum()) < 3:
        raise BeliefLensError(
            f"need at least three positive excess losses to fit, got {e.tolist()}"
        )
    n, e = n[keep], e[keep]
    fits = []
    for form, x in (("power", n.log()), ("exponential", n)):
        A = torch.stack([torch.ones_like(x), x], 1)
        (c0, c1) = torch.linalg.lstsq(A, e.log()[:, None]).solution[:, 0].tolist()
        b = -c1 if form == "power" else (-1 / c1 if c1 != 0 else math.inf)
        fit = ExcessFit(form, math.exp(c0), b, 0.0, 0.0, int(n.numel()))
        pred = fit(n)
        rmse = float(((pred - e) ** 2).mean().sqrt())
        rel = float(((pred / e - 1) ** 2).mean().sqrt())
        fits.append(ExcessFit(form, fit.a, b, rmse, rel, int(n.numel())))
    fits.sort(key=lambda f: f.rmse)
    return fits[0], fits[1]
