"""What a training run did: :class:`TrainingHistory` with its :class:`EvalRecord` evaluations,
and the fingerprint that ties a run (and its checkpoints) to its process."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from belief_lens.compmech import LossFloor
from belief_lens.hmm import HMM

__all__ = ["EvalRecord", "TrainingHistory", "process_fingerprint"]


def process_fingerprint(hmm: HMM) -> str:
    """A short hash of a process's identity: its class, ``T`` and initial state.

    Values are rounded to 10 decimals first: a stationary state solved for by LAPACK can differ
    in its last bits between runs, and must not make the same process look like another.
    """
    h = hashlib.sha256()
    h.update(type(hmm).__name__.encode())
    h.update(repr(tuple(hmm.T.shape)).encode())
    for values in (hmm.T, hmm.initial_state):
        rounded = np.round(values.detach().double().cpu().numpy(), 10) + 0.0  # no -0.0
        h.update(np.ascontiguousarray(rounded).tobytes())
    return h.hexdigest()[:16]


@dataclass
class EvalRecord:
    """One evaluation: expected cross-entropy (nats) overall and per position, and vs. optimum."""

    step: int
    tokens: int
    loss: float
    loss_over_optimal: float
    loss_per_position: list[float]
    loss_over_optimal_per_position: list[float]
    exact: bool  # True: over every sequence, probability-weighted; False: on a sampled set
    optimal_loss: float = float("nan")  # the floor's mean over positions
    optimal_loss_se: float = 0.0  # its standard error (0 when exact)
    optimal_exact: bool = True  # exact floor, or estimated on the evaluation sample
    seconds: float = field(default=0.0, compare=False)  # training time at this evaluation

    @property
    def optimal_method(self) -> str:
        """``"exact"`` or ``"estimated ± se"``: how the loss floor was obtained."""
        return "exact" if self.optimal_exact else f"estimated ± {self.optimal_loss_se:.2g}"


@dataclass
class TrainingHistory:
    """What ``train`` did: per-step training loss and learning rate, evaluations, the loss floor.

    ``loss[i]`` is the training loss of optimizer step ``i + 1``. ``optimal_loss`` is the
    per-position floor, exact when ``optimal_exact`` else estimated with standard errors
    ``optimal_loss_se``. ``seconds`` is the training time so far; ``config`` the ``TrainConfig``
    as a dict, ``model_config`` the architecture, ``process`` its name and fingerprint.
    """

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    optimal_loss: list[float] = field(default_factory=list)
    optimal_loss_se: list[float] = field(default_factory=list)
    optimal_exact: bool = True
    optimal_mean_se: float = 0.0
    tokens_per_step: int = 0
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    process: dict[str, str] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return len(self.loss)

    @property
    def optimal_mean(self) -> float:
        """The mean-over-positions loss floor (nats)."""
        return float(np.mean(self.optimal_loss)) if self.optimal_loss else float("nan")

    @property
    def optimal_method(self) -> str:
        """``"exact"`` or ``"estimated ± se"``: how the loss floor was obtained."""
        return "exact" if self.optimal_exact else f"estimated ± {self.optimal_mean_se:.2g}"

    def set_floor(self, floor: LossFloor) -> None:
        """Record the run's loss floor (per position, with standard errors, and how obtained)."""
        self.optimal_loss = floor.per_position.tolist()
        self.optimal_loss_se = floor.per_position_se.tolist()
        self.optimal_exact = floor.exact
        self.optimal_mean_se = floor.mean_se

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingHistory:
        """Inverse of ``to_dict``."""
        data = dict(data)
        data["evals"] = [EvalRecord(**e) for e in data.get("evals", [])]
        return cls(**data)
