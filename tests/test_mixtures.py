"""relabel, mixture(vocab_maps=...) and generalized mixtures/products against a numpy reference."""

import itertools

import numpy as np
import pytest
import torch

from belief_lens.beliefs import belief_states, enumerate_sequences, log_probs
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import GeneralizedHMM
from belief_lens.processes import (
    golden_mean,
    mess3,
    mixture,
    post_quantum,
    product,
    relabel,
    rrxor,
    tom_quantum,
)


def word_prob(T, pi, tau, word) -> float:
    """Plain forward product ``pi @ T[w1] ... T[wL] @ tau`` in numpy."""
    v = np.asarray(pi, dtype=np.float64)
    for x in word:
        v = v @ np.asarray(T[x], dtype=np.float64)
    return float(v @ np.asarray(tau, dtype=np.float64))


def comp_prob(hmm, word, vmap) -> float:
    """Probability of a shared-vocabulary word under one component with token map ``vmap``."""
    inverse = {}
    for x, y in enumerate(vmap):
        inverse.setdefault(y, []).append(x)
    if any(y not in inverse for y in word):
        return 0.0
    T = hmm.T.numpy()
    return sum(
        word_prob(T, hmm.initial_state.numpy(), hmm.tau.numpy(), w)
        for w in itertools.product(*(inverse[y] for y in word))
    )


def all_word_probs(hmm, L):
    seqs = enumerate_sequences(hmm, L)
    got = {tuple(t.tolist()): p.item() for t, p in zip(seqs.tokens, seqs.probs, strict=True)}
    return got


def test_relabel_keeps_structure_and_maps_tokens():
    a = mess3()
    r = relabel(a, [3, 5, 4])
    assert (r.n_symbols, r.n_states) == (6, 3)
    torch.testing.assert_close(r.stationary_distribution, a.stationary_distribution)
    for w in itertools.product(range(3), repeat=3):
        mapped = [[3, 5, 4][x] for x in w]
        ref = word_prob(a.T.numpy(), a.initial_state.numpy(), np.ones(3), w)
        got = log_probs(r, torch.tensor([mapped]))[0, -1].exp().item()
        assert got == pytest.approx(ref, rel=1e-12)
    with pytest.raises(BeliefLensError, match="probability zero"):
        log_probs(r, torch.tensor([[0]]))


def test_relabel_merging_tokens_coarse_grains():
    a = mess3()
    r = relabel(a, [0, 0, 1])
    got = all_word_probs(r, 3)
    for w in itertools.product(range(2), repeat=3):
        assert got[w] == pytest.approx(comp_prob(a, w, [0, 0, 1]), rel=1e-12)


@pytest.mark.parametrize(
    "components, maps, weights",
    [
        ([mess3(), mess3()], [[0, 1, 2], [3, 4, 5]], [0.3, 0.7]),  # disjoint
        ([mess3(), rrxor()], [[0, 1, 2], [0, 3]], [0.5, 0.5]),  # overlapping on token 0
        ([golden_mean(), mess3(0.15, 0.6)], [[2, 1], [0, 1, 2]], [0.25, 0.75]),
    ],
)
def test_mixture_vocab_maps_word_probabilities(components, maps, weights):
    m = mixture(components, weights, vocab_maps=maps)
    V = max(max(v) for v in maps) + 1
    assert m.n_symbols == V
    got = all_word_probs(m, 4)
    for w in itertools.product(range(V), repeat=4):
        ref = sum(
            wk * comp_prob(c, w, v) for wk, c, v in zip(weights, components, maps, strict=True)
        )
        assert got.get(w, 0.0) == pytest.approx(ref, rel=1e-10, abs=1e-15)


def test_disjoint_mixture_picks_one_vocabulary_per_sequence():
    m = mixture([mess3(), mess3()], vocab_maps=[[0, 1, 2], [3, 4, 5]])
    seqs = enumerate_sequences(m, 3)
    in_a = (seqs.tokens < 3).all(1)
    in_b = (seqs.tokens >= 3).all(1)
    assert bool((in_a | in_b).all())
    assert seqs.probs[in_a].sum().item() == pytest.approx(0.5, abs=1e-12)
    # After one B token, the belief puts all its mass on component B's block.
    b = belief_states(m, torch.tensor([[4, 3]]))
    assert b[0, 0, :3].abs().sum().item() == pytest.approx(0.0, abs=1e-15)
    assert b[0, 0, 3:].sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "a, b",
    [
        (post_quantum(), post_quantum(alpha=2.0)),
        (tom_quantum(), tom_quantum(beta=2.0)),
    ],
)
def test_mixture_of_generalized_components(a, b):
    m = mixture([a, b], [0.4, 0.6])
    assert isinstance(m, GeneralizedHMM)
    torch.testing.assert_close(m.tau, torch.cat([a.tau, b.tau]))
    got = all_word_probs(m, 4)
    V = a.n_symbols
    for w in itertools.product(range(V), repeat=4):
        ref = 0.4 * comp_prob(a, w, range(V)) + 0.6 * comp_prob(b, w, range(V))
        assert got.get(w, 0.0) == pytest.approx(ref, rel=1e-9, abs=1e-13)
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-12)


def test_product_of_generalized_and_hmm():
    a, b = tom_quantum(beta=2.0), golden_mean()
    p = product(a, b)
    assert isinstance(p, GeneralizedHMM)
    got = all_word_probs(p, 3)
    for w in itertools.product(range(a.n_symbols * 2), repeat=3):
        w1, w2 = [x // 2 for x in w], [x % 2 for x in w]
        ref = comp_prob(a, w1, range(4)) * comp_prob(b, w2, range(2))
        assert got.get(w, 0.0) == pytest.approx(ref, rel=1e-9, abs=1e-13)


def test_vocab_map_errors():
    with pytest.raises(BeliefLensError, match="vocab_map must have 3 entries"):
        relabel(mess3(), [0, 1])
    with pytest.raises(BeliefLensError, match=r"vocab_map\[1\] must be an integer in \[0"):
        relabel(mess3(), [0, -1, 2])
    with pytest.raises(BeliefLensError, match=r"vocab_map\[0\] must be an integer, got 0.0"):
        relabel(mess3(), [0.0, 1, 2])
    with pytest.raises(BeliefLensError, match="outside n_symbols=3"):
        relabel(mess3(), [0, 1, 3], n_symbols=3)
    with pytest.raises(BeliefLensError, match="one map per component"):
        mixture([mess3(), mess3()], vocab_maps=[[0, 1, 2]])
    with pytest.raises(BeliefLensError, match=r"vocab_maps\[1\] must have 2 entries"):
        mixture([mess3(), rrxor()], vocab_maps=[[0, 1, 2], [0, 1, 2]])
