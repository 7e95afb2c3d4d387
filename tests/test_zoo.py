"""The processes added for parity with simplexity, checked against matrices and a plain numpy
enumeration written here (stationary distribution and myopic entropies h(0..4))."""

import math

import numpy as np
import pytest
import torch

from belief_lens.compmech import myopic_entropy
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import GeneralizedHMM
from belief_lens.processes import (
    PROCESSES,
    coin,
    days_of_week,
    even_process,
    fanizza,
    golden_mean,
    leaky_rrxor,
    make_process,
    matching_parens,
    mr_name,
    sns,
    z1r,
)


def ref_stationary(T: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Left eigenvector of sum_x T[x] for eigenvalue 1, normalised by tau (numpy eig)."""
    vals, vecs = np.linalg.eig(T.sum(0).T)
    v = vecs[:, np.argmin(np.abs(vals - 1))].real
    return v / (v @ tau)


def ref_myopic(T: np.ndarray, pi: np.ndarray, tau: np.ndarray, L: int) -> np.ndarray:
    """h(0..L) from block entropies of all words, each word's probability pi T_w tau."""
    S = T.shape[1]
    vecs = pi[None, :]
    H = [0.0]
    for _ in range(L + 1):
        vecs = np.einsum("ns,xsj->nxj", vecs, T).reshape(-1, S)
        p = vecs @ tau
        assert (p > -1e-12).all(), "a word has negative probability"
        p = p[p > 1e-300]
        H.append(float(-(p * np.log(p)).sum()))
    return np.diff(H)


def ref_rrxor(p1, p2):
    T = np.zeros((2, 5, 5))
    S, Z, One, Tr, F = range(5)
    T[0, S, Z], T[1, S, One] = p1, 1 - p1
    T[0, Z, F], T[1, Z, Tr] = p2, 1 - p2
    T[0, One, Tr], T[1, One, F] = p2, 1 - p2
    T[1, Tr, S] = T[0, F, S] = 1
    return T


def ref_days():
    W = np.zeros((11, 7, 7))
    for i in range(7):
        for j in range(7):
            W[j, i, j] = 5.0 if j == (i + 1) % 7 else 1.0
        W[7, i, (i + 1) % 7] = 1
        W[8, i, (i + 6) % 7] = 1
        W[9, i, [5, 6]] = 0.5
        W[10, i, :5] = 0.2
    return W / 15.0


def ref_parens(open_probs):
    q = list(open_probs) + [0.0]
    D = len(q)
    T = np.zeros((2, D, D))
    for d in range(D):
        if d + 1 < D:
            T[0, d, d + 1] = q[d]
        if d > 0:
            T[1, d, d - 1] = 1 - q[d]
    return T


def ref_mr_name(p, q):
    # order: Mr., Something, Blah, name; state = last token
    T = np.zeros((4, 4, 4))
    T[3, 0, 3] = 1
    T[1, 3, 1] = T[2, 3, 2] = 0.5
    for here, other in ((1, 2), (2, 1)):
        T[0, here, 0] = q
        T[here, here, here] = 1 - p - q
        T[other, here, other] = p
    return T


def ref_fanizza(a, lam):
    c, s = math.cos(a), math.sin(a)
    den = 1 - 2 * lam * c + lam**2
    A, B = (1 - lam * c + lam * s) / den, (1 - lam * c - lam * s) / den
    pi0 = np.array([1 - (2 / (1 - lam) - A - B) / 4, 1 / (2 * (1 - lam)), -A / 4, -B / 4])
    w = np.array([1, 1 - lam, 1 + lam * (s - c), 1 - lam * (s + c)])
    T1 = lam * np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, c, -s], [0, 0, s, c]])
    return np.stack([np.outer(w, pi0), T1])


CASES = [
    ("coin", coin(0.3), np.array([[[0.3]], [[0.7]]])),
    ("leaky_rrxor", leaky_rrxor(0.5, 0.4, 0.2), 0.8 * ref_rrxor(0.5, 0.4) + 0.02),
    ("days_of_week", days_of_week(), ref_days()),
    ("matching_parens", matching_parens([1.0, 0.6, 0.3]), ref_parens([1.0, 0.6, 0.3])),
    ("mr_name", mr_name(0.3, 0.1), ref_mr_name(0.3, 0.1)),
    (
        "sns",
        sns(0.3, 0.6),
        np.array([[[0.7, 0.3], [0.0, 0.4]], [[0.0, 0.0], [0.6, 0.0]]]),
    ),
    ("fanizza", fanizza(2000.0, 0.49), ref_fanizza(2000.0, 0.49)),
]


@pytest.mark.parametrize("name, hmm, T", CASES, ids=[c[0] for c in CASES])
def test_zoo_matrices_stationary_and_myopic_entropies(name, hmm, T):
    torch.testing.assert_close(hmm.T, torch.from_numpy(T), rtol=0, atol=1e-13)
    tau = np.ones(T.shape[1])
    assert name in PROCESSES
    pi = ref_stationary(T, tau)
    np.testing.assert_allclose(hmm.stationary_distribution.numpy(), pi, rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        myopic_entropy(hmm, 4).numpy(), ref_myopic(T, pi, tau, 4), rtol=0, atol=1e-10
    )


def test_zoo_exact_values():
    # Closed forms: the coin's h is its entropy; the parenthesis depth chain with
    # open probabilities (1, 1/2, 1/2) has stationary (1, 2, 2, 1) / 6; Mr. Name (p, q)
    # visits Mr. and name once per cycle of mean length 2 + 1/q.
    torch.testing.assert_close(
        myopic_entropy(coin(0.3), 3),
        torch.full((4,), -(0.3 * math.log(0.3) + 0.7 * math.log(0.7)), dtype=torch.float64),
    )
    torch.testing.assert_close(
        matching_parens().stationary_distribution,
        torch.tensor([1, 2, 2, 1], dtype=torch.float64) / 6,
    )
    q = 0.2
    cycle = 2 + 1 / q
    torch.testing.assert_close(
        mr_name(0.4, q).stationary_distribution,
        torch.tensor([1, (cycle - 2) / 2, (cycle - 2) / 2, 1], dtype=torch.float64) / cycle,
    )
    torch.testing.assert_close(sns().stationary_distribution, torch.tensor([0.5, 0.5]).double())


def test_fanizza_is_a_valid_generalized_hmm():
    g = fanizza()
    assert isinstance(g, GeneralizedHMM) and (g.T < 0).any()
    T = ref_fanizza(2000.0, 0.49)
    pi = ref_stationary(T, np.ones(4))
    assert (pi < 0).any()  # a signed "belief": no HMM has this presentation
    vecs = pi[None]
    for _ in range(10):  # every word up to length 10 has non-negative probability
        vecs = np.einsum("ns,xsj->nxj", vecs, T).reshape(-1, 4)
        assert (vecs.sum(1) > -1e-12).all()


def test_simplexity_parameter_conventions():
    # simplexity's zero_one_random(p), even_ones(p), no_consecutive_ones(p), written out.
    p = 0.3
    zero_one_random = np.array(
        [[[0, 1, 0], [0, 0, 0], [1 - p, 0, 0]], [[0, 0, 0], [0, 0, 1], [p, 0, 0]]]
    )
    even_ones = np.array([[[1 - p, 0], [0, 0]], [[0, p], [1, 0]]])
    no_consecutive_ones = np.array([[[1 - p, 0], [1, 0]], [[0, p], [0, 0]]])
    for ours, theirs in (
        (z1r(1 - p), zero_one_random),
        (even_process(1 - p), even_ones),
        (golden_mean(1 - p), no_consecutive_ones),
    ):
        np.testing.assert_allclose(ours.T.numpy(), theirs, rtol=0, atol=1e-15)


def test_zoo_parameter_errors():
    with pytest.raises(BeliefLensError, match=r"open_probs\[0\] must be 1"):
        matching_parens([0.5, 0.5])
    with pytest.raises(BeliefLensError, match=r"open_probs must be in \(0, 1\]"):
        matching_parens([1.0, 0.0])
    with pytest.raises(BeliefLensError, match="p \\+ q <= 1"):
        mr_name(0.7, 0.5)
    with pytest.raises(BeliefLensError, match="epsilon must be a probability"):
        leaky_rrxor(epsilon=1.5)
    with pytest.raises(BeliefLensError, match=r"lamb must be in \(0.0, 1.0\)"):
        fanizza(lamb=1.0)
    with pytest.raises(BeliefLensError, match=r"word \[0, 0\] has negative probability"):
        fanizza(lamb=0.7)
    assert make_process("fanizza", alpha=2000.0, lamb=0.49).n_states == 4
