"""Training toy transformers (and token-mapped models) on process data, within a step, token or
time budget, with resumable checkpoints that a crash cannot corrupt.

``train(model, hmm, TrainConfig(...))`` is the one loop. Data is sampled on the fly, vectorised,
from a generator seeded by ``(seed, block)``, so a run resumed from a checkpoint sees exactly the
batches an uninterrupted run would. With ``targets="bayes"`` every prediction position is trained
against the exact next-token distribution ``P(. | belief)`` (soft-target cross-entropy): same
optimum as sampled tokens, far less noise. The learning-rate schedule is laid over the run's
progress: the fraction of its steps done, or of its time budget elapsed.

The loss floor is ``compmech.loss_floor``: exact where the belief tree is small enough to
enumerate, estimated (with its standard error) at any longer context.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from belief_lens.activations import eval_mode, model_device
from belief_lens.beliefs import belief_states, enumerate_sequences, sample_sequences
from belief_lens.compmech import LossFloor, loss_floor
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.token_map import TokenMap

__all__ = [
    "DEFAULTS",
    "PROCESS_LEARNING_RATES",
    "EvalRecord",
    "TrainConfig",
    "TrainingHistory",
    "evaluate_loss",
    "lr_at",
    "make_batch",
    "process_fingerprint",
    "train",
]

logger = logging.getLogger(__name__)

Targets = Literal["tokens", "bayes"]
Schedule = Literal["cosine", "linear", "constant"]
OptimizerName = Literal["adamw", "adam", "sgd"]

# Seed-sequence slot for the evaluation set, apart from the per-block slots 0, 1, 2, ...
_EVAL_SLOT = 2**32 - 1
#: Training steps whose data is sampled in one vectorised call.
_DATA_BLOCK = 32
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_TMP_DIR = re.compile(r"^\.step_\d{8}\.(tmp|old)-\d+$")
#: Config fields that may change when a run is resumed.
_RESUMABLE_CHANGES = ("keep_checkpoints", "resume")


# --- configuration --------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train`` needs besides the model and the process; validated at construction.

    Length: ``steps``, or ``n_tokens`` (trained prediction positions, ``batch_size`` times the
    positions per sequence, per step), and/or ``seconds`` (a wall-clock budget, evaluations
    included); with both steps and seconds, whichever ends first. ``warmup_steps`` ramps the
    learning rate linearly; the ``schedule`` then decays it over the run's progress.
    ``length`` is the number of symbols per training sequence (default: as many as the model's
    context holds). Evaluations run at each tenth of the run (or every ``eval_every`` steps) on
    ``eval_sequences`` sequences; checkpoints, with a ``checkpoint_dir``, at each evaluation (or
    every ``checkpoint_every`` steps), keeping the last ``keep_checkpoints``.

    >>> TrainConfig(steps=100).replace(lr=3e-3).lr
    0.003
    """

    steps: int | None = None
    n_tokens: int | None = None
    seconds: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    schedule: Schedule = "cosine"
    warmup_steps: int = 20
    min_lr_ratio: float = 0.0
    optimizer: OptimizerName = "adamw"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    targets: Targets = "tokens"
    bos: bool = False
    length: int | None = None
    seed: int = 0
    eval_every: int | None = None
    eval_sequences: int = 4096
    checkpoint_every: int | None = None
    keep_checkpoints: int = 3
    resume: bool = True

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            raise BeliefLensError(
                f"TrainConfig: {name} must be {expected}, got {getattr(self, name)!r}"
            )

        for name in ("steps", "n_tokens", "eval_every", "checkpoint_every", "length"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                fail(name, "a positive integer or None")
        for name, minimum in (
            ("batch_size", 1),
            ("eval_sequences", 1),
            ("keep_checkpoints", 1),
            ("warmup_steps", 0),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                fail(name, f"an integer >= {minimum}")
        if self.seed >= 2**63:
            fail("seed", "below 2**63")
        if self.seconds is not None and not (
            _is_real(self.seconds) and 0 < self.seconds < math.inf
        ):
            fail("seconds", "a positive finite number or None")
        if self.steps is not None and self.n_tokens is not None:
            raise BeliefLensError(
                f"TrainConfig: give steps or n_tokens, not both (got steps={self.steps}, "
                f"n_tokens={self.n_tokens})"
            )
        if self.steps is None and self.n_tokens is None and self.seconds is None:
            raise BeliefLensError(
                "TrainConfig: give the run's length as steps, n_tokens or seconds"
            )
        if not (_is_real(self.lr) and 0 < self.lr < math.inf):
            fail("lr", "a positive finite number")
        if not (_is_real(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            fail("min_lr_ratio", "a number in [0, 1]")
        if not (_is_real(self.weight_decay) and 0 <= self.weight_decay < math.inf):
            fail("weight_decay", "a finite number >= 0")
        if self.grad_clip is not None and not (
            _is_real(self.grad_clip) and 0 < self.grad_clip < math.inf
        ):
            fail("grad_clip", "a positive finite number or None (no clipping)")
        betas = self.betas
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(_is_real(b) and 0 <= b < 1 for b in betas)
        ):
            fail("betas", "two numbers in [0, 1)")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        for name, options in (
            ("schedule", Schedule),
            ("optimizer", OptimizerName),
            ("targets", Targets),
        ):
            if getattr(self, name) not in get_args(options):
                fail(name, " or ".join(repr(o) for o in get_args(options)))
        for name in ("bos", "resume"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "True or False")

    @classmethod
    def preset(
        cls, targets: Targets = "bayes", process: str | None = None, **fields: Any
    ) -> TrainConfig:
        """Settings that train the paper's architectures well on 2 CPU cores (:data:`DEFAULTS`
        for ``targets``, the learning rate of :data:`PROCESS_LEARNING_RATES` for ``process``);
        ``fields`` override, ``None`` values are ignored.

        >>> TrainConfig.preset("bayes", "rrxor", seconds=60).lr
        0.003
        """
        if targets not in DEFAULTS:
            raise BeliefLensError(f"targets must be one of {sorted(DEFAULTS)}, got {targets!r}")
        base = dict(DEFAULTS[targets], targets=targets)
        if process in PROCESS_LEARNING_RATES:
            base["lr"] = PROCESS_LEARNING_RATES[process]
        return cls(**{**base, **{k: v for k, v in fields.items() if v is not None}})

    def replace(self, **fields: Any) -> TrainConfig:
        """A copy with ``fields`` changed (validated); unknown names raise."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise BeliefLensError(f"TrainConfig has no field(s) {unknown}; fields: {names}")
        return dataclasses.replace(self, **fields)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


#: Settings that train the paper's architectures well on 2 CPU cores, per target kind. With
#: Bayes targets at lr 1e-2, the paper's Mess3 architecture reached probe MSE 0.00027 at
#: blocks.3.hook_resid_post in 1,350 steps of 128 sequences (0.00043 at lr 3e-3). The 200-step
#: warmup removes the RRXOR architecture's loss spike after its first Adam step (2.3x the optimum
#: with a 50-step warmup; none with 200).
DEFAULTS: dict[str, dict[str, Any]] = {
    "bayes": {"batch_size": 128, "lr": 1e-2, "warmup_steps": 200, "grad_clip": 1.0},
    "tokens": {"batch_size": 128, "lr": 3e-3, "warmup_steps": 200, "grad_clip": 1.0},
}

#: Peak learning rates that reach the optimum within the demo's budget where the default (1e-2)
#: does not: RRXOR's wider model (d_model 128) ends at 1.044x optimal with 1e-2 in 90 s on 2 cores
#: and at 1.0000x with 3e-3.
PROCESS_LEARNING_RATES: dict[str, float] = {"rrxor": 3e-3}


def lr_at(step: int, progress: float, config: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based) at ``progress`` in ``[0, 1]`` of the run.

    Linear warmup over ``config.warmup_steps`` steps, times the schedule's decay over progress
    (the fraction of steps done, or of the time budget elapsed), floored at ``min_lr_ratio``.
    """
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    p = min(1.0, max(0.0, float(progress)))
    if config.schedule == "constant":
        decay = 1.0
    elif config.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * p))
    else:
        decay = 1.0 - p
    r = config.min_lr_ratio
    return config.lr * warm * (r + (1.0 - r) * decay)


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


# --- results --------------------------------------------------------------------------------------


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingHistory:
        """Inverse of ``to_dict``."""
        data = dict(data)
        data["evals"] = [EvalRecord(**e) for e in data.get("evals", [])]
        return cls(**data)


# --- data -----------------------------------------------------------------------------------------


def _step_generator(seed: int, block: int) -> torch.Generator:
    """A generator for one block of batches, a pure function of ``(seed, block)``."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(block)])
    words = state.generate_state(2)
    gen = torch.Generator()
    gen.manual_seed(int(words[0]) << 32 | int(words[1]))
    return gen


def make_batch(
    hmm: HMM,
    n: int,
    n_ctx: int,
    *,
    targets: Targets,
    bos: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Int[Tensor, "n n_ctx"], Tensor]:
    """One batch of toy-model inputs and targets.

    Without BOS, position ``t`` predicts token ``t+1`` from tokens ``0..t``: ``"tokens"`` samples
    ``n_ctx + 1`` tokens; ``"bayes"`` samples ``n_ctx`` and targets ``P(. | belief after 0..t)``
    (``[n, n_ctx, n_symbols]`` float64). With BOS (id ``n_symbols``) first, position ``t``
    predicts token ``t``.
    """
    if targets == "tokens":
        seq = sample_sequences(hmm, n, n_ctx + (0 if bos else 1), generator=generator)
        if bos:
            return _prepend(seq[:, :-1], hmm.n_symbols), seq
        return seq[:, :-1], seq[:, 1:]
    if not bos:
        seq = sample_sequences(hmm, n, n_ctx, generator=generator)
        return seq, hmm.next_token_probs(belief_states(hmm, seq))
    seq = sample_sequences(hmm, n, n_ctx - 1, generator=generator)
    return _prepend(seq, hmm.n_symbols), hmm.next_token_probs(
        belief_states(hmm, seq, include_start=True)
    )


def _prepend(seq: Tensor, bos_id: int) -> Tensor:
    return torch.cat([torch.full((seq.shape[0], 1), bos_id, dtype=seq.dtype), seq], dim=1)


@dataclass(frozen=True)
class _Layout:
    """How symbols reach the model: the token map, symbols per sequence and prediction positions."""

    token_map: TokenMap
    length: int
    bos: bool
    positions: Tensor  # [P] model positions whose logits predict the next symbol
    identity: bool  # a toy model over the bare symbol vocabulary

    @property
    def n_predictions(self) -> int:
        return self.length + int(self.bos)

    def model_logp(self, logits: Tensor) -> Tensor:
        """Full-vocabulary log-probabilities at the prediction positions, at the symbols' ids."""
        if self.identity:
            logits = logits[:, : self.n_predictions]
        else:
            logits = logits[:, self.positions.to(logits.device)]
        logp = logits.log_softmax(-1)
        if self.identity and logp.shape[-1] == self.token_map.n_symbols:
            return logp
        return logp[..., self.token_map.ids.to(logp.device)]

    def beliefs(self, hmm: HMM, symbols: Tensor) -> Tensor:
        """The belief behind each prediction: ``[n, P, S]``."""
        return belief_states(hmm, symbols, include_start=self.bos)


def _layout(model: Any, hmm: HMM, config: TrainConfig, token_map: TokenMap | None) -> _Layout:
    n_ctx = int(model.cfg.n_ctx)
    d_vocab = int(model.cfg.d_vocab)
    if token_map is None:
        need = hmm.n_symbols + int(config.bos)
        if d_vocab < need:
            raise BeliefLensError(
                f"model d_vocab={d_vocab} is too small for {hmm.n_symbols} symbols"
                + (" plus BOS" if config.bos else "")
                + f"; need >= {need}"
            )
        tm = TokenMap(list(range(hmm.n_symbols)), bos=hmm.n_symbols if config.bos else None)
        identity = True
    else:
        if config.bos:
            raise BeliefLensError(
                "bos=True is for toy models; with a token_map its own bos token is used"
            )
        if token_map.n_symbols != hmm.n_symbols:
            raise BeliefLensError(
                f"token_map maps {token_map.n_symbols} symbols but {hmm.name} emits {hmm.n_symbols}"
            )
        tm = token_map.check_vocab(d_vocab)
        identity = False
    bos = tm.bos is not None
    length = config.length if config.length is not None else tm.max_symbols(n_ctx)
    if length < 1 or tm.model_length(length) > n_ctx:
        raise BeliefLensError(
            f"{length} symbols need {tm.model_length(length)} model positions, but n_ctx={n_ctx}"
            + ("" if length >= 1 else "; the model's context is too short for one symbol")
        )
    positions = tm.prediction_positions(length, include_initial=bos)
    return _Layout(tm, length, bos, positions, identity)


@dataclass
class _EvalSet:
    symbols: Tensor  # [N, L]
    inputs: Tensor  # [N, n_model]
    probs: Tensor  # [N, P, V] float64 exact next-symbol distributions
    weights: Tensor  # [N] float64, summing to 1
    exact: bool


def _eval_set(hmm: HMM, layout: _Layout, *, n_sequences: int, seed: int) -> _EvalSet:
    """Every sequence (probability-weighted) when at most ``n_sequences`` exist, else a sample
    (of at most about 4M prediction entries, so long contexts stay in memory)."""
    L = layout.length
    try:
        seqs = enumerate_sequences(hmm, L, max_sequences=n_sequences)
    except BeliefLensError:
        seqs = None
    if seqs is not None and len(seqs) <= n_sequences:
        beliefs = belief_states(hmm, seqs.tokens, include_start=layout.bos)
        probs = hmm.next_token_probs(beliefs)
        weights = seqs.probs / seqs.probs.sum()
        return _EvalSet(seqs.tokens, layout.token_map.encode(seqs.tokens), probs, weights, True)
    entries = layout.n_predictions * max(hmm.n_symbols, hmm.n_states)
    n = max(2, min(n_sequences, max(1024, 2**22 // entries)))
    symbols = sample_sequences(hmm, n, L, generator=_step_generator(seed, _EVAL_SLOT))
    probs = hmm.next_token_probs(layout.beliefs(hmm, symbols))
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    return _EvalSet(symbols, layout.token_map.encode(symbols), probs, weights, False)


def _floor(hmm: HMM, layout: _Layout, data: _EvalSet, seed: int) -> LossFloor:
    """The loss floor; estimated from the evaluation sample itself when it cannot be exact, so
    that loss / floor compares model and optimum on the same sequences."""
    return loss_floor(
        hmm,
        layout.n_predictions,
        bos=layout.bos,
        seed=seed,
        tokens=None if data.exact else data.symbols,
    )


@torch.no_grad()
def _evaluate(
    model: Any,
    layout: _Layout,
    data: _EvalSet,
    floor: LossFloor,
    step: int,
    tokens: int,
    seconds: float = 0.0,
) -> EvalRecord:
    """Expected cross-entropy per position of the model against exact next-symbol distributions."""
    device = model_device(model)
    per_pos = torch.zeros(layout.n_predictions, dtype=torch.float64)
    # Batches of about 2**24 logits: a pretrained vocabulary of 50k makes them large.
    width = data.inputs.shape[1] * int(model.cfg.d_vocab)
    batch_size = max(1, min(4096, 2**24 // width))
    for start in range(0, data.inputs.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        logp = layout.model_logp(model(data.inputs[sl].to(device)).float()).double().cpu()
        ce = -(data.probs[sl] * logp).nan_to_num(0.0, neginf=0.0).sum(-1)  # 0 * -inf is 0
        per_pos += (data.weights[sl, None] * ce).sum(0)
    optimum = floor.per_position
    return EvalRecord(
        step=step,
        tokens=tokens,
        loss=float(per_pos.mean()),
        loss_over_optimal=float(per_pos.mean() / floor.mean),
        loss_per_position=per_pos.tolist(),
        loss_over_optimal_per_position=(per_pos / optimum).tolist(),
        exact=data.exact,
        optimal_loss=floor.mean,
        optimal_loss_se=floor.mean_se,
        optimal_exact=floor.exact,
        seconds=seconds,
    )


def evaluate_loss(
    model: Any,
    hmm: HMM,
    *,
    bos: bool = False,
    token_map: TokenMap | None = None,
    length: int | None = None,
    n_sequences: int = 200_000,
    seed: int = 0,
) -> EvalRecord:
    """The model's expected cross-entropy per position against ``P(. | belief)``, and its ratio
    to the loss floor.

    Exact over every sequence when at most ``n_sequences`` exist (all 59,049 for Mess3 at n_ctx
    10), else on a seeded sample. The floor (``compmech.loss_floor``) is exact where the belief
    tree fits its memory bound, else estimated on the same sample, with its standard error.
    """
    config = TrainConfig(steps=1, bos=bos, length=length, seed=seed)
    layout = _layout(model, hmm, config, token_map)
    data = _eval_set(hmm, layout, n_sequences=n_sequences, seed=seed)
    floor = _floor(hmm, layout, data, seed)
    with eval_mode(model):
        return _evaluate(model, layout, data, floor, step=0, tokens=0)


# --- checkpoints ----------------------------------------------------------------------------------


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


def _write_checkpoint(
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
    from safetensors.torch import save_file

    from belief_lens.models import save_checkpoint
    from belief_lens.storage import fsync_path

    name = f"step_{step:08d}"
    final = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    extra = {"step": step, "train_config": history.config, "process": history.process}
    save_checkpoint(model, tmp / "model.safetensors", extra=extra)
    opt_tensors, opt_meta = _optimizer_to_files(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
    fsync_path(tmp / "optimizer.safetensors")
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
    for _, path in step_checkpoints(directory)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    return final


def _clean_stale(directory: Path) -> None:
    """Remove temporary checkpoint directories that a killed run left behind."""
    for entry in directory.iterdir():
        if _TMP_DIR.match(entry.name):
            logger.info("removing a killed run's temporary checkpoint %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _read_checkpoint(path: Path) -> tuple[dict, dict[str, Tensor], dict[str, Tensor]]:
    """State, model tensors and optimizer tensors of one step directory; raises if corrupt."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    for name, digest in state["sha256"].items():
        if _sha256(path / name) != digest:
            raise ValueError(f"{name} does not match its checksum")
    weights = load_file(str(path / "model.safetensors"))
    opt = load_file(str(path / "optimizer.safetensors"))
    return state, weights, opt


def _latest_intact(directory: Path) -> tuple[Path, dict, dict, dict] | None:
    """The newest step checkpoint that reads back intact; warns about each corrupt newer one."""
    for step, path in reversed(step_checkpoints(directory)):
        try:
            return (path, *_read_checkpoint(path))
        except Exception as err:  # any damage: fall back to the previous checkpoint
            message = (
                f"checkpoint {str(path)!r} (step {step}) is corrupt or incomplete "
                f"({type(err).__name__}: {err}); falling back to an earlier one"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            logger.warning(message)
    return None


def _check_resumable(path: Path, saved: TrainingHistory, now: TrainingHistory) -> None:
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
            if k not in _RESUMABLE_CHANGES and a.get(k) != b.get(k)
        ]
        if differ:
            raise BeliefLensError(
                f"cannot resume from {str(path)!r}: the run's {what} differ ({', '.join(differ)});"
                " use the same settings or another checkpoint_dir"
            )


# --- training -------------------------------------------------------------------------------------


def _make_optimizer(model: Any, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)


def train(
    model: Any,
    hmm: HMM,
    config: TrainConfig | None = None,
    *,
    token_map: TokenMap | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[int, TrainingHistory], bool | None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    **overrides: Any,
) -> TrainingHistory:
    """Train ``model`` in place on sequences from ``hmm``; returns the ``TrainingHistory``.

    ``config`` is a ``TrainConfig``; keyword ``overrides`` replace its fields (or build one:
    ``train(model, hmm, steps=500, lr=3e-3)``). A toy model reads symbols as token ids
    ``0..n_symbols-1`` (BOS ``n_symbols``); any other model reads them through ``token_map``
    and is trained at the map's prediction positions against the full-vocabulary softmax.
    With a ``seconds`` budget the run ends within it, evaluations included, and the learning-rate
    schedule follows the fraction of the budget elapsed (measured with ``clock``).
    With ``checkpoint_dir``, checkpoints are written atomically and a rerun resumes from the
    newest intact one (a run of another process or configuration is refused by name); a
    step-budget run resumed gives exactly the uninterrupted result. ``callback(step, history)``
    runs after every step; returning True stops training there (after a last evaluation and
    checkpoint). The model's train/eval mode is restored at the end; data follows its device.
    """
    if config is None:
        config = TrainConfig(**overrides)
    elif not isinstance(config, TrainConfig):
        raise BeliefLensError(f"config must be a TrainConfig, got {type(config).__name__}")
    elif overrides:
        config = config.replace(**overrides)
    from belief_lens.models import ModelConfig

    t_start = clock()
    layout = _layout(model, hmm, config, token_map)
    tokens_per_step = config.batch_size * layout.n_predictions
    steps = config.steps
    if config.n_tokens is not None:
        steps = max(1, math.ceil(config.n_tokens / tokens_per_step))
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise BeliefLensError(f"checkpoint_dir {str(directory)!r} is not writable")
        _clean_stale(directory)
    opt = _make_optimizer(model, config)
    history = TrainingHistory(
        tokens_per_step=tokens_per_step,
        config=config.to_dict(),
        model_config=ModelConfig.from_model(model).to_dict(),
        process={"name": hmm.name, "fingerprint": process_fingerprint(hmm)}
        | ({"token_map": repr(token_map)} if token_map is not None else {}),
    )
    if directory is not None:
        found = _latest_intact(directory) if step_checkpoints(directory) else None
        if found is not None and not config.resume:
            raise BeliefLensError(
                f"{str(directory)!r} holds checkpoints of a run (up to {found[0].name}) and "
                "resume=False would overwrite them; resume it, or use another checkpoint_dir"
            )
        if found is not None:
            from belief_lens.models import load_weights_into

            path, state, weights, opt_tensors = found
            saved = TrainingHistory.from_dict(state["history"])
            _check_resumable(path, saved, history)
            load_weights_into(model, weights, path=path / "model.safetensors")
            _optimizer_from_files(opt, opt_tensors, state["optimizer"])
            history = saved
            history.config = config.to_dict()
            logger.info("resumed from step %d in %s", history.steps, directory)
            t_start = clock() - history.seconds

    eval_data = _eval_set(hmm, layout, n_sequences=config.eval_sequences, seed=config.seed)
    floor = _floor(hmm, layout, eval_data, config.seed)
    history.optimal_loss = floor.per_position.tolist()
    history.optimal_loss_se = floor.per_position_se.tolist()
    history.optimal_exact = floor.exact
    history.optimal_mean_se = floor.mean_se
    device = model_device(model)
    was_training = model.training
    budget = config.seconds
    reserve = {"eval": 0.0, "checkpoint": 0.0}  # measured costs of the closing evaluation
    # The schedule spans the loop's time: from its start (less the time of a resumed run's
    # earlier part) to the deadline, less the closing evaluation and checkpoint.
    origin = {"t": clock() - history.seconds}

    def progress_at(step: int) -> float:
        p = step / steps if steps is not None else 0.0
        if budget is not None:
            end = t_start + budget - 1.2 * (reserve["eval"] + reserve["checkpoint"])
            p = max(p, (clock() - origin["t"]) / max(end - origin["t"], 1e-9))
        return p

    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = steps if steps is not None else 100
        unit = "step" if steps is not None else "%"
        bar = tqdm(total=total, desc=f"train ({config.targets})", unit=unit)

    pending: list[Tensor] = []

    def flush() -> None:
        if pending:
            history.loss.extend(torch.stack(pending).cpu().tolist())
            pending.clear()

    def evaluate(step: int) -> None:
        t0 = clock()
        model.eval()
        record = _evaluate(
            model, layout, eval_data, floor, step, step * tokens_per_step, clock() - t_start
        )
        model.train()
        reserve["eval"] = clock() - t0
        history.evals.append(record)
        ratio = f"{record.loss_over_optimal:.4f}"
        logger.info(
            "step %d (%.0f s): loss %.5f (%s x optimal, %s)",
            step,
            record.seconds,
            record.loss,
            ratio,
            floor.method,
        )
        if bar is not None:
            bar.set_postfix_str(f"eval loss {record.loss:.5f} = {ratio} x optimal", refresh=False)

    def checkpoint(step: int) -> None:
        if directory is None:
            return
        t0 = clock()
        flush()
        history.seconds = clock() - t_start
        _write_checkpoint(directory, model, opt, history, step, config.keep_checkpoints)
        reserve["checkpoint"] = clock() - t0

    block: dict[int, tuple[Tensor, Tensor]] = {}

    def batch_for(step: int) -> tuple[Tensor, Tensor]:
        # Data for _DATA_BLOCK steps is made in one vectorised call: a pure function of
        # (seed, block), so resuming mid-block regenerates the same batches.
        b = step // _DATA_BLOCK
        if b not in block:
            block.clear()
            n = config.batch_size * _DATA_BLOCK
            gen = _step_generator(config.seed, b)
            if config.targets == "tokens":
                seq = sample_sequences(hmm, n, layout.length + 1, generator=gen)
                symbols = seq[:, :-1]
                target = seq[:, (0 if layout.bos else 1) :]
            else:
                symbols = sample_sequences(hmm, n, layout.length, generator=gen)
                target = hmm.next_token_probs(layout.beliefs(hmm, symbols)).float()
            block[b] = (layout.token_map.encode(symbols), target)
        inputs, target = block[b]
        first = (step % _DATA_BLOCK) * config.batch_size
        return inputs[first : first + config.batch_size], target[first : first + config.batch_size]

    with contextlib.ExitStack() as stack:
        stack.callback(model.train, was_training)
        if bar is not None:
            stack.callback(bar.close)
        model.train()
        step = history.steps
        if bar is not None and steps is not None:
            bar.update(min(step, steps))
        if not history.evals:
            evaluate(0)
            origin["t"] = clock()
        # Evaluations at each tenth of the run; under a time budget, fewer where they would
        # take more than a tenth of it.
        n_evals = 10
        if budget is not None and reserve["eval"] > 0:
            n_evals = max(1, min(10, int(0.1 * budget / reserve["eval"])))
        next_eval = math.floor(progress_at(step) * n_evals + 1) / n_evals
        stopped = False
        while True:
            p = progress_at(step)
            if p >= 1.0 or stopped:
                break
            inputs, target = batch_for(step)
            current_lr = lr_at(step, p, config)
            for group in opt.param_groups:
                group["lr"] = current_lr
            logp = layout.model_logp(model(inputs.to(device, non_blocking=True)))
            target = target.to(device, non_blocking=True)
            if config.targets == "tokens":
                loss = F.nll_loss(logp.reshape(-1, logp.shape[-1]), target.reshape(-1))
            else:
                loss = -(target.to(logp.dtype) * logp).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            pending.append(loss.detach())
            history.lr.append(current_lr)
            step += 1
            if callback is not None:
                flush()
                if callback(step, history) is True:
                    logger.info("callback stopped training at step %d", step)
                    stopped = True
            p_after = progress_at(step)
            is_last = stopped or p_after >= 1.0
            if config.eval_every is not None:
                due = step % config.eval_every == 0
            else:
                due = p_after >= next_eval
                if due:
                    next_eval = math.floor(p_after * n_evals + 1) / n_evals
            if len(pending) >= 32 or due or is_last:
                flush()
            if due or is_last:
                evaluate(step)
            if config.checkpoint_every is not None:
                save = step % config.checkpoint_every == 0 or is_last
            else:
                save = due or is_last
            if save:
                checkpoint(step)
            if bar is not None:
                if steps is not None:
                    bar.update(1)
                else:
                    bar.n = min(100, int(100 * p_after))
                    bar.refresh()
        flush()
        if not history.evals or history.evals[-1].step != step:
            evaluate(step)
            checkpoint(step)
        history.seconds = clock() - t_start
    return history
