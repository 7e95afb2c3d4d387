import math

import pytest
import torch

from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM, GeneralizedHMM
from belief_lens.processes import (
    even_process,
    golden_mean,
    make_process,
    mess3,
    mixture,
    post_quantum,
    product,
    random_hmm,
    rrxor,
    tom_quantum,
    z1r,
)


def test_mess3_matches_reference_definition():
    T = mess3().T
    expected_T0 = torch.tensor(
        [[0.765, 0.00375, 0.00375], [0.0425, 0.0675, 0.00375], [0.0425, 0.00375, 0.0675]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(T[0], expected_T0, rtol=0, atol=1e-12)
    # Symmetric under relabelling states and symbols together.
    perm = torch.tensor([1, 2, 0])
    torch.testing.assert_close(T[perm][:, perm][:, :, perm], T)


@pytest.mark.parametrize(
    "hmm, pi",
    [
        (mess3(), [1 / 3] * 3),
        (rrxor(), [2 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6]),
        (z1r(), [1 / 3] * 3),
        (golden_mean(), [2 / 3, 1 / 3]),
        (even_process(), [2 / 3, 1 / 3]),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_stationary_distributions(hmm, pi):
    torch.testing.assert_close(hmm.stationary_distribution, torch.tensor(pi, dtype=torch.float64))
    torch.testing.assert_close(
        hmm.stationary_distribution @ hmm.transition_matrix, hmm.stationary_distribution
    )


def test_rrxor_third_bit_is_xor():
    from belief_lens.beliefs import sample_sequences

    # Start synchronised in state S: tokens come in triples (a, b, a xor b).
    tok = sample_sequences(rrxor(), 500, 30, seed=1, initial_state=torch.tensor([1.0, 0, 0, 0, 0]))
    trip = tok.reshape(500, 10, 3)
    assert torch.equal(trip[..., 2], trip[..., 0] ^ trip[..., 1])


def test_bad_matrices_raise_named_errors():
    good = golden_mean().T
    with pytest.raises(BeliefLensError, match=r"negative transition probability T\[0, 0, 0\]"):
        HMM(good - torch.tensor([[[0.6, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.float64) * 1)
    with pytest.raises(BeliefLensError, match=r"state 1 has outgoing probability 0.5"):
        HMM([[[0.5, 0.5], [0.5, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    with pytest.raises(BeliefLensError, match=r"shape \[n_symbols, n_states, n_states\].*\(2, 2\)"):
        HMM([[0.5, 0.5], [1.0, 0.0]])
    with pytest.raises(BeliefLensError, match=r"shape .*\(2, 2, 3\)"):
        HMM(torch.ones(2, 2, 3))
    nan = good.clone()
    nan[1, 1, 0] = float("nan")
    with pytest.raises(BeliefLensError, match=r"NaN or inf, first at T\[1, 1, 0\]"):
        HMM(nan)


def test_non_ergodic_needs_initial_state():
    T = torch.zeros(1, 2, 2, dtype=torch.float64)
    T[0] = torch.eye(2)
    hmm = HMM(T, initial_state=[0.5, 0.5])
    torch.testing.assert_close(hmm.initial_state, torch.tensor([0.5, 0.5], dtype=torch.float64))
    with pytest.raises(BeliefLensError, match="no unique stationary distribution"):
        HMM(T)
    with pytest.raises(BeliefLensError, match=r"initial_state must have shape \(2,\)"):
        HMM(T, initial_state=[1.0, 0.0, 0.0])
    with pytest.raises(BeliefLensError, match="must be normalised"):
        HMM(T, initial_state=[0.5, 0.6])


def test_tokens_out_of_range():
    with pytest.raises(
        BeliefLensError, match=r"token 3 at index \[0\] is out of range for 3 symbols"
    ):
        mess3().update(mess3().initial_state[None], torch.tensor([3]))
    with pytest.raises(BeliefLensError, match="tokens must be integers"):
        mess3().check_tokens(torch.tensor([0.5]))


def test_make_process_errors():
    assert make_process("rrxor").n_states == 5
    with pytest.raises(BeliefLensError, match=r"unknown process 'mess4'; known processes: .*mess3"):
        make_process("mess4")
    with pytest.raises(BeliefLensError, match=r"bad parameters for mess3\(x: float = 0.05"):
        make_process("mess3", y=0.1)
    with pytest.raises(BeliefLensError, match="alpha must be a probability"):
        mess3(alpha=1.5)


def test_random_hmm_is_seeded_and_valid():
    a, b, c = random_hmm(4, 3, seed=7), random_hmm(4, 3, seed=7), random_hmm(4, 3, seed=8)
    assert torch.equal(a.T, b.T) and not torch.equal(a.T, c.T)
    torch.testing.assert_close(a.T.sum((0, 2)), torch.ones(4, dtype=torch.float64))


def test_generalized_processes():
    for g in (post_quantum(), tom_quantum(1.0, 0.5)):
        assert isinstance(g, GeneralizedHMM)
        assert (g.T < 0).any()
        torch.testing.assert_close(g.transition_matrix @ g.tau, g.tau)
        torch.testing.assert_close(
            g.stationary_distribution @ g.transition_matrix, g.stationary_distribution
        )
        p = g.next_token_probs(g.stationary_distribution)
        assert (p >= 0).all() and math.isclose(p.sum().item(), 1.0)
    with pytest.raises(BeliefLensError, match="alpha > 1 > beta > 0"):
        post_quantum(0.5, 0.5)
    with pytest.raises(BeliefLensError, match="largest eigenvalue"):
        GeneralizedHMM(2 * tom_quantum().T)
    with pytest.raises(BeliefLensError, match="negative transition probability"):
        HMM(tom_quantum(1.0, 0.5).T)


def test_mixture_is_weighted_union():
    a, b = mess3(), mess3(0.15, 0.6)
    m = mixture([a, b], [0.25, 0.75])
    assert m.n_states == 6
    torch.testing.assert_close(
        m.initial_state, torch.cat([0.25 * a.initial_state, 0.75 * b.initial_state])
    )
    from belief_lens.beliefs import log_probs

    w = torch.tensor([[0, 1, 2, 2, 0]])
    expected = 0.25 * log_probs(a, w)[0, -1].exp() + 0.75 * log_probs(b, w)[0, -1].exp()
    torch.testing.assert_close(log_probs(m, w)[0, -1].exp(), expected)
    with pytest.raises(BeliefLensError, match="share an alphabet"):
        mixture([mess3(), rrxor()])
    with pytest.raises(BeliefLensError, match="summing to 1"):
        mixture([a, b], [0.5, 0.6])


def test_product_token_encoding():
    a, b = golden_mean(), mess3()
    p = product(a, b)
    assert (p.n_symbols, p.n_states) == (6, 6)
    from belief_lens.beliefs import log_probs

    x1 = torch.tensor([[0, 1, 0, 0]])
    x2 = torch.tensor([[2, 0, 1, 1]])
    joint = x1 * 3 + x2
    torch.testing.assert_close(
        log_probs(p, joint)[0, -1], log_probs(a, x1)[0, -1] + log_probs(b, x2)[0, -1]
    )
