"""Training data: :func:`make_batch`, the one path from a process to a model's inputs and targets,
and how those reach a model (:class:`DataLayout`: its token map, symbols per sequence and
prediction positions).

``train`` draws its batches through :class:`TrainingBatches`, which calls the same code as
``make_batch`` for ``DATA_BLOCK`` steps at once, from a generator seeded by ``(seed, block)``: a
pure function of the two, so a run resumed mid-block regenerates the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from belief_lens.beliefs import belief_states_unchecked, check_hmm, sample_sequences_unchecked
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.token_map import TokenMap
from belief_lens.training.config import Targets, TrainConfig
from belief_lens.validation import check_bool, check_int, check_option

__all__ = [
    "DATA_BLOCK",
    "EVAL_SLOT",
    "DataLayout",
    "TrainingBatches",
    "block_generator",
    "data_layout",
    "make_batch",
]

#: Training steps whose data is sampled in one vectorised call.
DATA_BLOCK = 32
#: Seed-sequence slot of the evaluation set, apart from the per-block slots 0, 1, 2, ...
EVAL_SLOT = 2**32 - 1


def block_generator(seed: int, block: int) -> torch.Generator:
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
    predicts token ``t``. ``generator=None`` draws from a fresh, randomly seeded generator.
    """
    check_hmm(hmm)
    n = check_int("n", n, low=0)
    n_ctx = check_int("n_ctx", n_ctx, low=1)
    targets = check_option("targets", targets, Targets)
    bos = check_bool("bos", bos)
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    elif not isinstance(generator, torch.Generator):
        raise BeliefLensError(
            f"generator must be a torch.Generator, got {type(generator).__name__}"
        )
    return _make_batch(hmm, n, n_ctx, targets, bos, generator)


def _make_batch(
    hmm: HMM, n: int, n_ctx: int, targets: Targets, bos: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """:func:`make_batch` trusting its arguments."""
    if targets == "tokens":
        seq = sample_sequences_unchecked(hmm, n, n_ctx + (0 if bos else 1), generator)
        if bos:
            return _prepend(seq[:, :-1], hmm.n_symbols), seq
        return seq[:, :-1], seq[:, 1:]
    seq = sample_sequences_unchecked(hmm, n, n_ctx - int(bos), generator)
    beliefs = belief_states_unchecked(hmm, seq, include_start=bos)
    return (_prepend(seq, hmm.n_symbols) if bos else seq), hmm.next_token_probs(beliefs)


def _prepend(seq: Tensor, bos_id: int) -> Tensor:
    return torch.cat([torch.full((seq.shape[0], 1), bos_id, dtype=seq.dtype), seq], dim=1)


@dataclass(frozen=True)
class DataLayout:
    """How symbols reach the model: the token map, symbols per sequence and prediction positions."""

    token_map: TokenMap
    length: int
    bos: bool
    positions: Tensor  # [P] model positions whose logits predict the next symbol
    identity: bool  # a toy model over the bare symbol vocabulary

    @property
    def n_predictions(self) -> int:
        """Predictions per sequence: one per symbol, and one at the BOS."""
        return self.length + int(self.bos)

    def encode(self, symbols: Tensor) -> Tensor:
        """Model inputs for symbol sequences ``[n, length]`` (through the token map)."""
        return self.token_map.encode(symbols)

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
        return belief_states_unchecked(hmm, symbols, include_start=self.bos)


def data_layout(
    model: Any, hmm: HMM, config: TrainConfig, token_map: TokenMap | None
) -> DataLayout:
    """The layout of ``hmm``'s data for ``model``: a toy model reads symbols as token ids
    ``0..n_symbols-1`` (BOS ``n_symbols``), any other model through ``token_map``. Raises where
    the vocabulary or the context is too small."""
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
    else:
        if not isinstance(token_map, TokenMap):
            raise BeliefLensError(f"token_map must be a TokenMap, got {type(token_map).__name__}")
        if config.bos:
            raise BeliefLensError(
                "bos=True is for toy models; with a token_map its own bos token is used"
            )
        if token_map.n_symbols != hmm.n_symbols:
            raise BeliefLensError(
                f"token_map maps {token_map.n_symbols} symbols but {hmm.name} emits {hmm.n_symbols}"
            )
        tm = token_map.check_vocab(d_vocab)
    bos = tm.bos is not None
    length = config.length if config.length is not None else tm.max_symbols(n_ctx)
    if length < 1 or tm.model_length(length) > n_ctx:
        raise BeliefLensError(
            f"{length} symbols need {tm.model_length(length)} model positions, but n_ctx={n_ctx}"
            + ("" if length >= 1 else "; the model's context is too short for one symbol")
        )
    positions = tm.prediction_positions(length, include_initial=bos)
    return DataLayout(tm, length, bos, positions, identity=token_map is None)


@dataclass
class TrainingBatches:
    """The batches of a run, step by step: ``make_batch``'s data for ``DATA_BLOCK`` steps at a
    time, from :func:`block_generator`, laid out for the model (inputs through the token map,
    Bayes targets in float32)."""

    hmm: HMM
    layout: DataLayout
    config: TrainConfig
    _block: int = field(default=-1, repr=False)
    _inputs: Tensor | None = field(default=None, repr=False)
    _targets: Tensor | None = field(default=None, repr=False)

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        """Inputs and targets of optimizer step ``step`` (0-based)."""
        block = step // DATA_BLOCK
        if block != self._block:
            self._inputs, self._targets = self._make(block)
            self._block = block
        first = (step % DATA_BLOCK) * self.config.batch_size
        last = first + self.config.batch_size
        return self._inputs[first:last], self._targets[first:last]

    def _make(self, block: int) -> tuple[Tensor, Tensor]:
        layout, config = self.layout, self.config
        inputs, targets = _make_batch(
            self.hmm,
            config.batch_size * DATA_BLOCK,
            layout.n_predictions,
            config.targets,
            layout.bos,
            block_generator(config.seed, block),
        )
        if not layout.identity:  # make_batch's toy inputs, re-encoded through the map
            inputs = layout.encode(inputs[:, int(layout.bos) :])
        return inputs, (targets.float() if config.targets == "bayes" else targets)
