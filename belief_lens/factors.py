"""Ground truth for processes made of factors: joint beliefs, per-factor marginals, and the cost
of representing the joint belief by the product of its marginals.

After Shai et al., "Transformers learn factored representations" (arXiv 2602.02385): a network
may hold the joint belief over ``prod(S_i)`` states (an affine image of dimension
``prod(S_i) - 1``) or each factor's belief in its own subspace (dimension ``sum(S_i - 1)``). The
second is lossless exactly when the joint belief is the product of its marginals. Joint tokens and
states are numbered as in :func:`belief_lens.processes.product` (row-major, factor 0 most
significant). Imports no TransformerLens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.metrics import kl_divergence

__all__ = [
    "FactoredBeliefs",
    "PredictedDims",
    "factor_tokens",
    "factored_beliefs",
    "factored_cost",
    "joint_tokens",
    "marginal_beliefs",
    "outer_product",
    "predicted_dims",
    "vary_one_tokens",
]


@dataclass(frozen=True)
class PredictedDims:
    """The two hypotheses' dimensions for factors with ``S_i`` states each."""

    joint: int  # prod(S_i) - 1: an affine image of the joint belief simplex
    factored: int  # sum(S_i - 1): one simplex per factor, in orthogonal subspaces


def _shape(factor_states: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in factor_states)
    if not shape or any(s < 1 for s in shape):
        raise BeliefLensError(f"factor_states must be positive integers, got {factor_states!r}")
    return shape


def predicted_dims(factor_states: Sequence[int]) -> PredictedDims:
    """Joint ``prod(S_i) - 1`` and factored ``sum(S_i - 1)``; Mess3 x Mess3 gives 8 and 4."""
    shape = _shape(factor_states)
    return PredictedDims(joint=math.prod(shape) - 1, factored=sum(s - 1 for s in shape))


def marginal_beliefs(
    joint: Float[Tensor, "*batch S"], factor_states: Sequence[int]
) -> tuple[Float[Tensor, "*batch S_i"], ...]:
    """Each factor's marginal belief: the joint belief summed over all other factors' states."""
    shape = _shape(factor_states)
    if joint.shape[-1] != math.prod(shape):
        raise BeliefLensError(
            f"joint beliefs end in {joint.shape[-1]} states but factor_states {shape} "
            f"have {math.prod(shape)}"
        )
    grid = joint.reshape(*joint.shape[:-1], *shape)
    lead = joint.ndim - 1
    axes = range(lead, lead + len(shape))
    return tuple(grid.sum(dim=tuple(a for a in axes if a != k)) for k in axes)


def outer_product(marginals: Sequence[Float[Tensor, "*batch S_i"]]) -> Float[Tensor, "*batch S"]:
    """The product of per-factor beliefs as a joint belief (the factored approximation)."""
    if not marginals:
        raise BeliefLensError("outer_product needs at least one factor's beliefs")
    out = marginals[0]
    for m in marginals[1:]:
        out = (out[..., :, None] * m[..., None, :]).flatten(-2)
    return out


def factor_tokens(
    tokens: Int[Tensor, "*batch"], factor_vocab: Sequence[int]
) -> tuple[Int[Tensor, "*batch"], ...]:
    """Split joint tokens into each factor's tokens (the inverse of :func:`joint_tokens`)."""
    vocab = _shape(factor_vocab)
    tokens = torch.as_tensor(tokens).long()
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= math.prod(vocab)):
        raise BeliefLensError(
            f"joint tokens must lie in [0, {math.prod(vocab)}) for factor vocabularies {vocab}, "
            f"got range [{int(tokens.min())}, {int(tokens.max())}]"
        )
    out = []
    for v in reversed(vocab):
        out.append(tokens % v)
        tokens = tokens // v
    return tuple(reversed(out))


def joint_tokens(
    tokens: Sequence[Int[Tensor, "*batch"]], factor_vocab: Sequence[int]
) -> Int[Tensor, "*batch"]:
    """Combine per-factor tokens into joint tokens, factor 0 most significant."""
    vocab = _shape(factor_vocab)
    if len(tokens) != len(vocab):
        raise BeliefLensError(f"got tokens for {len(tokens)} factors but {len(vocab)} vocabularies")
    out = torch.zeros_like(torch.as_tensor(tokens[0]).long())
    for t, v in zip(tokens, vocab, strict=True):
        out = out * v + torch.as_tensor(t).long()
    return out


@dataclass(frozen=True)
class FactoredBeliefs:
    """The joint belief of a factored process, its marginals and their product, per prefix.

    ``joint[n, t]`` is the belief after tokens ``0..t`` (as :func:`belief_states`);
    ``marginals[i]`` is factor ``i``'s marginal; ``factored`` is the product of the marginals,
    equal to ``joint`` when the factors are conditionally independent given the past.
    """

    joint: Float[Tensor, "n L S"]
    marginals: tuple[Float[Tensor, "n L S_i"], ...]
    factored: Float[Tensor, "n L S"]
    factor_states: tuple[int, ...]

    @property
    def concatenated(self) -> Float[Tensor, "n L sum_S_i"]:
        """All factors' marginals side by side: the factored hypothesis's probe target."""
        return torch.cat(self.marginals, dim=-1)

    @property
    def dims(self) -> PredictedDims:
        return predicted_dims(self.factor_states)


def factored_beliefs(
    hmm: HMM, factor_states: Sequence[int], tokens: Int[Tensor, "n L"]
) -> FactoredBeliefs:
    """Joint belief, marginals and factored approximation of ``hmm`` after every prefix."""
    shape = _shape(factor_states)
    if hmm.n_states != math.prod(shape):
        raise BeliefLensError(
            f"{hmm.name} has {hmm.n_states} states but factor_states {shape} have "
            f"{math.prod(shape)}"
        )
    joint = belief_states(hmm, tokens)
    marginals = marginal_beliefs(joint, shape)
    return FactoredBeliefs(joint, marginals, outer_product(marginals), shape)


def factored_cost(
    hmm: HMM,
    factor_states: Sequence[int],
    tokens: Int[Tensor, "n L"],
    sample_weight: Float[Tensor, " n"] | None = None,
) -> Float[Tensor, " L"]:
    """Expected ``KL(P(. | joint) || P(. | product of marginals))`` in nats, per position.

    The fidelity cost of the factored representation: what a predictor that keeps only each
    factor's marginal belief loses on the next token. The expectation is over the given sequences
    (sample them from ``hmm``, or pass every sequence with its probability as ``sample_weight``).
    It is 0 for an independent product.
    """
    fb = factored_beliefs(hmm, factor_states, tokens)
    kl = kl_divergence(hmm.next_token_probs(fb.joint), hmm.next_token_probs(fb.factored))  # [n, L]
    if sample_weight is None:
        return kl.mean(0)
    w = torch.as_tensor(sample_weight, dtype=torch.float64)
    if w.shape != kl.shape[:1]:
        raise BeliefLensError(f"sample_weight must have shape ({kl.shape[0]},), got {w.shape}")
    return (w @ kl) / w.sum()


def vary_one_tokens(
    factors: Sequence[HMM],
    vary: int,
    n_sequences: int,
    length: int,
    seed: int = 0,
) -> Int[Tensor, "n length"]:
    """Joint tokens of the independent product in which only factor ``vary`` varies.

    Every other factor emits one shared sampled sequence in all ``n_sequences`` rows; factor
    ``vary`` is sampled afresh per row. The paper's "vary-one" data: the activations' variance
    across rows (per position) then belongs to factor ``vary`` alone.
    """
    if not 0 <= vary < len(factors):
        raise BeliefLensError(f"vary must index one of {len(factors)} factors, got {vary}")
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for k, f in enumerate(factors):
        if k == vary:
            parts.append(sample_sequences(f, n_sequences, length, generator=gen))
        else:
            parts.append(sample_sequences(f, 1, length, generator=gen).expand(n_sequences, -1))
    return joint_tokens(parts, [f.n_symbols for f in factors])
