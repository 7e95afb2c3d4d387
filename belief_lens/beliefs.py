"""Sequences and beliefs: batched sampling, belief filtering and exhaustive enumeration.

Everything is vectorised over sequences; the only Python loops run over positions.
Alignment: ``beliefs[:, t]`` is the belief after reading tokens ``0..t``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM

__all__ = [
    "SequenceSet",
    "belief_states",
    "belief_walk",
    "enumerate_sequences",
    "log_probs",
    "next_token_distributions",
    "sample_sequences",
]

Impossible = Literal["raise", "mask"]


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def sample_sequences(
    hmm: HMM,
    n_sequences: int,
    length: int,
    seed: int | None = None,
    *,
    generator: torch.Generator | None = None,
    initial_state: Tensor | None = None,
) -> Int[Tensor, "n_sequences length"]:
    """Sample token sequences, vectorised over sequences; the same seed gives the same tokens.

    Hidden states start from ``initial_state`` (default ``hmm.initial_state``). Generalized HMMs,
    which have no hidden-state sampler, are sampled exactly from their belief trajectories.
    """
    if n_sequences < 0 or length < 0:
        raise BeliefLensError(f"n_sequences and length must be >= 0, got {n_sequences}, {length}")
    gen = _generator(seed, generator)
    init = (
        hmm.initial_state
        if initial_state is None
        else hmm.check_belief(initial_state, "initial_state")
    )
    u = torch.rand(n_sequences, length, generator=gen, dtype=torch.float64)
    tokens = torch.empty(n_sequences, length, dtype=torch.long)
    if hmm.generalized:
        for t, (_, x, _) in enumerate(
            belief_walk(hmm, init.expand(n_sequences, -1), u.T.contiguous())
        ):
            tokens[:, t] = x
        return tokens
    S = hmm.n_states
    # Row i of `cdf` is the cumulative distribution of the joint (symbol, next state) from state i.
    cdf = hmm.T.permute(1, 0, 2).reshape(S, -1).cumsum(-1)
    cdf = (cdf / cdf[:, -1:])[:, :-1].contiguous()
    init_cdf = (init / init.sum()).cumsum(0)[:-1]
    state = (torch.rand(n_sequences, 1, generator=gen, dtype=torch.float64) > init_cdf).sum(-1)
    u = u.T.contiguous()  # [L, n]: one contiguous row per step
    tokens = torch.empty(length, n_sequences, dtype=torch.long)
    for t in range(length):
        joint = (u[t, :, None] > cdf[state]).sum(-1)
        torch.div(joint, S, rounding_mode="floor", out=tokens[t])
        state = joint - tokens[t] * S
    return tokens.T.contiguous()


def belief_walk(
    hmm: HMM, beliefs: Float[Tensor, "n S"], uniforms: Float[Tensor, "steps n"]
) -> Iterator[tuple[Float[Tensor, "n V"], Int[Tensor, " n"], Float[Tensor, "n S"]]]:
    """Walk beliefs forward, drawing each symbol from ``P(. | belief)`` with the given uniforms.

    Yields ``(next_token_probs, symbol, new_belief)`` per step. This samples any process exactly,
    generalized HMMs included, and is the chaos game that traces a process's belief fractal.
    """
    last = hmm.n_symbols - 1
    cols = beliefs.T.contiguous()
    for u in uniforms:
        p = (hmm.T_tau @ cols).T.clamp_min(0)
        cdf = p.cumsum(-1)
        x = (u[:, None] * cdf[:, -1:] > cdf).sum(-1).clamp_max(last)
        new, norm = hmm.step(cols, x)
        cols = new / norm
        yield p, x, cols.T


def _filter(
    hmm: HMM,
    tokens: Tensor,
    initial_state: Tensor | None,
    impossible: Impossible,
    want_log_probs: bool,
    chunk: int = 8192,
) -> tuple[Float[Tensor, "n L S"], Float[Tensor, "n L"] | None]:
    """Run the belief filter, returning beliefs and (if wanted) cumulative log-probabilities.

    Sequences go through in chunks whose per-step temporaries stay in cache, in a column layout
    (``[S, chunk]``) that makes the skinny matmuls fast.
    """
    if impossible not in ("raise", "mask"):
        raise BeliefLensError(f"impossible must be 'raise' or 'mask', got {impossible!r}")
    tokens = hmm.check_tokens(tokens)
    if tokens.ndim != 2:
        raise BeliefLensError(f"tokens must have shape [n, L], got {tuple(tokens.shape)}")
    n, L = tokens.shape
    init = (
        hmm.initial_state
        if initial_state is None
        else hmm.check_belief(initial_state, "initial_state")
    )
    beliefs = torch.empty(n, L, hmm.n_states, dtype=torch.float64)
    norms = torch.empty(n, L, dtype=torch.float64)
    for c in range(0, n, chunk):
        tok = tokens[c : c + chunk].T.contiguous()
        m = tok.shape[1]
        cols = torch.empty(L, hmm.n_states, m, dtype=torch.float64)
        chunk_norms = torch.empty(L, m, dtype=torch.float64)
        eta = init[:, None].expand(-1, m)
        for t in range(L):
            new, chunk_norms[t] = hmm.step(eta, tok[t])
            eta = torch.div(new, chunk_norms[t], out=cols[t])
        beliefs[c : c + chunk] = cols.permute(2, 0, 1)
        norms[c : c + chunk] = chunk_norms.T
    zero = ~(norms > 0)
    after = None
    if zero.any():
        bad_seq = zero.any(1)
        first = torch.where(bad_seq, zero.float().argmax(1), L)
        if impossible == "raise":
            i = int(torch.nonzero(bad_seq)[0])
            t = int(first[i])
            raise BeliefLensError(
                f"sequence {i} has probability zero: token {int(tokens[i, t])} at position {t} "
                "is impossible after the preceding tokens (pass impossible='mask' to get NaN "
                "beliefs and -inf log-probabilities instead)"
            )
        after = torch.arange(L)[None, :] >= first[:, None]
        beliefs.masked_fill_(after[..., None], float("nan"))
    if not want_log_probs:
        return beliefs, None
    logp = norms.log_().cumsum(1)
    if after is not None:
        logp.masked_fill_(after, float("-inf"))
    return beliefs, logp


def belief_states(
    hmm: HMM,
    tokens: Int[Tensor, "n L"],
    *,
    initial_state: Tensor | None = None,
    impossible: Impossible = "raise",
) -> Float[Tensor, "n L n_states"]:
    """Bayesian belief after each prefix: row ``t`` is the belief after tokens ``0..t``.

    Exact in float64 for any length (the belief is renormalised every step). A sequence of
    probability zero raises, naming its first impossible position; with ``impossible="mask"``
    its beliefs are NaN from that position on.
    """
    return _filter(hmm, tokens, initial_state, impossible, want_log_probs=False)[0]


def log_probs(
    hmm: HMM,
    tokens: Int[Tensor, "n L"],
    *,
    initial_state: Tensor | None = None,
    impossible: Impossible = "raise",
) -> Float[Tensor, "n L"]:
    """Cumulative log-probability (nats) of each prefix ``tokens[:, :t+1]``."""
    return _filter(hmm, tokens, initial_state, impossible, want_log_probs=True)[1]


def next_token_distributions(
    hmm: HMM,
    tokens: Int[Tensor, "n L"],
    *,
    initial_state: Tensor | None = None,
    beliefs: Tensor | None = None,
) -> Float[Tensor, "n L n_symbols"]:
    """``P(token t+1 | tokens 0..t)`` at every position: what an optimal predictor outputs."""
    if beliefs is None:
        beliefs = belief_states(hmm, tokens, initial_state=initial_state)
    return hmm.next_token_probs(beliefs)


@dataclass(frozen=True)
class SequenceSet:
    """Every sequence of one length with nonzero probability, in lexicographic order.

    Attributes:
        tokens: ``[N, L]`` the sequences.
        probs: ``[N]`` their probabilities (they sum to 1).
        beliefs: ``[N, L, S]`` the belief after each prefix.
    """

    tokens: Int[Tensor, "N L"]
    probs: Float[Tensor, " N"]
    beliefs: Float[Tensor, "N L S"]

    def __len__(self) -> int:
        return self.tokens.shape[0]


def enumerate_sequences(
    hmm: HMM,
    length: int,
    *,
    initial_state: Tensor | None = None,
    min_prob: float = 0.0,
    max_sequences: int = 10_000_000,
) -> SequenceSet:
    """All sequences of ``length`` with probability above ``min_prob``, built level by level.

    Zero-probability prefixes are pruned as they appear, so the cost is the number of valid
    sequences, not ``n_symbols ** length``.
    """
    if length < 1:
        raise BeliefLensError(f"length must be >= 1, got {length}")
    init = (
        hmm.initial_state
        if initial_state is None
        else hmm.check_belief(initial_state, "initial_state")
    )
    S = hmm.n_states
    tokens = torch.empty(1, 0, dtype=torch.long)
    beliefs = torch.empty(1, 0, S, dtype=torch.float64)
    eta = init[None, :]
    logp = torch.zeros(1, dtype=torch.float64)
    # Tiny positive floor: in a generalized HMM, cancellation leaves ~1e-17 instead of exact zeros.
    floor = max(min_prob, 1e-14 if hmm.generalized else 0.0)
    for _ in range(length):
        new = torch.einsum("ns,xsj->nxj", eta, hmm.T)  # [N, V, S]
        p = new @ hmm.tau  # [N, V]  P(x | prefix)
        parent, sym = torch.nonzero(logp.exp()[:, None] * p > floor, as_tuple=True)
        if len(parent) > max_sequences:
            raise BeliefLensError(
                f"{len(parent)} sequences exceed max_sequences={max_sequences}; raise the limit "
                "or sample instead"
            )
        eta = new[parent, sym] / p[parent, sym, None]
        logp = logp[parent] + p[parent, sym].log()
        tokens = torch.cat([tokens[parent], sym[:, None]], dim=1)
        beliefs = torch.cat([beliefs[parent], eta[:, None]], dim=1)
    return SequenceSet(tokens=tokens, probs=logp.exp(), beliefs=beliefs)
