"""Steering against context, predicted in closed form from the process (Bigelow et al. 2025,
"Belief dynamics reveal the dual nature of in-context learning and activation steering",
arXiv 2511.00617), with the latent concept known exactly: the mixture component.

Two closed forms, each with one free number ``s`` fitted per model by maximum likelihood over
the grid (the mean ``KL(measured || predicted)`` minimised):

- ``"log_odds"`` (Bigelow et al.): steering with strength ``alpha`` along a model's component
  direction shifts its log prior by ``alpha * s`` toward one component, and context adds the
  tokens' evidence, so
  ``P(c | x_0..x_t, alpha) = softmax(log w + alpha * s * e_toward + sum_u log P(x_u | x_<u, c))``;
- ``"simplex"``: steering moves the belief itself, ``P(c | x, alpha) = (1 - lam) P(c | x) + lam
  e_toward`` with ``lam = 1 - exp(-alpha * s)``, the family of such moves whose steps compose.
  A residual stream that holds the belief linearly (Shai et al. 2024), with a direction added and
  normalised downstream, moves its belief along a segment toward a fixed point whatever the
  context; how fast along it, this form does not derive (``s`` says).

Either way the next-token distribution is the components' own next-token distributions mixed with
these weights (:meth:`belief_lens.mixture_beliefs.MixtureBeliefs.predict`).

The grid takes the measured next-token distributions from any callable ``measure(alpha) ->
[n, L, V]``: a steered model (:mod:`belief_lens.experiments.icl`), or the theory itself with a
planted ``s`` (which the fit must recover). The phase boundary at context length ``n`` is the
``alpha`` where the component posterior crosses 1/2; the posterior a distribution implies is its
least-squares position on the segment between the two components' predictions, pooled over the
sequences of a grid cell, and the same estimator reads the measured and the predicted
distributions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.metrics import kl_divergence
from belief_lens.mixture_beliefs import MixtureBeliefs, SteeringForm
from belief_lens.validation import check_finite_tensor, check_float, check_int, check_option

__all__ = [
    "CORRELATION_CRITERION",
    "PHASE_ERROR_CRITERION",
    "SteeringComparison",
    "SteeringGrid",
    "SwitchLaw",
    "check_alpha_grid",
    "compare_steering",
    "crossing",
    "fit_steering_scale",
    "implied_posterior",
    "steering_grid",
    "switch_law",
]

#: The issue's acceptance thresholds: correlation of measured and predicted next-token
#: probabilities over the grid, and the phase boundary's relative error.
CORRELATION_CRITERION = 0.95
PHASE_ERROR_CRITERION = 0.20
#: A context length's phase boundary is scored where its unsteered predicted posterior of the
#: target component is at most this (the context clearly favours the other component, so a
#: switch means something) and the predicted boundary lies inside the grid.
SCORED_POSTERIOR_MAX = 0.25
#: The per-sequence switch law reads cells whose true log-odds lie below this (the context argues
#: against the target component) and whose components' predictions differ by at least the
#: median over such cells (there a cell's own implied posterior is well determined).
SWITCH_LOG_ODDS_MAX = -1.0


def check_alpha_grid(alphas: Sequence[float] | Tensor) -> Float[Tensor, " A"]:
    """A steering-strength grid: finite, increasing, at least three values, 0 among them."""
    a = torch.as_tensor(alphas, dtype=torch.float64).flatten()
    for i, v in enumerate(a.tolist()):
        check_float(f"alphas[{i}]", v)
    if a.numel() < 3 or not bool((a[1:] > a[:-1]).all()) or not bool((a == 0).any()):
        raise BeliefLensError(
            f"alphas must be at least three increasing strengths including 0, got {a.tolist()}"
        )
    return a


@dataclass(frozen=True)
class SteeringGrid:
    """Measured next-token distributions over a ``(alpha, n)`` grid, with the exact beliefs of
    the same prefixes.

    Attributes:
        alphas: ``[A]`` steering strengths (units of the probe's component log-odds).
        n_seen: ``[N]`` context lengths; length ``n`` is read at position ``n - 1``.
        measured: ``[A, n_seq, N, V]`` the steered next-token distributions.
        beliefs: the mixture's beliefs at those positions (``MixtureBeliefs.at_positions``).
        toward: the component steering with positive ``alpha`` favours.
    """

    alphas: Float[Tensor, " A"]
    n_seen: Int[Tensor, " N"]
    measured: Float[Tensor, "A n N V"]
    beliefs: MixtureBeliefs = field(repr=False)
    toward: int = 0

    def predicted(self, s: float, form: SteeringForm = "log_odds") -> Float[Tensor, "A n N V"]:
        """The closed form's next-token distributions over the grid for scale ``s``."""
        return self.beliefs.predict(self.alphas, s, self.toward, form)

    def mean_kl(self, s: float, form: SteeringForm = "log_odds") -> float:
        """Mean ``KL(measured || predicted(s, form))`` over the grid's cells and sequences."""
        return float(kl_divergence(self.measured, self.predicted(s, form)).mean())


def steering_grid(
    measure: Callable[[float], Tensor],
    beliefs: MixtureBeliefs,
    alphas: Sequence[float] | Tensor,
    n_seen: Sequence[int] | None = None,
    *,
    toward: int = 0,
) -> SteeringGrid:
    """Call ``measure(alpha)`` (the next-token distributions ``[n, L, V]`` of ``beliefs``'
    sequences steered with strength ``alpha``) for each ``alpha`` and keep context lengths
    ``n_seen`` (default: every length ``1..L``)."""
    if not isinstance(beliefs, MixtureBeliefs):
        raise BeliefLensError(f"beliefs must be MixtureBeliefs, got {type(beliefs).__name__}")
    if beliefs.n_components != 2:
        raise BeliefLensError(
            f"the steering grid reads a two-component mixture, got {beliefs.n_components}"
        )
    a = check_alpha_grid(alphas)
    n, L = beliefs.tokens.shape
    V = beliefs.component_next.shape[-1]
    lengths = list(range(1, L + 1)) if n_seen is None else [int(x) for x in n_seen]
    if not lengths or min(lengths) < 1 or max(lengths) > L or sorted(set(lengths)) != lengths:
        raise BeliefLensError(f"n_seen must be increasing context lengths in 1..{L}, got {lengths}")
    toward = check_int("toward", toward, low=0, high=1)
    pos = torch.tensor(lengths) - 1
    out = []
    for alpha in a.tolist():
        q = check_finite_tensor(f"measure({alpha})", measure(alpha)).to(torch.float64)
        if tuple(q.shape) != (n, L, V):
            raise BeliefLensError(
                f"measure({alpha}) must give next-token distributions [n, L, V] = {[n, L, V]}, "
                f"got {tuple(q.shape)}"
            )
        if (q < 0).any() or ((q.sum(-1) - 1).abs() > 1e-4).any():
            raise BeliefLensError(f"measure({alpha}) rows must be probability distributions")
        out.append(q[:, pos])
    return SteeringGrid(a, pos + 1, torch.stack(out), beliefs.at_positions(pos), toward)


# ------------------------------------------------------------------------------- the fit
def fit_steering_scale(
    grid: SteeringGrid, bound: float = 10.0, tol: float = 1e-6, form: SteeringForm = "log_odds"
) -> float:
    """The ``s`` in ``[-bound, bound]`` minimising ``grid.mean_kl(s, form)`` (maximum likelihood
    of the closed form under the measured distributions): a scan of 81 points, then
    golden-section search in the best point's bracket."""
    bound = check_float("bound", bound, low=0, low_open=True)
    form = check_option("form", form, SteeringForm)

    def kl(x: float) -> float:
        return grid.mean_kl(x, form)

    xs = torch.linspace(-bound, bound, 81, dtype=torch.float64).tolist()
    fs = [kl(x) for x in xs]
    i = min(range(len(xs)), key=fs.__getitem__)
    lo, hi = xs[max(i - 1, 0)], xs[min(i + 1, len(xs) - 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)
    fc, fd = kl(c), kl(d)
    while hi - lo > tol:
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - g * (hi - lo)
            fc = kl(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + g * (hi - lo)
            fd = kl(d)
    return (lo + hi) / 2


def implied_posterior(
    probs: Float[Tensor, "*A n N V"], beliefs: MixtureBeliefs, toward: int = 0
) -> Float[Tensor, "*A N"]:
    """The component posterior a set of next-token distributions implies, per grid cell: ``pi``
    minimising ``sum_i |probs_i - (pi P_a,i + (1 - pi) P_b,i)|^2`` over a cell's sequences ``i``
    (``a = toward``, ``b`` the other component). Sequences where the components predict alike
    carry little weight, as they say little about the component."""
    nxt = beliefs.component_next  # [n, N, 2, V]
    pa, pb = nxt[..., toward, :], nxt[..., 1 - toward, :]
    diff = pa - pb
    num = ((probs - pb) * diff).sum(-1).sum(-2)  # [*A, N]
    den = (diff * diff).sum(-1).sum(0)  # [N]
    return num / den.clamp_min(1e-300)


def crossing(
    alphas: Float[Tensor, " A"], pi: Float[Tensor, " A"], level: float = 0.5
) -> float | None:
    """The first ``alpha`` where ``pi`` rises through ``level`` (linear interpolation between
    grid points), or None when it stays on one side over the grid."""
    above = (pi >= level).tolist()
    for i in range(1, len(above)):
        if above[i] and not above[i - 1]:
            a0, a1, p0, p1 = float(alphas[i - 1]), float(alphas[i]), float(pi[i - 1]), float(pi[i])
            return a0 + (level - p0) * (a1 - a0) / (p1 - p0)
    return None


# ------------------------------------------------------------------------------- per-cell law
@dataclass(frozen=True)
class SwitchLaw:
    """Where single sequences switch: ``alpha_i ~ intercept + slope * (-log-odds_i)``, fitted by
    least squares over cells (sequence, context length) whose own implied posterior crosses 1/2
    inside the grid. The log-odds form says ``intercept = 0`` and ``slope = 1 / s``: a steering
    that adds log-odds cancels the context's evidence one for one, from zero. The simplex form
    says ``alpha_i = (ln 2 - softplus(log-odds_i)) / s``: nearly ``ln 2 / s`` for every sequence
    the context argues against, whatever its evidence.

    Attributes:
        intercept, slope: the fitted law (alpha units; alpha per nat of evidence).
        r2: its R^2 over the cells.
        n_cells: cells fitted; ``n_eligible``: cells read (some never cross inside the grid).
    """

    intercept: float
    slope: float
    r2: float
    n_cells: int
    n_eligible: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def switch_law(grid: SteeringGrid) -> SwitchLaw | None:
    """The per-sequence switch law of ``grid`` (None with fewer than 3 crossing cells). A cell's
    implied posterior is its distribution's least-squares position between the components'
    predictions, read where the context argues against the target component
    (:data:`SWITCH_LOG_ODDS_MAX`) and the components' predictions differ at least by the
    median."""
    nxt = grid.beliefs.component_next  # [n, N, 2, V]
    d = nxt[..., grid.toward, :] - nxt[..., 1 - grid.toward, :]
    dn = (d * d).sum(-1)
    lo = grid.beliefs.log_odds(grid.toward)
    against = lo < SWITCH_LOG_ODDS_MAX
    if not bool(against.any()):
        return None
    keep = against & (dn >= dn[against].median()) & (dn > 0)
    pi = ((grid.measured - nxt[..., 1 - grid.toward, :]) * d).sum(-1) / dn.clamp_min(1e-300)
    pi, x = pi[:, keep], -lo[keep]  # [A, k], [k]
    above = pi >= 0.5
    rise = above[1:] & ~above[:-1]  # [A - 1, k]
    crossed = rise.any(0)
    i = rise.to(torch.int8).argmax(0)[crossed]
    cols = crossed.nonzero()[:, 0]
    a0, a1 = grid.alphas[i], grid.alphas[i + 1]
    p0, p1 = pi[i, cols], pi[i + 1, cols]
    y = a0 + (0.5 - p0) * (a1 - a0) / (p1 - p0)
    if y.numel() < 3:
        return None
    X = torch.stack([torch.ones_like(y), x[cols]], 1)
    coef = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    resid = y - X @ coef
    r2 = 1 - float(resid.var()) / float(y.var()) if float(y.var()) > 0 else float("nan")
    return SwitchLaw(float(coef[0]), float(coef[1]), r2, int(y.numel()), int(keep.sum()))


# ------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class SteeringComparison:
    """The closed form against a measured grid, with ``s`` fitted (or given).

    Attributes:
        s: log-odds per unit of ``alpha``.
        correlation: Pearson correlation of measured and predicted next-token probabilities over
            every grid cell, sequence and token.
        mean_kl: mean ``KL(measured || predicted)`` (nats); ``mean_kl_unsteered`` is the same at
            ``alpha = 0`` (the model against the mixture's exact prediction, no fit involved).
        posterior_measured, posterior_predicted: ``[A, N]`` implied component posteriors.
        boundary_measured, boundary_predicted: per context length, the ``alpha`` where the
            posterior crosses 1/2 (None: no crossing in the grid).
        scored: per context length, whether its boundary is scored (see
            :data:`SCORED_POSTERIOR_MAX`).
        rel_errors: per scored length, ``|measured - predicted| / |predicted|`` (None where the
            measured posterior never crosses).
        switch: the per-sequence switch law (:func:`switch_law`), against the closed form's
            (see :class:`SwitchLaw`); None where too few cells cross.
        form: the closed form compared (``"log_odds"`` or ``"simplex"``).
    """

    s: float
    correlation: float
    mean_kl: float
    mean_kl_unsteered: float
    alphas: Float[Tensor, " A"]
    n_seen: Int[Tensor, " N"]
    posterior_measured: Float[Tensor, "A N"]
    posterior_predicted: Float[Tensor, "A N"]
    boundary_measured: tuple[float | None, ...]
    boundary_predicted: tuple[float | None, ...]
    scored: tuple[bool, ...]
    rel_errors: tuple[float | None, ...]
    switch: SwitchLaw | None = None
    form: SteeringForm = "log_odds"

    @property
    def phase_boundary_rel_error(self) -> float | None:
        """The largest relative error over scored lengths; None when a scored length's measured
        posterior never crosses (the prediction failed there) or none is scored."""
        errs = [e for e, ok in zip(self.rel_errors, self.scored, strict=True) if ok]
        if not errs or any(e is None for e in errs):
            return None
        return max(errs)  # type: ignore[type-var]

    @property
    def switches(self) -> bool:
        """Whether the measured posterior crosses 1/2 at any scored context length."""
        return any(
            b is not None for b, ok in zip(self.boundary_measured, self.scored, strict=True) if ok
        )

    def verdicts(self) -> list[str]:
        """One plain sentence per prediction: held or not, by how much, against which
        criterion."""
        held = self.correlation >= CORRELATION_CRITERION
        err = self.phase_boundary_rel_error
        unit = "log-odds per unit" if self.form == "log_odds" else "contraction rate per unit"
        out = [
            f"Steered next-token distributions: correlation {self.correlation:.4f} with the "
            f"{self.form} closed form (criterion >= {CORRELATION_CRITERION}): "
            + ("held." if held else "did NOT hold.")
            + f" Mean KL {self.mean_kl:.4f} nats ({self.mean_kl_unsteered:.4f} unsteered), "
            f"s = {self.s:.4f} {unit}.",
        ]
        n_scored = sum(self.scored)
        if err is None:
            out.append(
                f"Phase boundary: {n_scored} context lengths scored; "
                + (
                    "none could be (no predicted boundary inside the grid)."
                    if n_scored == 0
                    else "the model did NOT switch at every one where the closed form predicts "
                    "a switch: the prediction did NOT hold."
                )
            )
        else:
            ok = err <= PHASE_ERROR_CRITERION
            out.append(
                f"Phase boundary: largest relative error {err:.1%} over {n_scored} context "
                f"lengths (criterion <= {PHASE_ERROR_CRITERION:.0%}): "
                + ("held." if ok else "did NOT hold.")
                + self._worst()
            )
        if self.switch is not None and self.s != 0:
            w = self.switch
            law = (
                f"0 + {1 / self.s:.3f} x (-log-odds)"
                if self.form == "log_odds"
                else f"(ln 2 - softplus(log-odds)) / s, at most {math.log(2) / self.s:.2f}"
            )
            out.append(
                f"Single sequences switch at alpha ~ {w.intercept:.2f} + {w.slope:.3f} x "
                f"(-log-odds) (R^2 {w.r2:.2f}, {w.n_cells} cells); the {self.form} closed form "
                f"says {law}."
            )
        return out

    def _worst(self) -> str:
        """Where the boundary prediction was furthest off, in words."""
        pairs = [
            (e, int(n), m, p)
            for e, n, m, p, ok in zip(
                self.rel_errors, self.n_seen, self.boundary_measured, self.boundary_predicted,
                self.scored, strict=True,
            )
            if ok and e is not None
        ]  # fmt: skip
        if not pairs:
            return ""
        first, last = pairs[0], pairs[-1]
        return (
            f" Measured / predicted alpha at n = {first[1]}: {first[2]:.2f} / {first[3]:.2f}; "
            f"at n = {last[1]}: {last[2]:.2f} / {last[3]:.2f}."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "s": self.s,
            "correlation": self.correlation,
            "mean_kl": self.mean_kl,
            "mean_kl_unsteered": self.mean_kl_unsteered,
            "alphas": self.alphas.tolist(),
            "n_seen": self.n_seen.tolist(),
            "posterior_measured": self.posterior_measured.tolist(),
            "posterior_predicted": self.posterior_predicted.tolist(),
            "boundary_measured": list(self.boundary_measured),
            "boundary_predicted": list(self.boundary_predicted),
            "scored": list(self.scored),
            "rel_errors": list(self.rel_errors),
            "phase_boundary_rel_error": self.phase_boundary_rel_error,
            "switches": self.switches,
            "switch_law": None if self.switch is None else self.switch.to_dict(),
        }


def compare_steering(
    grid: SteeringGrid, s: float | None = None, form: SteeringForm = "log_odds"
) -> SteeringComparison:
    """Fit ``s`` on ``grid`` (unless given: a control grid is scored with the real direction's
    ``s``) and compare the ``form`` closed form with the measurements."""
    if not isinstance(grid, SteeringGrid):
        raise BeliefLensError(f"expected a SteeringGrid, got {type(grid).__name__}")
    form = check_option("form", form, SteeringForm)
    s = fit_steering_scale(grid, form=form) if s is None else check_float("s", s)
    pred = grid.predicted(s, form)
    m, p = grid.measured.flatten(), pred.flatten()
    corr = float(torch.corrcoef(torch.stack([m, p]))[0, 1])
    if not math.isfinite(corr):
        raise BeliefLensError(
            "the measured or predicted probabilities are constant: no correlation"
        )
    zero = int((grid.alphas == 0).nonzero()[0, 0])
    kl = kl_divergence(grid.measured, pred)
    pm = implied_posterior(grid.measured, grid.beliefs, grid.toward)
    pp = implied_posterior(pred, grid.beliefs, grid.toward)
    bm = tuple(crossing(grid.alphas, pm[:, j]) for j in range(pm.shape[1]))
    bp = tuple(crossing(grid.alphas, pp[:, j]) for j in range(pp.shape[1]))
    scored = tuple(
        bool(pp[zero, j] <= SCORED_POSTERIOR_MAX) and bp[j] is not None for j in range(len(bp))
    )
    rel = tuple(
        None if not ok or m_ is None else abs(m_ - p_) / abs(p_)  # type: ignore[operator]
        for m_, p_, ok in zip(bm, bp, scored, strict=True)
    )
    return SteeringComparison(
        s=s,
        correlation=corr,
        mean_kl=float(kl.mean()),
        mean_kl_unsteered=float(kl[zero].mean()),
        alphas=grid.alphas,
        n_seen=grid.n_seen,
        posterior_measured=pm,
        posterior_predicted=pp,
        boundary_measured=bm,
        boundary_predicted=bp,
        scored=scored,
        rel_errors=rel,
        switch=switch_law(grid),
        form=form,
    )
