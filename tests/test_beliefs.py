import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from belief_lens.beliefs import (
    belief_states,
    enumerate_sequences,
    log_probs,
    next_token_distributions,
    sample_sequences,
)
from belief_lens.errors import BeliefLensError
from belief_lens.processes import mess3, post_quantum, random_hmm, rrxor, z1r


def reference_filter(T: np.ndarray, pi: np.ndarray, seq) -> tuple[np.ndarray, np.ndarray]:
    """Straightforward per-token forward filter for one sequence (float64, renormalised)."""
    eta, logp, bs, lps = pi.copy(), 0.0, [], []
    for x in seq:
        v = eta @ T[x]
        z = v.sum()
        eta = v / z
        logp += np.log(z)
        bs.append(eta)
        lps.append(logp)
    return np.array(bs), np.array(lps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beliefs_match_reference_on_random_hmms(seed):
    hmm = random_hmm(5, 3, seed=seed)
    tokens = sample_sequences(hmm, 20, 40, seed=seed)
    b, lp = belief_states(hmm, tokens), log_probs(hmm, tokens)
    for i in range(len(tokens)):
        rb, rlp = reference_filter(hmm.T.numpy(), hmm.initial_state.numpy(), tokens[i].tolist())
        np.testing.assert_allclose(b[i].numpy(), rb, rtol=0, atol=1e-12)
        np.testing.assert_allclose(lp[i].numpy(), rlp, rtol=1e-12)


def test_long_sequences_do_not_underflow():
    hmm = mess3()
    tokens = sample_sequences(hmm, 3, 10_000, seed=0)
    b, lp = belief_states(hmm, tokens), log_probs(hmm, tokens)
    assert torch.isfinite(b).all() and torch.isfinite(lp).all()
    assert (lp[:, -1] < -5000).all()  # the raw product would underflow float64
    for i in range(3):
        rb, rlp = reference_filter(hmm.T.numpy(), hmm.initial_state.numpy(), tokens[i].tolist())
        np.testing.assert_allclose(b[i].numpy(), rb, rtol=0, atol=1e-9)
        np.testing.assert_allclose(lp[i].numpy(), rlp, rtol=1e-9)


def test_word_probability_is_product_of_matrices():
    hmm = rrxor()
    w = [0, 1, 1, 0, 0]
    v = hmm.stationary_distribution
    for x in w:
        v = v @ hmm.T[x]
    assert abs(log_probs(hmm, torch.tensor([w]))[0, -1].exp() - v.sum()) < 1e-15


def test_impossible_sequence_raises_with_position():
    hmm = z1r()  # from S0: 0 then 1 is forced, so "1 1" can never happen
    tokens = torch.tensor([[0, 1, 0, 0, 1], [1, 1, 1, 0, 0]])
    with pytest.raises(
        BeliefLensError, match=r"sequence 1 has probability zero: token 1 at position 2"
    ):
        belief_states(hmm, tokens)
    b = belief_states(hmm, tokens, impossible="mask")
    lp = log_probs(hmm, tokens, impossible="mask")
    assert torch.isfinite(b[0]).all() and torch.isfinite(b[1, :2]).all()
    assert torch.isnan(b[1, 2:]).all() and torch.isneginf(lp[1, 2:]).all()
    with pytest.raises(BeliefLensError, match="impossible must be"):
        belief_states(hmm, tokens, impossible="drop")


def test_bad_tokens():
    with pytest.raises(BeliefLensError, match="out of range for 3 symbols"):
        belief_states(mess3(), torch.tensor([[0, 1, 5]]))
    with pytest.raises(BeliefLensError, match=r"shape \[n, L\]"):
        belief_states(mess3(), torch.zeros(2, 2, 2, dtype=torch.long))


def test_sampling_is_seeded():
    hmm = mess3()
    a = sample_sequences(hmm, 50, 20, seed=3)
    assert torch.equal(a, sample_sequences(hmm, 50, 20, seed=3))
    assert not torch.equal(a, sample_sequences(hmm, 50, 20, seed=4))
    assert a.dtype == torch.long and a.shape == (50, 20)


def test_enumerate_counts_and_order():
    s = enumerate_sequences(mess3(), 10)
    assert len(s) == 3**10 == 59_049
    assert torch.equal(s.tokens[:2], torch.tensor([[0] * 10, [0] * 9 + [1]]))
    r = enumerate_sequences(rrxor(), 10)
    assert len(r) == 436
    torch.testing.assert_close(r.probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(r.beliefs, belief_states(rrxor(), r.tokens))
    torch.testing.assert_close(r.probs.log(), log_probs(rrxor(), r.tokens)[:, -1])


def test_enumerate_generalized():
    g = post_quantum()
    s = enumerate_sequences(g, 5)
    torch.testing.assert_close(s.probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (s.probs > 0).all()


hmm_params = st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(0, 10_000))


@settings(max_examples=25, deadline=None)
@given(hmm_params, st.integers(1, 30))
def test_beliefs_are_distributions(params, length):
    hmm = random_hmm(*params, concentration=0.5)
    tokens = sample_sequences(hmm, 16, length, seed=params[2])
    b = belief_states(hmm, tokens)
    assert (b >= 0).all()
    torch.testing.assert_close(b.sum(-1), torch.ones(16, length, dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(hmm_params, st.integers(1, 6))
def test_enumeration_probabilities_sum_to_one(params, length):
    hmm = random_hmm(*params, concentration=0.5)
    s = enumerate_sequences(hmm, length)
    torch.testing.assert_close(s.probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert len(s) <= hmm.n_symbols**length


@settings(max_examples=10, deadline=None)
@given(hmm_params)
def test_sampling_frequencies_match_next_token_probs(params):
    hmm = random_hmm(*params)
    n, L = 20_000, 6
    tokens = sample_sequences(hmm, n, L, seed=params[2])
    # E[1{x_{t+1} = x}] must equal E[P(x | belief_t)]; also at t = 0 from the start belief.
    pred = next_token_distributions(hmm, tokens[:, :-1])
    onehot = torch.nn.functional.one_hot(tokens[:, 1:], hmm.n_symbols).double()
    diff = (onehot - pred).mean(0)
    se = ((onehot - pred).std(0) / n**0.5).clamp_min(1e-4)
    assert (diff.abs() < 5 * se).all(), (diff, se)
    first = torch.bincount(tokens[:, 0], minlength=hmm.n_symbols).double() / n
    p0 = hmm.next_token_probs(hmm.initial_state)
    assert ((first - p0).abs() < 5 * (p0 * (1 - p0) / n).clamp_min(0).sqrt() + 1e-4).all()
