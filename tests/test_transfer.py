"""Shared-structure machinery on planted activations, checked against numpy and scipy."""

import numpy as np
import pytest
import scipy.linalg
import torch

from belief_lens.errors import BeliefLensError
from belief_lens.probes import split_prefixes
from belief_lens.processes import mess3
from belief_lens.transfer import mixture_belief_probe, probe_transfer, subspace_angles

D = 32


def planted(shared: bool, n=400, pos=10, noise=1e-3, seed=0):
    """Mess3 beliefs written into activations along E_A (vocabulary A) and E_B (vocabulary B):
    the same directions when ``shared``, orthogonal ones otherwise."""
    from belief_lens import belief_states, sample_sequences

    hmm = mess3()
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.normal(size=(D, 6)))[0]
    E_a = q[:, :3].T * 5
    E_b = E_a if shared else q[:, 3:].T * 5
    out = []
    for k, E in enumerate((E_a, E_b)):
        b = belief_states(hmm, sample_sequences(hmm, n, pos, seed=seed + k)).numpy()
        acts = b @ E + noise * rng.normal(size=(n, pos, D))
        out += [torch.tensor(acts), torch.tensor(b)]
    return out


def test_shared_subspace_transfers():
    acts_a, b_a, acts_b, b_b = planted(shared=True)
    t = probe_transfer(acts_a, b_a, acts_b, b_b)
    assert t.r2_a_to_b > 0.99 and t.r2_b_to_a > 0.99
    assert t.r2_a_within > 0.99 and t.r2_b_within > 0.99
    ang = subspace_angles(t.probe_a.belief_basis(), t.probe_b.belief_basis())
    assert ang.max_cosine > 0.999


def test_shared_directions_at_another_offset_transfer_once_centred():
    acts_a, b_a, acts_b, b_b = planted(shared=True)
    shift = torch.zeros(D, dtype=torch.float64)
    shift[-1] = 50.0  # vocabulary B sits elsewhere, along a direction the probe reads
    t = probe_transfer(acts_a, b_a, acts_b + shift, b_b)
    assert t.r2_a_to_b_centred > 0.99 and t.r2_b_to_a_centred > 0.99


def test_orthogonal_subspaces_do_not_transfer():
    acts_a, b_a, acts_b, b_b = planted(shared=False)
    t = probe_transfer(acts_a, b_a, acts_b, b_b)
    assert t.r2_a_to_b < 0.1 and t.r2_b_to_a < 0.1
    assert t.r2_a_to_b_centred < 0.1 and t.r2_b_to_a_centred < 0.1
    assert t.r2_a_within > 0.99 and t.r2_b_within > 0.99  # each vocabulary is still decodable
    ang = subspace_angles(t.probe_a.belief_basis(), t.probe_b.belief_basis())
    assert ang.max_cosine < 0.1


def test_transfer_r2_matches_numpy_lstsq():
    acts_a, b_a, acts_b, b_b = planted(shared=True, noise=0.3)
    t = probe_transfer(acts_a, b_a, acts_b, b_b, test_fraction=0.25, seed=3, n_folds=None)
    # The same split: whole sequences held out by split_prefixes on their indices.
    ids = torch.arange(400)[:, None]
    tr_a = (~split_prefixes(ids, 0.25, seed=3)[:, 0]).numpy()
    te_b = split_prefixes(ids, 0.25, seed=4)[:, 0].numpy()
    X = np.c_[acts_a.numpy()[tr_a].reshape(-1, D), np.ones(tr_a.sum() * 10)]
    W = np.linalg.lstsq(X, b_a.numpy()[tr_a].reshape(-1, 3), rcond=None)[0]
    Y = b_b.numpy()[te_b].reshape(-1, 3)
    P = np.c_[acts_b.numpy()[te_b].reshape(-1, D), np.ones(1000)] @ W
    r2 = np.mean(1 - ((Y - P) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0))
    assert t.r2_a_to_b == pytest.approx(r2, abs=1e-6)


def test_transfer_is_cross_validated_by_default_against_a_numpy_fold_loop():
    """Default: 5 folds of whole sequences on each side; r2_a_to_b is the mean over folds of A's
    fold probe scored on B's fold (numpy lstsq), with its standard error."""
    from belief_lens.probes import prefix_folds

    acts_a, b_a, acts_b, b_b = planted(shared=True, noise=0.3)
    t = probe_transfer(acts_a, b_a, acts_b, b_b, seed=3)
    ids = torch.arange(400)[:, None]
    fa, fb = prefix_folds(ids, 5, 3)[:, 0].numpy(), prefix_folds(ids, 5, 4)[:, 0].numpy()
    per_fold = []
    for k in range(5):
        tr_a, te_b = fa != k, fb == k
        X = np.c_[acts_a.numpy()[tr_a].reshape(-1, D), np.ones(tr_a.sum() * 10)]
        W = np.linalg.lstsq(X, b_a.numpy()[tr_a].reshape(-1, 3), rcond=None)[0]
        Y = b_b.numpy()[te_b].reshape(-1, 3)
        P = np.c_[acts_b.numpy()[te_b].reshape(-1, D), np.ones(te_b.sum() * 10)] @ W
        per_fold.append(np.mean(1 - ((Y - P) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)))
    assert t.folds == 5
    assert t.r2_a_to_b == pytest.approx(np.mean(per_fold), abs=1e-6)
    assert t.se["r2_a_to_b"] == pytest.approx(np.std(per_fold, ddof=1) / np.sqrt(5), rel=1e-4)
    assert set(t.se) == {"r2_a_to_b", "r2_b_to_a", "r2_a_within", "r2_b_within",
                         "r2_a_to_b_centred", "r2_b_to_a_centred"}  # fmt: skip


def test_principal_angles_match_scipy():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    got = subspace_angles(torch.tensor(A), torch.tensor(B))
    want = np.sort(np.rad2deg(scipy.linalg.subspace_angles(A, B)))
    np.testing.assert_allclose(np.sort(got.degrees.numpy()), want, atol=1e-6)
    assert got.max_cosine == pytest.approx(np.cos(np.deg2rad(want.min())))


def test_mixture_belief_probe_on_planted_activations():
    acts_a, b_a, acts_b, b_b = planted(shared=True)
    z = torch.zeros_like(b_a)
    joint = torch.cat([torch.cat([b_a, z], -1), torch.cat([z, b_b], -1)])
    acts = torch.cat([acts_a, acts_b])
    # Shared directions and no vocabulary signal: the belief within is read, the component not.
    m = mixture_belief_probe(acts, joint, [3, 3])
    assert m.r2_within > 0.95 and m.r2_component < 0.1 and m.r2_joint < 0.6
    # Add a direction that flags the vocabulary: now the component is read too.
    flag = torch.zeros(D, dtype=torch.float64)
    flag[0] = 1.0
    acts2 = acts + torch.cat([torch.zeros(400), torch.ones(400)])[:, None, None] * flag
    m2 = mixture_belief_probe(acts2, joint, [3, 3])
    assert m2.r2_component > 0.99
    assert m2.r2_joint < 0.9  # indicator times belief: not affine in shared directions
    # Separate directions per vocabulary: the joint belief is affine in the activations.
    acts_a, b_a, acts_b, b_b = planted(shared=False)
    m3 = mixture_belief_probe(torch.cat([acts_a, acts_b]), joint, [3, 3])
    assert m3.r2_joint > 0.99 and m3.r2_component > 0.99 and m3.r2_within > 0.99
    with pytest.raises(BeliefLensError, match="block_sizes"):
        mixture_belief_probe(acts, joint, [3, 2])


def test_steering_transfer_kl_against_a_plain_forward():
    from belief_lens import belief_states
    from belief_lens.models import toy_transformer
    from belief_lens.transfer import collect_vocab, steering_transfer

    hmm = mess3()
    model = toy_transformer(6, 6, seed=0, n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=32)
    model.eval()
    hook = "blocks.0.hook_resid_post"
    a = collect_vocab(model, hmm, [0, 1, 2], hook, n_sequences=200, seed=0)
    b = collect_vocab(model, hmm, [3, 4, 5], hook, n_sequences=200, seed=1)
    assert int(b.tokens.min()) == 3 and int(b.tokens.max()) == 5
    np.testing.assert_allclose(b.beliefs.numpy(), belief_states(hmm, b.tokens - 3).numpy())
    t = probe_transfer(a.acts, a.beliefs, b.acts, b.beliefs)
    s = steering_transfer(model, b, hmm, t.probe_b, t.probe_b, n_sequences=50, seed=2)
    assert s.kl_transfer == pytest.approx(s.kl_own)  # same probe, same steer
    # kl_before by hand: the target is another sequence's last belief, theory in B's tokens.
    cur = b.beliefs[:50, -1]
    assert not (cur[s.target_index] == cur).all(-1).any()  # steered somewhere else
    target = cur[s.target_index]
    p = np.zeros((50, 6))
    p[:, 3:] = target.numpy() @ hmm.T.numpy().sum(-1).T  # P(x | eta) = eta @ T[x] @ 1
    with torch.no_grad():
        q = torch.softmax(model(b.tokens[:50])[:, -1].double(), -1).numpy()
    kl = np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0), -1).mean()
    assert s.kl_before == pytest.approx(kl, rel=1e-6)
    assert s.transfer_fold == pytest.approx(s.kl_before / s.kl_transfer)
