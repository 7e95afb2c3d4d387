"""The named process zoo: each process is a pure, cited function of its parameters returning an HMM.

All use the convention ``T[x, i, j] = P(emit x, go to j | in i)`` (see :mod:`belief_lens.hmm`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM, GeneralizedHMM
from belief_lens.validation import (
    check_float,
    check_int,
    check_int_list,
    check_real_tensor,
    check_seed,
)

__all__ = [
    "PROCESSES",
    "chained_product",
    "coin",
    "days_of_week",
    "even_process",
    "fanizza",
    "golden_mean",
    "leaky_rrxor",
    "make_process",
    "matching_parens",
    "mess3",
    "mixture",
    "mr_name",
    "noisy_product",
    "post_quantum",
    "product",
    "random_hmm",
    "relabel",
    "rrxor",
    "sns",
    "tom_quantum",
    "z1r",
]


def _check_prob(name: str, p: float, *, open_interval: bool = False) -> float:
    p = check_float(name, p)
    lo_ok = p > 0 if open_interval else p >= 0
    hi_ok = p < 1 if open_interval else p <= 1
    if not (lo_ok and hi_ok):
        rng = "(0, 1)" if open_interval else "[0, 1]"
        raise BeliefLensError(f"{name} must be a probability in {rng}, got {p}")
    return p


def mess3(x: float = 0.05, alpha: float = 0.85) -> HMM:
    """Mess3 (Marzen & Crutchfield 2017; Shai et al. 2024): 3 states, 3 symbols, a fractal MSP.

    ``T[s, i, j] = (alpha if j == s else beta) * (y if i == j else x)`` with
    ``beta = (1 - alpha) / 2`` and ``y = 1 - 2x``. Defaults are the paper's (x=0.05, alpha=0.85).
    simplexity's ``mess3(x, a)`` and epsilon-transformers' ``Mess3(x, a)`` are the same matrices
    with ``a = alpha``; both default to (x=0.15, a=0.6), the paper and this package to
    (0.05, 0.85).
    """
    alpha = _check_prob("alpha", alpha)
    x = check_float("x", x)
    if not 0 <= x <= 0.5:
        raise BeliefLensError(f"x must be in [0, 0.5] so that y = 1 - 2x >= 0, got {x}")
    beta, y = (1 - alpha) / 2, 1 - 2 * x
    emit = torch.full((3, 3), beta, dtype=torch.float64).fill_diagonal_(alpha)  # [s, j]
    move = torch.full((3, 3), x, dtype=torch.float64).fill_diagonal_(y)  # [i, j]
    T = emit[:, None, :] * move[None, :, :]
    return HMM(T, name=f"mess3(x={x}, alpha={alpha})")


def _from_edges(n_states: int, n_symbols: int, edges, name: str) -> HMM:
    """Build an HMM from ``(from, symbol, prob, to)`` edges."""
    T = torch.zeros(n_symbols, n_states, n_states, dtype=torch.float64)
    for i, x, p, j in edges:
        T[x, i, j] += p
    return HMM(T, name=name)


def rrxor(p1: float = 0.5, p2: float = 0.5) -> HMM:
    """Random-random-XOR (Crutchfield & Feldman 2003): two random bits, then their XOR.

    States ``S, 0, 1, T, F`` (indices 0..4); ``p1``/``p2`` are the probabilities that the first
    and second random bits are 0, as in simplexity's ``rrxor(p1, p2)`` and epsilon-transformers'
    ``RRXOR(pR1, pR2)``.
    """
    p1, p2 = _check_prob("p1", p1), _check_prob("p2", p2)
    S, Z, One, Tr, F = range(5)
    edges = [
        (S, 0, p1, Z), (S, 1, 1 - p1, One),
        (Z, 0, p2, F), (Z, 1, 1 - p2, Tr),
        (One, 0, p2, Tr), (One, 1, 1 - p2, F),
        (Tr, 1, 1.0, S), (F, 0, 1.0, S),
    ]  # fmt: skip
    return _from_edges(5, 2, edges, f"rrxor(p1={p1}, p2={p2})")


def z1r(p: float = 0.5) -> HMM:
    """Zero-one-random (Crutchfield & Feldman 2003): emits 0, 1, then a random bit (P(0) = p).

    epsilon-transformers' ``ZeroOneR(p)`` is ``z1r(p)``; simplexity's ``zero_one_random(p)`` gives
    the random bit P(1) = p, so it is ``z1r(1 - p)``.
    """
    p = _check_prob("p", p)
    edges = [(0, 0, 1.0, 1), (1, 1, 1.0, 2), (2, 0, p, 0), (2, 1, 1 - p, 0)]
    return _from_edges(3, 2, edges, f"z1r(p={p})")


def golden_mean(p: float = 0.5) -> HMM:
    """Golden mean process: no two 1s in a row; from state A, emit 0 with probability ``p``.

    simplexity's ``no_consecutive_ones(p)`` emits 1 from A with probability ``p``: it is
    ``golden_mean(1 - p)``. epsilon-transformers' ``GoldenMean()`` is ``golden_mean(0.5)``.
    """
    p = _check_prob("p", p, open_interval=True)
    edges = [(0, 0, p, 0), (0, 1, 1 - p, 1), (1, 0, 1.0, 0)]
    return _from_edges(2, 2, edges, f"golden_mean(p={p})")


def even_process(p: float = 0.5) -> HMM:
    """Even process: 1s come in even-length blocks; from state A, emit 0 with probability ``p``.

    simplexity's ``even_ones(p)`` emits 1 from A with probability ``p``: it is
    ``even_process(1 - p)``. epsilon-transformers' ``Even()`` is ``even_process(0.5)``.
    """
    p = _check_prob("p", p, open_interval=True)
    edges = [(0, 0, p, 0), (0, 1, 1 - p, 1), (1, 1, 1.0, 0)]
    return _from_edges(2, 2, edges, f"even_process(p={p})")


def random_hmm(n_states: int, n_symbols: int, seed: int = 0, concentration: float = 1.0) -> HMM:
    """A random HMM: each state's (symbol, next state) distribution is Dirichlet(concentration).

    All entries are positive almost surely, so the process is ergodic with a unique stationary
    distribution. The same seed gives the same process. ``concentration`` must be positive
    (small values give sparse, nearly deterministic rows).
    """
    n_states = check_int("n_states", n_states, low=1)
    n_symbols = check_int("n_symbols", n_symbols, low=1)
    seed = check_seed("seed", seed)
    concentration = check_float("concentration", concentration, low=0.0, low_open=True)
    gen = torch.Generator().manual_seed(seed)
    conc = torch.full((n_symbols * n_states,), float(concentration), dtype=torch.float64)
    gamma = torch._standard_gamma(conc.expand(n_states, -1).contiguous(), generator=gen)
    rows = gamma / gamma.sum(-1, keepdim=True)  # [i, (x, j)]
    T = rows.reshape(n_states, n_symbols, n_states).permute(1, 0, 2)
    return HMM(T, name=f"random_hmm(n_states={n_states}, n_symbols={n_symbols}, seed={seed})")


def post_quantum(alpha: float = math.e, beta: float = 0.5) -> GeneralizedHMM:
    """The post-quantum process, a 3-state generalized HMM over 3 symbols with no finite HMM.

    From Riechers, Elliott & Shai, "Neural networks leverage nominally quantum and post-quantum
    representations" (arXiv 2507.07432), as in the simplexity code base:
    ``T0 = m0 mu0^T`` with ``m0 = (1, 1, 0)``, ``mu0 = (1, -1, -1)``, and for ``v`` in
    ``(alpha, beta)``: ``T_v = [[v, 0, 0], [0, 1, 0], [0, ln v, 1]]``; all three are divided by the
    spectral radius of their sum. Requires ``alpha > 1 > beta > 0`` and ``alpha + beta != 2``.
    (simplexity takes ``log_alpha``; here ``alpha`` itself is the parameter.)
    """
    alpha, beta = check_float("alpha", alpha), check_float("beta", beta)
    if not (alpha > 1 > beta > 0) or math.isclose(alpha + beta, 2):
        raise BeliefLensError(
            f"post_quantum needs alpha > 1 > beta > 0, alpha + beta != 2; got {alpha}, {beta}"
        )

    def block(v: float) -> torch.Tensor:
        return torch.tensor([[v, 0, 0], [0, 1, 0], [0, math.log(v), 1]], dtype=torch.float64)

    m0 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    mu0 = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    T = torch.stack([torch.outer(m0, mu0), block(alpha), block(beta)])
    T = T / torch.linalg.eigvals(T.sum(0)).abs().max()
    return GeneralizedHMM(T, name=f"post_quantum(alpha={alpha}, beta={beta})")


def tom_quantum(alpha: float = 1.0, beta: float = 1.0) -> GeneralizedHMM:
    """The "Tom quantum" process: a qubit measured in random bases, as a 3-state generalized HMM.

    Four symbols, as in the simplexity code base (after Riechers, Elliott & Shai, arXiv
    2507.07432): with ``g = 1 / (4 (alpha^2 + beta^2))``, ``d = (alpha^2 - beta^2) g`` and
    ``o = 2 alpha beta g``, symbols 0/1 are ``[[1/4, 0, +-o], [0, d, 0], [+-o, 0, 1/4]]`` and
    symbols 2/3 are ``[[1/4, +-o, 0], [+-o, 1/4, 0], [0, 0, d]]``. ``alpha`` and ``beta`` set the
    measurement angle; they must not both be zero.
    """
    alpha, beta = check_float("alpha", alpha), check_float("beta", beta)
    if alpha**2 + beta**2 == 0:
        raise BeliefLensError("tom_quantum needs alpha and beta not both zero")
    g = 1 / (4 * (alpha**2 + beta**2))
    q, d, o = 0.25, (alpha**2 - beta**2) * g, 2 * alpha * beta * g
    T = torch.tensor(
        [
            [[q, 0, o], [0, d, 0], [o, 0, q]],
            [[q, 0, -o], [0, d, 0], [-o, 0, q]],
            [[q, o, 0], [o, q, 0], [0, 0, d]],
            [[q, -o, 0], [-o, q, 0], [0, 0, d]],
        ],
        dtype=torch.float64,
    )
    return GeneralizedHMM(T, name=f"tom_quantum(alpha={alpha}, beta={beta})")


# ------------------------------------------------------------------ zoo parity with simplexity
# Processes of Astera-org/simplexity's transition_matrices.py that this package lacked. Facts
# (matrices) follow simplexity; parameter names and conventions are stated in each docstring.
# epsilon-transformers has none of them.


def coin(p: float = 0.5) -> HMM:
    """An i.i.d. coin: one state, token 0 with probability ``p`` and token 1 otherwise.

    The zero-memory baseline (entropy rate = block entropy per token). Same parameter as
    simplexity's ``coin(p)``.
    """
    p = _check_prob("p", p)
    return HMM([[[p]], [[1 - p]]], name=f"coin(p={p})")


def leaky_rrxor(p1: float = 0.5, p2: float = 0.5, epsilon: float = 0.1) -> HMM:
    """RRXOR with a leak: ``(1 - epsilon) * rrxor(p1, p2) + epsilon * uniform``.

    With probability ``epsilon`` each step emits a uniform random token and jumps to a uniform
    random state (each of the 10 (token, state) pairs gets ``epsilon / 10``), so every word has
    positive probability and the mixed-state presentation no longer synchronises. Same
    parameters as simplexity's ``leaky_rrxor(p1, p2, epsilon)`` (which has no defaults).
    """
    epsilon = _check_prob("epsilon", epsilon)
    base = rrxor(p1, p2)
    T = (1 - epsilon) * base.T + epsilon / 10
    return HMM(T, name=f"leaky_rrxor(p1={p1}, p2={p2}, epsilon={epsilon})")


_DAYS = ("M", "Tu", "W", "Th", "F", "Sa", "Su")


def days_of_week() -> HMM:
    """Days of the week: 7 hidden days, 11 tokens (a toy of relational structure in language).

    Tokens 0-6 name a day (M, Tu, W, Th, F, Sa, Su) and move to it; 7 ``Tmrw`` moves to the next
    day, 8 ``Yest`` to the previous one; 9 ``Wknd`` to a uniform weekend day and 10 ``Wkdy`` to a
    uniform weekday. From every day the weights are 5 for naming tomorrow, 1 for naming any other
    day, 1 each for ``Tmrw``, ``Yest``, ``Wknd`` and ``Wkdy`` (total 15). From simplexity's
    ``days_of_week()`` (same token order, no parameters).
    """
    T = torch.zeros(11, 7, 7, dtype=torch.float64)
    for day in range(7):
        T[day, :, day] = 1.0
        T[7, day, (day + 1) % 7] = 1.0
        T[8, day, (day - 1) % 7] = 1.0
        T[day, (day - 1) % 7, day] = 5.0
    T[10, :, :5] = 1 / 5
    T[9, :, 5:] = 1 / 2
    return HMM(T / T.sum((0, 2), keepdim=True), name="days_of_week()")


def matching_parens(open_probs: Sequence[float] = (1.0, 0.5, 0.5)) -> HMM:
    """Balanced parentheses with bounded depth: token 0 is ``(``, token 1 is ``)``.

    The hidden state is the nesting depth ``0 .. D`` with ``D = len(open_probs)``; at depth ``d``
    the next token opens with probability ``open_probs[d]`` (so ``open_probs[0]`` must be 1: at
    depth 0 one can only open), and at depth ``D`` it always closes. Same convention as
    simplexity's ``matching_parens(open_probs)``, where a final 0 is appended the same way.
    """
    if isinstance(open_probs, str) or not hasattr(open_probs, "__len__") or not open_probs:
        raise BeliefLensError(
            f"open_probs must be a non-empty list of probabilities, got {open_probs!r}"
        )
    probs = [
        check_float(f"open_probs[{i}]", v, low=0.0, high=1.0) for i, v in enumerate(open_probs)
    ]
    if probs[0] != 1.0:
        raise BeliefLensError(f"open_probs[0] must be 1 (depth 0 can only open), got {probs[0]}")
    if any(v == 0 for v in probs):
        raise BeliefLensError(
            f"open_probs must be in (0, 1] (the deepest level closes by itself), got {probs}"
        )
    probs = probs + [0.0]
    D = len(probs)
    T = torch.zeros(2, D, D, dtype=torch.float64)
    for d in range(D - 1):
        T[0, d, d + 1] = probs[d]
        T[1, d + 1, d] = 1 - probs[d + 1]
    return HMM(T, name=f"matching_parens(open_probs={probs[:-1]})")


def mr_name(p: float = 0.4, q: float = 0.2) -> HMM:
    """The "Mr. Name" process: ``Mr.`` is always followed by a name, then chatter until ``Mr.``.

    Tokens and states are 0 ``Mr.``, 1 ``Something``, 2 ``Blah``, 3 ``name`` (the state is the
    last token). ``Mr.`` -> ``name``; ``name`` -> ``Something`` or ``Blah`` (1/2 each); from
    ``Something`` or ``Blah``: ``Mr.`` with probability ``q``, switch to the other word with
    ``p``, repeat the same word with ``1 - p - q``. Same parameters as simplexity's
    ``mr_name(p, q)`` (its "Mr. Dursley/Wonka" process, which has no defaults).
    """
    p, q = _check_prob("p", p), _check_prob("q", q)
    if p + q > 1:
        raise BeliefLensError(f"mr_name needs p + q <= 1, got p={p}, q={q}")
    mr, some, blah, name = range(4)
    edges = [
        (mr, name, 1.0, name),
        (name, some, 0.5, some), (name, blah, 0.5, blah),
        (some, mr, q, mr), (some, some, 1 - p - q, some), (some, blah, p, blah),
        (blah, mr, q, mr), (blah, some, p, some), (blah, blah, 1 - p - q, blah),
    ]  # fmt: skip
    return _from_edges(4, 4, edges, f"mr_name(p={p}, q={q})")


def sns(p: float = 0.5, q: float = 0.5) -> HMM:
    """The simple nonunifilar source (Marzen & Crutchfield 2017, arXiv 1702.08565, Fig. 2).

    Two states: from A, emit 0 and stay with probability ``1 - p`` or emit 0 and go to B with
    ``p``; from B, emit 0 and stay with ``1 - q`` or emit 1 and go to A with ``q``. Nonunifilar,
    so its epsilon-machine has infinitely many causal states (beliefs are indexed by the number
    of 0s since the last 1). Same parameters as simplexity's ``sns(p, q)``.
    """
    p, q = _check_prob("p", p), _check_prob("q", q)
    edges = [(0, 0, 1 - p, 0), (0, 0, p, 1), (1, 0, 1 - q, 1), (1, 1, q, 0)]
    return _from_edges(2, 2, edges, f"sns(p={p}, q={q})")


def fanizza(alpha: float = 2000.0, lamb: float = 0.49) -> GeneralizedHMM:
    """The Fanizza process: a 4-state generalized HMM over 2 tokens with no finite quantum model.

    From Fanizza, Lumbreras & Winter, "Quantum theory in finite dimension cannot explain every
    general process with finite memory" (Commun. Math. Phys. 2024, arXiv 2209.11225), as defined
    in simplexity's ``fanizza(alpha, lamb)`` (same parameters; its tests use alpha=2000,
    lamb=0.49, the defaults here). Token 1 applies ``lamb * diag(0, 1, R(alpha))`` (``R`` a
    2-d rotation by ``alpha`` radians), a damped rotation; token 0 resets the memory:
    ``T0 = w pi0^T`` with ``w = (1, 1 - lamb, 1 + lamb (sin a - cos a), 1 - lamb (sin a + cos a))``
    and ``pi0 = (1 - (2 / (1 - lamb) - A - B) / 4, 1 / (2 (1 - lamb)), -A / 4, -B / 4)``, where
    ``A, B = (1 - lamb cos a +- lamb sin a) / (1 - 2 lamb cos a + lamb^2)``. Rows of ``T.sum(0)``
    sum to 1, so ``tau`` is all ones. Needs ``0 < lamb < 1``, and not every pair is a valid
    process (``lamb=0.7`` gives the word ``0 0`` negative probability): construction checks.
    """
    a = check_float("alpha", alpha)
    lam = check_float("lamb", lamb, low=0.0, high=1.0, low_open=True, high_open=True)
    c, s_ = math.cos(a), math.sin(a)
    den = 1 - 2 * lam * c + lam**2
    A, B = (1 - lam * c + lam * s_) / den, (1 - lam * c - lam * s_) / den
    pi0 = torch.tensor(
        [1 - (2 / (1 - lam) - A - B) / 4, 1 / (2 * (1 - lam)), -A / 4, -B / 4],
        dtype=torch.float64,
    )
    w = torch.tensor([1, 1 - lam, 1 + lam * (s_ - c), 1 - lam * (s_ + c)], dtype=torch.float64)
    rot = torch.tensor(
        [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, c, -s_], [0, 0, s_, c]], dtype=torch.float64
    )
    T = torch.stack([torch.outer(w, pi0), lam * rot])
    ones = torch.ones(4, dtype=torch.float64)
    return GeneralizedHMM(T, tau=ones, name=f"fanizza(alpha={alpha}, lamb={lamb})")


# ------------------------------------------------------------------ composition


def _signed(T, init, tau, name: str, parts) -> GeneralizedHMM:
    """A GeneralizedHMM built from valid parts (relabelled, mixed or multiplied).

    Its word probabilities are sums or products of the parts', so they are non-negative as far as
    every part was checked: the word check is not repeated, and ``checked_depth`` is the parts'
    smallest.
    """
    g = GeneralizedHMM(T, initial_state=init, tau=tau, name=name, check_depth=0)
    g.checked_depth = min(p.checked_depth for p in parts if p.generalized)
    return g


def relabel(hmm: HMM, vocab_map: Sequence[int], n_symbols: int | None = None) -> HMM:
    """The same hidden structure under new token ids: token ``x`` of ``hmm`` becomes
    ``vocab_map[x]``, in a vocabulary of ``n_symbols`` (default ``max(vocab_map) + 1``).

    ``vocab_map[x]`` is the shared-vocabulary id of the component's token ``x``, as in
    simplexity's ``vocab_maps``. Ids ``vocab_map`` does not use are never emitted; two tokens
    mapped to one id are merged (their transition matrices add), which coarse-grains the process
    (simplexity's builder writes instead of adding, so there only the last such token survives).
    States, stationary distribution and ``initial_state`` are unchanged.
    """
    if not isinstance(hmm, HMM):
        raise BeliefLensError(f"relabel needs an HMM, got {type(hmm).__name__}")
    vmap = check_int_list("vocab_map", vocab_map, length=hmm.n_symbols)
    V = max(vmap) + 1 if n_symbols is None else check_int("n_symbols", n_symbols, low=1)
    if max(vmap) >= V:
        raise BeliefLensError(f"vocab_map uses id {max(vmap)}, outside n_symbols={V}")
    T = torch.zeros(V, hmm.n_states, hmm.n_states, dtype=torch.float64)
    T.index_add_(0, torch.tensor(vmap), hmm.T)
    name = f"relabel({hmm.name}, {vmap})"
    if hmm.generalized:
        return _signed(T, hmm.initial_state, hmm.tau, name, [hmm])
    return HMM(T, initial_state=hmm.initial_state, name=name)


def mixture(
    processes: Sequence[HMM],
    weights: Sequence[float] | None = None,
    *,
    vocab_maps: Sequence[Sequence[int]] | None = None,
) -> HMM:
    """A non-ergodic disjoint union: pick component ``k`` with probability ``weights[k]``, run it.

    Each sequence comes from one component for its whole length; the belief over the union's
    states is a belief over which component (its mass per block) and the belief within it. States
    are the concatenation of the components' states; the initial state is ``concat(w_k * pi_k)``.

    Without ``vocab_maps`` all components share one alphabet. With them, ``vocab_maps[k][x]`` is
    the shared-vocabulary id of component ``k``'s token ``x`` (simplexity's ``vocab_maps``, same
    meaning); the vocabulary has ``max id + 1`` tokens, and components may use disjoint or
    overlapping ids. E.g. ``mixture([mess3(), mess3()], vocab_maps=[[0, 1, 2], [3, 4, 5]])`` is
    Mess3 under two disjoint vocabularies. Generalized components are supported: the union's
    ``tau`` is the stacked components' ``tau``. ``weights`` must sum to 1 (simplexity rescales
    its ``process_weights`` by their sum).
    """
    if isinstance(processes, HMM) or not hasattr(processes, "__len__"):
        raise BeliefLensError(f"mixture needs a list of HMMs, got {type(processes).__name__}")
    processes = list(processes)
    if not processes:
        raise BeliefLensError("mixture needs at least one process")
    for i, p in enumerate(processes):
        if not isinstance(p, HMM):
            raise BeliefLensError(f"mixture component {i} must be an HMM, got {type(p).__name__}")
    if vocab_maps is not None:
        if isinstance(vocab_maps, str) or not hasattr(vocab_maps, "__len__"):
            raise BeliefLensError(
                f"vocab_maps must be one list of token ids per component, got {vocab_maps!r}"
            )
        if len(vocab_maps) != len(processes):
            raise BeliefLensError(
                f"vocab_maps must have one map per component ({len(processes)}), "
                f"got {len(vocab_maps)}"
            )
        maps = [
            check_int_list(f"vocab_maps[{k}]", m, length=p.n_symbols)
            for k, (m, p) in enumerate(zip(vocab_maps, processes, strict=True))
        ]
        V = max(max(m) for m in maps) + 1
        processes = [relabel(p, m, V) for p, m in zip(processes, maps, strict=True)]
    V = processes[0].n_symbols
    if any(p.n_symbols != V for p in processes):
        raise BeliefLensError(
            "mixture components must share an alphabet (or pass vocab_maps=); got sizes "
            f"{[p.n_symbols for p in processes]}"
        )
    if weights is None:
        w = torch.full((len(processes),), 1 / len(processes), dtype=torch.float64)
    else:
        w = check_real_tensor("weights", weights)
    if (
        w.shape != (len(processes),)
        or not torch.isfinite(w).all()
        or (w < 0).any()
        or abs(w.sum().item() - 1) > 1e-9
    ):
        raise BeliefLensError(
            f"weights must be {len(processes)} probabilities summing to 1, got {w.tolist()}"
        )
    T = torch.stack([torch.block_diag(*[p.T[x] for p in processes]) for x in range(V)])
    init = torch.cat([wk * p.initial_state for wk, p in zip(w, processes, strict=True)])
    name = "mixture(" + ", ".join(p.name for p in processes) + ")"
    if any(p.generalized for p in processes):
        return _signed(T, init, torch.cat([p.tau for p in processes]), name, processes)
    return HMM(T, initial_state=init, name=name)


def product(*processes: HMM) -> HMM:
    """Independent factors run side by side, emitting one joint token per step.

    The joint token of factor tokens ``(x1, ..., xk)`` is their mixed-radix number with the first
    factor most significant: ``x = ((x1 * V2) + x2) * V3 + x3 ...`` (row-major, like
    ``numpy.ravel_multi_index``). Hidden states are encoded the same way. Generalized factors
    are supported: the product's ``tau`` is the Kronecker product of the factors'.
    """
    if not processes:
        raise BeliefLensError("product needs at least one process")
    for i, p in enumerate(processes):
        if not isinstance(p, HMM):
            raise BeliefLensError(f"product factor {i} must be an HMM, got {type(p).__name__}")
    T, init, tau = processes[0].T, processes[0].initial_state, processes[0].tau
    for p in processes[1:]:
        V1, S1 = T.shape[0], T.shape[1]
        V2, S2 = p.T.shape[0], p.T.shape[1]
        T = torch.einsum("aij,bkl->abikjl", T, p.T).reshape(V1 * V2, S1 * S2, S1 * S2)
        init = torch.kron(init, p.initial_state)
        tau = torch.kron(tau, p.tau)
    name = "product(" + ", ".join(p.name for p in processes) + ")"
    if any(p.generalized for p in processes):
        return _signed(T, init, tau, name, processes)
    return HMM(T, initial_state=init, name=name)


# ----------------------------------------------------------------------------- factored processes
# Two ways to break the conditional independence of ``product``'s factors, after Shai et al.,
# "Transformers learn factored representations" (arXiv 2602.02385). Each has one parameter, and
# at 0 its transition tensor equals ``product``'s exactly.


def _check_factors(factors: Sequence[HMM], what: str) -> None:
    if not factors:
        raise BeliefLensError(f"{what} needs at least one factor process")
    if any(f.generalized for f in factors):
        raise BeliefLensError(f"{what} takes HMM factors, not generalized HMMs")


def _joint_initial_state(factors: Sequence[HMM]) -> Tensor:
    """The factors' initial states as one joint state, built exactly as ``product`` builds it."""
    init = factors[0].initial_state
    for f in factors[1:]:
        init = torch.kron(init, f.initial_state)
    return init


def noisy_product(*factors: HMM, epsilon: float) -> HMM:
    """``product(*factors)`` seen through a noisy channel on the joint vocabulary.

    Each emitted joint token is kept with probability ``1 - epsilon`` and otherwise replaced by a
    uniformly drawn joint token: ``T'[y] = sum_x B[x, y] T[x]`` with
    ``B = (1 - epsilon) I + epsilon 11^T / V`` and ``V`` the joint vocabulary size. The hidden
    states still move independently, but observing one factor's token now tells about the
    others', so the joint belief stops being the product of its marginals for ``epsilon > 0``.
    """
    _check_factors(factors, "noisy_product")
    _check_prob("epsilon", epsilon)
    base = product(*factors)
    V = base.n_symbols
    B = (1 - epsilon) * torch.eye(V, dtype=torch.float64) + epsilon / V
    T = torch.einsum("xy,xij->yij", B, base.T)
    inner = ", ".join(f.name for f in factors)
    init = _joint_initial_state(factors)
    return HMM(T, initial_state=init, name=f"noisy_product({inner}; eps={epsilon})")


def chained_product(*factors: HMM, coupling: float) -> HMM:
    """Factors run side by side, factor ``i``'s parameters set by the token factor ``i-1`` emits.

    In each step factor 0 emits ``a`` first; factor 1 then emits with the variant
    ``T1^(a)[x] = (1 - coupling) T1[x] + coupling T1[(x + a) mod V1]`` (its emission labels
    rotated by the parent's token), and so on down the chain. Joint tokens and states are
    numbered as in ``product``. The joint belief stays a product of per-factor beliefs, but each
    factor's belief now needs the parent's tokens and the next joint token no longer factorises.
    """
    _check_factors(factors, "chained_product")
    _check_prob("coupling", coupling)
    T = factors[0].T
    v_parent = factors[0].n_symbols
    for f in factors[1:]:
        V, S = f.n_symbols, f.n_states
        shift = (torch.arange(V)[None, :] + torch.arange(v_parent)[:, None]) % V  # [a, x]
        variants = (1 - coupling) * f.T[None] + coupling * f.T[shift]  # [a, x, i, j]
        parent = variants[torch.arange(T.shape[0]) % v_parent]  # [X, x, i, j]
        n_states = T.shape[1] * S
        T = torch.einsum("XIJ,Xbij->XbIiJj", T, parent).reshape(-1, n_states, n_states)
        v_parent = V
    init = _joint_initial_state(factors)
    inner = ", ".join(f.name for f in factors)
    return HMM(T, initial_state=init, name=f"chained_product({inner}; coupling={coupling})")


PROCESSES: dict[str, Callable[..., HMM]] = {
    "mess3": mess3,
    "rrxor": rrxor,
    "z1r": z1r,
    "golden_mean": golden_mean,
    "even": even_process,
    "even_process": even_process,
    "random": random_hmm,
    "post_quantum": post_quantum,
    "tom_quantum": tom_quantum,
    # zoo parity with simplexity
    "coin": coin,
    "days_of_week": days_of_week,
    "fanizza": fanizza,
    "leaky_rrxor": leaky_rrxor,
    "matching_parens": matching_parens,
    "mr_name": mr_name,
    "sns": sns,
}


def make_process(name: str, **params) -> HMM:
    """Build a named process; an unknown name lists the known ones, bad parameters the signature."""
    if not isinstance(name, str):
        raise BeliefLensError(f"process name must be a string, got {type(name).__name__}")
    try:
        fn = PROCESSES[name]
    except KeyError:
        raise BeliefLensError(
            f"unknown process {name!r}; known processes: {', '.join(sorted(PROCESSES))}"
        ) from None
    sig = inspect.signature(fn, eval_str=True)
    try:
        sig.bind(**params)
    except TypeError as e:
        raise BeliefLensError(f"bad parameters for {name}{sig}: {e}") from None
    return fn(**params)
