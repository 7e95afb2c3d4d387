"""The factored-geometry experiment: train the paper's Mess3 architecture on Mess3 x Mess3
(independent, or coupled by joint-vocabulary noise ``epsilon``), then measure the factored
geometry (:mod:`belief_lens.factored_geometry`) at evenly spaced step checkpoints.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jaxtyping import Float
from torch import Tensor

from belief_lens.activations import residual_stream
from belief_lens.beliefs import sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.factored_geometry import (
    FactoredGeometry,
    GeometryOverTraining,
    geometry_over_training,
)
from belief_lens.factors import factored_beliefs, factored_cost
from belief_lens.hmm import HMM
from belief_lens.models import ModelConfig, load_checkpoint, toy_transformer
from belief_lens.probes import AffineProbe, split_prefixes
from belief_lens.processes import mess3, noisy_product, product
from belief_lens.report import factored_section, factored_seeds_section, write_report
from belief_lens.training import Targets, TrainConfig, step_checkpoints, train
from belief_lens.validation import check_float, check_int

__all__ = [
    "DEFAULT_HOOK",
    "FACTORED_TRAINING",
    "FactoredExperiment",
    "FactoredRun",
    "factored_training",
    "run_factored_experiment",
    "run_factored_seeds",
    "seed_summary",
    "write_factored_report",
    "write_factored_seeds_report",
]

#: A factored verdict repeats over at least this many seeds.
MIN_SEEDS = 3

#: Where the paper reads the residual stream; the last layer's output before the final norm.
DEFAULT_HOOK = "blocks.3.hook_resid_post"
#: How a factored run departs from ``TrainConfig.preset("bayes", "mess3")``: peak learning rate
#: 3e-3 after a 10-step warmup, and a 512-sequence loss evaluation at each checkpoint.
FACTORED_TRAINING: dict[str, Any] = {"lr": 3e-3, "warmup_steps": 10, "eval_sequences": 512}


def factored_training(targets: Targets = "bayes", **fields: Any) -> TrainConfig:
    """The training of a factored run: ``TrainConfig.preset(targets, "mess3")`` with
    :data:`FACTORED_TRAINING`; ``fields`` (its length: ``seconds`` and/or ``steps``, the
    ``seed``, ``checkpoint_every``, ...) override.

    >>> factored_training(seconds=60).lr
    0.003
    """
    return TrainConfig.preset(targets, "mess3", **{**FACTORED_TRAINING, **fields})


@dataclass(frozen=True)
class FactoredExperiment:
    """Train the paper's Mess3 architecture on Mess3 x Mess3 seen through joint-vocabulary noise
    ``epsilon`` (0: independent factors) as ``train`` says, then measure the factored geometry
    over training. ``train.seed`` seeds the weights, the data and the splits; step checkpoints
    come every ``train.checkpoint_every`` steps (default: each tenth of the run), each with a
    loss evaluation."""

    epsilon: float = 0.0
    train: TrainConfig = field(default_factory=lambda: factored_training(seconds=240.0))
    n_ctx: int = 10
    hook: str = DEFAULT_HOOK
    n_eval_sequences: int = 3000  # sampled sequences the probes are fitted and scored on
    n_vary_one: int = 1000
    n_checkpoints: int = 8  # analysed, evenly spaced over the run (the last always)

    def __post_init__(self) -> None:
        check_float("epsilon", self.epsilon, low=0, high=1)
        if not isinstance(self.train, TrainConfig):
            raise BeliefLensError(
                f"train must be a TrainConfig (e.g. factored_training(seconds=240)), got "
                f"{type(self.train).__name__}"
            )
        if not isinstance(self.hook, str):
            raise BeliefLensError(f"hook must be a full hook name, got {self.hook!r}")
        for name in ("n_ctx", "n_eval_sequences", "n_vary_one", "n_checkpoints"):
            check_int(name, getattr(self, name), low=1)

    def factors(self) -> tuple[HMM, HMM]:
        return mess3(), mess3()

    def process(self) -> HMM:
        f = self.factors()
        return product(*f) if self.epsilon == 0 else noisy_product(*f, epsilon=self.epsilon)


@dataclass(frozen=True)
class FactoredRun:
    """What :func:`run_factored_experiment` found: the final geometry and its course."""

    config: FactoredExperiment
    process_name: str
    steps: int
    train_seconds: float  # wall clock of the training run, its evaluations included
    train_cpu_seconds: float  # CPU time of this process (all its threads) over the same span
    final: FactoredGeometry
    over_training: GeometryOverTraining
    factored_cost: float  # mean nats per position lost by the product of marginals
    truth: tuple[Float[Tensor, "k S_i"], ...]  # each factor's true marginal, held-out rows
    probed: tuple[Float[Tensor, "k S_i"], ...]  # the per-factor probes' outputs there
    loss_over_optimal: float | None

    def to_dict(self) -> dict[str, Any]:
        """The numbers ``metrics.json`` holds."""
        return {
            "process": self.process_name,
            "epsilon": self.config.epsilon,
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
            **self.final.to_dict(),
            "factored_cost_nats": self.factored_cost,
            "loss_over_optimal": self.loss_over_optimal,
            "over_training": self.over_training.to_dict(),
        }


def run_factored_experiment(
    config: FactoredExperiment,
    work_dir: str | os.PathLike,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> FactoredRun:
    """Train as ``config`` says (step checkpoints in ``checkpoint_dir``, default
    ``work_dir/checkpoints``, all kept), then measure ``n_checkpoints`` of them, evenly spaced
    and ending with the last. Checkpoints already there are refused, unless ``resume``: then the
    training continues from the newest."""
    ckpt_dir = Path(work_dir) / "checkpoints" if checkpoint_dir is None else Path(checkpoint_dir)
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise BeliefLensError(
            f"{ckpt_dir} already holds checkpoints; choose another directory so nothing is "
            "lost, or pass resume=True to continue that training"
        )
    hmm, factors = config.process(), config.factors()
    seed = config.train.seed
    t0, c0 = time.perf_counter(), time.process_time()
    history = _train(config, hmm, ckpt_dir)
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - c0

    tokens = sample_sequences(hmm, config.n_eval_sequences, config.n_ctx, seed=seed + 1)
    chosen = _evenly_spaced(step_checkpoints(ckpt_dir), config.n_checkpoints)
    models = ((step, load_checkpoint(path / "model.safetensors").eval()) for step, path in chosen)
    course = geometry_over_training(
        models, tokens, hmm, factors, config.hook, seed=seed, n_vary_one=config.n_vary_one
    )
    last = load_checkpoint(chosen[-1][1] / "model.safetensors").eval()
    truth, probed = _factor_simplices(last, tokens, hmm, factors, config.hook, seed)
    shape = [f.n_states for f in factors]
    return FactoredRun(
        config=config,
        process_name=hmm.name,
        steps=history.steps,
        train_seconds=train_seconds,
        train_cpu_seconds=train_cpu,
        final=course.geometries[-1],
        over_training=course,
        factored_cost=float(factored_cost(hmm, shape, tokens).mean()),
        truth=truth,
        probed=probed,
        loss_over_optimal=history.evals[-1].loss_over_optimal if history.evals else None,
    )


def _train(config: FactoredExperiment, hmm: HMM, ckpt_dir: Path) -> Any:
    """The paper's Mess3 architecture trained on ``hmm``, every step checkpoint kept (they are
    the course of training), a loss evaluation at each."""
    model = toy_transformer(
        ModelConfig.paper("mess3", d_vocab=hmm.n_symbols, n_ctx=config.n_ctx),
        seed=config.train.seed,
    )
    every = config.train.checkpoint_every
    setup = config.train.replace(
        keep_checkpoints=10**9, eval_every=config.train.eval_every or every
    )
    return train(model, hmm, setup, checkpoint_dir=ckpt_dir, progress=True)


def _evenly_spaced(saved: list[tuple[int, Path]], n: int) -> list[tuple[int, Path]]:
    """``n`` of the ``saved`` checkpoints (fewer if there are fewer), evenly spaced, ending with
    the last."""
    if not saved:
        raise BeliefLensError("training wrote no step checkpoints")
    picks = {round(i * (len(saved) - 1) / max(1, n - 1)) for i in range(n)}
    return [saved[i] for i in sorted(picks)]


def _factor_simplices(
    model: Any, tokens: Tensor, hmm: HMM, factors: tuple[HMM, ...], hook: str, seed: int
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Each factor's true marginal belief on held-out prefixes, and a per-factor probe's output
    there (fitted on the rest): the simplices the report draws side by side."""
    acts = residual_stream(model, tokens, hook)[hook].double()
    beliefs = factored_beliefs(hmm, [f.n_states for f in factors], tokens)
    test = split_prefixes(tokens, 0.2, seed)
    truth, probed = [], []
    for marginal in beliefs.marginals:
        probe = AffineProbe().fit(acts[~test], marginal[~test])
        truth.append(marginal[test])
        probed.append(probe.predict(acts[test]))
    return tuple(truth), tuple(probed)


def write_factored_report(
    run: FactoredRun,
    out_dir: str | os.PathLike,
    title: str | None = None,
    export: tuple[str, ...] = ("png", "pdf"),
) -> dict[str, Any]:
    """Write ``run``'s ``report.html`` and ``metrics.json`` (and figure files in ``export``
    formats) into ``out_dir``; return the metrics."""
    metrics = run.to_dict()
    title = title or f"belief_lens factored: {run.process_name}"
    write_report(out_dir, title, [factored_section(run)], metrics, export=export)
    return metrics


def run_factored_seeds(
    config: FactoredExperiment,
    work_dir: str | os.PathLike,
    seeds: tuple[int, ...] = (0, 1, 2),
    *,
    checkpoint_root: str | os.PathLike | None = None,
    resume: bool = False,
) -> list[FactoredRun]:
    """``config`` trained and measured once per seed (weights, data and splits), each in
    ``work_dir/seed-<s>``: a verdict from one seed is an anecdote (at least :data:`MIN_SEEDS`).
    With ``checkpoint_root`` a seed's step checkpoints go to ``checkpoint_root/seed-<s>``;
    ``resume`` continues each seed's training from its checkpoints."""
    seeds = tuple(check_int("seed", s, low=0) for s in seeds)
    if len(set(seeds)) < MIN_SEEDS:
        raise BeliefLensError(f"give at least {MIN_SEEDS} distinct seeds, got {list(seeds)}")
    return [
        run_factored_experiment(
            replace(config, train=config.train.replace(seed=s)),
            Path(work_dir) / f"seed-{s}",
            checkpoint_dir=None if checkpoint_root is None else Path(checkpoint_root) / f"seed-{s}",
            resume=resume,
        )
        for s in seeds
    ]


def _mean_se(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else float("nan")
    return {"mean": mean, "se": (var / n) ** 0.5, "values": values}


def seed_summary(runs: list[FactoredRun]) -> dict[str, Any]:
    """Each headline measurement over the seeds as mean, standard error and the values; the
    verdict every seed gives, or ``"mixed"`` with the count of each."""
    finals = [r.final for r in runs]
    out: dict[str, Any] = {"n_seeds": len(runs), "seeds": [r.config.train.seed for r in runs]}
    for i in range(len(finals[0].factor_r2)):
        out[f"factor_{i}_r2_heldout"] = _mean_se([g.factor_r2[i] for g in finals])
    for name in ("joint_r2", "dims_95", "dims_99", "max_subspace_cosine"):
        out[name] = _mean_se([float(getattr(g, name)) for g in finals])
    out["factored_cost_nats"] = _mean_se([r.factored_cost for r in runs])
    overlaps = [g.pairs[0].overlap for g in finals if g.pairs and g.pairs[0].overlap is not None]
    if len(overlaps) == len(finals):
        out["vary_one_overlap"] = _mean_se([float(v) for v in overlaps])
        out["vary_one_random_baseline"] = float(finals[0].pairs[0].baseline)
    ratios = [r.loss_over_optimal for r in runs if r.loss_over_optimal is not None]
    out["loss_over_optimal"] = _mean_se(ratios) if ratios else None
    verdicts = [g.verdict for g in finals]
    counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    out["verdicts"] = verdicts
    out["verdict"] = (
        verdicts[0]
        if len(counts) == 1
        else "mixed (" + ", ".join(f"{v} {c}/{len(verdicts)}" for v, c in counts.items()) + ")"
    )
    return out


def write_factored_seeds_report(
    runs: list[FactoredRun],
    out_dir: str | os.PathLike,
    title: str | None = None,
    export: tuple[str, ...] = ("png", "pdf"),
) -> dict[str, Any]:
    """Write the report of a run over seeds (the verdict across seeds first, then the last
    seed's geometry), its ``metrics.json`` and figure files in ``export`` formats; return the
    metrics."""
    summary = seed_summary(runs)
    metrics = {"across_seeds": summary, "runs": [r.to_dict() for r in runs]}
    title = title or f"belief_lens factored: {runs[0].process_name}, {len(runs)} seeds"
    sections = [factored_seeds_section(runs, summary), factored_section(runs[-1])]
    write_report(out_dir, title, sections, metrics, export=export)
    return metrics
