"""Sequences and beliefs: batched sampling, belief filtering and exhaustive enumeration.

Everything is vectorised over sequences; the only Python loops run over positions, and the
belief filter is a compiled loop (:mod:`belief_lens.filter_kernel`).
Alignment: ``beliefs[:, t]`` is the belief after reading tokens ``0..t``.

Public functions check their arguments once; each ``*_unchecked`` twin does the same work trusting
them, for callers (training, comp-mech) that validated at their own entry point.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.errors import BeliefLensError, InvalidProcessError
from belief_lens.filter_kernel import filter_into
from belief_lens.hmm import HMM, NEGATIVE_TOL
from belief_lens.threads import single_thread_below
from belief_lens.validation import (
    check_bool,
    check_float,
    check_int,
    check_option,
    check_real_tensor,
    check_seed,
)

__all__ = [
    "SequenceSet",
    "available_memory",
    "belief_states",
    "belief_states_unchecked",
    "belief_walk",
    "check_hmm",
    "check_memory",
    "count_sequences",
    "default_max_bytes",
    "enumerate_sequences",
    "enumerate_sequences_unchecked",
    "log_probs",
    "next_token_distributions",
    "sample_sequences",
    "sample_sequences_unchecked",
]

Impossible = Literal["raise", "mask"]


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise BeliefLensError(
                f"generator must be a torch.Generator, got {type(generator).__name__}"
            )
        return generator
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(check_seed("seed", seed))
    return gen


def check_hmm(hmm) -> HMM:
    """Refuse anything but an :class:`~belief_lens.hmm.HMM` (or generalized HMM)."""
    if not isinstance(hmm, HMM):
        raise BeliefLensError(f"hmm must be an HMM or GeneralizedHMM, got {type(hmm).__name__}")
    return hmm


# ---------------------------------------------------------------------------------- memory
def available_memory() -> int:
    """Bytes of memory this process can still use: ``MemAvailable``, capped by a cgroup limit."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 * 2**30
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            avail = min(avail, max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return avail


def default_max_bytes() -> int:
    """The default memory bound of the enumerations: a quarter of :func:`available_memory`."""
    return available_memory() // 4


def check_memory(estimate: int, max_bytes: int | None, what: str, options: str) -> None:
    """Raise before allocating when ``estimate`` bytes exceed ``max_bytes`` (default a quarter of
    the available memory), naming the estimate, the bound and the ways out."""
    bound = default_max_bytes() if max_bytes is None else max_bytes
    if estimate > bound:
        source = "max_bytes" if max_bytes is not None else "default: a quarter of available memory"
        raise BeliefLensError(
            f"{what} needs about {estimate / 2**30:.3g} GiB, over the bound of "
            f"{bound / 2**30:.3g} GiB ({source}); options: {options}"
        )


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
    check_hmm(hmm)
    n_sequences = check_int("n_sequences", n_sequences, low=0)
    length = check_int("length", length, low=0)
    gen = _generator(seed, generator)
    init = None if initial_state is None else hmm.check_belief(initial_state, "initial_state")
    return sample_sequences_unchecked(hmm, n_sequences, length, gen, initial_state=init)


def sample_sequences_unchecked(
    hmm: HMM,
    n_sequences: int,
    length: int,
    generator: torch.Generator,
    *,
    initial_state: Tensor | None = None,
) -> Int[Tensor, "n_sequences length"]:
    """:func:`sample_sequences` trusting its arguments: an HMM, counts >= 0, a generator and a
    normalised ``initial_state`` (or None). The memory bound is still checked."""
    # uniforms (float64) and two int64 token buffers
    check_memory(
        n_sequences * length * 8 * 3,
        None,
        f"sampling {n_sequences} sequences of length {length}",
        "fewer or shorter sequences, sampled in batches",
    )
    init = hmm.initial_state if initial_state is None else initial_state
    u = torch.rand(n_sequences, length, generator=generator, dtype=torch.float64)
    tokens = torch.empty(n_sequences, length, dtype=torch.long)
    if hmm.generalized:
        with single_thread_below(n_sequences * hmm.n_states * hmm.n_symbols):
            walk = _walk(hmm, init.expand(n_sequences, -1), u.T.contiguous())
            for t, (_, x, _) in enumerate(walk):
                tokens[:, t] = x
        return tokens
    S = hmm.n_states
    # Row i of `cdf` is the cumulative distribution of the joint (symbol, next state) from state i.
    cdf = hmm.T.permute(1, 0, 2).reshape(S, -1).cumsum(-1)
    cdf = (cdf / cdf[:, -1:])[:, :-1].contiguous()
    init_cdf = (init / init.sum()).cumsum(0)[:-1]
    first = torch.rand(n_sequences, 1, generator=generator, dtype=torch.float64)
    state = (first > init_cdf).sum(-1)
    u = u.T.contiguous()  # [L, n]: one contiguous row per step
    tokens = torch.empty(length, n_sequences, dtype=torch.long)
    with single_thread_below(n_sequences * cdf.shape[1]):
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
    check_hmm(hmm)
    beliefs = check_real_tensor("beliefs", beliefs)
    uniforms = check_real_tensor("uniforms", uniforms)
    if beliefs.ndim != 2 or beliefs.shape[1] != hmm.n_states:
        raise BeliefLensError(
            f"beliefs must have shape [n, {hmm.n_states}], got {tuple(beliefs.shape)}"
        )
    if uniforms.ndim != 2 or uniforms.shape[1] != beliefs.shape[0]:
        raise BeliefLensError(
            f"uniforms must have shape [steps, {beliefs.shape[0]}], got {tuple(uniforms.shape)}"
        )
    if not torch.isfinite(beliefs).all():
        raise BeliefLensError("beliefs contain NaN or inf")
    if not ((uniforms >= 0) & (uniforms <= 1)).all():
        raise BeliefLensError("uniforms must be in [0, 1] (NaN refused)")
    return _walk(hmm, beliefs, uniforms)


def _walk(hmm: HMM, beliefs: Tensor, uniforms: Tensor) -> Iterator:
    last = hmm.n_symbols - 1
    cols = beliefs.T.contiguous()
    for u in uniforms:
        p = (hmm.T_tau @ cols).T
        if hmm.generalized and (p < -NEGATIVE_TOL).any():
            i, x = torch.nonzero(p < -NEGATIVE_TOL)[0].tolist()
            raise InvalidProcessError(
                f"{hmm.name} gives token {x} negative probability {p[i, x].item():.6g} at walk "
                f"{i}: it is not a valid process from this belief, so it cannot be sampled"
            )
        p = p.clamp_min(0)
        cdf = p.cumsum(-1)
        x = (u[:, None] * cdf[:, -1:] > cdf).sum(-1).clamp_max(last)
        new, norm = hmm.step(cols, x)
        cols = new / norm
        yield p, x, cols.T


def _check_filter(
    hmm: HMM, tokens, initial_state, impossible: Impossible
) -> tuple[Tensor, Tensor | None]:
    """The filter's arguments checked: tokens ``[n, L]`` as a LongTensor, the start belief."""
    check_hmm(hmm)
    check_option("impossible", impossible, Impossible)
    tokens = hmm.check_tokens(tokens)
    if tokens.ndim != 2:
        raise BeliefLensError(f"tokens must have shape [n, L], got {tuple(tokens.shape)}")
    init = None if initial_state is None else hmm.check_belief(initial_state, "initial_state")
    return tokens, init


def _filter(
    hmm: HMM,
    tokens: Tensor,
    initial_state: Tensor | None,
    impossible: Impossible,
    want_log_probs: bool,
    include_start: bool = False,
) -> tuple[Float[Tensor, "n L S"], Float[Tensor, "n L"] | None]:
    """Run the belief filter, returning beliefs and (if wanted) cumulative log-probabilities.

    Trusts its arguments (see :func:`_check_filter`). The compiled kernel
    (:mod:`belief_lens.filter_kernel`) writes each belief straight into the returned tensor,
    after the start belief when ``include_start``; a sequence stops at its first normaliser
    that is not positive, which raises here unless it is a zero and ``impossible="mask"``.
    """
    n, L = tokens.shape
    init = hmm.initial_state if initial_state is None else initial_state
    init = init.to(torch.float64).contiguous()
    # numpy's allocator asks for huge pages, so first touching the output costs a quarter of
    # what it costs under torch's (16 ms against 57 for 154 MB, the Mess3 benchmark's)
    beliefs = torch.from_numpy(np.empty((n, L + include_start, hmm.n_states)))
    if include_start:
        beliefs[:, 0] = init
    logp = torch.from_numpy(np.empty((n, L))) if want_log_probs else None
    tok = tokens.to("cpu", torch.int64).contiguous()
    first, norm = filter_into(
        hmm.T.detach().contiguous().numpy(),
        hmm.tau.detach().contiguous().numpy(),
        init.detach().numpy(),
        tok.numpy(),
        beliefs.numpy(),
        int(include_start),
        None if logp is None else logp.numpy(),
    )
    stopped = first < L
    if stopped.any():
        _raise_if_invalid(hmm, tok, first, norm, stopped, impossible)
    return beliefs, logp


def _raise_if_invalid(
    hmm: HMM, tokens: Tensor, first, norm, stopped, impossible: Impossible
) -> None:
    """Raise for the first sequence with a negative normaliser (any ``impossible``), or with
    probability zero when ``impossible="raise"``."""
    negative = (norm < -NEGATIVE_TOL).nonzero()[0]
    if len(negative):
        i = int(negative[0])
        t = int(first[i])
        raise InvalidProcessError(
            f"sequence {i} has negative probability: token {int(tokens[i, t])} at position {t} "
            f"gets P = {norm[i]:.6g} after the tokens {tokens[i, :t].tolist()}; "
            f"{hmm.name} is not a valid process there"
        )
    if impossible == "raise":
        i = int(stopped.nonzero()[0][0])
        t = int(first[i])
        raise BeliefLensError(
            f"sequence {i} has probability zero: token {int(tokens[i, t])} at position {t} "
            "is impossible after the preceding tokens (pass impossible='mask' to get NaN "
            "beliefs and -inf log-probabilities instead)"
        )


def belief_states(
    hmm: HMM,
    tokens: Int[Tensor, "n L"],
    *,
    initial_state: Tensor | None = None,
    impossible: Impossible = "raise",
    include_start: bool = False,
) -> Float[Tensor, "n L_or_L_plus_1 n_states"]:
    """Bayesian belief after each prefix: row ``t`` is the belief after tokens ``0..t``.

    Exact in float64 for any length (the belief is renormalised every step). A sequence of
    probability zero raises, naming its first impossible position; with ``impossible="mask"``
    its beliefs are NaN from that position on. ``include_start=True`` prepends the belief before
    any token (``[n, L + 1, S]``): what a model reading a BOS token should hold at the BOS.
    """
    tokens, init = _check_filter(hmm, tokens, initial_state, impossible)
    include_start = check_bool("include_start", include_start)
    return belief_states_unchecked(
        hmm, tokens, initial_state=init, impossible=impossible, include_start=include_start
    )


def belief_states_unchecked(
    hmm: HMM,
    tokens: Int[Tensor, "n L"],
    *,
    initial_state: Tensor | None = None,
    impossible: Impossible = "raise",
    include_start: bool = False,
) -> Float[Tensor, "n L_or_L_plus_1 n_states"]:
    """:func:`belief_states` trusting its arguments: an HMM, valid tokens ``[n, L]`` (LongTensor)
    and a normalised ``initial_state`` (or None)."""
    return _filter(
        hmm, tokens, initial_state, impossible, want_log_probs=False, include_start=include_start
    )[0]


def log_probs(
    hmm: HMM,
    tokens: Int[Tensor, "n L"],
    *,
    initial_state: Tensor | None = None,
    impossible: Impossible = "raise",
) -> Float[Tensor, "n L"]:
    """Cumulative log-probability (nats) of each prefix ``tokens[:, :t+1]``."""
    tokens, init = _check_filter(hmm, tokens, initial_state, impossible)
    return _filter(hmm, tokens, init, impossible, want_log_probs=True)[1]


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
    else:
        check_hmm(hmm)
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


def count_sequences(
    hmm: HMM, length: int, *, initial_state: Tensor | None = None, max_supports: int = 4096
) -> int | None:
    """The exact number of sequences of ``length`` with nonzero probability, without listing them.

    Counts words through the support automaton (which hidden states are possible after each
    prefix), so the cost is the number of distinct supports, not of sequences. For a generalized
    HMM this is an upper bound (signed entries can cancel); ``None`` if the supports pass
    ``max_supports``.
    """
    check_hmm(hmm)
    length = check_int("length", length, low=0)
    max_supports = check_int("max_supports", max_supports, low=1)
    init = hmm.initial_state if initial_state is None else hmm.check_belief(initial_state)
    return _count_sequences(hmm, length, init, max_supports)


def _count_sequences(hmm: HMM, length: int, init: Tensor, max_supports: int) -> int | None:
    """:func:`count_sequences` from the start belief ``init``, trusting its arguments."""
    step = (hmm.T != 0).to(torch.float64)  # [V, S, S]
    counts = {tuple((init != 0).tolist()): 1}
    for _ in range(length):
        keys = list(counts)
        nxt = torch.einsum("ks,xsj->kxj", torch.tensor(keys, dtype=torch.float64), step) > 0
        new: dict[tuple, int] = {}
        for key, row in zip(keys, nxt.tolist(), strict=True):
            for supp in row:
                if any(supp):
                    t = tuple(supp)
                    new[t] = new.get(t, 0) + counts[key]
        counts = new
        if len(counts) > max_supports:
            return None
    return sum(counts.values())


#: Sequences filled per block when an enumeration's tree is materialised.
MATERIALISE_ROWS = 1 << 13


def _enumeration_bytes(n: int, length: int, S: int) -> int:
    """Bytes of the finished enumeration of ``n`` sequences of ``length``: tokens, beliefs and
    probabilities."""
    return n * (length * (S + 1) + 1) * 8


def _level_bytes(n: int, S: int) -> int:
    """Bytes one level of the prefix tree holds per ``n`` prefixes: parent, symbol, belief and
    log-probability."""
    return n * (S + 3) * 8


def enumerate_sequences(
    hmm: HMM,
    length: int,
    *,
    initial_state: Tensor | None = None,
    min_prob: float = 0.0,
    max_sequences: int = 10_000_000,
    max_bytes: int | None = None,
) -> SequenceSet:
    """All sequences of ``length`` with probability above ``min_prob``, built level by level.

    Zero-probability prefixes are pruned as they appear, so the cost is the number of valid
    sequences, not ``n_symbols ** length``. Memory is checked before it is allocated: the count
    (exact for an HMM, from :func:`count_sequences`) and each next level are estimated in bytes,
    and past ``max_bytes`` (default: a quarter of the available memory) or ``max_sequences`` this
    raises with the estimate. A word with negative probability (an invalid generalized HMM)
    raises, naming it.
    """
    check_hmm(hmm)
    length = check_int("length", length, low=1)
    min_prob = check_float("min_prob", min_prob, low=0.0, high=1.0)
    max_sequences = check_int("max_sequences", max_sequences, low=1)
    if max_bytes is not None:
        max_bytes = check_int("max_bytes", max_bytes, low=1)
    init = None if initial_state is None else hmm.check_belief(initial_state, "initial_state")
    return enumerate_sequences_unchecked(
        hmm,
        length,
        initial_state=init,
        min_prob=min_prob,
        max_sequences=max_sequences,
        max_bytes=max_bytes,
    )


def enumerate_sequences_unchecked(
    hmm: HMM,
    length: int,
    *,
    initial_state: Tensor | None = None,
    min_prob: float = 0.0,
    max_sequences: int = 10_000_000,
    max_bytes: int | None = None,
) -> SequenceSet:
    """:func:`enumerate_sequences` trusting its arguments (an HMM, ``length >= 1``, a normalised
    ``initial_state`` or None, bounds in range); the memory and count bounds are still checked."""
    init = hmm.initial_state if initial_state is None else initial_state
    S, V = hmm.n_states, hmm.n_symbols
    options = (
        "pass max_bytes= (or max_sequences=) to allow more, enumerate a shorter length, "
        "raise min_prob=, or sample with sample_sequences()"
    )
    if not hmm.generalized and min_prob == 0:
        _check_count(hmm, length, init, max_sequences, max_bytes, options)
    # The prefix tree, one level per position: each prefix's parent, last symbol and belief.
    # Sequences are materialised once at the end, so no level copies the ones before it.
    tree: list[tuple[Tensor, Tensor, Tensor]] = []
    tree_bytes = 0
    eta = init[None, :]
    logp = torch.zeros(1, dtype=torch.float64)
    # Tiny positive floor: in a generalized HMM, cancellation leaves ~1e-17 instead of exact zeros.
    floor = max(min_prob, 1e-14 if hmm.generalized else 0.0)
    for level in range(1, length + 1):
        N = len(eta)
        what = f"enumerating {hmm.name} to length {length} (level {level}, from {N} prefixes)"
        # p, the joint probabilities and the keep mask, before they are allocated.
        check_memory(tree_bytes + N * V * 17, max_bytes, what, options)
        with single_thread_below(N * V * S):  # one thread per level op
            p = eta @ hmm.T_tau.T  # [N, V]  P(x | prefix)
            if hmm.generalized and (p < -NEGATIVE_TOL).any():
                n, x = torch.nonzero(p < -NEGATIVE_TOL)[0].tolist()
                word = (_materialise(tree, torch.tensor([n]))[0][0].tolist() if tree else []) + [x]
                raise InvalidProcessError(
                    f"word {word} of {hmm.name} has negative probability "
                    f"{(logp[n].exp() * p[n, x]).item():.6g}: not a valid process"
                )
            keep = logp.exp()[:, None] * p > floor
            M = int(keep.sum())
            what = f"enumerating {hmm.name} to length {length} ({M} sequences at length {level})"
            if M > max_sequences:
                raise BeliefLensError(f"{what}: exceeds max_sequences={max_sequences}; {options}")
            # Without min_prob every prefix has a continuation: the final level holds >= M.
            final = M if min_prob == 0 else 0
            estimate = max(
                tree_bytes + 2 * _level_bytes(M, S) + N * V * 17,
                tree_bytes + _level_bytes(M, S) + _enumeration_bytes(final, length, S),
            )
            check_memory(estimate, max_bytes, what, options)
            parent, sym = torch.nonzero(keep, as_tuple=True)
            del keep
            p_kept = p[parent, sym]
            del p
            eta = _next_beliefs(hmm, eta, parent, sym) / p_kept[:, None]
            logp = logp[parent] + p_kept.log()
            tree.append((parent, sym, eta))
            tree_bytes += _level_bytes(M, S)
    M = len(eta)
    check_memory(  # the tree, the sequences, and one level's worth the level steps leave behind
        tree_bytes + _enumeration_bytes(M, length, S) + _level_bytes(M, S) + 8 * M,
        max_bytes,
        f"enumerating {hmm.name} to length {length} ({M} sequences)",
        options,
    )
    with single_thread_below(min(M, MATERIALISE_ROWS) * S):  # each op: one block, one position
        tokens, beliefs = _materialise(tree)
    return SequenceSet(tokens=tokens, probs=logp.exp(), beliefs=beliefs)


def _check_count(
    hmm: HMM, length: int, init: Tensor, max_sequences: int, max_bytes: int | None, options: str
) -> None:
    """Refuse up front an exact count of sequences past ``max_sequences`` or the memory bound."""
    n = _count_sequences(hmm, length, init, 4096)
    if n is None:
        return
    what = f"enumerating the {n} sequences of length {length} of {hmm.name}"
    if n > max_sequences:
        raise BeliefLensError(f"{what}: {n} exceed max_sequences={max_sequences}; {options}")
    S = hmm.n_states
    tree = length * _level_bytes(n, S)  # each level holds at most the final count
    check_memory(_enumeration_bytes(n, length, S) + tree, max_bytes, what, options)


def _materialise(
    tree: list[tuple[Tensor, Tensor, Tensor]], rows: Int[Tensor, " M"] | None = None
) -> tuple[Int[Tensor, "M L"], Float[Tensor, "M L S"]]:
    """The sequences and beliefs of the tree's last level (or its ``rows``), back to the root."""
    rows = torch.arange(len(tree[-1][1])) if rows is None else rows
    L, S = len(tree), tree[0][2].shape[1]
    tokens = torch.empty(len(rows), L, dtype=torch.long)
    beliefs = torch.empty(len(rows), L, S, dtype=torch.float64)
    for start in range(0, len(rows), MATERIALISE_ROWS):  # a block stays in cache
        idx, block = rows[start : start + MATERIALISE_ROWS], slice(start, start + MATERIALISE_ROWS)
        for t in range(L - 1, -1, -1):
            parent, sym, eta = tree[t]
            tokens[block, t] = sym[idx]
            beliefs[block, t] = eta[idx]
            idx = parent[idx]
    return tokens, beliefs


def _next_beliefs(
    hmm: HMM, eta: Float[Tensor, "N S"], parent: Int[Tensor, " M"], sym: Int[Tensor, " M"]
) -> Float[Tensor, "M S"]:
    """``eta[parent] @ T[sym]`` (unnormalised), one matmul per symbol: ``M x S``, not N x V x S."""
    out = torch.empty(len(parent), hmm.n_states, dtype=eta.dtype)
    order = torch.argsort(sym, stable=True)
    counts = torch.bincount(sym, minlength=hmm.n_symbols).tolist()
    for x, rows in enumerate(torch.split(order, counts)):
        if len(rows):
            out[rows] = eta[parent[rows]] @ hmm.T[x]
    return out
