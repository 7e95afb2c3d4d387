"""The paper demo (Shai et al. 2024): train the paper's architecture for a process from scratch
with the preset training, save it, and analyse it into ``report.html`` and ``metrics.json``; and
the same analysis of an existing checkpoint.

Both validate what they are given once, before any training or forward pass.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from belief_lens.beliefs import check_hmm
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.models import ModelConfig, save_checkpoint, toy_transformer
from belief_lens.report import AnalysisConfig, analyse
from belief_lens.training import Targets, TrainConfig, train
from belief_lens.training.memory import check_training_memory

__all__ = ["PaperDemo", "analyse_checkpoint", "run_paper_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaperDemo:
    """One paper demo: ``hmm`` (named ``process``), the architecture ``model`` to train on it,
    how to train (``train``; its seed also seeds the weights) and what to analyse. Validated at
    construction; :meth:`preset` builds it from the package's presets."""

    process: str
    hmm: HMM
    model: ModelConfig
    train: TrainConfig
    analysis: AnalysisConfig

    def __post_init__(self) -> None:
        check_hmm(self.hmm)
        for name, kind in (("model", ModelConfig), ("train", TrainConfig),
                           ("analysis", AnalysisConfig)):  # fmt: skip
            if not isinstance(getattr(self, name), kind):
                raise BeliefLensError(
                    f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}"
                )
        if self.model.d_vocab < self.hmm.n_symbols:
            raise BeliefLensError(
                f"the model has a vocabulary of {self.model.d_vocab} tokens but {self.hmm.name} "
                f"emits {self.hmm.n_symbols} symbols"
            )
        check_training_memory(self.model, self.train.batch_size)  # before any work

    @classmethod
    def preset(
        cls,
        process: str,
        hmm: HMM,
        *,
        n_ctx: int = 10,
        targets: Targets = "bayes",
        analysis: AnalysisConfig | None = None,
        **train_fields: Any,
    ) -> PaperDemo:
        """The paper's architecture for ``process`` (``ModelConfig.paper``) trained with
        ``TrainConfig.preset(targets, process, **train_fields)`` (None values ignored), then
        analysed as ``analysis`` says (default: every sequence where they can be enumerated)."""
        check_hmm(hmm)
        config = TrainConfig.preset(targets, process, **train_fields)
        return cls(
            process=process,
            hmm=hmm,
            model=ModelConfig.paper(process, d_vocab=hmm.n_symbols, n_ctx=n_ctx),
            train=config,
            analysis=analysis or AnalysisConfig(mode="auto", seed=config.seed),
        )


def run_paper_demo(
    demo: PaperDemo,
    out_dir: str | os.PathLike,
    *,
    progress: bool | str = True,
    checkpoint_dir: str | os.PathLike | None = None,
    final_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train ``demo``'s model, save it as ``out_dir/model.safetensors``, and analyse it into
    ``out_dir``; return the metrics (those of ``metrics.json``). With ``checkpoint_dir`` the
    training writes step checkpoints there and resumes from the latest one it finds.
    ``final_dir``: where ``out_dir`` will be moved once complete (the CLI writes into a staging
    directory first); the report and metrics name the model's path there, where it will be."""
    out, hmm, config = Path(out_dir), demo.hmm, demo.train
    named = Path(final_dir) if final_dir is not None else out
    model = toy_transformer(demo.model, seed=config.seed)
    budget = [f"{config.seconds / 60:.1f} min"] if config.seconds else []
    budget += [f"{config.steps} steps"] if config.steps else []
    logger.info(
        "training the paper architecture on %s for %s (batches of %d, %s targets)",
        hmm.name,
        " or ".join(budget) or f"{config.n_tokens} tokens",
        config.batch_size,
        config.targets,
    )
    history = train(model, hmm, config, progress=progress, checkpoint_dir=checkpoint_dir)
    logger.info("trained %d steps in %.1f s", history.steps, history.seconds)
    extra = {"train_config": history.config, "process": history.process, "steps": history.steps}
    save_checkpoint(model, out / "model.safetensors", extra=extra)
    return analyse(
        model,
        hmm,
        out,
        config=demo.analysis,
        history=history,
        title=f"belief_lens demo: {hmm.name}",
        extra_metrics={
            "train_seconds": history.seconds,
            "train_steps": history.steps,
            "model_source": f"trained in this run, saved to {named / 'model.safetensors'}",
        },
    )


def analyse_checkpoint(
    model: Any,
    hmm: HMM,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike,
    analysis: AnalysisConfig | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Analyse ``model``, loaded from ``checkpoint`` (this package's or the paper's, by
    ``load_checkpoint``), on ``hmm`` into ``out_dir`` (default analysis: every sequence where they
    can be enumerated); return the metrics. ``provenance`` is
    ``training.check_checkpoint_process``'s record (the process the checkpoint was trained on, or
    "unknown"), shown in the report."""
    path = Path(checkpoint)
    source = {"model_source": f"loaded from {path}"}
    if provenance:
        recorded = provenance.get("recorded_process", "unknown")
        source["model_source"] += (
            f" (trained on {recorded})"
            if recorded != "unknown"
            else (" (trained on an unrecorded process)")
        )
        source["provenance"] = provenance
    return analyse(
        model,
        hmm,
        out_dir,
        config=analysis or AnalysisConfig(mode="auto"),
        title=f"belief_lens: {path.name} on {hmm.name}",
        extra_metrics={"checkpoint": str(path), **source},
    )
