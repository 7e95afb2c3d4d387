"""Label-free simplex discovery: planted simplices, the paper's Mess3 checkpoint, the command."""

import itertools
import json

import numpy as np
import pytest

from belief_lens.cli import main
from belief_lens.discovery import choose_n_vertices, discover_simplex, judge_discovery
from belief_lens.errors import BeliefLensError
from belief_lens.experiments.discovery import discover_in_checkpoint
from belief_lens.models import ModelConfig, save_checkpoint, toy_transformer
from belief_lens.processes import mess3
from belief_lens.training import evaluate_loss


def planted(k=3, n=20_000, d=64, noise=0.02, alpha=1.0, seed=0):
    """Points in a known (k-1)-simplex, embedded affinely in d dims, plus isotropic noise."""
    rng = np.random.default_rng(seed)
    coords = rng.dirichlet(np.full(k, alpha), size=n)
    vertices = rng.normal(size=(k, d))
    acts = coords @ vertices + rng.normal(size=d) + noise * rng.normal(size=(n, d))
    return acts, coords


def best_r2(found, truth):
    """R^2 (uniform over states) after the best vertex permutation, by brute force in numpy."""
    tot = ((truth - truth.mean(0)) ** 2).sum(0)
    best = -np.inf
    for perm in itertools.permutations(range(truth.shape[1])):
        res = ((found[:, list(perm)] - truth) ** 2).sum(0)
        best = max(best, float(np.mean(1 - res / tot)))
    return best


@pytest.mark.parametrize(("k", "alpha"), [(3, 1.0), (4, 1.0), (3, 0.5)])
def test_planted_simplex_recovered(k, alpha):
    acts, coords = planted(k=k, alpha=alpha)
    found = discover_simplex(acts)
    assert found.n_vertices == k and found.chosen_by == "eigengap"
    c = found.coords.numpy()
    np.testing.assert_allclose(c.sum(1), 1.0, atol=1e-9)
    assert best_r2(c, coords) > 0.99
    score = found.score(coords)
    assert score.r2 == pytest.approx(best_r2(c, coords), abs=1e-12)
    # The reported permutation is the one that attains it; its MSE is the plain numpy one.
    assert score.mse == pytest.approx(float(np.mean((c - coords[:, list(score.permutation)]) ** 2)))


def test_outliers_do_not_set_the_vertices():
    acts, coords = planted(n=20_000)
    rng = np.random.default_rng(1)
    far = rng.choice(len(acts), 20, replace=False)
    acts[far] += 30 * rng.normal(size=(20, acts.shape[1]))  # 0.1% gross outliers
    keep = np.setdiff1d(np.arange(len(acts)), far)
    found = discover_simplex(acts, 3)
    assert best_r2(found.coords.numpy()[keep], coords[keep]) > 0.99


def test_transform_and_shapes_keep_leading_dims():
    acts, coords = planted(n=6_000)
    found = discover_simplex(acts.reshape(600, 10, -1))
    assert found.coords.shape == (600, 10, 3)
    np.testing.assert_allclose(found.transform(acts[:7]).numpy(), found.coords.reshape(-1, 3)[:7])
    # Vertices map to the unit vectors.
    np.testing.assert_allclose(found.transform(found.vertices).numpy(), np.eye(3), atol=1e-9)


def test_choose_n_vertices_is_the_largest_eigengap():
    assert choose_n_vertices([0.4, 0.3, 0.05, 0.04, 0.03]) == 3
    assert choose_n_vertices([0.5, 0.1, 0.09, 0.08]) == 2


def test_bad_input_raises():
    acts, coords = planted(n=500)
    with pytest.raises(BeliefLensError, match="n_vertices must be"):
        discover_simplex(acts, 1)
    with pytest.raises(BeliefLensError, match="outside must be"):
        discover_simplex(acts, outside=0.7)
    with pytest.raises(BeliefLensError, match="NaN"):
        discover_simplex(np.full((10, 4), np.nan))
    with pytest.raises(BeliefLensError, match="shape"):
        discover_simplex(acts, 3).score(coords[:10])


@pytest.fixture(scope="module")
def mess3_paper_acts(shared_checkpoint):
    from belief_lens import enumerate_sequences, make_process
    from belief_lens.activations import residual_stream
    from belief_lens.models import load_checkpoint

    model = load_checkpoint(shared_checkpoint("mess3_paper")).eval()
    seqs = enumerate_sequences(make_process("mess3"), 10)
    hook = "blocks.3.hook_resid_post"
    return residual_stream(model, seqs.tokens, hook)[hook], seqs.beliefs


def test_mess3_paper_checkpoint_simplex_found_without_labels(mess3_paper_acts):
    acts, beliefs = mess3_paper_acts
    found = discover_simplex(acts)
    assert found.n_vertices == 3  # chosen from the spectrum, not given
    assert found.score(beliefs).r2 >= 0.9
    assert best_r2(found.coords.reshape(-1, 3).numpy(), beliefs.reshape(-1, 3).numpy()) >= 0.9


def test_discover_command_draws_the_simplex(shared_checkpoint, tmp_path, capsys):
    out = tmp_path / "disc"
    argv = ["-q", "discover", "--checkpoint", str(shared_checkpoint("mess3_paper"))]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "discovery.json").read_text())
    assert metrics["n_vertices"] == 3 and metrics["r2"] >= 0.9
    # Found, with its baselines beside it: chance (random directions) far below, the fitted
    # ceiling of the same subspace just above.
    assert metrics["found"] is True
    assert metrics["r2_random"] + 0.3 < metrics["r2"] <= metrics["r2_pcs"] + 1e-9
    assert 0.5 < metrics["explained_variance"] < 0.9  # 68% in the top 2 PCs
    html = (out / "discovery.html").read_text()
    assert "barycentric coordinates" in html
    assert "Simplex found" in html and "random directions" in html
    printed = capsys.readouterr().out
    assert "R^2" in printed and "simplex found:" in printed
    # An existing output is never overwritten.
    assert main([*argv, "--out", str(out)]) == 2
    assert (out / "discovery.html").read_text() == html
    assert "exists" in capsys.readouterr().err


def test_rrxor_checkpoint_says_no_simplex_found_with_a_score(shared_checkpoint, tmp_path, capsys):
    out = tmp_path / "rrxor"
    ckpt = str(shared_checkpoint("rrxor_paper"))
    assert (
        main(["-q", "discover", "--checkpoint", ckpt, "--process", "rrxor", "--out", str(out)]) == 0
    )
    metrics = json.loads((out / "discovery.json").read_text())
    assert metrics["found"] is False
    assert metrics["verdict"].startswith("no simplex found")
    # Scored at the spectrum's choice and at one vertex per state (5): neither beats chance.
    per_state = metrics["candidates"]["one vertex per state"]
    assert per_state["n_vertices"] == 5 and per_state["r2"] < 0.9
    assert "No simplex found" in (out / "discovery.html").read_text()
    assert "no simplex found" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_planted_two_simplex_in_ten_dims_gives_three_vertices(dtype):
    # No noise: past the 2 real directions the spectrum is rounding noise and clamped zeros,
    # whose ratios are meaningless; the noise floor keeps them out.
    for offset in (0.0, 50.0):
        acts, coords = planted(k=3, n=5_000, d=10, noise=0.0, seed=3)
        found = discover_simplex((acts + offset).astype(dtype))
        assert found.n_vertices == 3, (dtype, offset, found.explained_variance_ratio)
        assert best_r2(found.coords.numpy(), coords) > 0.99


def test_choose_n_vertices_refuses_nan_and_respects_the_floor():
    with pytest.raises(BeliefLensError, match="finite"):
        choose_n_vertices([0.5, float("nan"), 0.1])
    with pytest.raises(BeliefLensError, match="non-increasing"):
        choose_n_vertices([0.1, 0.5])
    # Two directions, then noise at 1e-16 and a clamped zero: 3 vertices, not the noise's gap.
    assert choose_n_vertices([0.7, 0.3, 1e-16, 0.0]) == 3


def test_judge_discovery_finds_a_planted_simplex_and_not_a_wrong_vertex_count():
    acts, coords = planted(k=3, n=4_000)
    verdict = judge_discovery(discover_simplex(acts), acts, coords)
    assert verdict.found and verdict.r2 > 0.99 and verdict.r2_random < verdict.r2
    # A Gaussian blob: whatever simplex is fitted is not the beliefs'.
    rng = np.random.default_rng(0)
    blob = rng.normal(size=(4_000, 16))
    v = judge_discovery(discover_simplex(blob, 3), blob, coords)
    assert not v.found and "below" in v.reason
    v4 = judge_discovery(discover_simplex(acts, 4), acts, coords)
    assert not v4.found and v4.r2 is None and "4 vertices" in v4.reason


def test_discovery_loss_is_evaluate_loss_from_its_one_forward_pass(tmp_path, monkeypatch):
    # The loss comes from the logits of the pass that reads the hook: the number evaluate_loss
    # gives (to rounding), with the model run once on the 3**5 sequences (one batch), not twice;
    # the logits the last block gives are checked against a forward pass on the first 64.
    config = ModelConfig(d_vocab=3, n_ctx=5, n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=32)
    model = toy_transformer(config, seed=0).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    monkeypatch.setattr("belief_lens.experiments.discovery.load_checkpoint", lambda p: model)
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    metrics = discover_in_checkpoint(
        path, mess3(), tmp_path / "out", hook="blocks.0.hook_resid_post"
    )
    handle.remove()
    assert calls == [3**5, 64]
    expected = evaluate_loss(model, mess3()).loss_over_optimal  # equal to rounding only
    assert metrics["loss_over_optimal"] == pytest.approx(expected, rel=1e-12)
