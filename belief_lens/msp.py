"""The mixed-state presentation (MSP) of a process: its distinct beliefs and the labelled
transitions between them, found breadth-first from the start belief with equal beliefs merged.

Its recurrent part (the closed strongly connected components) is the epsilon-machine; the rest
is transient. Processes whose beliefs never merge (Mess3) have an infinite MSP: depth is capped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from belief_lens.beliefs import check_hmm
from belief_lens.errors import BeliefLensError, InvalidProcessError
from belief_lens.hmm import HMM, NEGATIVE_TOL
from belief_lens.threads import single_thread_below
from belief_lens.validation import check_float, check_int

__all__ = ["MixedStatePresentation", "mixed_state_presentation"]


@dataclass(frozen=True)
class MixedStatePresentation:
    """The mixed-state presentation: distinct beliefs and the labelled transitions between them.

    Attributes:
        beliefs: ``[K, S]`` distinct beliefs; state 0 is the start belief.
        transitions: ``[E, 3]`` rows ``(from, symbol, to)``.
        transition_probs: ``[E]`` ``P(symbol | from)``.
        depth: ``[K]`` the length of the shortest word reaching each state.
        is_recurrent: ``[K]`` membership of a closed strongly connected component.
        complete: False when ``max_depth`` stopped the search with states left unexpanded.
    """

    beliefs: Float[Tensor, "K S"]
    transitions: Int[Tensor, "E 3"]
    transition_probs: Float[Tensor, " E"]
    depth: Int[Tensor, " K"]
    is_recurrent: Bool[Tensor, " K"]
    complete: bool

    @property
    def n_states(self) -> int:
        return self.beliefs.shape[0]

    @property
    def n_recurrent(self) -> int:
        return int(self.is_recurrent.sum())

    def transition_tensor(self) -> Float[Tensor, "V K K"]:
        """The MSP as an HMM transition tensor ``[n_symbols, K, K]`` (unifilar)."""
        V = int(self.transitions[:, 1].max()) + 1 if len(self.transitions) else 0
        T = torch.zeros(V, self.n_states, self.n_states, dtype=torch.float64)
        f, x, t = self.transitions.T
        T[x, f, t] = self.transition_probs
        return T


def mixed_state_presentation(
    hmm: HMM,
    max_depth: int = 100,
    tol: float = 1e-9,
    *,
    max_states: int = 100_000,
    initial_state: Tensor | None = None,
) -> MixedStatePresentation:
    """Breadth-first mixed-state presentation from the start belief, merging equal beliefs.

    Recurrent states (closed strongly connected components) form the epsilon-machine; the rest are
    transient. Processes whose beliefs never merge (Mess3) need ``max_depth``; past ``max_states``
    states this raises.
    """
    check_hmm(hmm)
    max_depth = check_int("max_depth", max_depth, low=0)
    tol = check_float("tol", tol, low=0.0, low_open=True)
    max_states = check_int("max_states", max_states, low=1)
    start = (
        hmm.initial_state
        if initial_state is None
        else hmm.check_belief(initial_state, "initial_state")
    )
    return _mixed_state_presentation(hmm, start, max_depth, tol, max_states)


class _MSPGraph:
    """The MSP found so far: distinct beliefs (keyed by rounding to ``tol``) with the depth of
    their first appearance, and the labelled edges with their probabilities."""

    def __init__(self, hmm: HMM, tol: float, max_states: int) -> None:
        self.hmm, self.tol, self.max_states = hmm, tol, max_states
        self.index: dict[bytes, int] = {}
        self.beliefs: list[Tensor] = []
        self.depth: list[int] = []
        self.edges: list[tuple[int, int, int]] = []
        self.probs: list[float] = []

    def add(self, belief: Tensor, depth: int) -> tuple[int, bool]:
        """The state of ``belief`` and whether it is new; raises past ``max_states``."""
        key = torch.round(belief / self.tol).to(torch.int64).numpy().tobytes()
        if key in self.index:
            return self.index[key], False
        if len(self.beliefs) >= self.max_states:
            raise BeliefLensError(
                f"the mixed-state presentation of {self.hmm.name} passed max_states="
                f"{self.max_states} at depth {depth}; raise max_states or lower max_depth"
            )
        self.index[key] = len(self.beliefs)
        self.beliefs.append(belief)
        self.depth.append(depth)
        return self.index[key], True

    def expand(self, frontier: list[int], depth: int) -> list[int]:
        """Follow every symbol of nonzero probability from the states of ``frontier`` (at
        ``depth``); returns the states seen for the first time, the next frontier."""
        hmm = self.hmm
        new = torch.einsum("ks,xsj->kxj", torch.stack([self.beliefs[i] for i in frontier]), hmm.T)
        p = new @ hmm.tau
        if (p < -NEGATIVE_TOL).any():
            r, x = torch.nonzero(p < -NEGATIVE_TOL)[0].tolist()
            raise InvalidProcessError(
                f"{hmm.name} gives token {x} negative probability {p[r, x].item():.6g} "
                f"at depth {depth}: not a valid process"
            )
        floor = 1e-14 if hmm.generalized else 0.0
        next_frontier = []
        for r, x in torch.nonzero(p > floor).tolist():
            dst, is_new = self.add(new[r, x] / p[r, x], depth + 1)
            if is_new:
                next_frontier.append(dst)
            self.edges.append((frontier[r], x, dst))
            self.probs.append(float(p[r, x]))
        return next_frontier


def _mixed_state_presentation(
    hmm: HMM, start: Tensor, max_depth: int, tol: float, max_states: int
) -> MixedStatePresentation:
    """:func:`mixed_state_presentation` from the checked ``start`` belief."""
    graph = _MSPGraph(hmm, tol, max_states)
    graph.add(start, 0)
    frontier = [0]
    with single_thread_below(max_states * hmm.n_states * hmm.n_symbols):  # ops per frontier
        for depth in range(max_depth):
            if not frontier:
                break
            frontier = graph.expand(frontier, depth)
    K = len(graph.beliefs)
    expanded = np.ones(K, dtype=bool)
    expanded[frontier] = False
    recurrent = _closed_components(K, graph.edges, expanded)
    return MixedStatePresentation(
        beliefs=torch.stack(graph.beliefs),
        transitions=torch.tensor(graph.edges, dtype=torch.long).reshape(-1, 3),
        transition_probs=torch.tensor(graph.probs, dtype=torch.float64),
        depth=torch.tensor(graph.depth, dtype=torch.long),
        is_recurrent=torch.from_numpy(recurrent),
        complete=not frontier,
    )


def _closed_components(
    K: int, edges: list[tuple[int, int, int]], expanded: np.ndarray
) -> np.ndarray:
    """Mark nodes in closed strongly connected components (Tarjan, iterative).

    A component is closed when no edge leaves it and all its nodes were expanded.
    """
    succ: list[list[int]] = [[] for _ in range(K)]
    for f, _, t in edges:
        succ[f].append(t)
    index = [-1] * K
    low = [0] * K
    on_stack = [False] * K
    stack: list[int] = []
    comp = [-1] * K
    n_comp = 0
    counter = 0
    for root in range(K):
        if index[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            if i < len(succ[v]):
                work.append((v, i + 1))
                w = succ[v][i]
                if index[w] == -1:
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            for w in succ[v]:
                if on_stack[w] or comp[w] == -1 and index[w] > index[v]:
                    low[v] = min(low[v], low[w])
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp[w] = n_comp
                    if w == v:
                        break
                n_comp += 1
    comp_arr = np.array(comp)
    closed = np.ones(n_comp, dtype=bool)
    for f, _, t in edges:
        if comp_arr[f] != comp_arr[t]:
            closed[comp_arr[f]] = False
    closed[comp_arr[~expanded]] = False
    return closed[comp_arr]
