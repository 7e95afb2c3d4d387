"""Every value in ../shared/REFERENCE.md, "Exact values"."""

import math

import pytest
import torch

from belief_lens.compmech import (
    block_entropy,
    entropy_rate,
    excess_entropy,
    mixed_state_presentation,
    myopic_entropy,
    optimal_loss,
    statistical_complexity,
)
from belief_lens.errors import BeliefLensError
from belief_lens.processes import even_process, golden_mean, mess3, random_hmm, rrxor, z1r

LN2 = math.log(2)

# process: (constructor, h(0..6), h_mu, optimal mean loss at n_ctx 10)
REFERENCE = {
    "mess3": (
        mess3,
        [1.098612, 0.857719, 0.813356, 0.798118, 0.794740, 0.793783, 0.793543],
        0.793458,
        0.80251,
    ),
    "rrxor": (
        rrxor,
        [0.693147, 0.693147, 0.636514, 0.628487, 0.598679, 0.577623, 0.561458],
        2 / 3 * LN2,
        0.57819,
    ),
    "z1r": (
        z1r,
        [0.693147, 0.636514, 0.462098, 0.231049, 0.231049, 0.231049, 0.231049],
        LN2 / 3,
        0.29470,
    ),
    "golden_mean": (golden_mean, [0.636514] + [0.462098] * 6, 0.462098, 0.46210),
    "even": (
        even_process,
        [0.636514, 0.605939, 0.549306, 0.534019, 0.505702, 0.498058, 0.483900],
        2 / 3 * LN2,
        0.50686,
    ),
}


@pytest.mark.parametrize("name", REFERENCE)
def test_myopic_entropy_and_optimal_loss(name):
    make, h, h_mu, opt = REFERENCE[name]
    hmm = make()
    torch.testing.assert_close(
        myopic_entropy(hmm, 6), torch.tensor(h, dtype=torch.float64), rtol=0, atol=1e-6
    )
    # Reference rounds the optimal loss to 5 decimals.
    assert abs(optimal_loss(hmm, 10).mean().item() - opt) < 6e-6
    assert abs(entropy_rate(hmm) - h_mu) < 1e-6


def test_optimal_loss_alignment():
    hmm = rrxor()
    h = myopic_entropy(hmm, 10)
    torch.testing.assert_close(optimal_loss(hmm, 10), h[1:11])
    torch.testing.assert_close(optimal_loss(hmm, 10, bos=True), h[:10])
    torch.testing.assert_close(
        block_entropy(hmm, 4), torch.cat([torch.zeros(1, dtype=torch.float64), h[:4].cumsum(0)])
    )


@pytest.mark.parametrize(
    "make, n_states, n_recurrent",
    [(rrxor, 36, 5), (z1r, 7, 3), (golden_mean, 3, 2), (even_process, 4, 2)],
)
def test_msp_state_counts(make, n_states, n_recurrent):
    msp = mixed_state_presentation(make())
    assert msp.complete
    assert (msp.n_states, msp.n_recurrent) == (n_states, n_recurrent)
    # Transition probabilities out of each state sum to 1; the start state is at depth 0.
    out = torch.zeros(msp.n_states, dtype=torch.float64).index_add_(
        0, msp.transitions[:, 0], msp.transition_probs
    )
    torch.testing.assert_close(out, torch.ones_like(out))
    assert msp.depth[0] == 0 and not msp.is_recurrent[0]


def test_mess3_msp_never_merges():
    msp = mixed_state_presentation(mess3(), max_depth=6)
    assert not msp.complete and msp.n_recurrent == 0
    assert msp.n_states == sum(3**d for d in range(7))
    with pytest.raises(BeliefLensError, match="passed max_states=1000"):
        mixed_state_presentation(mess3(), max_depth=20, max_states=1000)


def test_complexity_measures_in_bits():
    assert abs(statistical_complexity(rrxor()) / LN2 - 2.2516) < 1e-4
    assert abs(excess_entropy(rrxor(), 100) / LN2 - 2.2516) < 1e-4
    assert abs(statistical_complexity(z1r()) / LN2 - math.log2(3)) < 1e-9
    assert abs(excess_entropy(z1r(), 40) / LN2 - math.log2(3)) < 1e-6
    with pytest.raises(BeliefLensError, match="not a unifilar HMM"):
        statistical_complexity(mess3())


def test_chaos_game_agrees_with_exact():
    assert abs(entropy_rate(mess3(), "chaos_game") - 0.793458) < 1e-3
    assert abs(entropy_rate(rrxor(), "chaos_game", n_chains=500, n_steps=600) - 2 / 3 * LN2) < 5e-3


def test_myopic_entropy_decreases_to_rate():
    hmm = random_hmm(3, 2, seed=5)
    h = myopic_entropy(hmm, 8)
    assert (h[1:] <= h[:-1] + 1e-12).all()
    assert h[-1] >= entropy_rate(hmm, "chaos_game") - 1e-2
