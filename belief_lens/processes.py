"""The named process zoo: each process is a pure, cited function of its parameters returning an HMM.

All use the convention ``T[x, i, j] = P(emit x, go to j | in i)`` (see :mod:`belief_lens.hmm`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch

from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM, GeneralizedHMM

__all__ = [
    "PROCESSES",
    "chained_product",
    "even_process",
    "golden_mean",
    "make_process",
    "mess3",
    "mixture",
    "noisy_product",
    "post_quantum",
    "product",
    "random_hmm",
    "rrxor",
    "tom_quantum",
    "z1r",
]


def _check_prob(name: str, p: float, *, open_interval: bool = False) -> None:
    lo_ok = p > 0 if open_interval else p >= 0
    hi_ok = p < 1 if open_interval else p <= 1
    if not (lo_ok and hi_ok):
        rng = "(0, 1)" if open_interval else "[0, 1]"
        raise BeliefLensError(f"{name} must be a probability in {rng}, got {p}")


def mess3(x: float = 0.05, alpha: float = 0.85) -> HMM:
    """Mess3 (Marzen & Crutchfield 2017; Shai et al. 2024): 3 states, 3 symbols, a fractal MSP.

    ``T[s, i, j] = (alpha if j == s else beta) * (y if i == j else x)`` with
    ``beta = (1 - alpha) / 2`` and ``y = 1 - 2x``. Defaults are the paper's (x=0.05, alpha=0.85);
    other code bases default to x=0.15, alpha=0.6.
    """
    _check_prob("alpha", alpha)
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
    and second random bits are 0.
    """
    _check_prob("p1", p1)
    _check_prob("p2", p2)
    S, Z, One, Tr, F = range(5)
    edges = [
        (S, 0, p1, Z), (S, 1, 1 - p1, One),
        (Z, 0, p2, F), (Z, 1, 1 - p2, Tr),
        (One, 0, p2, Tr), (One, 1, 1 - p2, F),
        (Tr, 1, 1.0, S), (F, 0, 1.0, S),
    ]  # fmt: skip
    return _from_edges(5, 2, edges, f"rrxor(p1={p1}, p2={p2})")


def z1r(p: float = 0.5) -> HMM:
    """Zero-one-random (Crutchfield & Feldman 2003): emits 0, 1, then a random bit (P(0) = p)."""
    _check_prob("p", p)
    edges = [(0, 0, 1.0, 1), (1, 1, 1.0, 2), (2, 0, p, 0), (2, 1, 1 - p, 0)]
    return _from_edges(3, 2, edges, f"z1r(p={p})")


def golden_mean(p: float = 0.5) -> HMM:
    """Golden mean process: no two 1s in a row; from state A, emit 0 with probability ``p``."""
    _check_prob("p", p, open_interval=True)
    edges = [(0, 0, p, 0), (0, 1, 1 - p, 1), (1, 0, 1.0, 0)]
    return _from_edges(2, 2, edges, f"golden_mean(p={p})")


def even_process(p: float = 0.5) -> HMM:
    """Even process: 1s come in even-length blocks; from state A, emit 0 with probability ``p``."""
    _check_prob("p", p, open_interval=True)
    edges = [(0, 0, p, 0), (0, 1, 1 - p, 1), (1, 1, 1.0, 0)]
    return _from_edges(2, 2, edges, f"even_process(p={p})")


def random_hmm(n_states: int, n_symbols: int, seed: int = 0, concentration: float = 1.0) -> HMM:
    """A random HMM: each state's (symbol, next state) distribution is Dirichlet(concentration).

    All entries are positive almost surely, so the process is ergodic with a unique stationary
    distribution. The same seed gives the same process.
    """
    if n_states < 1 or n_symbols < 1:
        raise BeliefLensError(f"need n_states, n_symbols >= 1, got {n_states}, {n_symbols}")
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


def mixture(processes: Sequence[HMM], weights: Sequence[float] | None = None) -> HMM:
    """A non-ergodic disjoint union: pick component ``k`` with probability ``weights[k]``, run it.

    The states are the concatenation of the components' states; all components share one alphabet.
    The initial state is ``concat(w_k * pi_k)``.
    """
    processes = list(processes)
    if not processes:
        raise BeliefLensError("mixture needs at least one process")
    V = processes[0].n_symbols
    if any(p.n_symbols != V for p in processes):
        raise BeliefLensError(
            "mixture components must share an alphabet; got sizes "
            f"{[p.n_symbols for p in processes]}"
        )
    w = torch.as_tensor(
        [1 / len(processes)] * len(processes) if weights is None else weights, dtype=torch.float64
    )
    if w.shape != (len(processes),) or (w < 0).any() or abs(w.sum().item() - 1) > 1e-9:
        raise BeliefLensError(
            f"weights must be {len(processes)} probabilities summing to 1, got {w.tolist()}"
        )
    generalized = any(p.generalized for p in processes)
    T = torch.stack([torch.block_diag(*[p.T[x] for p in processes]) for x in range(V)])
    init = torch.cat(
        [
            wk * p.initial_state / (p.initial_state @ p.tau)
            for wk, p in zip(w, processes, strict=True)
        ]
    )
    cls = GeneralizedHMM if generalized else HMM
    return cls(T, initial_state=init, name="mixture(" + ", ".join(p.name for p in processes) + ")")


def product(*processes: HMM) -> HMM:
    """Independent factors run side by side, emitting one joint token per step.

    The joint token of factor tokens ``(x1, ..., xk)`` is their mixed-radix number with the first
    factor most significant: ``x = ((x1 * V2) + x2) * V3 + x3 ...`` (row-major, like
    ``numpy.ravel_multi_index``). Hidden states are encoded the same way.
    """
    if not processes:
        raise BeliefLensError("product needs at least one process")
    T, init = processes[0].T, processes[0].initial_state
    for p in processes[1:]:
        V1, S1 = T.shape[0], T.shape[1]
        V2, S2 = p.T.shape[0], p.T.shape[1]
        T = torch.einsum("aij,bkl->abikjl", T, p.T).reshape(V1 * V2, S1 * S2, S1 * S2)
        init = torch.kron(init, p.initial_state)
    cls = GeneralizedHMM if any(p.generalized for p in processes) else HMM
    return cls(T, initial_state=init, name="product(" + ", ".join(p.name for p in processes) + ")")


# ----------------------------------------------------------------------------- factored processes
# Two ways to break the conditional independence of ``product``'s factors, after Shai et al.,
# "Transformers learn factored representations" (arXiv 2602.02385). Each has one parameter, and
# at 0 its transition tensor equals ``product``'s exactly.


def _check_factors(factors: Sequence[HMM], what: str) -> None:
    if not factors:
        raise BeliefLensError(f"{what} needs at least one factor process")
    if any(f.generalized for f in factors):
        raise BeliefLensError(f"{what} takes HMM factors, not generalized HMMs")


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
    return HMM(T, initial_state=base.initial_state, name=f"noisy_product({inner}; eps={epsilon})")


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
    init = factors[0].initial_state
    for f in factors[1:]:
        init = torch.kron(init, f.initial_state)
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
}


def make_process(name: str, **params) -> HMM:
    """Build a named process; an unknown name lists the known ones, bad parameters the signature."""
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
