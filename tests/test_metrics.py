"""belief_lens.metrics against independent references: scipy, scikit-learn and numpy written
out in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import sklearn.metrics
import torch

from belief_lens.errors import BeliefLensError
from belief_lens.metrics import (
    RunningStats,
    effective_sample_size,
    entropy,
    kl_divergence,
    principal_angles_deg,
    r2_score,
    recovery,
    regression_metrics,
    sum_zero_basis,
    weighted_sums,
)

RNG = np.random.default_rng(0)


def test_entropy_and_kl_match_scipy():
    p = RNG.dirichlet(np.ones(5), size=7)
    q = RNG.dirichlet(np.ones(5), size=7)
    p[0, 2] = 0.0
    p[0] /= p[0].sum()
    np.testing.assert_allclose(entropy(torch.from_numpy(p)).numpy(), scipy.stats.entropy(p.T))
    np.testing.assert_allclose(
        kl_divergence(torch.from_numpy(p), torch.from_numpy(q)).numpy(),
        scipy.stats.entropy(p.T, q.T),
    )
    assert float(kl_divergence(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]))) == math.inf
    with pytest.raises(BeliefLensError, match="probabilities"):
        entropy(torch.tensor([0.5, -0.1, 0.6]))


@pytest.mark.parametrize("weighted", [False, True])
def test_r2_and_mse_match_sklearn(weighted):
    y = RNG.normal(size=(50, 3))
    pred = y + RNG.normal(scale=0.3, size=(50, 3))
    w = RNG.random(50) if weighted else None
    tw = None if w is None else torch.from_numpy(w)
    got = regression_metrics(*weighted_sums(torch.from_numpy(y), torch.from_numpy(pred), tw))
    assert got["r2"] == pytest.approx(sklearn.metrics.r2_score(y, pred, sample_weight=w))
    assert got["mse"] == pytest.approx(sklearn.metrics.mean_squared_error(y, pred, sample_weight=w))
    assert r2_score(torch.from_numpy(y), torch.from_numpy(pred), tw) == pytest.approx(got["r2"])


def test_effective_sample_size_is_kish():
    w = RNG.random(40)
    assert effective_sample_size(torch.from_numpy(w)) == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert effective_sample_size(torch.ones(9)) == pytest.approx(9.0)
    assert effective_sample_size(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)


def test_recovery_runs_from_corrupted_to_clean():
    assert float(recovery(0.2, clean=0.2, corrupted=1.0)) == pytest.approx(1.0)
    assert float(recovery(1.0, clean=0.2, corrupted=1.0)) == pytest.approx(0.0)
    assert float(recovery(0.6, clean=0.2, corrupted=1.0)) == pytest.approx(0.5)
    assert math.isnan(float(recovery(0.6, clean=0.3, corrupted=0.3)))


def test_principal_angles_match_scipy():
    A, B = RNG.normal(size=(10, 3)), RNG.normal(size=(10, 2))
    want = np.sort(np.degrees(scipy.linalg.subspace_angles(A, B)))
    got = np.sort(principal_angles_deg(torch.from_numpy(A), torch.from_numpy(B)).numpy())
    np.testing.assert_allclose(got, want, atol=1e-8)


def test_sum_zero_basis_is_an_orthonormal_basis_of_the_sum_zero_plane():
    Q = sum_zero_basis(4).numpy()
    assert Q.shape == (4, 3)
    np.testing.assert_allclose(Q.T @ Q, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(Q.sum(0), 0.0, atol=1e-12)


def test_running_stats_match_numpy_over_batches():
    values = RNG.normal(size=(23, 4))
    stats = RunningStats(4)
    for lo in range(0, 23, 5):
        stats.add(torch.from_numpy(values[lo : lo + 5]))
    np.testing.assert_allclose(stats.mean().numpy(), values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std().numpy(), values.std(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(
        stats.sem().numpy(), scipy.stats.sem(values, axis=0, ddof=1), rtol=1e-10
    )
    one = RunningStats(2)
    one.add(torch.ones(1, 2))
    assert torch.isnan(one.std()).all()
