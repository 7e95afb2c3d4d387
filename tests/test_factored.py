"""Factored-geometry analysis on planted activations, against numpy/scipy references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from belief_lens.beliefs import sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.factored_geometry import (
    cumulative_explained_variance,
    dims_for,
    factored_geometry,
    vary_one_overlap,
)
from belief_lens.factors import factored_beliefs, vary_one_tokens
from belief_lens.metrics import principal_cosines
from belief_lens.processes import mess3, product

D = 16


@pytest.fixture(scope="module")
def setup():
    m = mess3()
    hmm = product(m, m)
    tokens = sample_sequences(hmm, 600, 10, seed=0)
    fb = factored_beliefs(hmm, (3, 3), tokens)
    gen = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))[0]
    test = torch.zeros(600, 10, dtype=torch.bool)
    test[::5] = True  # whole sequences held out
    vary = [
        factored_beliefs(hmm, (3, 3), vary_one_tokens((m, m), i, 300, 10, seed=i)) for i in range(2)
    ]
    return {"hmm": hmm, "fb": fb, "Q": Q, "test": test, "vary": vary, "gen": gen, "tokens": tokens}


def _factored_embedding(fb, Q):
    # each factor's marginal written into its own 3 orthonormal directions
    return 3 * (fb.marginals[0] @ Q[:3] + fb.marginals[1] @ Q[3:6])


def _whitener(fb):
    """Map the joint belief's 8 free coordinates to unit variance each."""
    Z = fb.joint.reshape(-1, 9) - fb.joint.reshape(-1, 9).mean(0)
    vals, vecs = torch.linalg.eigh(Z.T @ Z / len(Z))
    return vecs[:, 1:] / vals[1:].sqrt(), fb.joint.reshape(-1, 9).mean(0)  # drop the null 1s


def _joint_embedding(fb, W, whiten):
    P, mean = whiten
    return (fb.joint - mean) @ P @ W


def _lstsq_r2(X, Y, test):
    """Held-out R^2 (uniform over target dims) of an affine least-squares fit, numpy only."""
    X, Y, test = X.reshape(-1, X.shape[-1]), Y.reshape(-1, Y.shape[-1]), test.reshape(-1)
    A = np.c_[X, np.ones(len(X))]
    coef = np.linalg.lstsq(A[~test], Y[~test], rcond=None)[0]
    res = ((Y[test] - A[test] @ coef) ** 2).sum(0)
    tot = ((Y[test] - Y[test].mean(0)) ** 2).sum(0)
    return float(np.mean(1 - res / tot))


def _lstsq_encoding(X, marginal, test):
    """Encoding span: activations regressed on the marginal's first S-1 coordinates (numpy)."""
    X, M, test = X.reshape(-1, X.shape[-1]), marginal.reshape(-1, marginal.shape[-1]), test.ravel()
    A = np.c_[M[:, :-1], np.ones(len(M))]
    coef = np.linalg.lstsq(A[~test], X[~test], rcond=None)[0]
    return coef[:-1].T  # [d, S-1]


def test_factored_embedding_is_read_as_factored(setup):
    fb, Q, test, gen = setup["fb"], setup["Q"], setup["test"], setup["gen"]
    noise = 1e-3 * torch.randn(*fb.joint.shape[:2], D, generator=gen, dtype=torch.float64)
    acts = _factored_embedding(fb, Q) + noise
    vary = [_factored_embedding(v, Q) for v in setup["vary"]]
    geo = factored_geometry(acts, fb, test_mask=test, vary_one=vary)

    X, t = acts.numpy(), test.numpy()
    for r2, marginal in zip(geo.factor_r2, fb.marginals, strict=True):
        assert r2 == pytest.approx(_lstsq_r2(X, marginal.numpy(), t), abs=1e-9)
        assert r2 > 0.999
    assert geo.joint_r2 == pytest.approx(_lstsq_r2(X, fb.joint.numpy(), t), abs=1e-9)
    assert geo.factored_r2 == pytest.approx(_lstsq_r2(X, fb.concatenated.numpy(), t), abs=1e-9)
    assert geo.joint_r2 < 0.9  # the joint belief is not affine in a factored embedding

    E0, E1 = (_lstsq_encoding(X, m.numpy(), t) for m in fb.marginals)
    ref = np.sort(np.cos(scipy.linalg.subspace_angles(E0, E1)))[::-1]
    (pair,) = geo.pairs
    np.testing.assert_allclose(pair.cosines, ref, atol=1e-6)
    assert geo.max_subspace_cosine < 0.1
    assert pair.overlap < 1e-6 and pair.baseline == 2 / D
    assert (geo.dims_95, geo.dims_99) == (4, 4)
    assert (geo.predicted.factored, geo.predicted.joint) == (4, 8)
    assert geo.verdict == "factored"


def test_joint_embedding_gets_another_verdict(setup):
    fb, test = setup["fb"], setup["test"]
    # every joint direction gets equal variance: a representation of the joint belief alone
    W = torch.linalg.qr(torch.randn(D, 8, generator=torch.Generator().manual_seed(1)))[0].T
    whiten = _whitener(fb)
    acts = _joint_embedding(fb, W.double(), whiten)
    vary = [_joint_embedding(v, W.double(), whiten) for v in setup["vary"]]
    geo = factored_geometry(acts, fb, test_mask=test, vary_one=vary)
    assert geo.joint_r2 > 0.999
    assert geo.dims_95 == geo.dims_99 == 8
    (pair,) = geo.pairs
    assert pair.overlap > pair.baseline  # a factored embedding gives ~0
    assert geo.verdict == "joint"


def test_principal_cosines_match_scipy():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(12, 3)), rng.normal(size=(12, 2))
    ref = np.sort(np.cos(scipy.linalg.subspace_angles(A, B)))[::-1]
    np.testing.assert_allclose(principal_cosines(torch.tensor(A), torch.tensor(B)), ref, atol=1e-12)
    with pytest.raises(BeliefLensError, match="same d"):
        principal_cosines(torch.zeros(3, 1), torch.zeros(4, 1))


def test_vary_one_overlap_formula_and_random_baseline():
    rng = np.random.default_rng(0)
    d, k = 64, 2
    # activations spanning known k-dim subspaces, plus a per-position offset the centring removes
    Ui = np.linalg.qr(rng.normal(size=(d, k)))[0]
    Uj = np.linalg.qr(rng.normal(size=(d, k)))[0]
    offset = rng.normal(size=(1, 5, d)) * 10
    ai = rng.normal(size=(400, 5, k)) @ Ui.T + offset
    aj = rng.normal(size=(400, 5, k)) @ Uj.T + offset
    ref = np.linalg.norm(Ui.T @ Uj) ** 2 / k  # ||V_i V_j^T||_F^2 / k
    got = vary_one_overlap(torch.tensor(ai), torch.tensor(aj), k)
    assert got == pytest.approx(ref, abs=1e-8)
    assert vary_one_overlap(torch.tensor(ai), torch.tensor(ai), k) == pytest.approx(1.0)
    means = []
    for _ in range(200):
        Ui, Uj = (np.linalg.qr(rng.normal(size=(d, k)))[0] for _ in range(2))
        means.append(np.linalg.norm(Ui.T @ Uj) ** 2 / k)
    assert np.mean(means) == pytest.approx(k / d, rel=0.2)  # the baseline the result reports
    with pytest.raises(BeliefLensError, match="k must be"):
        vary_one_overlap(torch.tensor(ai), torch.tensor(aj), 0)


def test_explained_variance_matches_numpy_pca():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 6)) * np.array([5, 3, 1, 0.5, 0.1, 0.01])
    Xc = X - X.mean(0)
    ev = np.sort(np.linalg.eigvalsh(Xc.T @ Xc))[::-1]
    ref = np.cumsum(ev) / ev.sum()
    curve = cumulative_explained_variance(torch.tensor(X))
    np.testing.assert_allclose(curve.numpy(), ref, atol=1e-12)
    assert dims_for(curve, 0.95) == int(np.searchsorted(ref, 0.95) + 1)
    assert dims_for([0.5, 0.95, 1.0], 0.95) == 2
    with pytest.raises(BeliefLensError, match="level"):
        dims_for(curve, 0.0)


def test_cross_validated_by_prefix_equals_a_hand_written_kfold_loop(setup):
    """With tokens, each R^2 is the mean (and s.e.) over prefix folds of a plain lstsq loop;
    the subspaces are the all-rows probes'."""
    from belief_lens.probes import prefix_folds

    fb, Q, gen = setup["fb"], setup["Q"], setup["gen"]
    tokens = setup["tokens"]
    acts = _factored_embedding(fb, Q) + 0.05 * torch.randn(
        *fb.joint.shape[:2], D, generator=gen, dtype=torch.float64
    )
    geo = factored_geometry(acts, fb, tokens=tokens, n_folds=4, seed=2)
    folds = prefix_folds(tokens, 4, 2).numpy()
    X = acts.numpy()
    for got, se, target in (
        (geo.factor_r2[0], geo.factor_r2_se[0], fb.marginals[0]),
        (geo.joint_r2, geo.joint_r2_se, fb.joint),
        (geo.factored_r2, geo.factored_r2_se, fb.concatenated),
    ):
        Y = target.numpy()
        per_fold = []
        for k in range(4):
            keep = folds != k
            A = np.c_[X[keep], np.ones(int(keep.sum()))]
            coef = np.linalg.lstsq(A, Y[keep], rcond=None)[0]
            held = folds == k
            res = ((Y[held] - np.c_[X[held], np.ones(int(held.sum()))] @ coef) ** 2).sum(0)
            per_fold.append(float(np.mean(1 - res / ((Y[held] - Y[held].mean(0)) ** 2).sum(0))))
        assert got == pytest.approx(np.mean(per_fold), abs=1e-9)
        assert se == pytest.approx(np.std(per_fold, ddof=1) / 2, rel=1e-6, abs=1e-12)
    assert geo.folds == 4 and geo.to_dict()["joint_r2_heldout_se"] == geo.joint_r2_se
    single = factored_geometry(acts, fb, tokens=tokens, n_folds=None)
    assert single.folds is None and single.joint_r2_se is None


def test_bad_inputs_raise(setup):
    fb = setup["fb"]
    with pytest.raises(BeliefLensError, match="acts must be"):
        factored_geometry(torch.zeros(3, 10, 4), fb, test_mask=setup["test"])
    acts = torch.zeros(*fb.joint.shape[:2], 4)
    with pytest.raises(BeliefLensError, match="test_mask"):
        factored_geometry(acts, fb, test_mask=torch.zeros(600, 10, dtype=torch.bool))
    with pytest.raises(BeliefLensError, match="tokens"):
        factored_geometry(acts, fb)


def test_model_factored_geometry_takes_model_and_tokens_first():
    from belief_lens.factored_geometry import geometry_over_training, model_factored_geometry
    from belief_lens.models import toy_transformer

    m = mess3()
    hmm = product(m, m)
    model = toy_transformer(9, 4, n_layers=1, d_model=16, d_mlp=32, seed=0).eval()
    tokens = sample_sequences(hmm, 200, 4, seed=0)
    hook = "blocks.0.hook_resid_post"
    geo = model_factored_geometry(model, tokens, hmm, (m, m), hook, n_vary_one=40)
    assert geo.hook == hook and len(geo.factor_r2) == 2
    exported = geo.to_dict()
    assert exported["hook"] == hook and exported["verdict"] == geo.verdict
    assert exported["factor_r2_heldout"] == list(geo.factor_r2)
    course = geometry_over_training([(2, model), (1, model)], tokens, hmm, (m, m), hook,
                                    n_vary_one=40)  # fmt: skip
    assert course.steps == (1, 2) and course.to_dict()["dims_95"] == [geo.dims_95] * 2
    with pytest.raises(BeliefLensError, match="full hook name"):
        model_factored_geometry(model, tokens, hmm, (m, m), 3)


def test_experiment_end_to_end_on_a_tiny_budget(tmp_path):
    from belief_lens.experiments.factored import (
        FactoredExperiment,
        factored_training,
        run_factored_experiment,
        write_factored_report,
    )
    from belief_lens.training import step_checkpoints

    config = FactoredExperiment(
        epsilon=0.1,
        train=factored_training(steps=4, checkpoint_every=2),
        n_ctx=3,
        n_eval_sequences=300,
        n_vary_one=60,
        n_checkpoints=2,
    )
    run = run_factored_experiment(config, tmp_path)
    assert [s for s, _ in step_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    assert run.over_training.steps == (2, 4) and run.steps == 4
    metrics = run.to_dict()
    required = {
        "factor_r2_heldout", "joint_r2_heldout", "max_subspace_cosine", "dims_95", "dims_99",
        "predicted_dims_factored", "predicted_dims_joint", "epsilon", "steps",
    }  # fmt: skip
    assert required <= set(metrics)
    assert len(metrics["factor_r2_heldout"]) == 2
    assert (metrics["predicted_dims_factored"], metrics["predicted_dims_joint"]) == (4, 8)
    assert metrics["epsilon"] == 0.1 and metrics["factored_cost_nats"] > 0
    assert metrics["hook"] == run.final.hook == "blocks.3.hook_resid_post"
    assert metrics["over_training"]["steps"] == [2, 4]
    # The page adds its summary lines (and, without a browser for kaleido, why no PNG was made).
    written = write_factored_report(run, tmp_path, "factored")
    assert {k: v for k, v in written.items() if k not in ("summary", "figure_export")} == metrics
    assert "principal-angle cosines" in (tmp_path / "report.html").read_text()
    with pytest.raises(BeliefLensError, match="already holds checkpoints"):
        run_factored_experiment(config, tmp_path)


def test_experiment_config_is_validated():
    from belief_lens.experiments.factored import FactoredExperiment, factored_training
    from belief_lens.training import TrainConfig

    default = FactoredExperiment().train
    # the Bayes preset, with the factored run's learning rate, warmup and evaluations
    preset = TrainConfig.preset("bayes", "mess3", seconds=240.0)
    assert default == preset.replace(lr=3e-3, warmup_steps=10, eval_sequences=512)
    with pytest.raises(BeliefLensError, match="epsilon"):
        FactoredExperiment(epsilon=2.0)
    with pytest.raises(BeliefLensError, match="steps, n_tokens or seconds"):
        factored_training()
    with pytest.raises(BeliefLensError, match="targets"):
        factored_training("logits", steps=1)
    with pytest.raises(BeliefLensError, match="train must be a TrainConfig"):
        FactoredExperiment(train={"steps": 4})
    with pytest.raises(BeliefLensError, match="n_checkpoints"):
        FactoredExperiment(n_checkpoints=0)


def test_cli_and_demo_run_end_to_end(tmp_path, capsys, monkeypatch):
    import importlib.util
    import json
    from dataclasses import dataclass
    from pathlib import Path

    from belief_lens.cli import main
    from belief_lens.experiments import factored

    # The command's and the demo's plumbing on the evaluation budget of the tiny run above (the
    # default 3000 + 1000 sequences per checkpoint would be most of this test's time).
    @dataclass(frozen=True)
    class Small(factored.FactoredExperiment):
        n_eval_sequences: int = 300
        n_vary_one: int = 60

    monkeypatch.setattr(factored, "FactoredExperiment", Small)
    out = tmp_path / "cli"
    argv = ["factored", "--epsilon", "0.05", "--max-steps", "2", "--minutes", "2"]
    argv += ["--export", "none"]  # figure files: tests/test_report*.py
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [(r["epsilon"], r["steps"]) for r in metrics["runs"]] == [(0.05, 2)] * 3  # 3 seeds
    assert metrics["across_seeds"]["n_seeds"] == 3
    assert (out / "report.html").stat().st_size > 0
    assert not list(out.glob("*.png")) and not list(out.glob("*.pdf"))  # --export none
    assert main([*argv, "--out", str(out)]) == 2  # never trains over a finished run
    assert "already holds files" in capsys.readouterr().err

    path = Path(__file__).resolve().parent.parent / "demos" / "factored_beliefs.py"
    spec = importlib.util.spec_from_file_location("factored_beliefs", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    monkeypatch.setattr(demo, "FactoredExperiment", Small)
    argv = ["--max-steps", "2", "--minutes", "2", "--export", "none"]
    assert demo.main([*argv, "--out", str(tmp_path / "demo")]) == 0
    for run in ("independent", "coupled"):
        assert json.loads((tmp_path / "demo" / run / "metrics.json").read_text())["steps"] == 2
