"""Interventions along belief directions on the paper's Mess3 checkpoint, checked against theory."""

import pytest
import torch

from belief_lens.beliefs import enumerate_sequences, sample_sequences
from belief_lens.compmech import optimal_loss
from belief_lens.errors import BeliefLensError
from belief_lens.interventions import (
    ablate_belief_subspace,
    belief_basis,
    control_basis,
    intervention_report,
    kl_divergence,
    patch_belief_subspace,
    steer_to_belief,
    steering_hook,
    subspace_patch_setter,
)
from belief_lens.processes import mess3

HOOK = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def mess3_setup(shared_checkpoint):
    from belief_lens.models import load_checkpoint
    from belief_lens.probes import collect_probe_data, fit_probes

    model = load_checkpoint(shared_checkpoint("mess3_paper"))
    hmm = mess3()
    table = fit_probes(collect_probe_data(model, hmm, 10, [HOOK], mode="paper"), concat=False)
    return model, hmm, table.probes[HOOK]


def test_steering_moves_model_to_theory(mess3_setup):
    model, hmm, probe = mess3_setup
    rep = intervention_report(model, hmm, probe, HOOK, n_sequences=256, seed=1)
    # Before steering, the model predicts from its own belief, far from the target's.
    assert rep.kl_before.mean() > 0.3
    assert rep.fold_reduction("encoding") >= 30
    # Decoding directions move less, and a norm-matched control barely moves the model.
    assert rep.fold_reduction("decoding") < rep.fold_reduction("encoding")
    assert 0.5 < rep.fold_reduction("control") < 2
    s = rep.summary()
    assert s["kl_after_encoding_mean"] < 0.02 and s["fold_encoding"] == rep.fold_reduction()
    # The theory side is the HMM's own prediction from the target belief.
    torch.testing.assert_close(rep.theory_probs, hmm.next_token_probs(rep.target_beliefs))
    assert (rep.tokens[:, -1] != rep.target_tokens[:, -1]).all()


def test_identity_steering_changes_nothing(mess3_setup):
    model, hmm, probe = mess3_setup
    tokens = sample_sequences(hmm, 64, 10, seed=2)
    clean = model(tokens)
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    current = probe.predict(cache[HOOK][:, -1].double())
    steered = steer_to_belief(model, tokens, probe, HOOK, current, positions=-1)
    assert (steered - clean).abs().max() < 1e-4


def test_full_basis_patch_equals_stock_residual_patch(mess3_setup):
    from transformer_lens import patching

    model, hmm, _ = mess3_setup
    clean_tokens = sample_sequences(hmm, 8, 10, seed=3)
    corrupted = sample_sequences(hmm, 8, 10, seed=4)
    target = clean_tokens[:, -1]

    def metric(logits):
        return torch.log_softmax(logits[:, -1], -1).gather(1, target[:, None]).mean()

    full = torch.eye(model.cfg.d_model, dtype=torch.float64)
    ours = patch_belief_subspace(model, clean_tokens, corrupted, full, metric, "resid_post")
    _, cache = model.run_with_cache(clean_tokens)
    stock = patching.generic_activation_patch(
        model, corrupted, cache, metric, patching.layer_pos_patch_setter, "resid_post",
        index_axis_names=("layer", "pos"),
    )  # fmt: skip
    assert ours.shape == (model.cfg.n_layers, 10)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


def test_belief_subspace_patch_moves_prediction(mess3_setup):
    model, hmm, probe = mess3_setup
    clean_tokens = sample_sequences(hmm, 32, 10, seed=5)
    corrupted = sample_sequences(hmm, 32, 10, seed=6)
    clean_probs = torch.softmax(model(clean_tokens)[:, -1], -1)

    def metric(logits):  # minus KL from the clean run's prediction at the last position
        return -kl_divergence(clean_probs, torch.softmax(logits[:, -1], -1)).mean()

    basis = belief_basis(probe)
    grid = patch_belief_subspace(model, clean_tokens, corrupted, probe, metric)
    ctrl = patch_belief_subspace(model, clean_tokens, corrupted, control_basis(basis), metric)
    base = metric(model(corrupted))
    # Patching the 2-D belief subspace of the last layer's last position recovers most of the
    # clean prediction; the same-rank control recovers almost nothing.
    assert grid[3, -1] > base + 0.8 * (0 - base)
    assert abs(ctrl[3, -1] - base) < 0.1 * abs(base)


def test_ablating_beliefs_costs_more_than_control(mess3_setup):
    model, hmm, probe = mess3_setup
    data = enumerate_sequences(hmm, 10)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:4096]
    tokens, targets = data.tokens[idx], hmm.next_token_probs(data.beliefs[idx])

    def loss(logits):
        return -(targets * torch.log_softmax(logits.double(), -1)).sum(-1).mean()

    basis = belief_basis(probe)
    opt = optimal_loss(hmm, 10).mean()
    for mode in ("zero", "mean"):
        ablated = loss(ablate_belief_subspace(model, tokens, basis, HOOK, mode))
        control = loss(ablate_belief_subspace(model, tokens, control_basis(basis, 1), HOOK, mode))
        assert ablated - opt > 2 * (control - opt), (mode, ablated, control)
        assert ablated > opt + 0.05


def test_hooks_are_removed_even_on_error(mess3_setup):
    model, hmm, probe = mess3_setup
    tokens = sample_sequences(hmm, 4, 10, seed=7)
    before = model(tokens)
    steer_to_belief(model, tokens, probe, HOOK, torch.eye(3)[[0, 1, 2, 0]], positions=-1)
    bad_target = torch.ones(7, 3) / 3  # batch mismatch: raised inside the hook
    with pytest.raises(BeliefLensError, match=r"do not fit batch 4"):
        steer_to_belief(model, tokens, probe, HOOK, bad_target, positions=-1)
    torch.testing.assert_close(model(tokens), before)
    assert not model.training


def test_steering_hook_in_user_code(mess3_setup):
    model, hmm, probe = mess3_setup
    tokens = sample_sequences(hmm, 4, 10, seed=8)
    target = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]]
    fn = steering_hook(probe, target, positions=[-1])
    with model.hooks(fwd_hooks=[(HOOK, fn)]):
        logits = model(tokens)
    assert fn.calls == 1
    torch.testing.assert_close(logits, steer_to_belief(model, tokens, probe, HOOK, target, -1))


def test_errors_name_the_problem(mess3_setup):
    model, hmm, probe = mess3_setup
    tokens = sample_sequences(hmm, 2, 10, seed=9)
    t = torch.ones(2, 3) / 3
    with pytest.raises(BeliefLensError, match="directions must be"):
        steer_to_belief(model, tokens, probe, HOOK, t, directions="sideways")
    with pytest.raises(BeliefLensError, match="position 10 is out of range for 10 positions"):
        steer_to_belief(model, tokens, probe, HOOK, t, positions=10)
    with pytest.raises(BeliefLensError, match="unknown hook"):
        steer_to_belief(model, tokens, probe, "blocks.9.hook_resid_post", t)
    with pytest.raises(BeliefLensError, match="end in 4 states but the probe has 3"):
        steer_to_belief(model, tokens, probe, HOOK, torch.ones(2, 4) / 4)
    with pytest.raises(BeliefLensError, match="orthonormal"):
        subspace_patch_setter(torch.ones(64, 2))
    with pytest.raises(BeliefLensError, match="mode must be"):
        ablate_belief_subspace(model, tokens, belief_basis(probe), HOOK, "half")


def test_control_basis_is_orthogonal_and_seeded():
    basis, _ = torch.linalg.qr(torch.randn(32, 3, dtype=torch.float64))
    c = control_basis(basis, seed=3)
    torch.testing.assert_close(c.T @ c, torch.eye(3, dtype=torch.float64))
    assert (basis.T @ c).abs().max() < 1e-10
    torch.testing.assert_close(c, control_basis(basis, seed=3))
    with pytest.raises(BeliefLensError, match="no room"):
        control_basis(torch.eye(4, dtype=torch.float64)[:, :3])


def test_steering_works_on_toy_models_of_the_installed_version():
    from belief_lens.models import toy_transformer
    from belief_lens.probes import collect_probe_data, fit_probes

    hmm = mess3()
    model = toy_transformer(3, 6, n_layers=1, d_model=16, d_mlp=32, n_heads=1, d_head=8).eval()
    hook = "blocks.0.hook_resid_post"
    data = collect_probe_data(model, hmm, 6, [hook], mode="paper")
    probe = fit_probes(data, concat=False).probes[hook]
    tokens = sample_sequences(hmm, 5, 6, seed=0)
    target = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1]]
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    acts = cache[hook]
    steered = steering_hook(probe, target, positions=-1)(acts, None)
    # Only the last position moves, by exactly (target - decoded current) @ encoding_map.
    current = probe.predict(acts[:, -1].double())
    expected = ((target - current) @ probe.encoding_map()).float()
    torch.testing.assert_close(steered[:, -1] - acts[:, -1], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(steered[:, :-1], acts[:, :-1])


def test_interventions_keep_the_callers_train_mode(mess3_setup):
    model, hmm, probe = mess3_setup
    tokens = sample_sequences(hmm, 2, 10, seed=10)
    model.train()
    try:
        steer_to_belief(model, tokens, probe, HOOK, torch.ones(2, 3) / 3, positions=-1)
        ablate_belief_subspace(model, tokens, belief_basis(probe), HOOK)
        assert model.training
    finally:
        model.eval()
