"""In-context learning and steering as one belief dynamics, tested against the exact process.

Train the paper's Mess3 architecture on the non-ergodic mixture ``mixture([mess3(0.05, 0.85),
mess3(0.25, 0.5)], [0.5, 0.5])`` (on Bayes targets), then measure:

- the in-context curve: the model's loss per position against the mixture's optimum and the
  predictor that never updates its component belief, the fraction of that gap it recovers, and a
  decay fitted to its excess over the oracle told the component (Riechers et al. 2025);
- the component geometry: held-out probes (cross-validated by prefix) for the component log-odds
  and for each component's own belief, and the principal angles between their subspaces;
- steering against context: add ``alpha`` units of the probe's component log-odds along its
  encoding direction at every position, over a grid of ``alpha`` and context lengths ``n``, and
  compare with both closed forms of :mod:`belief_lens.steering_dynamics`, each with one ``s``
  fitted, beside a norm-matched control direction: Bigelow et al.'s (2025) shift of the log
  prior, and the contraction of the belief toward the target component's vertex that a residual
  stream holding beliefs linearly predicts. The headline is ``steering_form`` (the simplex by
  default: on the default experiment the log-odds form's phase boundary misses by 45-60%,
  the simplex form's by 14%; see the README); the other is reported beside it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.beliefs import sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.in_context import in_context_curve
from belief_lens.interventions import Steer, intervene
from belief_lens.metrics import principal_angles_deg
from belief_lens.mixture_beliefs import (
    STEERING_FORMS,
    ExcessFit,
    MixtureBeliefs,
    ReferenceLosses,
    SteeringForm,
    fit_excess_loss,
    mixture_beliefs,
    reference_losses,
)
from belief_lens.models import ModelConfig, toy_transformer
from belief_lens.probes import ProbeData, collect_probe_data, fit_probes, out_of_fold_predictions
from belief_lens.probing.moments import lapack_threads
from belief_lens.processes import mess3, mixture
from belief_lens.report import icl_section, write_report
from belief_lens.steering_dynamics import (
    SteeringComparison,
    check_alpha_grid,
    compare_steering,
    steering_grid,
)
from belief_lens.token_map import TokenMap
from belief_lens.training import TrainConfig, train
from belief_lens.validation import check_int, check_option, check_seed

__all__ = [
    "GRID_FRACTIONS",
    "DEFAULT_HOOK",
    "ComponentGeometry",
    "ICLExperiment",
    "ICLRun",
    "component_geometry",
    "icl_training",
    "log_odds_direction",
    "log_odds_steer",
    "run_icl_experiment",
    "write_icl_report",
]

#: Where the component log-odds are probed and steered.
DEFAULT_HOOK = "blocks.1.hook_resid_post"
#: The steering grid, as fractions of the strength the closed form needs (from a pilot fit of
#: ``s`` on :data:`PILOT_ALPHAS`) to switch 90% of the steered sequences at the last position:
#: the grid spans the phase boundary at every context length whatever the model's ``s``.
GRID_FRACTIONS: tuple[float, ...] = (
    -0.25, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25,
)  # fmt: skip
#: Strengths of the pilot fit (units of the probe's log-odds): moderate, where a direction acts
#: before it pushes activations off the distribution the model was trained on.
PILOT_ALPHAS: tuple[float, ...] = (-4.0, 0.0, 4.0, 8.0, 16.0)
#: The smallest pilot ``s`` the grid is scaled by (a direction that barely steers).
MIN_PILOT_S = 0.01
#: The issue's training budget: 5 minutes of CPU time (this process, all threads), measured with
#: ``time.process_time`` so that a loaded machine buys the same steps, not fewer.
TRAIN_CPU_SECONDS = 300.0


def icl_training(**fields: Any) -> TrainConfig:
    """``TrainConfig.preset("bayes", "mess3")`` with a :data:`TRAIN_CPU_SECONDS` budget (read on
    the CPU clock by :func:`run_icl_experiment`); ``fields`` override.

    >>> icl_training().seconds
    300.0
    """
    return TrainConfig.preset("bayes", "mess3", **{"seconds": TRAIN_CPU_SECONDS, **fields})


@dataclass(frozen=True)
class ICLExperiment:
    """The default experiment of the issue; every size can be shrunk for a quick run.

    ``train.seconds`` is a CPU-time budget. ``n_sequences`` sampled sequences measure the loss
    curve; ``n_probe_sequences`` the probes (5 folds by prefix); ``n_steer_sequences`` sequences
    of component ``1 - toward`` are steered toward component ``toward`` over ``alphas`` at every
    context length ``1..n_ctx`` (None: :data:`GRID_FRACTIONS` of the strength a pilot fit says
    switches 90% of them at the last position). ``steering_form`` names the closed form of the
    headline figures; both are measured.
    """

    train: TrainConfig = field(default_factory=icl_training)
    n_ctx: int = 32
    n_sequences: int = 20_000
    n_probe_sequences: int = 3000
    n_steer_sequences: int = 256
    hook: str = DEFAULT_HOOK
    alphas: tuple[float, ...] | None = None
    toward: int = 0
    control_seed: int = 0
    steering_form: SteeringForm = "simplex"

    def __post_init__(self) -> None:
        if not isinstance(self.train, TrainConfig):
            raise BeliefLensError(
                "train must be a TrainConfig (e.g. icl_training()), got "
                f"{type(self.train).__name__}"
            )
        for name in ("n_ctx", "n_probe_sequences"):
            check_int(name, getattr(self, name), low=1)
        for name in ("n_sequences", "n_steer_sequences"):
            check_int(name, getattr(self, name), low=2)
        check_int("toward", self.toward, low=0, high=1)
        check_seed("control_seed", self.control_seed)
        check_option("steering_form", self.steering_form, SteeringForm)
        if not isinstance(self.hook, str) or ".hook_" not in self.hook:
            raise BeliefLensError(f"hook must be a full hook name, got {self.hook!r}")
        if self.alphas is not None:
            object.__setattr__(self, "alphas", tuple(check_alpha_grid(self.alphas).tolist()))

    def components(self) -> tuple[HMM, HMM]:
        return mess3(x=0.05, alpha=0.85), mess3(x=0.25, alpha=0.5)

    @property
    def weights(self) -> tuple[float, float]:
        return (0.5, 0.5)

    def process(self) -> HMM:
        return mixture(self.components(), self.weights)

    def beliefs(self, tokens: Tensor) -> MixtureBeliefs:
        return mixture_beliefs(self.components(), self.weights, tokens)


# ------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class ComponentGeometry:
    """Held-out probes of the component log-odds and the within-component beliefs.

    Attributes:
        hook: the hook of the headline numbers (and of steering).
        log_odds_r2, log_odds_r2_se: the log-odds probe's cross-validated held-out R^2 (5 folds
            by prefix) and its standard error at ``hook``; ``log_odds_r2_by_hook`` every hook's.
        posterior_r2, posterior_r2_se: the same for the component posterior itself (a model whose
            residual stream holds the mixture's belief linearly holds this one linearly, and its
            log-odds only as far as the posterior stays away from 0 and 1).
        within_r2, within_r2_se: the same for each component's own belief.
        angles_deg: principal angle between the log-odds encoding direction and each
            component's belief subspace (90: orthogonal).
        within_angles_deg: principal angles between the two components' belief subspaces.
        truth, probed: held-out true log-odds and the out-of-fold probe output (the figure).
        probes: per hook, the log-odds probe fitted on every row (its encoding direction
            steers); ``probe`` is ``hook``'s.
    """

    hook: str
    log_odds_r2: float
    log_odds_r2_se: float
    log_odds_r2_by_hook: dict[str, float]
    posterior_r2: float
    posterior_r2_se: float
    within_r2: tuple[float, ...]
    within_r2_se: tuple[float, ...]
    angles_deg: tuple[float, ...]
    within_angles_deg: tuple[float, ...]
    truth: Float[Tensor, " k"] = field(repr=False)
    probed: Float[Tensor, " k"] = field(repr=False)
    probes: dict[str, Any] = field(repr=False)

    @property
    def probe(self) -> Any:
        return self.probes[self.hook]

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "component_probe_r2_heldout": self.log_odds_r2,
            "component_probe_r2_heldout_se": self.log_odds_r2_se,
            "component_probe_r2_by_hook": self.log_odds_r2_by_hook,
            "posterior_probe_r2_heldout": self.posterior_r2,
            "posterior_probe_r2_heldout_se": self.posterior_r2_se,
            "within_probe_r2_heldout": list(self.within_r2),
            "within_probe_r2_heldout_se": list(self.within_r2_se),
            "component_within_angles_deg": list(self.angles_deg),
            "within_within_angles_deg": list(self.within_angles_deg),
        }


def _with_targets(data: ProbeData, targets: Tensor) -> ProbeData:
    """``data``'s activations, sequences and split with other targets in place of the beliefs."""
    return ProbeData(
        tokens=data.tokens,
        beliefs=targets,
        acts=data.acts,
        weights=data.weights,
        test_mask=data.test_mask,
        hmm=data.hmm,
        n_ctx=data.n_ctx,
        mode=data.mode,
        seed=data.seed,
        test_fraction=data.test_fraction,
        bos=data.bos,
        dedupe=data.dedupe,
        model_fingerprint=data.model_fingerprint,
    )


def component_geometry(model: Any, config: ICLExperiment, seed: int = 0) -> ComponentGeometry:
    """Probe the component log-odds and each component's belief at every layer's output of
    ``model``, cross-validated by prefix on ``config.n_probe_sequences`` sampled sequences."""
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(int(model.cfg.n_layers))]
    if config.hook not in hooks:
        hooks.append(config.hook)
    hmm = config.process()
    tokens = sample_sequences(hmm, config.n_probe_sequences, config.n_ctx, seed=seed)
    data = collect_probe_data(
        model, hmm, config.n_ctx, hooks, mode="sampled", tokens=tokens, seed=seed
    )
    mb = config.beliefs(tokens)
    lo_data = _with_targets(data, mb.log_odds(config.toward)[..., None])
    lo = fit_probes(lo_data, concat=False)
    within = [fit_probes(_with_targets(data, w), concat=False) for w in mb.within]
    post = fit_probes(_with_targets(data, mb.posterior()[..., config.toward, None]), concat=False)
    oof, held = out_of_fold_predictions(lo, lo_data)
    direction = lo.probes[config.hook].belief_basis("encoding")
    bases = [t.probes[config.hook].belief_basis("encoding") for t in within]
    return ComponentGeometry(
        hook=config.hook,
        log_odds_r2=float(lo[config.hook]["r2_heldout"]),
        log_odds_r2_se=float(lo[config.hook]["r2_heldout_se"]),
        log_odds_r2_by_hook={row["hook"]: float(row["r2_heldout"]) for row in lo.rows},
        posterior_r2=float(post[config.hook]["r2_heldout"]),
        posterior_r2_se=float(post[config.hook]["r2_heldout_se"]),
        within_r2=tuple(float(t[config.hook]["r2_heldout"]) for t in within),
        within_r2_se=tuple(float(t[config.hook]["r2_heldout_se"]) for t in within),
        angles_deg=tuple(float(principal_angles_deg(direction, b)[0]) for b in bases),
        within_angles_deg=tuple(principal_angles_deg(bases[0], bases[1]).tolist()),
        truth=lo_data.beliefs[held][:, 0],
        probed=oof[config.hook][held][:, 0],
        probes=dict(lo.probes),
    )


# ------------------------------------------------------------------------------- steering
def log_odds_direction(probe: Any) -> Float[Tensor, " d"]:
    """The activation change that raises a fitted one-target probe's read-out by exactly 1: its
    encoding direction (where the model writes the target) scaled so that ``coef_ @ u = 1``."""
    if getattr(probe, "coef_", None) is None or probe.coef_.shape[0] != 1:
        raise BeliefLensError("expected a fitted probe of one target (the component log-odds)")
    p = probe.encoding_map()[0]
    gain = float(probe.coef_[0] @ p)
    if abs(gain) < 1e-12:
        raise BeliefLensError("the probe does not read its own encoding direction (gain 0)")
    return p / gain


def log_odds_steer(hook: str, direction: Float[Tensor, " d"], alpha: float) -> Steer:
    """A ``Steer`` adding ``alpha * direction`` at every position of ``hook``: the belief
    machinery on a two-point "belief" (from ``[0, 1]`` to ``[1, 0]``), so that it has the
    package's checks, hooks and norm-matched ``.control(seed)``."""
    u = torch.as_tensor(direction, dtype=torch.float64)
    norm = float(u.norm())
    return Steer(
        hook=hook,
        basis=(u / norm)[:, None],
        coordinates=torch.tensor([[norm], [0.0]], dtype=torch.float64),
        target=torch.tensor([1.0, 0.0], dtype=torch.float64),
        current=torch.tensor([0.0, 1.0], dtype=torch.float64),
        scale=float(alpha),
    )


def _steering(
    model: Any, config: ICLExperiment, probes: dict[str, Any], seed: int
) -> dict[str, dict[str, tuple[SteeringComparison, SteeringComparison]]]:
    """Per hook and closed form, the steering grid along its log-odds probe's direction and
    along that direction's control, each compared with the closed form (the control with the
    direction's fitted ``s``), on the same sequences of component ``1 - toward``."""
    source = config.components()[1 - config.toward]
    tokens = sample_sequences(source, config.n_steer_sequences, config.n_ctx, seed=seed)
    mb = config.beliefs(tokens)

    def measure(hook: str, direction: Tensor, control: bool) -> Any:
        def run(alpha: float) -> Tensor:
            steer = log_odds_steer(hook, direction, alpha)
            steer = steer.control(config.control_seed) if control else steer
            return torch.softmax(intervene(model, tokens, steer).double(), -1).cpu()

        return run

    out = {}
    for hook, probe in probes.items():
        u = log_odds_direction(probe)
        alphas = config.alphas or _adaptive_grid(measure(hook, u, False), mb, config.toward)
        grid = steering_grid(measure(hook, u, False), mb, alphas, toward=config.toward)
        still = steering_grid(measure(hook, u, True), mb, alphas, toward=config.toward)
        out[hook] = {}
        for form in STEERING_FORMS:
            real = compare_steering(grid, form=form)
            out[hook][form] = (real, compare_steering(still, s=real.s, form=form))
    return out


def _adaptive_grid(measure: Any, mb: MixtureBeliefs, toward: int) -> tuple[float, ...]:
    """:data:`GRID_FRACTIONS` of ``q90(-log-odds at the last position) / s_pilot``: the strength
    that, by the closed form with the pilot's ``s``, switches 90% of the sequences."""
    L = mb.tokens.shape[1]
    pilot = compare_steering(steering_grid(measure, mb, PILOT_ALPHAS, [L], toward=toward))
    need = float(torch.quantile(-mb.log_odds(toward)[:, -1], 0.9).clamp_min(1.0))
    top = need / max(pilot.s, MIN_PILOT_S)
    return tuple(round(f * top, 4) for f in GRID_FRACTIONS)


# ------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class ICLRun:
    """What :func:`run_icl_experiment` measured."""

    config: ICLExperiment
    process_name: str
    steps: int
    train_seconds: float  # wall clock of training
    train_cpu_seconds: float  # CPU time (all threads) of training: the budget's clock
    n_seen: Tensor
    model_loss: Tensor  # per position: optimal + KL(mixture || model), on the same prefixes
    references: ReferenceLosses
    excess_fits: tuple[ExcessFit, ExcessFit]  # better first
    geometry: ComponentGeometry
    steering: SteeringComparison  # at config.hook, in config.steering_form
    control: SteeringComparison
    steering_by_hook: dict[str, tuple[SteeringComparison, SteeringComparison]]  # direction, control
    steering_forms: dict[str, tuple[SteeringComparison, SteeringComparison]]  # at config.hook

    @property
    def loss_ratio(self) -> Tensor:
        return self.model_loss / self.references.optimal

    @property
    def gap_recovered(self) -> Tensor:
        return self.references.gap_recovered(self.model_loss)

    def checks(self) -> list[tuple[str, bool, str]]:
        """The issue's acceptance criteria: ``(criterion, held, the measured figure)``."""
        ratio, rec = float(self.loss_ratio.max()), self.gap_recovered[1:]
        rec = rec[~rec.isnan()]  # positions where the gap is resolved
        err, g = self.steering.phase_boundary_rel_error, self.geometry
        form = f" ({self.steering.form} closed form)"
        return [
            ("loss <= 1.002x optimal at every position", ratio <= 1.002, f"max {ratio:.5f}x"),
            (
                ">= 95% of the gap recovered from position 2 on",
                bool(len(rec) and (rec >= 0.95).all()),
                f"min {float(rec.min()):.3f} over {len(rec)} positions" if len(rec) else "no gap",
            ),
            ("component log-odds probe held-out R^2 >= 0.9", g.log_odds_r2 >= 0.9,
             f"{g.log_odds_r2:.4f} ± {g.log_odds_r2_se:.4f}"),
            ("steered grid correlation >= 0.95" + form, self.steering.correlation >= 0.95,
             f"{self.steering.correlation:.4f}"),
            ("phase boundary within 20%" + form, err is not None and err <= 0.2,
             "no switch where predicted" if err is None else f"{err:.1%}"),
            ("control direction does not switch", not self.control.switches,
             "switched" if self.control.switches else "no switch"),
        ]  # fmt: skip

    def verdicts(self) -> list[str]:
        """One plain line per prediction: held or not, and by how much; then the other closed
        form's two figures against the same criteria."""
        out = [
            f"{'HELD' if ok else 'NOT MET'}: {what} ({figure})"
            for what, ok, figure in self.checks()
        ]
        for form, (r, _) in self.steering_forms.items():
            if form != self.steering.form:
                err = r.phase_boundary_rel_error
                held = r.correlation >= 0.95 and err is not None and err <= 0.2
                out.append(
                    f"{'HELD' if held else 'NOT MET'} (beside the headline): the {form} closed "
                    f"form, correlation {r.correlation:.4f}, phase boundary "
                    + ("no switch where predicted" if err is None else f"{err:.1%}")
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The numbers ``metrics.json`` holds (the issue's keys first)."""
        best = self.excess_fits[0]
        return {
            "loss_ratio_max": float(self.loss_ratio.max()),
            "gap_recovered_last": _finite_or_none(float(self.gap_recovered[-1])),
            "component_probe_r2_heldout": self.geometry.log_odds_r2,
            "steer_grid_correlation": self.steering.correlation,
            "phase_boundary_rel_error": self.steering.phase_boundary_rel_error,
            "control_switches": self.control.switches,
            "steering_form": self.steering.form,
            "closed_forms": {
                form: _steering_row(r, c) for form, (r, c) in self.steering_forms.items()
            },
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
            "steps": self.steps,
            "process": self.process_name,
            "verdicts": self.verdicts(),
            "n_seen": self.n_seen.tolist(),
            "model_loss": self.model_loss.tolist(),
            "loss_ratio": self.loss_ratio.tolist(),
            "gap_recovered": [_finite_or_none(x) for x in self.gap_recovered.tolist()],
            "references": self.references.to_dict(),
            "excess_fit": {f.form: f.__dict__ for f in self.excess_fits},
            "excess_fit_best": best.form,
            "geometry": self.geometry.to_dict(),
            "steering": self.steering.to_dict(),
            "control": self.control.to_dict(),
            "steering_by_hook": {
                hook: _steering_row(r, c) for hook, (r, c) in self.steering_by_hook.items()
            },
        }


def _steering_row(r: SteeringComparison, c: SteeringComparison) -> dict[str, Any]:
    """A steering comparison and its control in a few numbers (``metrics.json``)."""
    return {
        "form": r.form,
        "s": r.s,
        "correlation": r.correlation,
        "mean_kl": r.mean_kl,
        "phase_boundary_rel_error": r.phase_boundary_rel_error,
        "switches": r.switches,
        "control_correlation": c.correlation,
        "control_switches": c.switches,
        "switch_law": None if r.switch is None else r.switch.to_dict(),
    }


def _finite_or_none(x: float) -> float | None:
    """``x``, or None where it is undefined (NaN: a gap that is not resolved)."""
    return x if math.isfinite(x) else None


def _train(
    config: ICLExperiment, hmm: HMM, checkpoint_dir: str | os.PathLike | None = None
) -> tuple[Any, int, float, float]:
    """The paper's Mess3 architecture at ``config.n_ctx``, trained on Bayes targets within
    ``config.train.seconds`` of CPU time (resuming from ``checkpoint_dir``'s newest step
    checkpoint, if any); returns it in eval mode with steps, wall and CPU s."""
    model = toy_transformer(
        ModelConfig.paper("mess3", d_vocab=hmm.n_symbols, n_ctx=config.n_ctx),
        seed=config.train.seed,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    # One thread: this model's small matrices gain nothing from two, and on a shared machine a
    # second thread spins (measured under load: 0.13 CPU s per step on one, 2.2 on two).
    with lapack_threads(0, torch.device("cpu")):
        history = train(
            model,
            hmm,
            config.train,
            progress=False,
            clock=time.process_time,
            checkpoint_dir=checkpoint_dir,
        )
    return model.eval(), history.steps, time.perf_counter() - t0, time.process_time() - c0


def run_icl_experiment(
    config: ICLExperiment, model: Any = None, checkpoint_dir: str | os.PathLike | None = None
) -> ICLRun:
    """Train (unless ``model`` is given: then ``steps`` and the training times are 0) and measure
    everything the report shows. With ``checkpoint_dir`` the training writes step checkpoints
    there and an interrupted run resumes from the newest."""
    if not isinstance(config, ICLExperiment):
        raise BeliefLensError(f"expected an ICLExperiment, got {type(config).__name__}")
    hmm, seed = config.process(), config.train.seed
    if model is None:
        model, steps, wall, cpu = _train(config, hmm, checkpoint_dir)
    else:
        model, steps, wall, cpu = model.eval(), 0, 0.0, 0.0
    symbols = sample_sequences(hmm, config.n_sequences, config.n_ctx + 1, seed=seed + 1)
    refs = reference_losses(config.beliefs(symbols[:, :-1]))
    identity = TokenMap(list(range(hmm.n_symbols)))
    curve = in_context_curve(model, hmm, identity, 0, config.n_ctx, seed, symbols=symbols)
    model_loss = refs.optimal + curve.kl_mean  # H(p, q) = H(p) + KL(p || q), prefix by prefix
    fits = fit_excess_loss(curve.n_seen, model_loss - refs.oracle)
    geometry = component_geometry(model, config, seed=seed + 2)
    by_form = _steering(model, config, geometry.probes, seed + 3)
    by_hook = {hook: forms[config.steering_form] for hook, forms in by_form.items()}
    real, control = by_hook[config.hook]
    return ICLRun(
        config=config,
        process_name=hmm.name,
        steps=steps,
        train_seconds=wall,
        train_cpu_seconds=cpu,
        n_seen=curve.n_seen,
        model_loss=model_loss,
        references=refs,
        excess_fits=fits,
        geometry=geometry,
        steering=real,
        control=control,
        steering_by_hook=by_hook,
        steering_forms=by_form[config.hook],
    )


def write_icl_report(
    run: ICLRun,
    out_dir: str | os.PathLike,
    title: str | None = None,
    *,
    export: tuple[str, ...] = ("png", "pdf"),
) -> dict[str, Any]:
    """Write ``run``'s ``report.html`` and ``metrics.json`` into ``out_dir`` (and each figure
    in the ``export`` formats where kaleido can); return the metrics."""
    metrics = run.to_dict()
    title = title or f"belief_lens icl: {run.process_name}"
    write_report(out_dir, title, [icl_section(run)], metrics, export=export)
    return metrics
