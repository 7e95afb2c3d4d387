"""Run tracking in Weights & Biases or MLflow: ``--track wandb|mlflow`` on the CLI,
``TrainConfig(track=...)`` in Python.

Researchers compare many runs in a tracker (TransformerLens's training utilities and SAELens log
to W&B; Simplexity to MLflow). A tracked run logs its parameters (``ModelConfig``,
``TrainConfig``, the process and its parameters, flattened to dotted keys), per-step training
loss, its ratio to the optimal loss and the learning rate, each evaluation, the final metrics
(every number in ``metrics.json``, nested keys flattened) and the artefacts (``report.html``,
``metrics.json``, the model).

Both trackers are optional extras (``pip install 'belief_lens[wandb]'`` or
``'belief_lens[mlflow]'``), imported only when a run asks for one; :func:`check_track` refuses a
missing one with its install line before any work. Where the tracker logs to is its own
configuration (``WANDB_PROJECT``, ``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI``, ...).

:func:`tracking` makes a tracker the active one for a block: ``train`` logs to the active
tracker, so an experiment that trains several models logs them all into one run (the second
training's keys under ``train_2/``, and so on).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import math
import numbers
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from belief_lens.errors import BeliefLensError
from belief_lens.validation import check_option

__all__ = [
    "Track",
    "Tracker",
    "active_tracker",
    "check_track",
    "flatten",
    "numbers_of",
    "start_tracking",
    "tracking",
]

Track = Literal["none", "wandb", "mlflow"]

#: The module each tracker imports, and the extra that installs it.
_MODULES = {"wandb": "wandb", "mlflow": "mlflow"}

_ACTIVE: contextvars.ContextVar[Tracker | None]
_ACTIVE = contextvars.ContextVar(
    "belief_lens_tracker", default=None
)  # the annotation is lazy (__future__), so Tracker may be defined below


def _import(track: str) -> Any:
    """The tracker's module, or BeliefLensError with the install line."""
    try:
        return importlib.import_module(_MODULES[track])
    except ImportError as err:
        raise BeliefLensError(
            f"track={track!r} needs the {_MODULES[track]} package, which is not installed "
            f"({err}): pip install 'belief_lens[{track}]'"
        ) from None


def check_track(track: Any, name: str = "track") -> Track:
    """``track`` if it is ``"none"``, ``"wandb"`` or ``"mlflow"`` and, for a tracker, its package
    imports; raises BeliefLensError naming the choices or the install line otherwise."""
    check_option(name, track, Track)
    if track != "none":
        _import(track)
    return track


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``data`` with nested mappings flattened to ``sep``-joined keys (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def numbers_of(data: Mapping[str, Any], sep: str = ".") -> dict[str, float]:
    """Every finite number in ``data`` (e.g. ``metrics.json``), nested mappings and lists
    flattened to keys (``probes.rows.0.mse_heldout``); booleans, strings and nulls left out."""

    def walk(value: Any, name: str) -> Iterator[tuple[str, float]]:
        if isinstance(value, Mapping):
            for k, v in value.items():
                yield from walk(v, f"{name}{sep}{k}" if name else str(k))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                yield from walk(v, f"{name}{sep}{i}" if name else str(i))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isfinite(float(value)):
                yield name, float(value)

    return dict(walk(data, ""))


class Tracker:
    """One tracked run. This base class logs nothing (``track="none"``); the W&B and MLflow
    subclasses send each call to their service. ``trainings`` counts the trainings logged, so
    a second one in the same run gets its own key prefix."""

    track: Track = "none"

    def __init__(self) -> None:
        self.trainings = 0

    def begin_training(self) -> str:
        """The key prefix of the next training in this run: ``train``, then ``train_2``, ..."""
        self.trainings += 1
        return "train" if self.trainings == 1 else f"train_{self.trainings}"

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log the run's parameters (nested mappings flattened to dotted keys)."""

    def log_steps(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Log metrics per step: ``(step, {key: value})`` rows, steps increasing."""

    def log_final(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        """Log every number in ``metrics`` as the run's final metrics; returns what was logged."""
        return numbers_of(metrics)

    def log_artifacts(self, paths: Sequence[str | os.PathLike]) -> None:
        """Upload the files that exist among ``paths`` (report, metrics, model) with the run."""

    def close(self, failed: bool = False) -> None:
        """End the run (marked failed when ``failed``)."""


def _param_value(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else str(value)


class _WandbTracker(Tracker):
    track: Track = "wandb"

    def __init__(self, name: str, group: str | None) -> None:
        super().__init__()
        self.wandb = _import("wandb")
        project = os.environ.get("WANDB_PROJECT", "belief_lens")
        self.run = self.wandb.init(project=project, name=name, group=group, reinit=True)
        self.step = 0  # W&B needs one increasing step over every key; the training's is logged

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: _param_value(v) for k, v in flatten(params).items()}
        self.run.config.update(flat, allow_val_change=True)

    def log_steps(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        for step, values in rows:
            self.run.log({**values, "step": step}, step=self.step)
            self.step += 1

    def log_final(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        values = numbers_of(metrics)
        self.run.summary.update(values)
        return values

    def log_artifacts(self, paths: Sequence[str | os.PathLike]) -> None:
        files = [Path(p) for p in paths if Path(p).is_file()]
        if files:
            artifact = self.wandb.Artifact(f"run-{self.run.id}", type="belief_lens-run")
            for path in files:
                artifact.add_file(str(path), name=path.name)
            self.run.log_artifact(artifact)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class _MlflowTracker(Tracker):
    track: Track = "mlflow"

    def __init__(self, name: str, group: str | None) -> None:
        super().__init__()
        self.mlflow = _import("mlflow")
        from mlflow.entities import Metric, Param

        self.metric, self.param = Metric, Param
        self.client = self.mlflow.tracking.MlflowClient()
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", group or "belief_lens")
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = [self.param(k, str(_param_value(v))[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[i : i + 100])

    def _log_metrics(self, metrics: list[Any]) -> None:
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_steps(self, rows: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        now = int(time.time() * 1000)
        self._log_metrics(
            [self.metric(k, float(v), now, step) for step, row in rows for k, v in row.items()]
        )

    def log_final(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        values = numbers_of(metrics)
        now = int(time.time() * 1000)
        self._log_metrics([self.metric(_mlflow_key(k), v, now, 0) for k, v in values.items()])
        return values

    def log_artifacts(self, paths: Sequence[str | os.PathLike]) -> None:
        for path in paths:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _mlflow_key(key: str) -> str:
    """``key`` with characters MLflow refuses (outside letters, digits, ``_-. /``) as ``_``."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)


def start_tracking(track: Track, *, name: str, group: str | None = None) -> Tracker:
    """Start a tracked run called ``name`` (in W&B group / MLflow experiment ``group``,
    default ``belief_lens``); ``"none"`` gives a tracker that logs nothing."""
    track = check_track(track)
    if track == "wandb":
        return _WandbTracker(name, group)
    if track == "mlflow":
        return _MlflowTracker(name, group)
    return Tracker()


def active_tracker() -> Tracker | None:
    """The tracker of the enclosing :func:`tracking` block, if any."""
    return _ACTIVE.get()


@contextlib.contextmanager
def tracking(track: Track, *, name: str, group: str | None = None) -> Iterator[Tracker]:
    """A tracked run for the block, active for ``train`` within it; closed at the end (marked
    failed if the block raises)."""
    tracker = start_tracking(track, name=name, group=group)
    token = _ACTIVE.set(tracker)
    failed = True
    try:
        yield tracker
        failed = False
    finally:
        _ACTIVE.reset(token)
        tracker.close(failed=failed)
