"""The attention experiment (arXiv 2502.01954): train single-layer models of the paper's Mess3
architecture with 1 and 2 heads at a Mess3 setting whose eigenvalue ``1 - 3x`` is positive and at
one where it is negative, over several seeds; compare each model's attention with the
constrained-update theory (:mod:`belief_lens.attention`) and its loss with the optimum; and apply
the same analysis to every layer of the paper's 4-layer checkpoint.

The head-count prediction: a negative eigenvalue makes each past token's contribution alternate
in sign with distance, which one softmax head cannot produce; so a second head should lower the
excess loss there, and only there. A second head helps (:func:`second_head_helps`) when its gain
(the 1-head model's excess loss minus the best multi-head model's, on the same sequences) exceeds
twice its paired per-sequence standard error and is at least ``min_share`` of the 1-head model's
excess loss; the prediction holds for a (setting, seed) when it helps exactly where the eigenvalue
is negative.

The constrained update is first order in the emission contrast, so each setting's
:func:`belief_lens.attention.token_sum_profile` (the best per-token sum on exact beliefs) is
recorded beside it: where that decays far from ``ln|lam|``, the decay prediction is outside its
domain.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.activations import residual_stream
from belief_lens.attention import (
    AttentionComparison,
    AttentionTheory,
    LayerMeasurement,
    TokenSumProfile,
    attention_theory,
    compare_to_theory,
    measure_attention,
    token_sum_profile,
)
from belief_lens.beliefs import belief_states, next_token_distributions, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.metrics import entropy, kl_divergence, mean_se
from belief_lens.models import ModelConfig, load_checkpoint, toy_transformer
from belief_lens.probes import AffineProbe
from belief_lens.processes import mess3
from belief_lens.report import attention_section, write_report
from belief_lens.training import TrainConfig, train
from belief_lens.validation import check_float, check_int

__all__ = [
    "AttentionExperiment",
    "AttentionRun",
    "HeadCountResult",
    "ModelAnalysis",
    "analyse_attention",
    "excess_loss",
    "excess_loss_per_sequence",
    "run_attention_experiment",
    "second_head_helps",
    "write_attention_report",
]


@dataclass(frozen=True)
class AttentionExperiment:
    """Mess3 ``(x, alpha)`` at a positive and a negative eigenvalue; single-layer models of the
    paper's Mess3 architecture with each of ``heads``, one per seed, each trained for ``steps``
    Bayes-target steps (or ``seconds_per_model`` of wall clock, whichever ends first); probes and
    attention measured on ``n_sequences`` sampled sequences. ``checkpoint``: a 4-layer Mess3
    model to analyse as well (``None``: none), on ``checkpoint_process``, the Mess3 it was
    trained on. ``min_share``: the share of the 1-head model's excess loss a second head must
    remove to count as helping (beside two paired standard errors).

    Why these settings: the decay-rate test needs the derivation's first-order regime, emissions
    barely informative (``alpha`` near 1/3; at the paper's 0.85 the best per-token sum of the exact
    beliefs has a log-slope 4.5 times ``ln lam``, see :func:`token_sum_profile`), so the positive
    setting is ``alpha = 0.4``, where that check's gap (6%) is well inside its 20% tolerance
    (0.45: 18%, at the edge). Closer to 1/3 the pattern barely matters to the loss (excess losses
    near 1e-6) and training leaves it loosely set (at 0.38 the two seeds' slopes were 10% and
    42% from ``ln lam``). The head-count test needs a loss difference large enough to
    measure, so the negative setting keeps ``alpha = 0.85`` (its eigenvalue, -0.35, decays fast
    enough that the first-order reading holds there too)."""

    positive: tuple[float, float] = (0.05, 0.4)
    negative: tuple[float, float] = (0.45, 0.85)
    heads: tuple[int, ...] = (1, 2)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 1500
    seconds_per_model: float | None = None
    n_ctx: int = 10
    n_sequences: int = 2000
    min_share: float = 0.5
    checkpoint: str | None = None
    checkpoint_process: tuple[float, float] = (0.05, 0.85)
    threads: int | None = 1  # torch threads while it runs (tiny models: more threads only spin)

    def __post_init__(self) -> None:
        for name in ("positive", "negative"):
            x, alpha = getattr(self, name)
            hmm = mess3(x, alpha)  # validates x and alpha
            lam = attention_theory(hmm).eigenvalue
            if (lam > 0) != (name == "positive"):
                raise BeliefLensError(f"{name} needs a {name} eigenvalue 1 - 3x; x={x} gives {lam}")
        attention_theory(mess3(*self.checkpoint_process))  # validates it
        if (
            sorted(set(self.heads)) != sorted(self.heads)
            or 1 not in self.heads
            or len(self.heads) < 2
        ):
            raise BeliefLensError(f"heads must be distinct counts including 1, got {self.heads}")
        for h in self.heads:
            check_int("heads", h, low=1)
        if not self.seeds:
            raise BeliefLensError("seeds is empty; give at least one")
        for name in ("steps", "n_ctx", "n_sequences"):
            check_int(name, getattr(self, name), low=2)
        if self.seconds_per_model is not None:
            check_float("seconds_per_model", self.seconds_per_model, low=0, low_open=True)
        check_float("min_share", self.min_share, low=0, low_open=True, high=1)
        if self.threads is not None:
            check_int("threads", self.threads, low=1)

    def settings(self) -> tuple[tuple[str, HMM], ...]:
        return (("positive", mess3(*self.positive)), ("negative", mess3(*self.negative)))

    def processes(self) -> tuple[tuple[str, HMM], ...]:
        """:meth:`settings`, and the checkpoint's process where a checkpoint is analysed."""
        if self.checkpoint is None:
            return self.settings()
        return (*self.settings(), ("checkpoint", mess3(*self.checkpoint_process)))

    def train_config(self, seed: int) -> TrainConfig:
        """``TrainConfig.preset("bayes", "mess3")`` for ``steps`` (or the time cap), one loss
        evaluation at the end."""
        return TrainConfig.preset(
            "bayes",
            "mess3",
            steps=self.steps,
            seconds=self.seconds_per_model,
            seed=seed,
            eval_every=self.steps,
            checkpoint_every=max(1, self.steps // 10),  # with a checkpoint_dir: resumable
            warmup_steps=min(200, self.steps // 4),
        )


@dataclass(frozen=True)
class ModelAnalysis:
    """One model measured: each layer's heads (with probes at ``blocks.L.hook_resid_mid``), the
    probes' in-sample R², and each layer's first head compared with the theory."""

    measurements: tuple[LayerMeasurement, ...]
    probe_r2: tuple[float, ...]
    comparisons: tuple[tuple[AttentionComparison, ...], ...]  # [layer][head]

    def to_dict(self) -> dict[str, Any]:
        return {
            "probe_r2": list(self.probe_r2),
            "layers": [
                {"comparisons": [c.to_dict() for c in cs], **m.to_dict()}
                for m, cs in zip(self.measurements, self.comparisons, strict=True)
            ],
        }


def analyse_attention(model: Any, hmm: HMM, tokens: Any, theory: AttentionTheory) -> ModelAnalysis:
    """Fit a probe at each layer's ``hook_resid_mid`` (where the heads have just written) on the
    true beliefs of ``tokens``, then measure every head and compare it with ``theory``."""
    n_layers = model.cfg.n_layers
    hooks = [f"blocks.{layer}.hook_resid_mid" for layer in range(n_layers)]
    acts = residual_stream(model, tokens, hooks)
    beliefs = belief_states(hmm, tokens).reshape(-1, hmm.n_states)
    probes, r2 = {}, []
    for layer, hook in enumerate(hooks):
        X = acts[hook].double().reshape(-1, model.cfg.d_model)
        probes[layer] = AffineProbe().fit(X, beliefs)
        r2.append(float(probes[layer].score(X, beliefs)))
    measured = measure_attention(model, tokens, probes=probes, predicted_slope=theory.log_slope)
    comparisons = tuple(
        tuple(compare_to_theory(theory, m, h) for h in range(len(m.heads))) for m in measured
    )
    return ModelAnalysis(measured, tuple(r2), comparisons)


def second_head_helps(
    gain: float, gain_se: float, one_head_excess: float, min_share: float
) -> bool:
    """The head-count rule: a gain (excess loss removed by the extra head, paired on the same
    sequences) counts when it exceeds twice its paired standard error and is at least
    ``min_share`` of the 1-head model's excess loss. The first says it is not sampling noise, the
    second that it matters beside what one head leaves; an absolute margin would depend on how
    long the models trained."""
    return gain > 2 * gain_se and gain >= min_share * one_head_excess


@dataclass(frozen=True)
class HeadCountResult:
    """One setting and seed: each head count's loss against the optimum (with its per-sequence
    standard error), the gain of the best multi-head model over one head with its paired standard
    error, and whether a second head helps where the theory puts it."""

    setting: str
    x: float
    alpha: float
    eigenvalue: float
    seed: int
    excess_loss: dict[int, float]  # heads -> loss / optimum - 1 on the analysis sequences
    excess_loss_se: dict[int, float]  # its standard error over sequences
    gain_se: float  # paired standard error of gain_from_second_head
    trainer_loss_over_optimal: dict[int, float]  # the trainer's sampled loss / exact optimum
    steps: dict[int, int]
    analyses: dict[int, ModelAnalysis]
    min_share: float

    @property
    def gain_from_second_head(self) -> float:
        """Excess loss of the 1-head model minus the best multi-head model's."""
        return self.excess_loss[1] - min(v for h, v in self.excess_loss.items() if h > 1)

    @property
    def relative_gain_from_second_head(self) -> float:
        """:attr:`gain_from_second_head` as a share of the 1-head model's excess loss,
        which :attr:`second_head_helps` compares with ``min_share``."""
        return self.gain_from_second_head / self.excess_loss[1]

    @property
    def second_head_helps(self) -> bool:
        """:func:`second_head_helps` on this result."""
        return second_head_helps(
            self.gain_from_second_head, self.gain_se, self.excess_loss[1], self.min_share
        )

    @property
    def prediction_holds(self) -> bool:
        """A second head helps exactly where the eigenvalue is negative."""
        return self.second_head_helps == (self.eigenvalue < 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "x": self.x,
            "alpha": self.alpha,
            "eigenvalue": self.eigenvalue,
            "seed": self.seed,
            **{
                f"excess_loss_{h}_head{'s' if h > 1 else ''}": v
                for h, v in self.excess_loss.items()
            },
            "excess_loss_se": {str(h): v for h, v in self.excess_loss_se.items()},
            "trainer_loss_over_optimal": {
                str(h): v for h, v in self.trainer_loss_over_optimal.items()
            },
            "steps": {str(h): s for h, s in self.steps.items()},
            "odd_share": {
                str(h): [m.odd_share() for m in a.measurements[0].heads]
                for h, a in self.analyses.items()
            },
            "ov_cosine_mean": {
                str(h): [sum(c.ov_cosines) / len(c.ov_cosines) for c in a.comparisons[0]]
                for h, a in self.analyses.items()
            },
            "gain_from_second_head": self.gain_from_second_head,
            "gain_from_second_head_se": self.gain_se,
            "relative_gain_from_second_head": self.relative_gain_from_second_head,
            "min_share": self.min_share,
            "second_head_helps": self.second_head_helps,
            "head_count_prediction_holds": self.prediction_holds,
        }


@dataclass(frozen=True)
class AttentionRun:
    """What :func:`run_attention_experiment` found."""

    config: AttentionExperiment
    theories: dict[str, AttentionTheory]  # positive, negative (and checkpoint, if analysed)
    validity: dict[str, TokenSumProfile]  # the same keys: the first-order check of each process
    results: tuple[HeadCountResult, ...]
    checkpoint: ModelAnalysis | None
    checkpoint_path: str | None
    wall_seconds: float
    cpu_seconds: float

    def positive_one_head(self) -> tuple[AttentionComparison, ...]:
        """The 1-head models at the positive setting, one comparison per seed (layer 0)."""
        return tuple(
            r.analyses[1].comparisons[0][0] for r in self.results if r.setting == "positive"
        )

    def to_dict(self) -> dict[str, Any]:
        """The numbers ``metrics.json`` holds: the headline is the mean over seeds of the 1-head
        model at the positive setting."""
        comps = self.positive_one_head()
        mean = lambda key: sum(c.to_dict()[key] for c in comps) / len(comps)  # noqa: E731
        predicted = self.theories["positive"].log_slope
        measured = mean("attention_slope_measured")
        return {
            "attention_slope_predicted": predicted,
            "attention_slope_measured": measured,
            "attention_slope_measured_se": mean("attention_slope_measured_se"),
            "attention_slope_raw": mean("attention_slope_raw"),
            "attention_slope_raw_se": mean("attention_slope_raw_se"),
            "attention_slope_rel_error": abs(measured - predicted) / abs(predicted),
            "contribution_slope_measured": mean("contribution_slope_measured"),
            "contribution_slope_measured_se": mean("contribution_slope_measured_se"),
            "contribution_slope_rel_error": abs(mean("contribution_slope_measured") - predicted)
            / abs(predicted),
            "ov_cosine_min": min(c.to_dict()["ov_cosine_min"] for c in comps),
            "embedding_cosine_min": min(c.to_dict()["embedding_cosine_min"] for c in comps),
            "per_seed": [
                {"seed": r.seed, **c.to_dict()}
                for r, c in zip(
                    [r for r in self.results if r.setting == "positive"], comps, strict=True
                )
            ],
            "theory": {k: t.to_dict() for k, t in self.theories.items()},
            "theory_validity": {k: v.to_dict() for k, v in self.validity.items()},
            "head_count": [r.to_dict() for r in self.results],
            "head_count_prediction_holds": all(r.prediction_holds for r in self.results),
            "models": [
                {"setting": r.setting, "seed": r.seed, "heads": h, **a.to_dict()}
                for r in self.results
                for h, a in r.analyses.items()
            ],
            "checkpoint": None
            if self.checkpoint is None
            else {"path": self.checkpoint_path, **self.checkpoint.to_dict()},
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "config": {**vars(self.config)},
        }


def excess_loss_per_sequence(model: Any, hmm: HMM, tokens: Any) -> Float[Tensor, " n"]:
    """Each sequence's share of :func:`excess_loss`: its mean KL from the exact next-token
    distributions to the model's, over the mean entropy of all of ``tokens`` (so the mean over
    sequences is :func:`excess_loss`, and two models' values pair by sequence)."""
    p = next_token_distributions(hmm, tokens)
    with torch.no_grad():
        q = torch.softmax(model(tokens.to(next(model.parameters()).device)).double(), -1).cpu()
    return kl_divergence(p, q[..., : hmm.n_symbols]).mean(-1) / entropy(p).mean()


def excess_loss(model: Any, hmm: HMM, tokens: Any) -> float:
    """``loss / optimum - 1`` on ``tokens``: the model's mean cross-entropy against the exact
    next-token distributions over their mean entropy, on the same sequences (so the sample's own
    luck cancels, and the value is never negative)."""
    return float(excess_loss_per_sequence(model, hmm, tokens).mean())


def _train_one(
    config: AttentionExperiment, hmm: HMM, heads: int, seed: int, directory: Path | None
) -> tuple[Any, Any]:
    """One single-layer model; with ``directory``, its step checkpoints go there (and a rerun
    resumes from the newest)."""
    model = toy_transformer(
        ModelConfig.paper(
            "mess3", d_vocab=hmm.n_symbols, n_ctx=config.n_ctx, n_layers=1, n_heads=heads
        ),
        seed=seed,
    )
    history = train(model, hmm, config.train_config(seed), progress=False, checkpoint_dir=directory)
    return model.eval(), history


def run_attention_experiment(
    config: AttentionExperiment, checkpoint_dir: str | os.PathLike | None = None
) -> AttentionRun:
    """Train and analyse every (setting, seed, heads) model, then the checkpoint if given, with
    ``config.threads`` torch threads (restored afterwards). With ``checkpoint_dir`` each model's
    training writes step checkpoints there, and a rerun resumes each from its newest."""
    before = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, None if checkpoint_dir is None else Path(checkpoint_dir))
    finally:
        torch.set_num_threads(before)


def _one_setting(
    config: AttentionExperiment,
    name: str,
    hmm: HMM,
    theory: AttentionTheory,
    seed: int,
    checkpoint_dir: Path | None,
) -> HeadCountResult:
    """Every head count at one setting and seed, measured on the same sequences."""
    tokens = sample_sequences(hmm, config.n_sequences, config.n_ctx, seed=seed + 10_000)
    per_sequence, trainer, steps, analyses = {}, {}, {}, {}
    for heads in config.heads:
        directory = None if checkpoint_dir is None else checkpoint_dir / f"{name}-{heads}h-{seed}"
        model, history = _train_one(config, hmm, heads, seed, directory)
        if not history.evals:
            raise BeliefLensError(f"training {heads} head(s) on {hmm.name} evaluated nothing")
        trainer[heads] = history.evals[-1].loss_over_optimal
        per_sequence[heads] = excess_loss_per_sequence(model, hmm, tokens)
        steps[heads] = history.steps
        analyses[heads] = analyse_attention(model, hmm, tokens, theory)
    excess = {h: float(v.mean()) for h, v in per_sequence.items()}
    best = min((h for h in excess if h > 1), key=excess.__getitem__)
    gain_se = mean_se((per_sequence[1] - per_sequence[best]).tolist())[1]
    se = {h: mean_se(v.tolist())[1] for h, v in per_sequence.items()}
    x, alpha = getattr(config, name)
    return HeadCountResult(
        name, x, alpha, theory.eigenvalue, seed, excess, se, gain_se, trainer, steps, analyses,
        config.min_share,
    )  # fmt: skip


def _run(config: AttentionExperiment, checkpoint_dir: Path | None) -> AttentionRun:
    t0, c0 = time.perf_counter(), time.process_time()
    theories = {name: attention_theory(hmm) for name, hmm in config.processes()}
    validity = {name: token_sum_profile(hmm) for name, hmm in config.processes()}
    results = [
        _one_setting(config, name, hmm, theories[name], seed, checkpoint_dir)
        for name, hmm in config.settings()
        for seed in config.seeds
    ]
    checkpoint = None
    if config.checkpoint is not None:
        model = load_checkpoint(config.checkpoint).eval()
        hmm = mess3(*config.checkpoint_process)
        tokens = sample_sequences(hmm, config.n_sequences, model.cfg.n_ctx, seed=10_000)
        checkpoint = analyse_attention(model, hmm, tokens, theories["checkpoint"])
    return AttentionRun(
        config,
        theories,
        validity,
        tuple(results),
        checkpoint,
        config.checkpoint,
        time.perf_counter() - t0,
        time.process_time() - c0,
    )


def write_attention_report(
    run: AttentionRun,
    out_dir: str | os.PathLike,
    title: str | None = None,
    export: tuple[str, ...] = ("png", "pdf"),
) -> dict[str, Any]:
    """Write ``run``'s ``report.html`` and ``metrics.json`` (and figure files in ``export``
    formats) into ``out_dir``; return the metrics."""
    metrics = run.to_dict()
    title = title or "belief_lens attention: constrained belief updating"
    write_report(Path(out_dir), title, [attention_section(run)], metrics, export=export)
    return metrics
