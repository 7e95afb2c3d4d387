"""The end-to-end analysis of one model on one process: ground truth, probes, controls, geometry,
interventions, written as one ``report.html`` and a ``metrics.json`` holding every figure shown.

:func:`analyse` runs short named steps. Each step adds its numbers to ``metrics`` and returns
what its section (:mod:`belief_lens.report.sections`) draws, so every number in the page is also
in ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import torch

from belief_lens.activations import residual_hooks
from belief_lens.beliefs import check_hmm, count_sequences, enumerate_sequences, sample_sequences
from belief_lens.compmech import entropy_rate, myopic_entropy
from belief_lens.errors import BeliefLensError, InvalidProcessError
from belief_lens.hmm import HMM
from belief_lens.interventions import (
    PatchingResult,
    intervention_report,
    patching_report,
    steerable_hooks,
)
from belief_lens.probes import (
    CONCAT,
    ProbeData,
    ProbeTable,
    Weighting,
    best_hook,
    collect_probe_data,
    distance_r2,
    fit_probes,
    heldout_by_position,
    next_token_control,
    shuffle_control,
    untrained_control,
)
from belief_lens.probing.data import DEFAULT_SAMPLED
from belief_lens.probing.prefixes import (
    PrefixActs,
    check_acts_memory,
    distinct_prefix_bound,
    prefix_logits,
)
from belief_lens.report import sections
from belief_lens.report.document import ExportFormat, FigureExporter, Section, write_report
from belief_lens.report.sections import UNDERTRAINED_RATIO
from belief_lens.threads import adaptive_threads_for_model
from belief_lens.training import loss_evaluator
from belief_lens.validation import check_float, check_int, check_seed

__all__ = [
    "Analysis",
    "AnalysisConfig",
    "AnalysisMode",
    "analyse",
    "check_analysis_memory",
    "check_vocabulary",
    "resolve_mode",
]

logger = logging.getLogger(__name__)

AnalysisMode = Literal["paper", "weighted", "sampled", "auto"]
#: Mode "auto" enumerates every sequence (the paper's data) where at most this many exist.
MAX_ENUMERATED = 200_000


@dataclass(frozen=True)
class AnalysisConfig:
    """What :func:`analyse` runs; the defaults are the paper's analysis (all sequences,
    unweighted). ``mode="auto"`` is ``"paper"`` where at most :data:`MAX_ENUMERATED` sequences of
    the model's context length exist, else ``"sampled"``. Validated at construction."""

    mode: AnalysisMode = "paper"
    n_sequences: int | None = None  # for mode="sampled" (or "auto" when it samples)
    test_fraction: float = 0.2
    weighting: Weighting = "rows"  # or "prefixes": each distinct prefix counts once
    ridge: float = 0.0
    seed: int = 0
    controls: bool = True
    interventions: bool = True
    intervention_sequences: int = 512
    max_plot_points: int = 5_000  # drawn per panel of the headline geometry figure
    max_grid_points: int = 1_000  # drawn per panel of the per-hook grid
    export: tuple[ExportFormat, ...] = ("png", "pdf")  # figure files written beside the report

    def __post_init__(self) -> None:
        if self.mode not in get_args(AnalysisMode):
            raise BeliefLensError(
                f"mode must be one of {get_args(AnalysisMode)}, got {self.mode!r}"
            )
        if self.n_sequences is not None:
            check_int("n_sequences", self.n_sequences, low=1)
        check_float("test_fraction", self.test_fraction, low=0, high=1, high_open=True)
        if self.weighting not in get_args(Weighting):
            raise BeliefLensError(
                f"weighting must be one of {get_args(Weighting)}, got {self.weighting!r}"
            )
        check_float("ridge", self.ridge, low=0)
        check_seed("seed", self.seed)
        for name in ("intervention_sequences", "max_plot_points", "max_grid_points"):
            check_int(name, getattr(self, name), low=1)
        for name in ("controls", "interventions"):
            if not isinstance(getattr(self, name), bool):
                raise BeliefLensError(f"{name} must be True or False, got {getattr(self, name)!r}")
        bad = [f for f in self.export if f not in get_args(ExportFormat)]
        if isinstance(self.export, str) or bad:
            raise BeliefLensError(f"export formats must be png, pdf or svg, got {self.export!r}")
        object.__setattr__(self, "export", tuple(self.export))


@dataclass(frozen=True)
class Analysis:
    """What a section builder can read: the model and process, the probe data and table (from
    ``belief_lens.probes``), the best hook (by held-out MSE, or in-sample where nothing is held
    out: ``ranked_by``), and the metrics so far."""

    model: Any
    hmm: HMM
    config: AnalysisConfig
    data: ProbeData
    table: ProbeTable
    best_hook: str
    metrics: dict[str, Any]
    ranked_by: Literal["held-out", "in-sample"] = "held-out"


def analyse(
    model: Any,
    hmm: HMM,
    out_dir: str | os.PathLike,
    *,
    config: AnalysisConfig | None = None,
    history: Any | None = None,
    title: str = "belief_lens report",
    extra_metrics: dict[str, Any] | None = None,
    extra_sections: Sequence[Callable[[Analysis], Section]] = (),
) -> dict[str, Any]:
    """Run the full analysis of ``model`` on ``hmm`` and write ``report.html``, ``metrics.json``
    and the figures into ``out_dir``; return the metrics.

    ``extra_sections`` are functions of the finished :class:`Analysis` (model, data, probe table,
    best hook, metrics) that return one more ``Section`` each, placed before the training
    section; they may add their numbers to ``analysis.metrics``.
    """
    cfg = config or AnalysisConfig()
    check_hmm(hmm)
    check_vocabulary(model, hmm)
    model.eval()
    return _analyse(model, hmm, out_dir, cfg, history, title, extra_metrics, extra_sections)


class _Stages:
    """One log line per analysis stage with its own time and the total so far, so a long run
    shows where it is and where the time went (``metrics["stage_seconds"]``). Each stage runs a
    small model's ops at one intra-op thread while other work holds the cores, re-decided as it
    goes (``threads.adaptive_threads_for_model``; the thread counts it ran at, in order:
    ``metrics["stage_threads"]``)."""

    def __init__(self, metrics: dict[str, Any], model: Any) -> None:
        self.t0 = time.perf_counter()
        self.seconds = metrics.setdefault("stage_seconds", {})
        self.threads = metrics.setdefault("stage_threads", {})
        self.model = model

    @contextlib.contextmanager
    def __call__(self, name: str, what: str) -> Iterator[None]:
        logger.info("%s: %s", name, what)
        start = time.perf_counter()
        with adaptive_threads_for_model(self.model) as guard:
            yield
        self.threads[name] = guard.used if guard else [torch.get_num_threads()]
        now = time.perf_counter()
        self.seconds[name] = now - start
        logger.info("%s done in %.1f s (%.1f s so far)", name, now - start, now - self.t0)


def _analyse(
    model: Any,
    hmm: HMM,
    out_dir: str | os.PathLike,
    cfg: AnalysisConfig,
    history: Any | None,
    title: str,
    extra_metrics: dict[str, Any] | None,
    extra_sections: Sequence[Callable[[Analysis], Section]],
) -> dict[str, Any]:
    """:func:`analyse` after its checks, stage by stage."""
    metrics = {**_describe(model, hmm), **(extra_metrics or {})}
    cfg = replace(cfg, mode=resolve_mode(hmm, metrics["n_ctx"], cfg.mode))  # "auto" decided once
    check_analysis_memory(hmm, metrics["n_ctx"], model.cfg.d_model, len(residual_hooks(model)), cfg)
    stage = _Stages(metrics, model)
    # Figures are exported alongside the run, each section's as soon as it is built.
    with FigureExporter(out_dir, cfg.export) as exporter:

        def queue(report: list[Section]) -> None:
            exporter.submit([f for s in report for f in s.figures])

        with stage("probes", "collecting activations, fitting probes at every residual hook"):
            state = _fit_probes(model, hmm, cfg, metrics)  # one forward pass, shared below
        with stage("loss", "the model's loss against the optimum"):
            _ground_truth(hmm, metrics)
            _model_loss(model, hmm, cfg, metrics, state.data)
        report = [sections.model_section(hmm, metrics)]
        table, best, ranked_by = state.table, state.best_hook, state.ranked_by
        logger.info("probe table\n%s", table.to_markdown())
        with stage("geometry", "the belief-geometry figures and held-out scores by position"):
            report.append(sections.geometry_section(table, state.data, best, ranked_by, cfg))
            report.append(sections.probe_section(table, best, ranked_by, cfg))
            folds = table.meta.get("folds")
            if folds and best != CONCAT:
                by_position = heldout_by_position(table, state.data, [best])
                metrics["heldout_by_position"] = by_position
                report.append(sections.position_section(by_position, folds))
        queue(report)
        if cfg.controls:
            with stage("controls", "shuffled beliefs, an untrained model, next-token targets"):
                report.append(sections.controls_section(table, _controls(state), best))
            queue(report)
        if cfg.interventions:
            report += _interventions(state, stage)
        report += [build(state) for build in extra_sections]
        if history is not None and getattr(history, "loss", None):
            report.append(sections.training_section(history, _training(history, metrics)))
        metrics["analysis_seconds"] = time.perf_counter() - stage.t0
        formats = ", ".join(cfg.export) or "none"
        with stage("report", f"writing the report and figures ({formats})"):
            write_report(out_dir, title, report, metrics, export=cfg.export, exporter=exporter)
    return metrics


def check_vocabulary(model: Any, hmm: HMM) -> None:
    """Refuse a model with fewer tokens than ``hmm`` emits symbols; log a model with more."""
    d_vocab = int(model.cfg.d_vocab)
    if d_vocab < hmm.n_symbols:
        raise BeliefLensError(
            f"the model has a vocabulary of {d_vocab} tokens but {hmm.name} emits "
            f"{hmm.n_symbols} symbols"
        )
    if d_vocab > hmm.n_symbols:
        logger.warning("the model has %d tokens for %d symbols", d_vocab, hmm.n_symbols)


def check_analysis_memory(hmm: HMM, n_ctx: int, d_model: int, n_hooks: int, cfg: Any) -> int:
    """Refuse, before any work (a demo's training included), an analysis whose activations
    cannot fit in memory: at most :func:`distinct_prefix_bound` rows per hook, the model's and
    (with controls) the untrained model's at once. Returns the estimate in bytes."""
    mode = resolve_mode(hmm, n_ctx, cfg.mode)
    if mode == "sampled":
        n = DEFAULT_SAMPLED if cfg.n_sequences is None else cfg.n_sequences
    else:
        n = count_sequences(hmm, n_ctx) or MAX_ENUMERATED
    rows = distinct_prefix_bound(n, n_ctx, hmm.n_symbols)
    return check_acts_memory(rows, d_model, n_hooks, copies=2 if cfg.controls else 1)


def resolve_mode(hmm: HMM, n_ctx: int, mode: AnalysisMode) -> AnalysisMode:
    """``mode``, with ``"auto"`` resolved: ``"paper"`` where at most :data:`MAX_ENUMERATED`
    sequences of length ``n_ctx`` exist, else ``"sampled"``."""
    if mode != "auto":
        return mode
    try:
        enumerate_sequences(hmm, n_ctx, max_sequences=MAX_ENUMERATED)
    except InvalidProcessError:
        raise
    except BeliefLensError:
        logger.info("%s has too many sequences of length %d to enumerate: sampled probe data",
                    hmm.name, n_ctx)  # fmt: skip
        return "sampled"
    return "paper"


def _describe(model: Any, hmm: HMM) -> dict[str, Any]:
    """The process and the model's architecture, the first entries of ``metrics``."""
    arch = {
        k: getattr(model.cfg, k)
        for k in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "d_vocab")
        if isinstance(getattr(model.cfg, k, None), int)
    }
    return {
        "process": hmm.name,
        "n_states": hmm.n_states,
        "n_symbols": hmm.n_symbols,
        "n_ctx": int(model.cfg.n_ctx),
        "model": arch,
    }


def _ground_truth(hmm: HMM, metrics: dict[str, Any]) -> None:
    """``metrics["ground_truth"]``: the entropy rate and the myopic entropies h(1..12)."""
    h = myopic_entropy(hmm, min(metrics["n_ctx"], 12))
    try:
        h_mu = entropy_rate(hmm)
    except InvalidProcessError:
        raise
    except BeliefLensError:
        h_mu = entropy_rate(hmm, "chaos_game")
    metrics["ground_truth"] = {"entropy_rate": h_mu, "myopic_entropy": h.tolist()}


def _model_loss(
    model: Any, hmm: HMM, cfg: AnalysisConfig, metrics: dict[str, Any], data: ProbeData
) -> None:
    """``metrics["model_loss"]``: the model's loss against the optimum, overall and per
    position, and whether it is under-trained; from the probe pass's logits where it ran on
    the evaluation sequences (``logits_from``), else from a forward pass of its own."""
    evaluator = loss_evaluator(model, hmm, seed=cfg.seed)
    logits = None
    if isinstance(data.acts, PrefixActs) and torch.equal(evaluator.data.inputs, data.tokens):
        logits = prefix_logits(model, data.acts, data.tokens)
    if logits is not None:
        record, source = evaluator.score_logits(logits), "the probe pass"
    else:
        record, source = evaluator(model, step=0, tokens=0), "a forward pass"
    metrics["model_loss"] = ml = {
        "loss": record.loss,
        "optimal_loss": record.loss / record.loss_over_optimal,
        "loss_over_optimal": record.loss_over_optimal,
        "loss_per_position": record.loss_per_position,
        "optimal_per_position": [
            v / r if r > 0 else math.nan
            for v, r in zip(
                record.loss_per_position, record.loss_over_optimal_per_position, strict=True
            )
        ],
        "exact": record.exact,
        "optimal_loss_method": record.optimal_method,  # "exact" or "estimated ± se"
        "optimal_loss_se": record.optimal_loss_se,
        "undertrained": record.loss_over_optimal > UNDERTRAINED_RATIO,
        "logits_from": source,
    }
    logger.info(
        "model loss %.5f nats, optimum %.5f (%s; ratio %.4f)",
        ml["loss"],
        ml["optimal_loss"],
        record.optimal_method,
        ml["loss_over_optimal"],
    )


def _fit_probes(model: Any, hmm: HMM, cfg: AnalysisConfig, metrics: dict[str, Any]) -> Analysis:
    """Collect the probe data once (every residual hook), fit the probe table and choose the
    best hook; ``metrics["probes"]`` (``ProbeTable.to_dict()``: rows, summary, meta) and
    ``["best_hook"]``."""
    mode = cfg.mode  # resolved by _analyse
    data = collect_probe_data(
        model,
        hmm,
        metrics["n_ctx"],
        residual_hooks(model),
        mode=mode,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        n_sequences=cfg.n_sequences if mode == "sampled" else None,  # an "auto" that enumerates
        weighting=cfg.weighting,
    )
    table = fit_probes(data, ridge=cfg.ridge)
    metrics["probes"] = table.to_dict()
    best, ranked_by = best_hook(table.rows)
    metrics["best_hook"] = {"hook": best, "ranked_by": ranked_by}
    return Analysis(model, hmm, cfg, data, table, best, metrics, ranked_by)


def _controls(state: Analysis) -> dict[str, ProbeTable]:
    """The shuffled-belief, untrained-model and next-token controls' tables, and how well the
    best hook's probe output preserves distances (``metrics["controls"]``)."""
    cfg, data, hmm, best = state.config, state.data, state.hmm, state.best_hook
    controls = {
        "shuffled beliefs": shuffle_control(data, seed=cfg.seed, ridge=cfg.ridge),
        "untrained model": untrained_control(state.model, data, seed=cfg.seed, ridge=cfg.ridge),
        "next-token targets": next_token_control(data, ridge=cfg.ridge),
    }
    state.metrics["controls"] = {k: v.to_dict() for k, v in controls.items()}
    true = data.beliefs.reshape(-1, hmm.n_states)
    best_pred = state.table.probes[best].predict(data.acts[best].double())
    next_tok = hmm.next_token_probs(data.beliefs).reshape(-1, hmm.n_symbols)
    state.metrics["controls"]["distance_r2"] = distance_r2(
        best_pred.reshape(-1, hmm.n_states), true, next_tok
    )
    return controls


def _interventions(state: Analysis, stage: _Stages) -> list[Section]:
    """Steering and patching, each skipped with its reason where the process does not allow it:
    one hidden state (nothing to move), or a generalized HMM (beliefs off the simplex that
    steering targets assume; patching needs no target belief and runs)."""
    hmm = state.hmm
    if hmm.n_states < 2:
        reason = "the process has one hidden state, so a single belief: nothing to intervene on"
        state.metrics["interventions"] = state.metrics["patching"] = {"skipped": reason}
        return [sections.skipped_section(t, reason) for t in ("Steering", "Activation patching")]
    if hmm.generalized:
        reason = (
            f"{hmm.name} is a generalized HMM: its beliefs live in the tau-normalised space "
            "(entries may be negative), not on the probability simplex that steering targets "
            "assume"
        )
        state.metrics["interventions"] = {"skipped": reason}
        steering = sections.skipped_section("Steering", reason)
    else:
        with stage("steering", "steering at each hook against theory and a control"):
            steered, skipped = _steering(state)
        steering = sections.steering_section(steered, state.best_hook)
        if skipped:
            lines = tuple(f"Steering skipped at {hook}: {why}" for hook, why in skipped.items())
            steering = replace(steering, warnings=steering.warnings + lines)
    with stage("patching", "patching each layer's belief subspace against theory"):
        patched = _patching(state)
    return [steering, sections.patching_section(patched)]


def _steering(state: Analysis) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Steering at every hook but the final norm's, against theory and a control
    (``metrics["interventions"]``, one summary per hook); a hook whose probe gives no steering
    map (a degenerate fit) is skipped with its reason (``metrics["interventions_skipped"]``)."""
    steered: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    writable = set(steerable_hooks(state.model))
    for hook in state.data.acts:
        if hook not in writable:
            continue  # the final norm, or a hook whose writes miss the residual stream
        try:
            report = intervention_report(
                state.model,
                None,
                state.table.probes[hook],
                hook,
                state.hmm,
                n_sequences=state.config.intervention_sequences,
                seed=state.config.seed,
            )
        except InvalidProcessError:
            raise
        except BeliefLensError as err:  # checked before any steering forward pass
            skipped[hook] = str(err)
            continue
        steered[hook] = report.to_dict()
    state.metrics["interventions"] = steered
    if skipped:
        state.metrics["interventions_skipped"] = skipped
    return steered, skipped


def _patching(state: Analysis) -> PatchingResult:
    """Activation patching of each layer's belief subspace against theory, beside its control
    (``metrics["patching"]``)."""
    model, cfg = state.model, state.config
    n_ctx, n = int(model.cfg.n_ctx), cfg.intervention_sequences
    probes = {
        layer: state.table.probes[f"blocks.{layer}.hook_resid_post"]
        for layer in range(int(model.cfg.n_layers))
    }
    clean = sample_sequences(state.hmm, n, n_ctx, seed=cfg.seed + 1)
    corrupted = sample_sequences(state.hmm, n, n_ctx, seed=cfg.seed + 2)
    result = patching_report(model, clean, corrupted, probes, state.hmm, control_seed=cfg.seed)
    state.metrics["patching"] = result.to_dict()
    return result


def _training(history: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics["training"]``: the training run's config, length and final evaluation."""
    final = history.evals[-1] if history.evals else None
    metrics["training"] = {
        "config": getattr(history, "config", {}),
        "steps": len(history.loss),
        "seconds": getattr(history, "seconds", None),
        "tokens": len(history.loss) * history.tokens_per_step,
        "optimal_loss_method": getattr(history, "optimal_method", "exact"),
        "final_eval": final.__dict__ if final else None,
    }
    return metrics["training"]
