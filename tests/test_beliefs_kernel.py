"""The compiled belief filter against a plain forward algorithm written here: unnormalised
products ``init @ T[x0] @ ... @ T[xt]`` per sequence, normalised only for the comparison, so
it shares neither the kernel's per-step renormalisation nor its code."""

import numpy as np
import pytest
import torch

import belief_lens.filter_kernel as filter_kernel
from belief_lens.beliefs import belief_states, log_probs, sample_sequences
from belief_lens.errors import BeliefLensError, InvalidProcessError
from belief_lens.hmm import HMM, GeneralizedHMM
from belief_lens.processes import post_quantum, random_hmm

GOLDEN_MEAN = [[[0.5, 0.5], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]]  # "1 1" never happens


def forward(hmm: HMM, seq: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Beliefs and cumulative log-probabilities of one sequence; NaN and -inf from its first
    prefix of probability zero."""
    T, tau = hmm.T.numpy(), hmm.tau.numpy()
    alpha = hmm.initial_state.numpy()
    beliefs = np.full((len(seq), len(tau)), np.nan)
    logp = np.full(len(seq), -np.inf)
    for t, x in enumerate(seq):
        alpha = alpha @ T[x]
        p = alpha @ tau
        if p == 0:
            break
        beliefs[t], logp[t] = alpha / p, np.log(p)
    return beliefs, logp


def signed_hmm(seed: int) -> GeneralizedHMM:
    """A random HMM in a random basis: signed entries, a valid process with the same words."""
    base = random_hmm(4, 3, seed=seed)
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64) + 3 * torch.eye(4, dtype=torch.float64)
    Ainv = torch.linalg.inv(A)
    tau = Ainv @ torch.ones(4, dtype=torch.float64)
    scale = tau.abs().max()  # GeneralizedHMM's convention: tau's largest entry is 1
    return GeneralizedHMM(
        Ainv @ base.T @ A, initial_state=base.initial_state @ A * scale, tau=tau / scale
    )


def assert_matches_forward(hmm: HMM, tokens: torch.Tensor, impossible: str = "raise") -> None:
    b = belief_states(hmm, tokens, impossible=impossible)
    bs = belief_states(hmm, tokens, impossible=impossible, include_start=True)
    lp = log_probs(hmm, tokens, impossible=impossible)
    assert b.dtype == lp.dtype == torch.float64
    assert torch.equal(bs[:, 1:].nan_to_num(7.0), b.nan_to_num(7.0))
    assert torch.equal(bs[:, 0], hmm.initial_state.expand(len(tokens), -1))
    for i, seq in enumerate(tokens.tolist()):
        rb, rlp = forward(hmm, seq)
        np.testing.assert_allclose(b[i].numpy(), rb, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(lp[i].numpy(), rlp, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("n_states", "n_symbols"), [(1, 2), (2, 5), (3, 3), (5, 2), (9, 40)])
def test_kernel_matches_forward_on_random_hmms(n_states, n_symbols):
    hmm = random_hmm(n_states, n_symbols, seed=n_states + n_symbols)
    assert_matches_forward(hmm, sample_sequences(hmm, 30, 25, seed=1))


@pytest.mark.parametrize("seed", [0, 1])
def test_kernel_matches_forward_on_signed_generalized_hmms(seed):
    hmm = signed_hmm(seed)
    assert (hmm.T < 0).any() and (hmm.tau != 1).any()
    assert_matches_forward(hmm, sample_sequences(hmm, 30, 25, seed=seed))


def test_kernel_matches_forward_on_post_quantum():
    hmm = post_quantum()
    assert_matches_forward(hmm, sample_sequences(hmm, 20, 20, seed=2))


def test_zero_probability_prefixes_are_masked_from_their_first_impossible_token():
    hmm = HMM(GOLDEN_MEAN)
    tokens = torch.randint(0, 2, (200, 12), generator=torch.Generator().manual_seed(0))
    assert_matches_forward(hmm, tokens, impossible="mask")
    lp = log_probs(hmm, tokens, impossible="mask")
    assert torch.isneginf(lp).any() and torch.isfinite(lp).any()  # both kinds were compared
    first_bad = int(torch.isneginf(lp).any(1).nonzero()[0])
    t = int(torch.isneginf(lp[first_bad]).nonzero()[0])
    with pytest.raises(BeliefLensError, match=f"sequence {first_bad} .* at position {t} "):
        belief_states(hmm, tokens)
    with pytest.raises(BeliefLensError, match=f"sequence {first_bad} has probability zero"):
        log_probs(hmm, tokens)


def test_negative_normaliser_raises_even_when_masking():
    hmm = GeneralizedHMM([[[1.5]], [[-0.5]]], check_depth=0)
    tokens = torch.tensor([[0, 0, 0], [0, 1, 0]])
    for impossible in ("raise", "mask"):
        with pytest.raises(InvalidProcessError, match=r"sequence 1 .* at position 1 gets P = -0.5"):
            belief_states(hmm, tokens, impossible=impossible)
        with pytest.raises(InvalidProcessError, match="sequence 1 has negative probability"):
            log_probs(hmm, tokens, impossible=impossible)


def test_empty_batches_and_sequences():
    hmm = random_hmm(3, 2, seed=0)
    assert belief_states(hmm, torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5, 3)
    assert belief_states(hmm, torch.zeros(4, 0, dtype=torch.long)).shape == (4, 0, 3)
    assert log_probs(hmm, torch.zeros(4, 0, dtype=torch.long)).shape == (4, 0)
    start = belief_states(hmm, torch.zeros(2, 0, dtype=torch.long), include_start=True)
    assert torch.equal(start[:, 0], hmm.initial_state.expand(2, -1))


def test_non_contiguous_tokens_and_a_given_start():
    hmm = random_hmm(4, 3, seed=3)
    tokens = sample_sequences(hmm, 10, 16, seed=0)[:, ::2]
    init = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    got = belief_states(hmm, tokens, initial_state=init)
    ref = HMM(hmm.T, initial_state=init)
    assert_matches_forward(ref, tokens.contiguous())
    np.testing.assert_allclose(got, belief_states(ref, tokens.contiguous()), rtol=0, atol=0)


def test_kernel_compiles_without_a_disk_cache_where_numba_has_none(monkeypatch):
    """A read-only install (no writable cache anywhere) compiles per process, never fails."""
    real = filter_kernel.numba.njit
    calls = []

    def njit(**options):
        calls.append(options["cache"])
        if options["cache"]:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return real(**options)

    monkeypatch.setattr(filter_kernel.numba, "njit", njit)

    def double(x):
        return 2 * x

    assert filter_kernel.jit_kernel(double)(3) == 6 and calls == [True, False]
