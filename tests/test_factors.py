"""Factored processes and their ground truth (arXiv 2602.02385), against plain references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.compmech import entropy_rate
from belief_lens.errors import BeliefLensError
from belief_lens.factors import (
    factor_tokens,
    factored_beliefs,
    factored_cost,
    joint_tokens,
    marginal_beliefs,
    outer_product,
    predicted_dims,
    vary_one_tokens,
)
from belief_lens.processes import (
    chained_product,
    even_process,
    golden_mean,
    mess3,
    noisy_product,
    product,
    z1r,
)


def _numpy_filter(T: np.ndarray, init: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """A per-token forward filter written out in numpy: the reference for belief_states."""
    out = np.empty(tokens.shape + (T.shape[1],))
    for n, seq in enumerate(tokens):
        b = init.copy()
        for t, x in enumerate(seq):
            b = b @ T[x]
            b /= b.sum()
            out[n, t] = b
    return out


@pytest.mark.parametrize("build", [noisy_product, chained_product])
def test_broken_products_equal_product_at_zero(build):
    factors = (mess3(), mess3(0.1, 0.7), z1r())
    key = "epsilon" if build is noisy_product else "coupling"
    hmm = build(*factors, **{key: 0.0})
    ref = product(*factors)
    assert torch.equal(hmm.T, ref.T)
    assert torch.equal(hmm.initial_state, ref.initial_state)


def test_noisy_product_is_the_joint_vocabulary_channel():
    a, b = mess3(), mess3(0.1, 0.7)
    eps = 0.3
    P = product(a, b).T.numpy()
    V = P.shape[0]
    B = (1 - eps) * np.eye(V) + eps * np.ones((V, V)) / V
    expected = np.stack([sum(B[x, y] * P[x] for x in range(V)) for y in range(V)])
    np.testing.assert_allclose(noisy_product(a, b, epsilon=eps).T.numpy(), expected, atol=1e-15)


def test_chained_product_parent_token_sets_child_variant():
    a, b, c = mess3(), mess3(0.1, 0.7), 0.4
    T = chained_product(a, b, coupling=c).T.numpy()
    A, Bt = a.T.numpy(), b.T.numpy()
    for x1 in range(3):
        for x2 in range(3):
            child = (1 - c) * Bt[x2] + c * Bt[(x2 + x1) % 3]
            np.testing.assert_allclose(T[x1 * 3 + x2], np.kron(A[x1], child), atol=1e-15)


def test_bad_parameters_raise():
    with pytest.raises(BeliefLensError, match="epsilon"):
        noisy_product(mess3(), mess3(), epsilon=1.5)
    with pytest.raises(BeliefLensError, match="coupling"):
        chained_product(mess3(), mess3(), coupling=-0.1)
    with pytest.raises(BeliefLensError, match="at least one"):
        noisy_product(epsilon=0.1)
    with pytest.raises(BeliefLensError, match="factor_states"):
        factored_beliefs(product(mess3(), mess3()), (3, 2), torch.zeros(1, 2, dtype=torch.long))


def test_predicted_dims():
    d = predicted_dims((3, 3))
    assert (d.joint, d.factored) == (8, 4)
    d = predicted_dims((3, 3, 3, 2))
    assert (d.joint, d.factored) == (53, 7)


def test_marginals_equal_each_factors_own_filter():
    factors = (mess3(), mess3(0.15, 0.6), even_process())
    hmm = product(*factors)
    tokens = sample_sequences(hmm, 64, 12, seed=1)
    fb = factored_beliefs(hmm, [f.n_states for f in factors], tokens)
    parts = factor_tokens(tokens, [f.n_symbols for f in factors])
    assert torch.equal(joint_tokens(parts, [f.n_symbols for f in factors]), tokens)
    for f, toks, marg in zip(factors, parts, fb.marginals, strict=True):
        ref = _numpy_filter(f.T.numpy(), f.initial_state.numpy(), toks.numpy())
        np.testing.assert_allclose(marg.numpy(), ref, atol=1e-12)
    # the joint belief of an independent product is the product of the marginals
    np.testing.assert_allclose(fb.factored.numpy(), fb.joint.numpy(), atol=1e-12)
    assert fb.concatenated.shape == (64, 12, 3 + 3 + 2)


def test_marginals_of_an_explicit_joint():
    joint = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)  # (2, 2), row-major
    m0, m1 = marginal_beliefs(joint, (2, 2))
    assert m0[0].tolist() == pytest.approx([0.3, 0.7])
    assert m1[0].tolist() == pytest.approx([0.4, 0.6])
    assert outer_product([m0, m1])[0].tolist() == pytest.approx([0.12, 0.18, 0.28, 0.42])


def test_product_entropy_rate_is_the_sum():
    g, e = golden_mean(), even_process()
    exact = 2 * np.log(2) / 3  # each factor's h_mu (REFERENCE.md)
    assert entropy_rate(product(g, e)) == pytest.approx(2 * exact, abs=1e-7)
    m, n = mess3(), mess3(0.15, 0.6)
    joint = entropy_rate(product(m, n), method="chaos_game", n_chains=500, n_steps=600)
    parts = sum(entropy_rate(f, method="chaos_game", n_chains=500, n_steps=600) for f in (m, n))
    assert joint == pytest.approx(parts, abs=0.01)


def _kl_reference(hmm, tokens, shape):
    """KL of the next-token prediction from the product of marginals, in plain numpy."""
    T = hmm.T.numpy()
    joint = _numpy_filter(T, hmm.initial_state.numpy(), tokens.numpy())
    grid = joint.reshape(*joint.shape[:2], *shape)
    fact = np.einsum("nti,ntj->ntij", grid.sum(3), grid.sum(2)).reshape(joint.shape)
    emit = T.sum(2).T  # [S, V]
    p, q = joint @ emit, fact @ emit
    return (p * np.log(p / q)).sum(-1).mean(0)


def test_factored_cost_zero_at_epsilon_zero_and_grows():
    m = mess3()
    costs = []
    for eps in (0.0, 0.01, 0.05, 0.2):
        hmm = noisy_product(m, m, epsilon=eps)
        tokens = sample_sequences(hmm, 400, 8, seed=0)
        cost = factored_cost(hmm, (3, 3), tokens)
        np.testing.assert_allclose(cost.numpy(), _kl_reference(hmm, tokens, (3, 3)), atol=1e-12)
        costs.append(float(cost.mean()))
    assert abs(costs[0]) < 1e-14
    assert costs[0] < costs[1] < costs[2] < costs[3]


def test_chained_dependency_keeps_the_belief_a_product():
    # Factor 1's variant is set by factor 0's visible token: the joint belief stays a product of
    # marginals (factored cost 0), but factor 1's marginal is no longer its own filter.
    a, b = mess3(), mess3()
    hmm = chained_product(a, b, coupling=0.8)
    tokens = sample_sequences(hmm, 64, 10, seed=2)
    fb = factored_beliefs(hmm, (3, 3), tokens)
    np.testing.assert_allclose(fb.factored.numpy(), fb.joint.numpy(), atol=1e-12)
    assert float(factored_cost(hmm, (3, 3), tokens).abs().max()) < 1e-12
    own = belief_states(b, factor_tokens(tokens, (3, 3))[1])
    assert float((own - fb.marginals[1]).abs().max()) > 0.05


def test_vary_one_tokens_freeze_the_other_factors():
    factors = (mess3(), mess3(0.15, 0.6))
    tokens = vary_one_tokens(factors, vary=1, n_sequences=50, length=6, seed=3)
    f0, f1 = factor_tokens(tokens, (3, 3))
    assert (f0 == f0[:1]).all()
    assert len({tuple(r) for r in f1.tolist()}) > 10
