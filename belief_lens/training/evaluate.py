"""Evaluation: a model's expected cross-entropy per position against the exact next-symbol
distributions ``P(. | belief)``, and its ratio to the loss floor.

The evaluation set is every sequence (probability-weighted) where few enough exist, else a seeded
sample; the floor is ``compmech.loss_floor``, exact where the belief tree is small enough to
enumerate, else estimated on the evaluation sample itself, so that loss / floor compares model and
optimum on the same sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.activations import check_finite_activations, eval_mode, model_device
from belief_lens.beliefs import (
    check_hmm,
    enumerate_sequences_unchecked,
    sample_sequences_unchecked,
)
from belief_lens.compmech import LossFloor, loss_floor_unchecked
from belief_lens.errors import BeliefLensError, InvalidProcessError
from belief_lens.hmm import HMM
from belief_lens.token_map import TokenMap
from belief_lens.training.config import TrainConfig
from belief_lens.training.data import EVAL_SLOT, DataLayout, block_generator, data_layout
from belief_lens.training.history import EvalRecord
from belief_lens.validation import check_int

__all__ = ["EvalSet", "Evaluator", "eval_batch_size", "evaluate_loss", "loss_evaluator"]


@dataclass
class EvalSet:
    """The sequences an evaluation runs on, with their exact next-symbol distributions."""

    symbols: Tensor  # [N, L]
    inputs: Tensor  # [N, n_model]
    probs: Tensor  # [N, P, V] float64 exact next-symbol distributions
    weights: Tensor  # [N] float64, summing to 1
    exact: bool  # every sequence, probability-weighted (else a uniform-weight sample)

    @classmethod
    def build(cls, hmm: HMM, layout: DataLayout, n_sequences: int, seed: int) -> EvalSet:
        """Every sequence (probability-weighted) when at most ``n_sequences`` exist, else a sample
        (of at most about 4M prediction entries, so long contexts stay in memory)."""
        L = layout.length
        try:
            seqs = enumerate_sequences_unchecked(hmm, L, max_sequences=n_sequences)
        except InvalidProcessError:
            raise  # no sample makes an invalid process valid
        except BeliefLensError:
            seqs = None
        if seqs is not None and len(seqs) <= n_sequences:
            probs = hmm.next_token_probs(layout.beliefs(hmm, seqs.tokens))
            weights = seqs.probs / seqs.probs.sum()
            return cls(seqs.tokens, layout.encode(seqs.tokens), probs, weights, True)
        entries = layout.n_predictions * max(hmm.n_symbols, hmm.n_states)
        n = max(2, min(n_sequences, max(1024, 2**22 // entries)))
        symbols = sample_sequences_unchecked(hmm, n, L, block_generator(seed, EVAL_SLOT))
        probs = hmm.next_token_probs(layout.beliefs(hmm, symbols))
        weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
        return cls(symbols, layout.encode(symbols), probs, weights, False)


def eval_batch_size(n_ctx: int, d_vocab: int, n_heads: int) -> int:
    """Sequences per evaluation forward pass: at most 4096, about 2**24 logits (a pretrained
    vocabulary of 50k makes them large) and 2**26 attention scores (a long context makes those
    large: they grow with its square)."""
    return max(1, min(4096, 2**24 // (n_ctx * d_vocab), 2**26 // (n_heads * n_ctx * n_ctx)))


@dataclass
class Evaluator:
    """Evaluates a model on one evaluation set against one loss floor (see the module doc)."""

    layout: DataLayout
    data: EvalSet
    floor: LossFloor

    @classmethod
    def build(cls, hmm: HMM, layout: DataLayout, n_sequences: int, seed: int) -> Evaluator:
        """The evaluation set of ``n_sequences`` and its loss floor, for checked arguments."""
        data = EvalSet.build(hmm, layout, n_sequences, seed)
        floor = loss_floor_unchecked(
            hmm,
            layout.n_predictions,
            bos=layout.bos,
            seed=seed,
            tokens=None if data.exact else data.symbols,
        )
        return cls(layout, data, floor)

    @torch.no_grad()
    def __call__(self, model: Any, step: int, tokens: int, seconds: float = 0.0) -> EvalRecord:
        """Expected cross-entropy per position of ``model`` (in the mode it is in)."""
        data = self.data
        device = model_device(model)
        per_pos = torch.zeros(self.layout.n_predictions, dtype=torch.float64)
        n_ctx, d_vocab = data.inputs.shape[1], int(model.cfg.d_vocab)
        batch_size = eval_batch_size(n_ctx, d_vocab, int(getattr(model.cfg, "n_heads", 1)))
        for start in range(0, data.inputs.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            per_pos += self._cross_entropy(model(data.inputs[sl].to(device)), sl, step)
        return self._record(per_pos, step, tokens, seconds)

    @torch.no_grad()
    def score_logits(self, logits: Float[Tensor, "N n_model V"], step: int = 0) -> EvalRecord:
        """The record of a model whose logits on ``data.inputs`` are given (computed in another
        pass over the same sequences, e.g. a probe run's), in batches as :meth:`__call__`."""
        data = self.data
        if tuple(logits.shape[:2]) != tuple(data.inputs.shape):
            raise BeliefLensError(
                f"logits must have shape [N, n_ctx, d_vocab] with [N, n_ctx] = "
                f"{list(data.inputs.shape)} (the evaluation inputs), got {list(logits.shape)}"
            )
        per_pos = torch.zeros(self.layout.n_predictions, dtype=torch.float64)
        for start in range(0, data.inputs.shape[0], 4096):
            sl = slice(start, start + 4096)
            per_pos += self._cross_entropy(logits[sl], sl, step)
        return self._record(per_pos, step, 0, 0.0)

    def _cross_entropy(self, logits: Tensor, sl: slice, step: int) -> Float[Tensor, " P"]:
        """The weighted cross-entropy per prediction position of one batch of sequences."""
        check_finite_activations("the model's logits", logits, step)
        logp = self.layout.model_logp(logits.float()).double().cpu()
        probs = self.data.probs[sl]
        # 0 * log 0 is 0 (a symbol theory rules out); a finite logit never gives -inf * p > 0.
        ce = -torch.where(probs > 0, probs * logp, torch.zeros_like(logp)).sum(-1)
        return (self.data.weights[sl, None] * ce).sum(0)

    def _record(self, per_pos: Tensor, step: int, tokens: int, seconds: float) -> EvalRecord:
        floor = self.floor
        return EvalRecord(
            step=step,
            tokens=tokens,
            loss=float(per_pos.mean()),
            loss_over_optimal=float(per_pos.mean() / floor.mean),
            loss_per_position=per_pos.tolist(),
            loss_over_optimal_per_position=(per_pos / floor.per_position).tolist(),
            exact=self.data.exact,
            optimal_loss=floor.mean,
            optimal_loss_se=floor.mean_se,
            optimal_exact=floor.exact,
            seconds=seconds,
        )


def loss_evaluator(
    model: Any,
    hmm: HMM,
    *,
    bos: bool = False,
    token_map: TokenMap | None = None,
    length: int | None = None,
    n_sequences: int = 200_000,
    seed: int = 0,
) -> Evaluator:
    """The :class:`Evaluator` :func:`evaluate_loss` runs, for checked options: call it on the
    model, or give it logits already computed on its ``data.inputs``
    (:meth:`Evaluator.score_logits`)."""
    check_hmm(hmm)
    n_sequences = check_int("n_sequences", n_sequences, low=1)
    config = TrainConfig(steps=1, bos=bos, length=length, seed=seed)
    layout = data_layout(model, hmm, config, token_map)
    return Evaluator.build(hmm, layout, n_sequences, config.seed)


def evaluate_loss(model: Any, hmm: HMM, **options: Any) -> EvalRecord:
    """The model's expected cross-entropy per position against ``P(. | belief)``, and its ratio
    to the loss floor. ``options`` are :func:`loss_evaluator`'s: ``bos``, ``token_map``,
    ``length``, ``n_sequences`` (default 200,000) and ``seed``.

    Exact over every sequence when at most ``n_sequences`` exist (all 59,049 for Mess3 at n_ctx
    10), else on a seeded sample. The floor (``compmech.loss_floor``) is exact where the belief
    tree fits its memory bound, else estimated on the same sample, with its standard error.
    """
    evaluator = loss_evaluator(model, hmm, **options)
    with eval_mode(model):
        return evaluator(model, step=0, tokens=0)
