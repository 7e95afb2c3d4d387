"""Step checkpoints of a training run, written so that a crash cannot corrupt them and read back
only for the run they belong to.

Each ``step_<step>/`` holds the model (a plain loadable checkpoint), the optimizer state and the
history, with checksums. It is written into a temporary directory, fsync'd, then renamed into
place; a reader falls back past any damaged checkpoint, and a resumed run must have the same
process, architecture and settings (:data:`RESUMABLE_CHANGES` aside).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.models import load_weights_into, read_checkpoint_config, save_checkpoint
from belief_lens.models.checkpoints import META_KEY
from belief_lens.storage import fsync_path, load_tensors, save_tensors
from belief_lens.training.config import TrainConfig
from belief_lens.training.history import TrainingHistory, process_fingerprint

__all__ = [
    "RESUMABLE_CHANGES",
    "StepCheckpoint",
    "check_checkpoint_process",
    "check_resumable",
    "latest_checkpoint",
    "prepare_checkpoint_dir",
    "prune_checkpoints",
    "resume",
    "step_checkpoints",
    "write_checkpoint",
]

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_TMP_DIR = re.compile(r"^\.step_\d{8}\.(tmp|old)-\d+$")
#: Config fields that may change when a run is resumed.
RESUMABLE_CHANGES = ("keep_checkpoints", "resume", "track")


def step_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """The step checkpoints in a training ``checkpoint_dir``, oldest first: ``(step, path)``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for entry in directory.iterdir():
        m = _STEP_DIR.match(entry.name)
        if m and entry.is_dir():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def prepare_checkpoint_dir(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed, refuse it unless writable, and remove the temporary
    checkpoint directories a killed run left behind."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise BeliefLensError(f"checkpoint_dir {str(directory)!r} is not writable")
    for entry in directory.iterdir():
        if _TMP_DIR.match(entry.name):
            logger.info("removing a killed run's temporary checkpoint %s", entry)
            shutil.rmtree(entry, ignore_errors=True)
    return directory


# --- optimizer state ------------------------------------------------------------------------------


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-ready rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def _optimizer_from_files(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["plain_state"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- writing --------------------------------------------------------------------------------------


def write_checkpoint(
    directory: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    history: TrainingHistory,
    step: int,
    keep: int,
) -> Path:
    """Write ``step_<step>/`` (weights, optimizer, state) as one atomic step: everything goes into
    a temporary directory beside it, fsync'd, which is then renamed into place. Older step
    directories beyond the last ``keep`` are removed."""
    name = f"step_{step:08d}"
    final = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    extra = {"step": step, "train_config": history.config, "process": history.process}
    save_checkpoint(model, tmp / "model.safetensors", extra=extra)
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    save_tensors(tmp / "optimizer.safetensors", opt_tensors, {"format": "pt"})
    files = {f: _sha256(tmp / f) for f in ("model.safetensors", "optimizer.safetensors")}
    state = {"step": step, "optimizer": opt_meta, "history": history.to_dict(), "sha256": files}
    with open(tmp / "state.json", "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(tmp)
    if final.exists():  # a rerun that reached the same step: set the old one aside first
        old = directory / f".{name}.old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_path(directory)
    prune_checkpoints(directory, keep)
    return final


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Keep the newest ``keep`` step checkpoints that read back intact and delete the rest.

    Each is verified before anything is pruned: a corrupt one never counts towards ``keep``, so
    a damaged newer step cannot push out the good ones. Corrupt steps are deleted only once
    ``keep`` good ones are found; without any good one nothing is deleted.
    """
    good = 0
    doomed = []
    for step, path in reversed(step_checkpoints(directory)):
        if good >= keep:
            doomed.append(path)
            continue
        try:
            StepCheckpoint.read(path)
        except Exception as err:  # any damage: it cannot be resumed from
            logger.warning("checkpoint %s (step %d) is corrupt (%s)", path, step, err)
            doomed.append(path)
            continue
        good += 1
    if good == 0:
        return
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


# --- reading and resuming -------------------------------------------------------------------------


@dataclass
class StepCheckpoint:
    """One step checkpoint read back intact: its state, model tensors and optimizer tensors."""

    path: Path
    state: dict
    weights: dict[str, Tensor]
    optimizer: dict[str, Tensor]

    @classmethod
    def read(cls, path: Path) -> StepCheckpoint:
        """Read ``path`` (a step directory); raises if any file is missing or corrupt."""
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        for name, digest in state["sha256"].items():
            if _sha256(path / name) != digest:
                raise ValueError(f"{name} does not match its checksum")
        weights = load_tensors(path / "model.safetensors")
        opt = load_tensors(path / "optimizer.safetensors")
        return cls(path, state, weights, opt)


def latest_checkpoint(directory: Path) -> StepCheckpoint | None:
    """The newest step checkpoint that reads back intact; warns about each corrupt newer one."""
    for step, path in reversed(step_checkpoints(directory)):
        try:
            return StepCheckpoint.read(path)
        except Exception as err:  # any damage: fall back to the previous checkpoint
            message = (
                f"checkpoint {str(path)!r} (step {step}) is corrupt or incomplete "
                f"({type(err).__name__}: {err}); falling back to an earlier one"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=5)  # train's caller
            logger.warning(message)
    return None


def check_resumable(path: Path, saved: TrainingHistory, now: TrainingHistory) -> None:
    """Refuse to resume a run of another process, model or configuration, naming the mismatch."""
    if saved.process.get("fingerprint") != now.process.get("fingerprint"):
        raise BeliefLensError(
            f"cannot resume from {str(path)!r}: it was trained on {saved.process.get('name')} "
            f"(process fingerprint {saved.process.get('fingerprint')}) but this run's process is "
            f"{now.process.get('name')} (fingerprint {now.process.get('fingerprint')}); use "
            "another checkpoint_dir, or the same process"
        )
    for what, a, b in (
        ("model config", saved.model_config, now.model_config),
        ("settings", saved.config, now.config),
    ):
        differ = [
            f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}"
            for k in sorted(set(a) | set(b))
            if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k)
        ]
        if differ:
            raise BeliefLensError(
                f"cannot resume from {str(path)!r}: the run's {what} differ ({', '.join(differ)});"
                " use the same settings or another checkpoint_dir"
            )


def resume(
    directory: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    history: TrainingHistory,
    config: TrainConfig,
) -> TrainingHistory | None:
    """Load the newest intact checkpoint in ``directory`` into ``model`` and ``optimizer`` and
    return its history (with ``config``), or None when there is none. A checkpoint of another
    run (``history`` describes this one) is refused, and so is ``resume=False`` over saved work."""
    found = latest_checkpoint(directory) if step_checkpoints(directory) else None
    if found is None:
        return None
    if not config.resume:
        raise BeliefLensError(
            f"{str(directory)!r} holds checkpoints of a run (up to {found.path.name}) and "
            "resume=False would overwrite them; resume it, or use another checkpoint_dir"
        )
    saved = TrainingHistory.from_dict(found.state["history"])
    check_resumable(found.path, saved, history)
    load_weights_into(model, found.weights, path=found.path / "model.safetensors")
    _optimizer_from_files(optimizer, found.optimizer, found.state["optimizer"])
    saved.config = config.to_dict()
    logger.info("resumed from step %d in %s", saved.steps, directory)
    return saved


def check_checkpoint_process(
    path: str | os.PathLike, hmm: HMM, *, allow_mismatch: bool = False
) -> dict[str, Any]:
    """Compare the process a checkpoint records (``save_checkpoint(..., extra={"process":
    ...})``, as ``belief-lens demo`` writes) with ``hmm``; return the model's provenance for a
    report (``source``, ``checkpoint``, ``recorded_process``, ``process_check``).

    A mismatch raises naming both processes, unless ``allow_mismatch``. A checkpoint that records
    no process (the paper's, or one saved by an earlier version) is "unknown"; its vocabulary must
    still fit the process's symbols exactly (a 3-token Mess3 model is no RRXOR model).
    """
    path = Path(path)
    config = read_checkpoint_config(path)
    recorded = ((config.get(META_KEY) or {}).get("extra") or {}).get("process") or {}
    now = {"name": hmm.name, "fingerprint": process_fingerprint(hmm)}
    out = {"source": "loaded", "checkpoint": str(path),
           "recorded_process": recorded.get("name") or "unknown"}  # fmt: skip
    problem = None
    if recorded.get("fingerprint"):
        if recorded["fingerprint"] != now["fingerprint"]:
            problem = (
                f"checkpoint {path.name} was trained on {recorded.get('name')} (process "
                f"fingerprint {recorded['fingerprint']}) but the analysis is asked for "
                f"{hmm.name} (fingerprint {now['fingerprint']})"
            )
    elif int(config["d_vocab"]) != hmm.n_symbols:
        problem = (
            f"checkpoint {path.name} records no process, and its vocabulary of "
            f"{config['d_vocab']} tokens does not fit {hmm.name}'s {hmm.n_symbols} symbols: it "
            "was trained on another process"
        )
    out["process_check"] = (
        "mismatch allowed" if problem else ("matches" if recorded.get("fingerprint") else "unknown")
    )
    if problem and not allow_mismatch:
        raise BeliefLensError(
            f"{problem}; give the process (and --param values) it was trained on, or pass "
            "--allow-process-mismatch (allow_mismatch=True) to analyse it on this one on purpose"
        )
    if problem:
        out["process_mismatch"] = problem
    return out
