"""Interventions along belief directions on the paper's Mess3 checkpoint, checked against theory."""

import math

import numpy as np
import pytest
import torch

from belief_lens.beliefs import belief_states, enumerate_sequences, sample_sequences
from belief_lens.compmech import optimal_loss
from belief_lens.errors import BeliefLensError
from belief_lens.interventions import (
    Ablate,
    PatchingResult,
    Steer,
    SubspacePatch,
    ablate_belief_subspace,
    belief_basis,
    control_basis,
    intervene,
    intervention_report,
    load_intervention,
    patch_belief_subspace,
    patching_report,
    recovery_metric,
    steer_to_belief,
    subspace_patch_setter,
    theory_kl_metric,
)
from belief_lens.metrics import kl_divergence
from belief_lens.processes import mess3

HOOK = "blocks.3.hook_resid_post"
HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in range(4)]


@pytest.fixture(scope="module")
def mess3_setup(shared_checkpoint):
    from belief_lens.models import load_checkpoint
    from belief_lens.probes import collect_probe_data, fit_probes

    model = load_checkpoint(shared_checkpoint("mess3_paper")).eval()
    hmm = mess3()
    table = fit_probes(collect_probe_data(model, hmm, 10, HOOKS, mode="paper"), concat=False)
    return model, hmm, {hook: table.probes[hook] for hook in HOOKS}


def reference_next_token_probs(hmm, tokens):
    """P(next | tokens) by a plain forward algorithm in numpy, one sequence at a time."""
    T = hmm.T.numpy()
    evals, evecs = np.linalg.eig(T.sum(0).T)
    pi = np.real(evecs[:, np.argmin(abs(evals - 1))])
    out = []
    for seq in tokens.tolist():
        b = pi / pi.sum()
        for x in seq:
            b = b @ T[x]
            b = b / b.sum()
        out.append([b @ T[x] @ np.ones(len(b)) for x in range(T.shape[0])])
    return torch.tensor(out, dtype=torch.float64)


def count_forwards(model):
    """A list that grows by one on every forward call of ``model``, and its hook handle."""
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def no_hooks_left(model) -> bool:
    return all(len(hp._forward_hooks) == 0 for hp in model.hook_dict.values())


# ------------------------------------------------------------------------------ steering
def test_steering_moves_model_to_theory(mess3_setup):
    model, hmm, probes = mess3_setup
    rep = intervention_report(model, None, hmm, probes[HOOK], HOOK, n_sequences=256, seed=1)
    # Before steering, the model predicts from its own belief, far from the target's.
    assert rep.kl_before.mean() > 0.3
    assert rep.fold_reduction("encoding") >= 30
    # Decoding directions move less, and a norm-matched control barely moves the model.
    assert rep.fold_reduction("decoding") < rep.fold_reduction("encoding")
    assert 0.5 < rep.fold_reduction("control") < 2
    s = rep.summary()
    assert s["kl_after_encoding_mean"] < 0.02 and s["fold_encoding"] == rep.fold_reduction()
    # The theory side is the target sequence's next-token distribution by a plain forward pass.
    torch.testing.assert_close(
        rep.theory_probs, reference_next_token_probs(hmm, rep.target_tokens), atol=1e-12, rtol=0
    )
    assert (rep.tokens[:, -1] != rep.target_tokens[:, -1]).all()


def test_identity_steering_changes_nothing(mess3_setup):
    model, hmm, probes = mess3_setup
    tokens = sample_sequences(hmm, 64, 10, seed=2)
    clean = model(tokens)
    beliefs = belief_states(hmm, tokens)[:, -1]
    steered = steer_to_belief(
        model, tokens, probes[HOOK], HOOK, beliefs, -1, current_beliefs=beliefs
    )
    assert (steered - clean).abs().max() < 1e-5
    # A probe's read-out strays off the simplex by more than the tolerance: refused, with a hint.
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    read_out = probes[HOOK].predict(cache[HOOK][:, -1].double())
    with pytest.raises(BeliefLensError, match="clip at 0 and renormalise"):
        steer_to_belief(model, tokens, probes[HOOK], HOOK, read_out, -1)


def test_steer_moves_activation_by_the_encoding_map(mess3_setup):
    """Only the steered position moves, by exactly (target - decoded current) @ encoding_map."""
    model, hmm, probes = mess3_setup
    probe = probes[HOOK]
    tokens = sample_sequences(hmm, 5, 10, seed=0)
    target = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1]]
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    acts = cache[HOOK]
    steered = Steer.from_probe(probe, HOOK, target, positions=-1).apply(acts)
    current = probe.predict(acts[:, -1].double())
    expected = ((target - current) @ probe.encoding_map()).float()
    torch.testing.assert_close(steered[:, -1] - acts[:, -1], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(steered[:, :-1], acts[:, :-1])
    # Decoding directions move the probe's read-out to the target exactly.
    dec = Steer.from_probe(probe, HOOK, target, positions=-1, directions="decoding").apply(acts)
    torch.testing.assert_close(probe.predict(dec[:, -1].double()), target, atol=1e-4, rtol=0)


def test_steer_in_user_hooks_equals_intervene(mess3_setup):
    model, hmm, probes = mess3_setup
    tokens = sample_sequences(hmm, 4, 10, seed=8)
    target = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]]
    steer = Steer.from_probe(probes[HOOK], HOOK, target, positions=[-1])
    logits = model.run_with_hooks(tokens, fwd_hooks=[(steer.hook, steer)])
    torch.testing.assert_close(logits, intervene(model, tokens, steer))
    torch.testing.assert_close(
        logits, steer_to_belief(model, tokens, probes[HOOK], HOOK, target, -1)
    )


def test_controls_have_the_same_rank_and_norm_orthogonal_to_beliefs(mess3_setup):
    model, hmm, probes = mess3_setup
    probe = probes[HOOK]
    B = belief_basis(probe)
    target = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    steer = Steer.from_probe(probe, HOOK, target, positions=-1)
    for iv in (
        steer,
        Ablate(HOOK, B),
        SubspacePatch(HOOK, B, torch.zeros(2, 10, dtype=torch.long)),
    ):
        ctrl = iv.control(seed=3)
        assert ctrl.control_seed == 3 and ctrl.rank == iv.rank == 2
        assert (B.T @ ctrl.basis).abs().max() < 1e-10
        torch.testing.assert_close(ctrl.basis.T @ ctrl.basis, torch.eye(2, dtype=torch.float64))
        torch.testing.assert_close(ctrl.basis, iv.control(seed=3).basis)  # seeded
        with pytest.raises(BeliefLensError, match="already a control"):
            ctrl.control(1)
    # A steering change has the same norm along the control as along the beliefs.
    delta = torch.randn(7, 3, dtype=torch.float64)
    move = steer.coordinates @ steer.basis.T
    ctrl = steer.control(0)
    ctrl_move = ctrl.coordinates @ ctrl.basis.T
    torch.testing.assert_close((delta @ ctrl_move).norm(dim=1), (delta @ move).norm(dim=1))
    torch.testing.assert_close(move, probe.encoding_map(), atol=1e-10, rtol=0)


def test_control_basis_is_orthogonal_and_seeded():
    basis, _ = torch.linalg.qr(torch.randn(32, 3, dtype=torch.float64))
    c = control_basis(basis, seed=3)
    torch.testing.assert_close(c.T @ c, torch.eye(3, dtype=torch.float64))
    assert (basis.T @ c).abs().max() < 1e-10
    torch.testing.assert_close(c, control_basis(basis, seed=3))
    with pytest.raises(BeliefLensError, match="no room"):
        control_basis(torch.eye(4, dtype=torch.float64)[:, :3])


# ------------------------------------------------------------------------------ patching
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
    torch.testing.assert_close(ours, stock.double(), atol=1e-5, rtol=1e-5)


def test_theory_kl_metric_matches_a_plain_forward_algorithm(mess3_setup):
    model, hmm, _ = mess3_setup
    clean = sample_sequences(hmm, 32, 10, seed=12)
    logits = model(clean).detach()
    theory = reference_next_token_probs(hmm, clean)
    q = torch.softmax(logits[:, -1].double(), -1)
    expected = (theory * (theory.log() - q.log())).sum(-1)
    torch.testing.assert_close(kl_divergence(theory, q), expected, atol=1e-12, rtol=1e-12)
    metric = theory_kl_metric(hmm, clean, -1)
    torch.testing.assert_close(metric(logits), expected.mean(), atol=1e-9, rtol=1e-9)
    per_example = theory_kl_metric(hmm, clean, 9, reduction="none")(logits)
    torch.testing.assert_close(per_example, expected, atol=1e-9, rtol=1e-9)
    corrupted = model(sample_sequences(hmm, 32, 10, seed=13)).detach()
    recovery = recovery_metric(metric, logits, corrupted)
    assert float(recovery(logits)) == pytest.approx(1.0)
    assert float(recovery(corrupted)) == pytest.approx(0.0, abs=1e-12)


def test_patching_recovers_theory_through_generic_activation_patch(mess3_setup):
    """TransformerLens's own sweep, with this package's setter and metric: the belief subspace of
    every layer's last position carries the prediction; a control of the same rank does not."""
    from transformer_lens import patching

    model, hmm, probes = mess3_setup
    clean = sample_sequences(hmm, 128, 10, seed=5)
    corrupted = sample_sequences(hmm, 128, 10, seed=6)
    by_layer = {layer: probes[hook] for layer, hook in enumerate(HOOKS)}
    controls = {layer: control_basis(belief_basis(p), seed=0) for layer, p in by_layer.items()}
    _, cache = model.run_with_cache(clean)
    kl = theory_kl_metric(hmm, clean, position=-1)
    recovery = recovery_metric(kl, model(clean), model(corrupted))
    grids = {
        name: patching.generic_activation_patch(
            model,
            corrupted,
            cache,
            recovery,
            subspace_patch_setter(bases),
            "resid_post",
            index_axis_names=("layer", "pos"),
        )  # fmt: skip
        for name, bases in (("beliefs", by_layer), ("control", controls))
    }
    assert (grids["beliefs"][:, -1] >= 0.95).all(), grids["beliefs"][:, -1]
    assert (grids["control"][:, -1].abs() <= 0.05).all(), grids["control"][:, -1]
    # Patching one earlier position's belief does not set the last position's prediction.
    assert grids["beliefs"][:, :-1].abs().max() < 0.1


def test_setter_takes_a_probe_a_basis_or_a_layer_mapping(mess3_setup):
    model, hmm, probes = mess3_setup
    clean = sample_sequences(hmm, 16, 10, seed=14)
    corrupted = sample_sequences(hmm, 16, 10, seed=15)
    _, cache = model.run_with_cache(clean, names_filter=[HOOK])
    _, corr_cache = model.run_with_cache(corrupted, names_filter=[HOOK])
    h, h_src = corr_cache[HOOK].double(), cache[HOOK].double()
    B = belief_basis(probes[HOOK])
    expected = h.clone()
    expected[:, 4] = h[:, 4] + (h_src[:, 4] - h[:, 4]) @ B @ B.T  # written out by hand
    for spec in (probes[HOOK], B, {3: probes[HOOK]}, {3: B}):
        out = subspace_patch_setter(spec)(corr_cache[HOOK].clone(), [3, 4], cache[HOOK])
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    # The same patch as a value, run through intervene, with tokens or activations as source.
    by_tokens = intervene(model, corrupted, SubspacePatch(HOOK, B, clean, positions=4))
    by_acts = intervene(model, corrupted, SubspacePatch(HOOK, B, cache[HOOK], positions=4))
    with model.hooks(fwd_hooks=[(HOOK, lambda act, hook: expected.to(act.dtype))]):
        reference = model(corrupted)
    torch.testing.assert_close(by_tokens, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_acts, reference, atol=1e-5, rtol=1e-5)


def test_patching_report_against_theory(mess3_setup):
    from belief_lens.plotting import patching_figure

    model, hmm, probes = mess3_setup
    clean = sample_sequences(hmm, 64, 10, seed=16)
    corrupted = sample_sequences(hmm, 64, 10, seed=17)
    by_layer = {layer: probes[hook] for layer, hook in enumerate(HOOKS)}
    res = patching_report(model, clean, corrupted, hmm, by_layer, control_seed=2)
    assert isinstance(res, PatchingResult)
    assert res.hooks == tuple(HOOKS) and res.positions == tuple(range(10))
    assert res.metric_position == 9 and res.rank == 2 and res.n_sequences == 64
    # The grid is the plain KL metric's, swept by patch_belief_subspace.
    metric = theory_kl_metric(hmm, clean)
    grid = patch_belief_subspace(model, clean, corrupted, by_layer, metric)
    torch.testing.assert_close(res.kl, grid)
    assert res.kl_corrupted == pytest.approx(float(metric(model(corrupted))))
    assert res.kl_clean == pytest.approx(float(metric(model(clean))))
    gap = res.kl_corrupted - res.kl_clean
    torch.testing.assert_close(res.recovery, (res.kl_corrupted - res.kl) / gap)
    recovered = res.recovered_at()
    assert min(recovered.values()) > 0.9
    assert max(abs(v) for v in res.recovered_at(control=True).values()) < 0.1
    md = res.to_markdown()
    assert all(hook in md for hook in HOOKS) and "control recovered" in md
    summary = res.summary()
    assert summary["recovered"] == recovered and len(summary["control_recovery"]) == 4
    fig = patching_figure(res)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 2
    np.testing.assert_allclose(heatmaps[0].z, res.recovery.numpy())
    np.testing.assert_allclose(heatmaps[1].z, res.control_recovery.numpy())
    assert list(heatmaps[0].y) == HOOKS


# ------------------------------------------------------------------------------ ablation
def test_ablating_beliefs_costs_more_than_control(mess3_setup):
    model, hmm, probes = mess3_setup
    data = enumerate_sequences(hmm, 10)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:4096]
    tokens, targets = data.tokens[idx], hmm.next_token_probs(data.beliefs[idx])

    def loss(logits):
        return -(targets * torch.log_softmax(logits.double(), -1)).sum(-1).mean()

    basis = belief_basis(probes[HOOK])
    opt = optimal_loss(hmm, 10).mean()
    for mode in ("zero", "mean"):
        ablated = loss(ablate_belief_subspace(model, tokens, basis, HOOK, mode))
        control = loss(intervene(model, tokens, Ablate(HOOK, basis, mode).control(1)))
        assert ablated - opt > 2 * (control - opt), (mode, ablated, control)
        assert ablated > opt + 0.05


def test_ablate_with_a_given_mean(mess3_setup):
    model, hmm, probes = mess3_setup
    tokens = sample_sequences(hmm, 8, 10, seed=18)
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    h = cache[HOOK].double()
    B = belief_basis(probes[HOOK])
    m = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = Ablate(HOOK, B, "mean", mean=m, positions=[2, -1]).apply(cache[HOOK])
    for p in (2, 9):
        torch.testing.assert_close(
            out[:, p].double(), h[:, p] + (m - h[:, p]) @ B @ B.T, atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(out[:, 3], cache[HOOK][:, 3])


# ------------------------------------------------------------------------------ values
def test_saved_interventions_give_identical_logits(mess3_setup, tmp_path):
    model, hmm, probes = mess3_setup
    probe = probes[HOOK]
    tokens = sample_sequences(hmm, 6, 10, seed=19)
    B = belief_basis(probe)
    targets = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1, 2]]
    values = {
        "steer": Steer.from_probe(probe, HOOK, targets, positions=[-1, 4], scale=0.7),
        "steer_true": Steer.from_probe(probe, HOOK, targets, current=targets.flip(0)),
        "decoding": Steer.from_probe(probe, HOOK, targets[0], directions="decoding"),
        "patch": SubspacePatch(HOOK, B, sample_sequences(hmm, 6, 10, seed=20), positions=-1),
        "ablate": Ablate(HOOK, B, "mean", mean=torch.ones(64)).control(4),
    }
    for name, iv in values.items():
        path = iv.save(tmp_path / f"{name}.safetensors")
        loaded = load_intervention(path)
        assert type(loaded) is type(iv)
        assert torch.equal(intervene(model, tokens, loaded), intervene(model, tokens, iv)), name
        assert type(iv).load(path).hook == HOOK
    assert (
        values["ablate"].control_seed
        == load_intervention(tmp_path / "ablate.safetensors").control_seed
    )
    # Nothing saved is overwritten unasked; a damaged file is a clear error.
    with pytest.raises(BeliefLensError, match="exists; pass overwrite=True"):
        values["steer"].save(tmp_path / "steer.safetensors")
    values["patch"].save(tmp_path / "steer.safetensors", overwrite=True)
    with pytest.raises(BeliefLensError, match="holds a SubspacePatch, not a Steer"):
        Steer.load(tmp_path / "steer.safetensors")
    data = (tmp_path / "ablate.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BeliefLensError, match="not a readable safetensors file"):
        load_intervention(tmp_path / "cut.safetensors")


def test_interventions_are_frozen_and_own_their_tensors():
    B, _ = torch.linalg.qr(torch.randn(8, 2, dtype=torch.float64))
    given = B.clone()
    ab = Ablate("blocks.0.hook_resid_post", given)
    given.zero_()
    torch.testing.assert_close(ab.basis, B)
    with pytest.raises(AttributeError):
        ab.mode = "mean"


def test_bad_inputs_raise_before_any_forward(mess3_setup):
    model, hmm, probes = mess3_setup
    probe = probes[HOOK]
    tokens = sample_sequences(hmm, 2, 10, seed=9)
    t = torch.ones(2, 3) / 3
    B = belief_basis(probe)
    calls, handle = count_forwards(model)
    cases = [
        (lambda: Steer.from_probe(probe, HOOK, torch.tensor([math.nan, 0.5, 0.5])), "NaN"),
        (lambda: steer_to_belief(model, tokens, probe, HOOK, t, scale=math.nan), "scale must"),
        (lambda: Steer.from_probe(probe, HOOK, torch.tensor([5.0, 5.0, 5.0])), "simplex"),
        (lambda: Steer.from_probe(probe, HOOK, torch.tensor([-0.5, 0.5, 1.0])), "simplex"),
        (
            lambda: intervention_report(model, tokens, hmm, probe, HOOK, current="truth"),
            r"current must be one of 'probe', 'true'; got 'truth'",
        ),
        (
            lambda: ablate_belief_subspace(model, tokens, B, HOOK, "mean", mean_activation=t),
            r"mean must be \[d\]=\(64,\)",
        ),
        (lambda: ablate_belief_subspace(model, tokens, B, HOOK, "half"), "mode must be one of"),
        (
            lambda: steer_to_belief(model, tokens, probe, HOOK, t, directions="sideways"),
            "directions must be one of",
        ),  # fmt: skip
        (
            lambda: steer_to_belief(model, tokens, probe, HOOK, t, positions=10),
            "position 10 is out of range for 10 positions",
        ),  # fmt: skip
        (
            lambda: steer_to_belief(model, tokens, probe, "blocks.9.hook_resid_post", t),
            "unknown hook",
        ),  # fmt: skip
        (lambda: intervene(model, tokens, Ablate("resid_post", B)), "unknown hook"),
        (
            lambda: steer_to_belief(model, tokens, probe, HOOK, torch.ones(2, 4) / 4),
            r"with S=3 \(the probe's states\), got \(2, 4\)",
        ),  # fmt: skip
        (
            lambda: steer_to_belief(model, tokens, probe, HOOK, torch.ones(7, 3) / 3, -1),
            "has 7 rows but the run has batch 2",
        ),  # fmt: skip
        (lambda: subspace_patch_setter(torch.ones(64, 2)), "orthonormal"),
        (lambda: subspace_patch_setter(torch.ones(64)), r"must be \[d_model, k\]"),
        (lambda: subspace_patch_setter({0: "probe"}), "the basis for layer 0 must be a fitted"),
        (lambda: Ablate(HOOK, B[:32]), "orthonormal|d_model"),
        (
            lambda: intervene(model, tokens, Ablate(HOOK, torch.eye(32, 2))),
            "d=32 rows but blocks.3.hook_resid_post has d_model=64",
        ),  # fmt: skip
        (lambda: intervene(model, tokens, SubspacePatch(HOOK, B, tokens[:1])), "do not match"),
        (lambda: Steer.from_probe(probe, HOOK, t, positions=[]), "positions is empty"),
        (
            lambda: intervene(model, tokens, Steer.from_probe(probe, HOOK, t, positions=[1, -9])),
            "repeat a position",
        ),  # fmt: skip
        (
            lambda: patch_belief_subspace(model, tokens, tokens, {0: probe}, lambda x: x.sum()),
            r"no probe or basis for layers \[1, 2, 3\]",
        ),  # fmt: skip
        (lambda: patching_report(model, tokens, tokens[:1], hmm, probe), "differ in shape"),
        (lambda: theory_kl_metric(hmm, tokens, reduction="sum"), "reduction must be one of"),
        (lambda: intervene(model, tokens, "steer"), "must be a Steer, SubspacePatch or Ablate"),
        (lambda: Steer(HOOK, B, torch.zeros(3, 2), t), "give exactly one way"),
    ]
    try:
        for make, message in cases:
            with pytest.raises(BeliefLensError, match=message):
                make()
    finally:
        handle.remove()
    assert calls == [], f"{len(calls)} forward passes before an error"


def test_hooks_are_removed_even_on_error(mess3_setup, monkeypatch):
    model, hmm, probes = mess3_setup
    tokens = sample_sequences(hmm, 4, 10, seed=7)
    before = model(tokens)
    B = belief_basis(probes[HOOK])
    # A hook outside the residual stream is checked when it fires: the MLP is 4 x wider.
    with pytest.raises(BeliefLensError, match="the basis has d=64 rows but hook"):
        intervene(model, tokens, Ablate("blocks.1.mlp.hook_post", B))
    assert no_hooks_left(model)
    # Any exception inside the hook, not only ours.
    ablate = Ablate(HOOK, B)

    def boom(self, activation):
        raise RuntimeError("boom")

    monkeypatch.setattr(Ablate, "apply", boom)
    with pytest.raises(RuntimeError, match="boom"):
        intervene(model, tokens, ablate)
    assert no_hooks_left(model)
    torch.testing.assert_close(model(tokens), before)
    assert not model.training


def test_a_hook_firing_twice_is_an_error(mess3_setup):
    model, hmm, probes = mess3_setup
    tokens = sample_sequences(hmm, 2, 10, seed=21)
    ablate = Ablate(HOOK, belief_basis(probes[HOOK]))
    original = ablate.apply
    calls = []

    def apply(activation):
        calls.append(1)
        if len(calls) == 1:
            model(tokens)  # a nested forward fires the hook again
        return original(activation)

    object.__setattr__(ablate, "apply", apply)
    with pytest.raises(BeliefLensError, match="fired 2 times in one forward, expected 1"):
        intervene(model, tokens, ablate)
    assert no_hooks_left(model)


def test_interventions_keep_the_callers_train_mode(mess3_setup):
    model, hmm, probes = mess3_setup
    tokens = sample_sequences(hmm, 2, 10, seed=10)
    model.train()
    try:
        steer_to_belief(model, tokens, probes[HOOK], HOOK, torch.ones(2, 3) / 3, positions=-1)
        ablate_belief_subspace(model, tokens, belief_basis(probes[HOOK]), HOOK)
        assert model.training
    finally:
        model.eval()


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
    steer = Steer.from_probe(probe, hook, target, positions=-1)
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    with model.hooks(fwd_hooks=[(hook, lambda act, hook: steer.apply(act))]):
        expected = model(tokens)
    torch.testing.assert_close(intervene(model, tokens, steer), expected)
    assert not torch.allclose(expected, model(tokens))


def test_interventions_are_transformer_lens_hook_functions():
    """Steer, SubspacePatch and Ablate go straight into fwd_hooks on a toy model (no checkpoint):
    the same logits as intervene(), and no hook left behind."""
    from belief_lens.models import toy_transformer
    from belief_lens.probes import collect_probe_data, fit_probes

    hmm = mess3()
    model = toy_transformer(3, 6, n_layers=1, d_model=16, d_mlp=32, n_heads=1, d_head=8).eval()
    hook = "blocks.0.hook_resid_post"
    probe = fit_probes(collect_probe_data(model, hmm, 6, [hook], mode="paper"), concat=False)
    probe = probe.probes[hook]
    tokens = sample_sequences(hmm, 5, 6, seed=0)
    basis = belief_basis(probe)
    _, cache = model.run_with_cache(sample_sequences(hmm, 5, 6, seed=1), names_filter=[hook])
    values = [
        Steer.from_probe(
            probe, hook, torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1]], positions=-1
        ),
        SubspacePatch(hook, basis, cache[hook]),
        Ablate(hook, basis),
    ]
    plain = model(tokens)
    for iv in values:
        assert iv.hook == hook
        hooked = model.run_with_hooks(tokens, fwd_hooks=[(iv.hook, iv)])
        torch.testing.assert_close(hooked, intervene(model, tokens, iv))
        assert not torch.allclose(hooked, plain), type(iv).__name__
        assert no_hooks_left(model)
