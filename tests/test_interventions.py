"""Interventions along belief directions, checked against theory.

The mechanics (hook functions, clean-up, save and load, validation, the shape of results, agreement
with TransformerLens's own patching) run on a small toy model built here, trained for a moment so
that clean and corrupted runs differ; the paper's numbers run on the Mess3 checkpoint.
"""

import json
import math

import numpy as np
import pytest
import torch

import belief_lens.interventions as interventions_package
from belief_lens import tl_compat
from belief_lens.beliefs import belief_states, enumerate_sequences, sample_sequences
from belief_lens.compmech import optimal_loss
from belief_lens.errors import BeliefLensError
from belief_lens.interventions import (
    Ablate,
    Intervention,
    InterventionReport,
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
    steerable_hooks,
    subspace_patch_setter,
    theory_kl_metric,
)
from belief_lens.interventions.bases import LayerBases
from belief_lens.interventions.steering import pair_different
from belief_lens.metrics import kl_divergence
from belief_lens.processes import mess3
from belief_lens.validation import (
    check_finite_tensor,
    check_hook_name,
    check_option,
    check_positions,
    resolve_positions,
)

HOOK = "blocks.3.hook_resid_post"
HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in range(4)]
#: The toy model: 2 layers, d_model 16 (MLP 64 wide), 8 positions, Mess3's 3 tokens.
TOY_L, TOY_D = 8, 16
TOY_HOOK = "blocks.1.hook_resid_post"
TOY_HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in range(2)]


@pytest.fixture(scope="module")
def mess3_setup(shared_checkpoint):
    from belief_lens.models import load_checkpoint
    from belief_lens.probes import collect_probe_data, fit_probes

    model = load_checkpoint(shared_checkpoint("mess3_paper")).eval()
    hmm = mess3()
    table = fit_probes(collect_probe_data(model, hmm, 10, HOOKS, mode="paper"), concat=False)
    return model, hmm, {hook: table.probes[hook] for hook in HOOKS}


@pytest.fixture(scope="module")
def toy():
    """A 2-layer toy model trained for 60 steps on Mess3 (so the clean run is closer to theory
    than a corrupted one), with an affine probe per layer fitted on its own activations."""
    from belief_lens.models import toy_transformer
    from belief_lens.probes import AffineProbe
    from belief_lens.training import train

    hmm = mess3()
    model = toy_transformer(
        3, TOY_L, n_layers=2, d_model=TOY_D, d_mlp=64, n_heads=2, d_head=8, seed=0
    )
    train(model, hmm, steps=60, lr=1e-2, progress=False, eval_sequences=64)
    model.eval()
    tokens = sample_sequences(hmm, 600, TOY_L, seed=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=TOY_HOOKS)
    beliefs = belief_states(hmm, tokens)
    probes = {hook: AffineProbe().fit(cache[hook].double(), beliefs) for hook in TOY_HOOKS}
    return model, hmm, probes


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
    rep = intervention_report(model, None, probes[HOOK], HOOK, hmm, n_sequences=256, seed=1)
    # Before steering, the model predicts from its own belief, far from the target's.
    assert rep.kl_before.mean() > 0.3
    assert rep.fold_reduction("encoding") >= 30
    # Decoding directions move less, and a norm-matched control barely moves the model.
    assert rep.fold_reduction("decoding") < rep.fold_reduction("encoding")
    assert 0.5 < rep.fold_reduction("control") < 2
    s = rep.to_dict()
    assert s["kl_after_encoding_mean"] < 0.02 and s["fold_encoding"] == rep.fold_reduction()
    # The theory side is the target sequence's next-token distribution by a plain forward pass.
    torch.testing.assert_close(
        rep.theory_probs, reference_next_token_probs(hmm, rep.target_tokens), atol=1e-12, rtol=0
    )
    assert (rep.tokens[:, -1] != rep.target_tokens[:, -1]).all()


def test_intervention_report_shapes_and_theory_on_a_toy_model(toy):
    """The report's mechanics: shapes, theory by a plain forward algorithm, KLs recomputed, a
    JSON-ready to_dict, given targets and tokens honoured, the true current belief."""
    model, hmm, probes = toy
    tokens = sample_sequences(hmm, 40, TOY_L, seed=3)
    rep = intervention_report(model, tokens, probes[TOY_HOOK], TOY_HOOK, hmm, position=5, seed=4)
    assert isinstance(rep, InterventionReport)
    assert rep.hook == TOY_HOOK and rep.position == 5 and torch.equal(rep.tokens, tokens)
    assert set(rep.kl_after) == {"encoding", "decoding", "control"}
    assert rep.probs_before.shape == rep.theory_probs.shape == (40, 3)
    assert all(p.shape == (40, 3) and kl.shape == (40,) for p, kl in
               zip(rep.probs_after.values(), rep.kl_after.values(), strict=True))  # fmt: skip
    assert (rep.tokens[:, 5] != rep.target_tokens[:, 5]).all()
    torch.testing.assert_close(
        rep.theory_probs,
        reference_next_token_probs(hmm, rep.target_tokens[:, :6]),
        atol=1e-12,
        rtol=0,
    )
    torch.testing.assert_close(
        rep.target_beliefs, belief_states(hmm, rep.target_tokens)[:, 5], atol=0, rtol=0
    )
    with torch.no_grad():
        q = torch.softmax(model(tokens)[:, 5].double(), -1)
    torch.testing.assert_close(rep.probs_before, q)
    torch.testing.assert_close(rep.kl_before, kl_divergence(rep.theory_probs, q))
    steer = Steer.from_probe(probes[TOY_HOOK], TOY_HOOK, rep.target_beliefs, positions=5)
    after = torch.softmax(intervene(model, tokens, steer)[:, 5].double(), -1)
    torch.testing.assert_close(rep.probs_after["encoding"], after)
    d = rep.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["kl_before_mean"] == pytest.approx(float(rep.kl_before.mean()))
    assert d["fold_control"] == rep.fold_reduction("control")
    # Given targets, one kind, and the true belief as the current one.
    targets = tokens.flip(0)
    rep2 = intervention_report(
        model, tokens, probes[TOY_HOOK], TOY_HOOK, hmm,
        target_tokens=targets, directions=("encoding",), current="true",
    )  # fmt: skip
    assert torch.equal(rep2.target_tokens, targets) and list(rep2.kl_after) == ["encoding"]
    with pytest.raises(BeliefLensError, match="no 'decoding' steering in this report"):
        rep2.fold_reduction("decoding")
    # Without tokens, n_sequences are sampled with the seed, as long as the context.
    rep3 = intervention_report(
        model,
        None,
        probes[TOY_HOOK],
        TOY_HOOK,
        hmm,
        n_sequences=12,
        seed=5,
        directions=["encoding"],
    )
    assert torch.equal(rep3.tokens, sample_sequences(hmm, 12, TOY_L, seed=5))


def test_pair_different_pairs_rows_with_another_key():
    keys = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1])  # one odd row: the stragglers need it
    partner = pair_different(keys, seed=0)
    assert (keys[partner] != keys).all()
    torch.testing.assert_close(partner, pair_different(keys, seed=0))
    beliefs = torch.tensor([[0.5, 0.5], [0.5, 0.5 + 1e-12], [0.2, 0.8]], dtype=torch.float64)
    partner = pair_different(beliefs, seed=1, atol=1e-9)
    assert ((beliefs[partner] - beliefs).abs().amax(-1) > 1e-9).all()
    with pytest.raises(BeliefLensError, match="same token"):
        pair_different(torch.zeros(5, dtype=torch.long), seed=0)


def test_identity_steering_changes_nothing(toy):
    model, hmm, probes = toy
    tokens = sample_sequences(hmm, 64, TOY_L, seed=2)
    clean = model(tokens)
    beliefs = belief_states(hmm, tokens)[:, -1]
    steered = steer_to_belief(
        model, tokens, probes[TOY_HOOK], TOY_HOOK, beliefs, positions=-1, current=beliefs
    )
    assert (steered - clean).abs().max() < 1e-5
    # A probe's read-out strays off the simplex by more than the tolerance: refused, with a hint.
    _, cache = model.run_with_cache(tokens, names_filter=[TOY_HOOK])
    read_out = probes[TOY_HOOK].predict(cache[TOY_HOOK][:, -1].double())
    assert read_out.min() < -1e-3
    with pytest.raises(BeliefLensError, match="clip at 0 and renormalise"):
        steer_to_belief(model, tokens, probes[TOY_HOOK], TOY_HOOK, read_out, positions=-1)


def test_steer_moves_activation_by_the_encoding_map(toy):
    """Only the steered position moves, by exactly (target - decoded current) @ encoding_map."""
    model, hmm, probes = toy
    probe = probes[TOY_HOOK]
    tokens = sample_sequences(hmm, 5, TOY_L, seed=0)
    target = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1]]
    _, cache = model.run_with_cache(tokens, names_filter=[TOY_HOOK])
    acts = cache[TOY_HOOK]
    steered = Steer.from_probe(probe, TOY_HOOK, target, positions=-1).apply(acts)
    current = probe.predict(acts[:, -1].double())
    expected = ((target - current) @ probe.encoding_map()).float()
    torch.testing.assert_close(steered[:, -1] - acts[:, -1], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(steered[:, :-1], acts[:, :-1])
    # Decoding directions move the probe's read-out to the target exactly.
    dec = Steer.from_probe(probe, TOY_HOOK, target, positions=-1, directions="decoding")
    torch.testing.assert_close(probe.predict(dec.apply(acts)[:, -1].double()), target,
                               atol=1e-4, rtol=0)  # fmt: skip


def test_steer_in_user_hooks_equals_intervene(toy):
    model, hmm, probes = toy
    tokens = sample_sequences(hmm, 4, TOY_L, seed=8)
    target = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]]
    steer = Steer.from_probe(probes[TOY_HOOK], TOY_HOOK, target, positions=[-1])
    logits = model.run_with_hooks(tokens, fwd_hooks=[(steer.hook, steer)])
    torch.testing.assert_close(logits, intervene(model, tokens, steer))
    torch.testing.assert_close(
        logits, steer_to_belief(model, tokens, probes[TOY_HOOK], TOY_HOOK, target, positions=-1)
    )
    # The control shortcut is the encoding steer's control.
    ctrl = steer_to_belief(model, tokens, probes[TOY_HOOK], TOY_HOOK, target, positions=-1,
                           directions="control", control_seed=3)  # fmt: skip
    torch.testing.assert_close(ctrl, intervene(model, tokens, steer.control(3)))


def test_controls_have_the_same_rank_and_norm_orthogonal_to_beliefs(toy):
    model, hmm, probes = toy
    probe = probes[TOY_HOOK]
    B = belief_basis(probe)
    target = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    steer = Steer.from_probe(probe, TOY_HOOK, target, positions=-1)
    for iv in (
        steer,
        Ablate(TOY_HOOK, B),
        SubspacePatch(TOY_HOOK, B, torch.zeros(2, TOY_L, dtype=torch.long)),
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


def test_layer_bases_one_for_all_or_one_per_layer():
    B, _ = torch.linalg.qr(torch.randn(8, 2, dtype=torch.float64))
    shared = LayerBases.of(B)
    assert shared[0] is shared[5] and shared.missing(4) == [] and shared.rank == 2
    per = LayerBases.of({0: B, 2: B})
    assert per.missing(4) == [1, 3] and per.rank == 2
    torch.testing.assert_close(per.control(1)[2], control_basis(B, 1))
    with pytest.raises(BeliefLensError, match=r"no basis for layer 1; have layers \[0, 2\]"):
        per[1]
    with pytest.raises(BeliefLensError, match="mapping keys must be layer indices"):
        LayerBases.of({-1: B})
    with pytest.raises(BeliefLensError, match="the mapping layer -> probe is empty"):
        LayerBases.of({})


# ------------------------------------------------------------------------------ patching
def test_full_basis_patch_equals_stock_residual_patch(toy):
    from transformer_lens import patching

    model, hmm, _ = toy
    clean_tokens = sample_sequences(hmm, 8, TOY_L, seed=3)
    corrupted = sample_sequences(hmm, 8, TOY_L, seed=4)
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
    assert ours.shape == (model.cfg.n_layers, TOY_L)
    torch.testing.assert_close(ours, stock.double(), atol=1e-5, rtol=1e-5)
    # resid_mid resolves per layer too. The MLP acts position by position, so patching the whole
    # residual after attention gives the clean resid_post at that position: the same grid.
    # TransformerLens 4's hook_resid_mid is the MLP's input, not the residual stream, and a
    # write there is refused rather than reported as a residual patch.
    if tl_compat.residual_write_problem(model, "blocks.0.hook_resid_mid") is None:
        mid = patch_belief_subspace(model, clean_tokens, corrupted, full, metric, hook="resid_mid")
        torch.testing.assert_close(mid, ours, atol=1e-5, rtol=1e-5)
        half = full[:, : TOY_D // 4]
        partial = patch_belief_subspace(model, clean_tokens, corrupted, half, metric, "resid_mid")
        assert not torch.allclose(partial, ours)
        assert "blocks.0.hook_resid_mid" in steerable_hooks(model)
    else:
        assert not any(h.endswith("resid_mid") for h in steerable_hooks(model))
        with pytest.raises(BeliefLensError, match="alias of blocks.0.ln2.hook_in"):
            patch_belief_subspace(model, clean_tokens, corrupted, full, metric, hook="resid_mid")
        ablate = Ablate("blocks.1.hook_resid_mid", full[:, :2])
        with pytest.raises(BeliefLensError, match="no residual-stream intervention"):
            intervene(model, clean_tokens, ablate)


def test_theory_kl_metric_matches_a_plain_forward_algorithm(toy):
    model, hmm, _ = toy
    clean = sample_sequences(hmm, 32, TOY_L, seed=12)
    logits = model(clean).detach()
    theory = reference_next_token_probs(hmm, clean)
    q = torch.softmax(logits[:, -1].double(), -1)
    expected = (theory * (theory.log() - q.log())).sum(-1)
    torch.testing.assert_close(kl_divergence(theory, q), expected, atol=1e-12, rtol=1e-12)
    metric = theory_kl_metric(hmm, clean, -1)
    torch.testing.assert_close(metric(logits), expected.mean(), atol=1e-9, rtol=1e-9)
    per_example = theory_kl_metric(hmm, clean, TOY_L - 1, reduction="none")(logits)
    torch.testing.assert_close(per_example, expected, atol=1e-9, rtol=1e-9)
    corrupted = model(sample_sequences(hmm, 32, TOY_L, seed=13)).detach()
    recovery = recovery_metric(metric, logits, corrupted)
    assert float(recovery(logits)) == pytest.approx(1.0)
    assert float(recovery(corrupted)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(BeliefLensError, match="no gap to recover"):
        recovery_metric(metric, logits, logits)
    with pytest.raises(BeliefLensError, match="recovery needs a scalar metric"):
        recovery_metric(theory_kl_metric(hmm, clean, reduction="none"), logits, corrupted)


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


def test_setter_takes_a_probe_a_basis_or_a_layer_mapping(toy):
    model, hmm, probes = toy
    clean = sample_sequences(hmm, 16, TOY_L, seed=14)
    corrupted = sample_sequences(hmm, 16, TOY_L, seed=15)
    _, cache = model.run_with_cache(clean, names_filter=[TOY_HOOK])
    _, corr_cache = model.run_with_cache(corrupted, names_filter=[TOY_HOOK])
    h, h_src = corr_cache[TOY_HOOK].double(), cache[TOY_HOOK].double()
    B = belief_basis(probes[TOY_HOOK])
    expected = h.clone()
    expected[:, 4] = h[:, 4] + (h_src[:, 4] - h[:, 4]) @ B @ B.T  # written out by hand
    for spec in (probes[TOY_HOOK], B, {1: probes[TOY_HOOK]}, {1: B}, LayerBases.of(B)):
        out = subspace_patch_setter(spec)(corr_cache[TOY_HOOK].clone(), [1, 4], cache[TOY_HOOK])
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(BeliefLensError, match="patches \\[layer, pos\\] indices"):
        subspace_patch_setter(B)(corr_cache[TOY_HOOK], [4], cache[TOY_HOOK])
    # The same patch as a value, run through intervene, with tokens or activations as source.
    by_tokens = intervene(model, corrupted, SubspacePatch(TOY_HOOK, B, clean, positions=4))
    by_acts = intervene(model, corrupted, SubspacePatch(TOY_HOOK, B, cache[TOY_HOOK], positions=4))
    with model.hooks(fwd_hooks=[(TOY_HOOK, lambda act, hook: expected.to(act.dtype))]):
        reference = model(corrupted)
    torch.testing.assert_close(by_tokens, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_acts, reference, atol=1e-5, rtol=1e-5)


def test_patching_report_against_theory(toy):
    """The result's mechanics on a toy model: the grid is the plain sweep's, the KLs and recovery
    as defined, the control seeded, the table, the JSON export and the figure."""
    from belief_lens.plotting import patching_figure

    model, hmm, probes = toy
    clean = sample_sequences(hmm, 64, TOY_L, seed=16)
    corrupted = sample_sequences(hmm, 64, TOY_L, seed=17)
    by_layer = {layer: probes[hook] for layer, hook in enumerate(TOY_HOOKS)}
    res = patching_report(model, clean, corrupted, by_layer, hmm, control_seed=2)
    assert isinstance(res, PatchingResult)
    assert res.hooks == tuple(TOY_HOOKS) and res.positions == tuple(range(TOY_L))
    assert res.metric_position == TOY_L - 1 and res.rank == 2 and res.n_sequences == 64
    # The grid is the plain KL metric's, swept by TransformerLens's generic_activation_patch
    # (patch_belief_subspace); the control's likewise. The report starts each patched run after
    # the patch (logits_from_block): the same numbers to float32 rounding.
    metric = theory_kl_metric(hmm, clean)
    grid = patch_belief_subspace(model, clean, corrupted, by_layer, metric)
    torch.testing.assert_close(res.kl, grid, atol=1e-6, rtol=1e-6)
    controls = {k: control_basis(belief_basis(p), 2) for k, p in by_layer.items()}
    torch.testing.assert_close(res.kl_control, patch_belief_subspace(
        model, clean, corrupted, controls, metric), atol=1e-6, rtol=1e-6)  # fmt: skip
    pre = patching_report(model, clean, corrupted, by_layer, hmm, hook="resid_pre")
    stock = patch_belief_subspace(model, clean, corrupted, by_layer, metric, hook="resid_pre")
    torch.testing.assert_close(pre.kl, stock, atol=1e-6, rtol=1e-6)
    assert res.kl_corrupted == pytest.approx(float(metric(model(corrupted))))
    assert res.kl_clean == pytest.approx(float(metric(model(clean))))
    gap = res.kl_corrupted - res.kl_clean
    assert gap > 0.1  # the trained toy model is closer to theory on the clean run
    torch.testing.assert_close(res.recovery, (res.kl_corrupted - res.kl) / gap)
    torch.testing.assert_close(res.control_recovery, (res.kl_corrupted - res.kl_control) / gap)
    recovered = res.recovered_at()
    assert recovered == {h: float(res.recovery[i, -1]) for i, h in enumerate(TOY_HOOKS)}
    assert res.recovered_at(3, control=True) == {
        h: float(res.control_recovery[i, 3]) for i, h in enumerate(TOY_HOOKS)
    }
    md = res.to_markdown()
    assert all(hook in md for hook in TOY_HOOKS) and "control recovered" in md
    assert str(res) == md
    exported = res.to_dict()
    assert json.loads(json.dumps(exported)) == exported
    assert exported["recovered"] == recovered and len(exported["control_recovery"]) == 2
    assert exported["hooks"] == TOY_HOOKS and exported["control_seed"] == 2
    fig = patching_figure(res)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 2
    np.testing.assert_allclose(heatmaps[0].z, res.recovery.numpy())
    np.testing.assert_allclose(heatmaps[1].z, res.control_recovery.numpy())
    assert list(heatmaps[0].y) == TOY_HOOKS
    with pytest.raises(BeliefLensError, match="position 20 is not among"):
        res.recovered_at(20)


def test_a_patched_run_starts_after_the_patch(toy, monkeypatch):
    """Each run patched at block ``l``'s output runs blocks ``l + 1..`` only, on either model
    kind (the bridge's own ``start_at_layer`` runs every block); where starting late would not
    reproduce the model's pass, the report falls back to the full sweep, with the same grid."""
    from belief_lens.activations import block_entered
    from belief_lens.interventions import patching

    model, hmm, probes = toy
    assert [block_entered(model, f"blocks.{k}.hook_resid_{w}") for k in (0, 1)
            for w in ("pre", "post")] == [0, 1, 1, 2]  # fmt: skip
    assert block_entered(model, "blocks.0.hook_resid_mid") is None  # no block starts mid-way
    assert block_entered(model, "ln_final.hook_normalized") is None
    tokens = sample_sequences(hmm, 8, TOY_L, seed=3)
    calls = [0] * len(model.blocks)

    def count(k):
        return lambda module, args, out: calls.__setitem__(k, calls[k] + 1)

    handles = [b.register_forward_hook(count(k)) for k, b in enumerate(model.blocks)]
    try:
        res = patching_report(model, tokens, tokens.flip(0), probes[TOY_HOOK], hmm)
        # Block 0 runs in the 5 unpatched passes (clean, corrupted, the clean cache, and the
        # corrupted cache of each grid); block 1 also in each grid's check of the start after
        # block 0 and in every run patched after block 0 (belief and control, each position).
        assert calls == [5, 5 + 2 + 2 * TOY_L]
        monkeypatch.setattr(patching, "blocks_match_forward", lambda *a, **k: False)
        calls[:] = [0, 0]
        full = patching_report(model, tokens, tokens.flip(0), probes[TOY_HOOK], hmm)
    finally:
        for h in handles:
            h.remove()
    assert calls[0] > 2 * 2 * TOY_L  # every patched run from the embeddings
    torch.testing.assert_close(full.kl, res.kl, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(full.kl_control, res.kl_control, atol=1e-6, rtol=1e-6)


def test_patching_sweep_lets_a_stage_thread_guard_re_decide(toy, monkeypatch):
    """TransformerLens's sweep runs each patched model through ``run_with_hooks``, which calls
    ``forward`` past the thread guard's pre-hook: the report re-checks the run queue between
    patched runs, so a stage that started on a busy machine gets its second thread back."""
    from belief_lens import threads

    model, hmm, probes = toy
    clean, corrupted = (sample_sequences(hmm, 8, TOY_L, seed=s) for s in (16, 17))
    by_layer = {layer: probes[hook] for layer, hook in enumerate(TOY_HOOKS)}
    queue = [1]  # one task runnable elsewhere, beside our two threads on two cores
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "runnable_elsewhere_now", lambda: queue[0])
    monkeypatch.setattr(threads, "RECHECK_SPACING", 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.adaptive_threads_for_model(model) as guard:
            assert torch.get_num_threads() == 1
            queue[0] = 0  # the other work ends as the sweep begins
            patching_report(model, clean, corrupted, by_layer, hmm)
        # Each patched run starts after the patch: a HookedTransformer's through its own call
        # (past the pre-hook), the bridge's block by block (logits_from_block re-checks).
        assert guard.used == [1, 2]
    finally:
        torch.set_num_threads(before)


def test_patching_report_recovers_on_the_paper_checkpoint(mess3_setup):
    model, hmm, probes = mess3_setup
    clean = sample_sequences(hmm, 64, 10, seed=16)
    corrupted = sample_sequences(hmm, 64, 10, seed=17)
    by_layer = {layer: probes[hook] for layer, hook in enumerate(HOOKS)}
    res = patching_report(model, clean, corrupted, by_layer, hmm, control_seed=2)
    assert res.hooks == tuple(HOOKS) and res.metric_position == 9 and res.rank == 2
    assert min(res.recovered_at().values()) > 0.9
    assert max(abs(v) for v in res.recovered_at(control=True).values()) < 0.1


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


def test_ablate_with_a_given_mean(toy):
    model, hmm, probes = toy
    tokens = sample_sequences(hmm, 8, TOY_L, seed=18)
    _, cache = model.run_with_cache(tokens, names_filter=[TOY_HOOK])
    h = cache[TOY_HOOK].double()
    B = belief_basis(probes[TOY_HOOK])
    m = torch.randn(TOY_D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = Ablate(TOY_HOOK, B, "mean", mean=m, positions=[2, -1]).apply(cache[TOY_HOOK])
    for p in (2, TOY_L - 1):
        torch.testing.assert_close(
            out[:, p].double(), h[:, p] + (m - h[:, p]) @ B @ B.T, atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(out[:, 3], cache[TOY_HOOK][:, 3])
    # Without a mean, the run's own mean over batch and ablated positions; zero projects out.
    own = Ablate(TOY_HOOK, B, "mean", positions=[2, -1]).apply(cache[TOY_HOOK])
    m_run = h[:, [2, -1]].mean(dim=(0, 1))
    torch.testing.assert_close(
        own[:, 2].double(), h[:, 2] + (m_run - h[:, 2]) @ B @ B.T, atol=1e-5, rtol=1e-5
    )
    zero = Ablate(TOY_HOOK, B).apply(cache[TOY_HOOK]).double()
    assert (zero @ B).abs().max() < 1e-5
    via_shortcut = ablate_belief_subspace(model, tokens, probes[TOY_HOOK], TOY_HOOK)
    torch.testing.assert_close(via_shortcut, intervene(model, tokens, Ablate(TOY_HOOK, B)))


def test_interventions_at_one_hook_run_from_the_block_after_it(toy, monkeypatch):
    """Steering and ablating at a block's output run the model once to that hook, then each
    intervention from the next block only, with ``intervene``'s logits; a patch from tokens (its
    source needs a run of its own), or a model whose blocks fail the check, gets a full
    ``intervene``."""
    from belief_lens.interventions import run
    from belief_lens.interventions.run import run_interventions

    model, hmm, probes = toy
    hook = "blocks.0.hook_resid_post"
    tokens = sample_sequences(hmm, 6, TOY_L, seed=19)
    targets = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1, 2]]
    B = belief_basis(probes[hook])
    ivs = {
        "steer": Steer.from_probe(probes[hook], hook, targets, positions=[-1, 4], scale=0.7),
        "ablate": Ablate(hook, B, "mean", mean=torch.ones(TOY_D)),
    }
    ran = []
    handles = [
        b.register_forward_hook(lambda m, a, o, k=k: ran.append(k))
        for k, b in enumerate(model.blocks)
    ]
    try:
        logits, out = run_interventions(model, tokens, ivs)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1, 1, 1, 1]  # the cached pass, its check from block 1, each from block 1
    with torch.no_grad():
        torch.testing.assert_close(logits, model(tokens), rtol=0, atol=1e-6)
    for name, iv in ivs.items():
        torch.testing.assert_close(out[name], intervene(model, tokens, iv), rtol=0, atol=1e-5)
        assert not torch.allclose(out[name], logits, atol=1e-3), name
    patch = SubspacePatch(hook, B, sample_sequences(hmm, 6, TOY_L, seed=20), positions=-1)
    _, got = run_interventions(model, tokens, {"patch": patch})
    torch.testing.assert_close(got["patch"], intervene(model, tokens, patch), rtol=0, atol=0)
    monkeypatch.setattr(run, "blocks_match_forward", lambda *a, **k: False)
    _, full = run_interventions(model, tokens, ivs)
    for name, iv in ivs.items():
        torch.testing.assert_close(full[name], intervene(model, tokens, iv), rtol=0, atol=0)


# ------------------------------------------------------------------------------ values
def test_saved_interventions_give_identical_logits(toy, tmp_path):
    model, hmm, probes = toy
    probe = probes[TOY_HOOK]
    tokens = sample_sequences(hmm, 6, TOY_L, seed=19)
    B = belief_basis(probe)
    targets = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1, 2]]
    values = {
        "steer": Steer.from_probe(probe, TOY_HOOK, targets, positions=[-1, 4], scale=0.7),
        "steer_true": Steer.from_probe(probe, TOY_HOOK, targets, current=targets.flip(0)),
        "decoding": Steer.from_probe(probe, TOY_HOOK, targets[0], directions="decoding"),
        "patch": SubspacePatch(TOY_HOOK, B, sample_sequences(hmm, 6, TOY_L, seed=20), positions=-1),
        "ablate": Ablate(TOY_HOOK, B, "mean", mean=torch.ones(TOY_D)).control(4),
    }
    for name, iv in values.items():
        path = iv.save(tmp_path / f"{name}.safetensors")
        loaded = load_intervention(path)
        assert type(loaded) is type(iv)
        assert torch.equal(intervene(model, tokens, loaded), intervene(model, tokens, iv)), name
        assert type(iv).load(path).hook == TOY_HOOK
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
    with pytest.raises(BeliefLensError, match="not found"):
        load_intervention(tmp_path / "missing.safetensors")


def test_interventions_are_frozen_and_own_their_tensors():
    B, _ = torch.linalg.qr(torch.randn(8, 2, dtype=torch.float64))
    given = B.clone()
    ab = Ablate("blocks.0.hook_resid_post", given)
    given.zero_()
    torch.testing.assert_close(ab.basis, B)
    with pytest.raises(AttributeError):
        ab.mode = "mean"
    assert isinstance(ab, Intervention)


def test_bad_inputs_raise_before_any_forward(toy):
    model, hmm, probes = toy
    probe = probes[TOY_HOOK]
    tokens = sample_sequences(hmm, 2, TOY_L, seed=9)
    t = torch.ones(2, 3) / 3
    B = belief_basis(probe)
    calls, handle = count_forwards(model)
    H = TOY_HOOK
    cases = [
        (lambda: Steer.from_probe(probe, H, torch.tensor([math.nan, 0.5, 0.5])), "NaN"),
        (lambda: steer_to_belief(model, tokens, probe, H, t, scale=math.nan), "scale must"),
        (lambda: Steer.from_probe(probe, H, torch.tensor([5.0, 5.0, 5.0])), "simplex"),
        (lambda: Steer.from_probe(probe, H, torch.tensor([-0.5, 0.5, 1.0])), "simplex"),
        (
            lambda: intervention_report(model, tokens, probe, H, hmm, current="truth"),
            r"current must be 'probe' or 'true', got 'truth'",
        ),
        (
            lambda: intervention_report(model, tokens, probe, H, hmm, directions="encoding"),
            "directions must be a non-empty sequence",
        ),
        (
            lambda: intervention_report(model, tokens, probe, H, hmm, position=TOY_L),
            f"position {TOY_L} is out of range",
        ),
        (
            lambda: intervention_report(model, tokens, probe, H, hmm, target_tokens=tokens[:1]),
            "target_tokens .* must match tokens",
        ),
        # The old argument order (model, tokens, hmm, probe, hook) is refused by name.
        (lambda: intervention_report(model, tokens, hmm, probe, H), "hmm must be an HMM"),
        (
            lambda: ablate_belief_subspace(model, tokens, B, H, "mean", mean_activation=t),
            rf"mean must be \[d\]=\({TOY_D},\)",
        ),
        (
            lambda: ablate_belief_subspace(model, tokens, B, H, "half"),
            "mode must be 'zero' or 'mean'",
        ),
        (
            lambda: steer_to_belief(model, tokens, probe, H, t, directions="sideways"),
            "directions must be one of",
        ),  # fmt: skip
        (
            lambda: steer_to_belief(model, tokens, probe, H, t, positions=TOY_L),
            f"position {TOY_L} is out of range for {TOY_L} positions",
        ),  # fmt: skip
        (
            lambda: steer_to_belief(model, tokens, probe, "blocks.9.hook_resid_post", t),
            "unknown hook",
        ),  # fmt: skip
        (lambda: intervene(model, tokens, Ablate("resid_post", B)), "unknown hook"),
        (
            lambda: steer_to_belief(model, tokens, probe, H, torch.ones(2, 4) / 4),
            r"with S=3 \(the probe's states\), got \(2, 4\)",
        ),  # fmt: skip
        (
            lambda: steer_to_belief(model, tokens, probe, H, torch.ones(7, 3) / 3, positions=-1),
            "has 7 rows but the run has batch 2",
        ),  # fmt: skip
        (lambda: subspace_patch_setter(torch.ones(TOY_D, 2)), "orthonormal"),
        (lambda: subspace_patch_setter(torch.ones(TOY_D)), r"must be \[d_model, k\]"),
        (lambda: subspace_patch_setter({0: "probe"}), "the basis for layer 0 must be a fitted"),
        (lambda: Ablate(H, B[:8]), "orthonormal|d_model"),
        (
            lambda: intervene(model, tokens, Ablate(H, torch.eye(32, 2))),
            rf"d=32 rows but {H} has d_model={TOY_D}",
        ),  # fmt: skip
        (lambda: intervene(model, tokens, SubspacePatch(H, B, tokens[:1])), "do not match"),
        (lambda: Steer.from_probe(probe, H, t, positions=[]), "positions is empty"),
        (
            lambda: intervene(
                model, tokens, Steer.from_probe(probe, H, t, positions=[1, 1 - TOY_L])
            ),
            "repeat a position",
        ),  # fmt: skip
        (
            lambda: patch_belief_subspace(model, tokens, tokens, {0: probe}, lambda x: x.sum()),
            r"no probe or basis for layers \[1\]",
        ),  # fmt: skip
        (
            lambda: patch_belief_subspace(model, tokens, tokens, B, lambda x: x.sum(), "resid"),
            "hook 'resid' gives hooks",
        ),
        (lambda: patching_report(model, tokens, tokens[:1], probe, hmm), "differ in shape"),
        (
            lambda: patching_report(model, tokens, tokens, probe, hmm, control_seed=-1),
            "control_seed must be",
        ),
        (
            lambda: theory_kl_metric(hmm, tokens, reduction="sum"),
            "reduction must be 'mean' or 'none'",
        ),
        (lambda: theory_kl_metric(hmm, tokens, position=True), "position must be an integer"),
        (lambda: intervene(model, tokens, "steer"), "must be a Steer, SubspacePatch or Ablate"),
        (lambda: Steer(H, B, torch.zeros(3, 2), t), "give exactly one way"),
        (lambda: Steer(H, B, torch.zeros(3, 5), t, current=t), r"coordinates must be \[S, k\]"),
        (lambda: Ablate("", B), "hook must be a full TransformerLens hook name"),
        (lambda: Ablate(H, B, "zero", mean=torch.ones(TOY_D)), "mean is used only with"),
        (lambda: Ablate(H, B).control(seed=-1), "seed must be"),
        (lambda: SubspacePatch(H, B, "tokens"), "source must be tokens or activations"),
        (lambda: SubspacePatch(H, B, torch.ones(2, 3, 5)), r"source activations must be"),
    ]
    try:
        for make, message in cases:
            with pytest.raises(BeliefLensError, match=message):
                make()
    finally:
        handle.remove()
    assert calls == [], f"{len(calls)} forward passes before an error"


def test_hooks_are_removed_even_on_error(toy, monkeypatch):
    model, hmm, probes = toy
    tokens = sample_sequences(hmm, 4, TOY_L, seed=7)
    before = model(tokens)
    B = belief_basis(probes[TOY_HOOK])
    # A hook outside the residual stream is checked when it fires: the MLP is 4 x wider.
    with pytest.raises(BeliefLensError, match=f"the basis has d={TOY_D} rows but hook"):
        intervene(model, tokens, Ablate("blocks.1.mlp.hook_post", B))
    assert no_hooks_left(model)
    # Any exception inside the hook, not only ours.
    ablate = Ablate(TOY_HOOK, B)

    def boom(self, activation):
        raise RuntimeError("boom")

    monkeypatch.setattr(Ablate, "apply", boom)
    with pytest.raises(RuntimeError, match="boom"):
        intervene(model, tokens, ablate)
    assert no_hooks_left(model)
    torch.testing.assert_close(model(tokens), before)
    assert not model.training


def test_a_hook_firing_twice_is_an_error(toy):
    model, hmm, probes = toy
    tokens = sample_sequences(hmm, 2, TOY_L, seed=21)
    ablate = Ablate(TOY_HOOK, belief_basis(probes[TOY_HOOK]))
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


def test_interventions_keep_the_callers_train_mode(toy):
    model, hmm, probes = toy
    tokens = sample_sequences(hmm, 2, TOY_L, seed=10)
    model.train()
    try:
        steer_to_belief(
            model, tokens, probes[TOY_HOOK], TOY_HOOK, torch.ones(2, 3) / 3, positions=-1
        )
        ablate_belief_subspace(model, tokens, belief_basis(probes[TOY_HOOK]), TOY_HOOK)
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


def test_interventions_are_transformer_lens_hook_functions(toy):
    """Steer, SubspacePatch and Ablate go straight into fwd_hooks on a toy model (no checkpoint):
    the same logits as intervene(), and no hook left behind."""
    model, hmm, probes = toy
    probe = probes[TOY_HOOK]
    tokens = sample_sequences(hmm, 5, TOY_L, seed=0)
    basis = belief_basis(probe)
    _, cache = model.run_with_cache(
        sample_sequences(hmm, 5, TOY_L, seed=1), names_filter=[TOY_HOOK]
    )
    values = [
        Steer.from_probe(
            probe, TOY_HOOK, torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0, 1]], positions=-1
        ),
        SubspacePatch(TOY_HOOK, basis, cache[TOY_HOOK]),
        Ablate(TOY_HOOK, basis),
    ]
    plain = model(tokens)
    for iv in values:
        assert iv.hook == TOY_HOOK
        hooked = model.run_with_hooks(tokens, fwd_hooks=[(iv.hook, iv)])
        torch.testing.assert_close(hooked, intervene(model, tokens, iv))
        assert not torch.allclose(hooked, plain), type(iv).__name__
        assert no_hooks_left(model)


# ------------------------------------------------------------------------------ layout
OLD_PUBLIC_NAMES = [
    "Ablate", "InterventionReport", "PatchingResult", "Steer", "SubspacePatch",
    "ablate_belief_subspace", "belief_basis", "control_basis", "intervene", "intervention_report",
    "load_intervention", "patch_belief_subspace", "patching_report", "recovery_metric",
    "steer_to_belief", "subspace_patch_setter", "theory_kl_metric",
]  # fmt: skip


def test_the_package_re_exports_every_public_name_from_its_home():
    """``from belief_lens.interventions import X`` keeps working for every name the single module
    exported, each defined once in a submodule named for its concept."""
    assert set(OLD_PUBLIC_NAMES) <= set(interventions_package.__all__)
    homes = {
        "Steer": "values", "SubspacePatch": "values", "Ablate": "values",
        "load_intervention": "values", "belief_basis": "bases", "control_basis": "bases",
        "intervene": "run", "steer_to_belief": "run", "ablate_belief_subspace": "run",
        "patch_belief_subspace": "patching", "patching_report": "patching",
        "PatchingResult": "patching", "subspace_patch_setter": "patching",
        "theory_kl_metric": "patching", "recovery_metric": "patching",
        "intervention_report": "steering", "InterventionReport": "steering",
    }  # fmt: skip
    for name in interventions_package.__all__:
        obj = getattr(interventions_package, name)
        if name in homes:
            assert obj.__module__ == f"belief_lens.interventions.{homes[name]}", name


def test_general_checks_live_in_validation():
    from typing import Literal

    assert check_option("mode", "a", Literal["a", "b"]) == "a"
    with pytest.raises(BeliefLensError, match="mode must be 'a' or 'b', got 'c'"):
        check_option("mode", "c", Literal["a", "b"])
    assert check_positions("positions", None) is None
    assert check_positions("positions", np.int64(3)) == (3,)
    assert check_positions("positions", [1, -1]) == (1, -1)
    for bad, message in ((True, "ints"), ([1.5], "ints"), ("12", "int, a sequence"), (2.0, "int")):
        with pytest.raises(BeliefLensError, match=message):
            check_positions("positions", bad)
    assert resolve_positions((1, -1), 5) == [1, 4] and resolve_positions(None, 3) == [0, 1, 2]
    with pytest.raises(BeliefLensError, match="repeat a position"):
        resolve_positions((4, -1), 5)
    assert check_hook_name("hook", "blocks.0.hook_resid_post") == "blocks.0.hook_resid_post"
    with pytest.raises(BeliefLensError, match="hook must be a full TransformerLens hook name"):
        check_hook_name("hook", 3)
    x = torch.ones(2, 2, requires_grad=True)
    t = check_finite_tensor("x", x)
    assert t.dtype == torch.float64 and not t.requires_grad and t.data_ptr() != x.data_ptr()
    with pytest.raises(BeliefLensError, match=r"x contains 1 NaN or infinite entries .*\[0, 1\]"):
        check_finite_tensor("x", [[0.0, math.inf]])
    with pytest.raises(BeliefLensError, match="x must be numeric"):
        check_finite_tensor("x", "abc")
