"""The probing engine against independent references: numpy lstsq, scikit-learn's own tooling,
a set-based check of the prefix split, and the paper checkpoints."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest
import torch
from sklearn.base import clone, is_regressor
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator
from sklearn.utils.validation import check_is_fitted

from belief_lens.beliefs import enumerate_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.probes import (
    AffineProbe,
    Moments,
    SegmentedMoments,
    collect_probe_data,
    fit_probes,
    split_prefixes,
)
from belief_lens.processes import mess3, rrxor

SOLVERS = ["auto", "moments", "svd"]


def lstsq_fit(X, Y):
    """The reference: float64 lstsq on centred data (minimum-norm coefficients), intercept from
    the means, and its in-sample MSE."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    coef = np.linalg.lstsq(X - X.mean(0), Y - Y.mean(0), rcond=None)[0]
    intercept = Y.mean(0) - X.mean(0) @ coef
    return coef.T, intercept, float(((X @ coef + intercept - Y) ** 2).mean())


def features(kind, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 8)) + 0.5
    if kind == "rank_deficient":  # 3 exact linear combinations and a duplicate column
        Z = np.hstack([Z, Z[:, :3] @ rng.standard_normal((3, 3)), Z[:, :1]])
    if kind == "scaled":
        Z = Z * np.logspace(-3, 3, Z.shape[1])  # column scales 1e6 apart
    if kind == "both":
        Z = np.hstack([Z, Z[:, :3] @ rng.standard_normal((3, 3))])
        Z = Z * np.logspace(-3, 3, Z.shape[1])
    Y = rng.dirichlet(np.ones(3), size=n)
    return Z, Y


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", ["scaled", "rank_deficient", "both"])
def test_equals_numpy_lstsq(kind, solver):
    X, Y = features(kind)
    probe = AffineProbe(solver=solver).fit(X, Y)
    coef, intercept, mse = lstsq_fit(X, Y)
    np.testing.assert_allclose(
        np.asarray(probe.coef_), coef, rtol=0, atol=1e-9 * np.abs(coef).max()
    )
    np.testing.assert_allclose(np.asarray(probe.intercept_), intercept, rtol=1e-9)
    assert probe.metrics(X, Y)["mse"] == pytest.approx(mse, rel=1e-9)
    assert probe.rank_ == np.linalg.matrix_rank(X - X.mean(0))


@pytest.mark.parametrize("kind", ["scaled", "rank_deficient", "both"])
def test_a_shared_row_factorisation_solves_any_targets_as_lstsq(kind):
    """``RowsSVD``: one factorisation of weighted rows (with a zero column, and wide: fewer rows
    than columns) answers every target set as weighted numpy lstsq, minimum norm included."""
    from belief_lens.probing.solvers import RowsSVD

    X, _ = features(kind, n=400, seed=2)
    X = np.hstack([X, np.zeros((400, 1))])
    w = np.random.default_rng(3).uniform(0.5, 2.0, 400)
    for rows in (slice(None), slice(0, 6)):  # tall, then fewer rows than columns
        Xr, wr = X[rows], w[rows]
        mean = (wr[:, None] * Xr).sum(0) / wr.sum()
        f = RowsSVD.of(torch.from_numpy(Xr), torch.from_numpy(mean), torch.from_numpy(wr))
        for seed in (0, 1):
            Y = np.random.default_rng(seed).dirichlet(np.ones(3), size=len(Xr))
            y_mean = (wr[:, None] * Y).sum(0) / wr.sum()
            coef, rank = f.solve(torch.from_numpy(Y), torch.from_numpy(y_mean))
            root = np.sqrt(wr)[:, None]
            A, B = (Xr - mean) * root, (Y - y_mean) * root
            ref, *_ = np.linalg.lstsq(A, B, rcond=None)
            scale = np.abs(A).max(0)[:, None]  # compare what each column contributes
            err = np.abs((coef.numpy() - ref) * scale).max() / np.abs(ref * scale).max()
            assert err < 1e-9
            assert rank == np.linalg.matrix_rank(A)
            assert np.linalg.norm(coef.numpy()) <= np.linalg.norm(ref) * (1 + 1e-9)


def test_a_shared_factorisation_is_refused_where_it_does_not_apply():
    """``rows_svd`` factors centred rows without a ridge: a ridge or no intercept is refused."""
    from belief_lens.probing.solvers import RowsSVD

    X, Y = (torch.from_numpy(a) for a in features("scaled", n=50))
    rows, f = (X, Y, None), RowsSVD.of(X, X.mean(0))
    moments = Moments.of(X, Y)
    assert AffineProbe().fit_moments(moments, rows=rows, rows_svd=f).rank_ == 8
    for probe in (AffineProbe(ridge=0.1), AffineProbe(fit_intercept=False)):
        with pytest.raises(BeliefLensError, match="rows_svd factors centred rows"):
            probe.fit_moments(moments, rows=rows, rows_svd=f)


@pytest.mark.parametrize("n", [10_000, 1_000_000])
@pytest.mark.parametrize("kind", ["scaled", "rank_deficient", "both"])
def test_default_solver_equals_lstsq_at_any_size(kind, n):
    """The default (QR) solver is lstsq's minimum-norm solution to 1e-9 relative at 10k and at 1M
    rows, on columns 1e6 apart in scale (float32 input, as a model gives) and on exactly
    dependent columns (float64: rounding to float32 would make them independent)."""
    X, Y = features(kind, n=n, seed=5)
    if kind == "scaled":
        X = X.astype(np.float32)
    probe = AffineProbe().fit(X, Y)
    coef, intercept, mse = lstsq_fit(X, Y)
    scale = np.abs(X - X.mean(0)).max(0)  # compare what each column contributes
    err = np.abs((probe.coef_ - coef) * scale).max() / np.abs(coef * scale).max()
    assert err < 1e-9
    assert probe.rank_ == np.linalg.matrix_rank(X.astype(np.float64) - X.mean(0, dtype=np.float64))
    assert probe.metrics(X, Y)["mse"] == pytest.approx(mse, rel=1e-9)
    if kind == "rank_deficient":  # minimum norm: nothing in the null space of the columns
        assert np.linalg.norm(probe.coef_) <= np.linalg.norm(coef) * (1 + 1e-9)


@pytest.mark.parametrize("kind", ["well_conditioned", "ill_conditioned", "rank_deficient"])
def test_factor_solve_takes_back_substitution_only_where_the_svd_keeps_every_direction(
    kind, monkeypatch
):
    """A factor whose block is provably of full rank under lstsq's cut-off is solved by back
    substitution (no SVD); an ill-conditioned or rank-deficient one by the SVD. Either way the
    coefficients and rank are numpy.linalg.lstsq's."""
    from belief_lens.probing import solvers

    g = torch.Generator().manual_seed(3)
    X = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    if kind == "ill_conditioned":
        X[:, 7] = X[:, 6] + 3e-12 * X[:, 7]  # d * kappa_1 past 1 / cut; every sigma kept
    if kind == "rank_deficient":
        X[:, 7] = X[:, 6] - X[:, 5]
    Y = torch.rand(2000, 3, generator=g, dtype=torch.float64)
    calls = []
    svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    coef, rank = solvers.RowFactor.of(X, Y).solve()
    assert bool(calls) == (kind != "well_conditioned")
    Xc, Yc = (X - X.mean(0)).numpy(), (Y - Y.mean(0)).numpy()
    ref, _, ref_rank, _ = np.linalg.lstsq(Xc, Yc)
    assert rank == ref_rank == (7 if kind == "rank_deficient" else 8)
    mse, ref_mse = (((Xc @ c - Yc) ** 2).mean() for c in (coef.numpy(), ref))
    assert mse == pytest.approx(ref_mse, rel=1e-7)  # both least squares, whatever the path
    if kind == "well_conditioned":  # elsewhere lstsq's own coefficients move by ~cond * eps
        np.testing.assert_allclose(coef.numpy(), ref, rtol=1e-10, atol=1e-12)


def test_a_factor_of_fewer_rows_than_columns_is_their_own_and_solves_as_lstsq():
    """Thirty rows of 50 features: the factor is the rows' QR with exact zero rows below it
    (the SVD then runs on 30 rows, not 54), and the minimum-norm solution is lstsq's."""
    from belief_lens.probing.solvers import RowFactor

    g = torch.Generator().manual_seed(4)
    X = torch.randn(30, 50, generator=g, dtype=torch.float64)
    Y = torch.rand(30, 3, generator=g, dtype=torch.float64)
    f = RowFactor.of(X, Y)
    assert f.R.shape == (54, 54) and not bool(f.R[30:].any())
    coef, rank = f.solve()
    Xc, Yc = (X - X.mean(0)).numpy(), (Y - Y.mean(0)).numpy()
    # Centring takes one direction; its singular value sits near eps, so lstsq's default
    # cut-off keeps or drops it by BLAS: an explicit cut-off well above eps decides.
    ref, _, ref_rank, _ = np.linalg.lstsq(Xc, Yc, rcond=1e-10)
    assert rank == ref_rank == 29
    np.testing.assert_allclose(coef.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_row_factor_streams_and_merges_to_the_one_shot_factor():
    """A factor built batch by batch, from shards about other shifts, equals the rows' own:
    same Gram matrix, same solution as lstsq, ridge as extra rows equal to the closed form."""
    from belief_lens.probing.solvers import RowFactor

    g = torch.Generator().manual_seed(2)
    X = torch.randn(3000, 6, generator=g, dtype=torch.float64) * 4 + 50
    Y = torch.rand(3000, 3, generator=g, dtype=torch.float64)
    w = torch.rand(3000, generator=g, dtype=torch.float64)
    whole = RowFactor.of(X, Y, w)
    parts = RowFactor.of(X[:700], Y[:700], w[:700]) + RowFactor.of(X[700:], Y[700:], w[700:])
    assert parts.n_rows == 3000
    Z = torch.cat([X, Y], 1)
    mean = (w @ Z) / w.sum()
    gram = ((Z - mean) * w[:, None]).T @ (Z - mean)
    for f in (whole, parts):
        Rc = f.centred()
        torch.testing.assert_close(Rc.T @ Rc, gram, rtol=1e-10, atol=1e-8)
        mom = f.moments()
        torch.testing.assert_close(mom.mean_x, mean[:6], rtol=1e-12, atol=0)
    root = w.sqrt()[:, None]
    ref = np.linalg.lstsq(((X - mean[:6]) * root).numpy(), ((Y - mean[6:]) * root).numpy())[0]
    np.testing.assert_allclose(parts.solve()[0].numpy(), ref, rtol=1e-9, atol=1e-12)
    Xc, Yc = (X - mean[:6]) * root, (Y - mean[6:]) * root
    closed = torch.linalg.solve(Xc.T @ Xc + 3.0 * torch.eye(6, dtype=torch.float64), Xc.T @ Yc)
    torch.testing.assert_close(parts.solve(3.0)[0], closed, rtol=1e-9, atol=1e-12)
    with pytest.raises(BeliefLensError, match="hold 6 features and 3 targets"):
        whole.update(X[:, :5], Y)
    for cls in (RowFactor, Moments):  # one shift check for both accumulators
        with pytest.raises(BeliefLensError, match=r"shift must have shape \[9\]"):
            cls.zeros(6, 3, shift=torch.zeros(8))


def test_moments_add_recentre_and_round_trip():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 6, generator=g, dtype=torch.float64) * 3 + 7
    Y = torch.rand(500, 3, generator=g, dtype=torch.float64)
    w = torch.rand(500, generator=g, dtype=torch.float64)
    whole = Moments.of(X, Y, w)
    parts = Moments.of(X[:200], Y[:200], w[:200]) + Moments.of(X[200:], Y[200:], w[200:])
    assert parts.shift is not whole.shift  # different shifts, recentred exactly on addition
    torch.testing.assert_close(parts.recentred(whole.shift).M, whole.M, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(parts.mean_x, (w @ X) / w.sum(), rtol=1e-12, atol=0)
    rebuilt = whole.with_tensors([t.clone() for t in whole.tensors()])
    a = AffineProbe().fit_moments(rebuilt)
    b = AffineProbe(solver="moments").fit(X, Y, w)
    torch.testing.assert_close(a.coef_, b.coef_, rtol=1e-10, atol=1e-12)


def test_segmented_moments_equal_direct_sums_per_segment():
    """The batched engine gives, per (window, side), the sums a plain float64 loop gives."""
    g = torch.Generator().manual_seed(1)
    engine = SegmentedMoments(n_windows=2, sides=2, n_features=4, n_targets=3)
    segments = [[], [], [], []]
    for n in (37, 11):  # two batches, each ordered by segment
        X = torch.randn(n, 4, generator=g) * 5 + 3  # float32 in, as a model gives
        Y = torch.rand(n, 3, generator=g, dtype=torch.float64)
        bounds = [0, n // 3, n // 2, n // 2, n]  # segment 2 is empty in every batch
        engine.add(X, Y, bounds)
        for j in range(4):
            segments[j].append((X[bounds[j] : bounds[j + 1]], Y[bounds[j] : bounds[j + 1]]))
    got = engine.moments()
    for j, parts in enumerate(segments):
        X = torch.cat([x for x, _ in parts]).double().numpy()
        Y = torch.cat([y for _, y in parts]).numpy()
        mom = got[j // 2][j % 2]
        assert float(mom.w) == len(X)
        if len(X) == 0:
            assert float(mom.M.abs().sum()) == 0.0
            continue
        Z = np.hstack([X, Y])
        np.testing.assert_allclose(mom.mean_x.numpy(), X.mean(0), rtol=1e-12)
        np.testing.assert_allclose(mom.mean_y.numpy(), Y.mean(0), rtol=1e-12)
        _, xy, yy = mom.about(torch.from_numpy(X.mean(0)), torch.from_numpy(Y.mean(0)))
        centred = Z - Z.mean(0)
        np.testing.assert_allclose(xy.numpy(), (centred.T @ centred)[:4, 4:], atol=1e-9)
        np.testing.assert_allclose(yy.numpy(), (centred.T @ centred)[4:, 4:], atol=1e-9)
    # the two sides of a window share a shift, so they add to the window's moments
    both = got[1][0] + got[1][1]
    assert both.shift is got[1][0].shift
    with pytest.raises(BeliefLensError, match="bounds must have"):
        engine.add(torch.zeros(2, 4), torch.zeros(2, 3), [0, 2])


def test_moments_all_reduce_single_process():
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    X = torch.randn(100, 4, dtype=torch.float64)
    Y = torch.rand(100, 2, dtype=torch.float64)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1
        )
        try:
            mom = Moments.of(X, Y).all_reduce()
        finally:
            dist.destroy_process_group()
    torch.testing.assert_close(mom.mean_x, X.mean(0))
    assert float(mom.w) == 100.0


# ----------------------------------------------------------------------------- scikit-learn


def test_check_estimator_passes_with_skips_listed():
    results = check_estimator(AffineProbe(), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    skipped = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "skipped"}
    assert not failed
    # The one skip: array-API input needs SCIPY_ARRAY_API=1 set before scipy is imported.
    assert set(skipped) <= {"check_array_api_input"}, skipped
    assert len(results) > 50


def test_sklearn_tooling_with_groups():
    hmm = mess3()
    seqs = enumerate_sequences(hmm, 6)
    N, L, S = seqs.beliefs.shape
    g = torch.Generator().manual_seed(0)
    W = torch.randn(S, 16, generator=g, dtype=torch.float64)
    X = seqs.beliefs @ W + 0.01 * torch.randn(N, L, 16, generator=g, dtype=torch.float64)
    X, Y = X.reshape(-1, 16).numpy(), seqs.beliefs.reshape(-1, S).numpy()
    groups = np.repeat(np.arange(N), L)  # a sequence's rows stay together
    probe = AffineProbe()
    assert is_regressor(probe) and is_regressor(Pipeline([("s", StandardScaler()), ("p", probe)]))
    twin = clone(AffineProbe(ridge=0.5))
    assert twin.get_params() == {"ridge": 0.5, "fit_intercept": True, "solver": "auto"}
    check_is_fitted(twin.fit(X, Y))
    scores = cross_val_score(AffineProbe(), X, Y, groups=groups, cv=GroupKFold(n_splits=4))
    assert scores.shape == (4,) and np.isfinite(scores).all() and scores.min() > 0.9
    pipe = Pipeline([("scale", StandardScaler()), ("probe", AffineProbe())])
    search = GridSearchCV(pipe, {"probe__ridge": [0.0, 1.0, 100.0]}, cv=GroupKFold(n_splits=3)).fit(
        X, Y, groups=groups
    )
    assert np.isfinite(search.best_score_) and search.best_score_ > 0.9
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert isinstance(search.predict(X), np.ndarray)
    assert isinstance(search.score(X, Y), float)


def test_predict_returns_callers_type():
    X, Y = features("scaled", n=200)
    probe = AffineProbe().fit(X, Y)
    assert isinstance(probe.predict(X), np.ndarray)
    out = probe.predict(torch.from_numpy(X))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), probe.predict(X))
    single = AffineProbe().fit(X, Y[:, 0])
    assert probe.predict(X).shape == (200, 3) and single.predict(X).shape == (200,)
    metrics = probe.metrics(X, Y)
    assert isinstance(probe.score(X, Y), float) and probe.score(X, Y) == metrics["r2"]
    assert len(metrics["r2_per_target"]) == 3 and len(metrics["mse_per_target"]) == 3


def test_save_load_round_trip_and_damage(tmp_path):
    X, Y = features("rank_deficient", n=400)
    probe = AffineProbe().fit(X, Y, hook="blocks.0.hook_resid_post")
    probe.provenance_ = {"process": "mess3", "model_fingerprint": "abc123"}
    path = tmp_path / "probe.safetensors"
    probe.save(path)
    loaded = AffineProbe.load(path)
    np.testing.assert_array_equal(loaded.predict(X), probe.predict(X))
    torch.testing.assert_close(loaded.encoding_map(), probe.encoding_map(), rtol=0, atol=0)
    assert loaded.hook_ == "blocks.0.hook_resid_post" and loaded.rank_ == probe.rank_
    assert loaded.provenance_["process"] == "mess3"
    assert loaded.provenance_["model_fingerprint"] == "abc123"
    assert loaded.provenance_["transformer_lens_version"]
    assert loaded.provenance_["belief_lens_version"]
    assert [p.name for p in tmp_path.iterdir()] == ["probe.safetensors"]  # no temp left over
    # files written before the rename of ``hook_name`` to ``hook`` still load
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = (
            json.loads(f.metadata()["belief_lens"]),
            {k: f.get_tensor(k) for k in f.keys()},
        )  # noqa: SIM118
    meta["hook_name"] = meta.pop("hook")
    old = tmp_path / "old" / "probe.safetensors"
    old.parent.mkdir()
    save_file(tensors, str(old), metadata={"belief_lens": json.dumps(meta)})
    assert AffineProbe.load(old).hook_ == "blocks.0.hook_resid_post"
    data = path.read_bytes()
    for cut in (len(data) // 2, 10, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(BeliefLensError, match="cannot read a probe"):
            AffineProbe.load(bad)
    with pytest.raises(BeliefLensError, match="not fitted"):
        AffineProbe().save(tmp_path / "unfitted.safetensors")
    assert not (tmp_path / "unfitted.safetensors").exists()


# ----------------------------------------------------------------------------- the split


@pytest.mark.parametrize("hmm", [mess3(), rrxor()], ids=["mess3", "rrxor"])
def test_split_prefixes_is_leak_free_and_seeded(hmm):
    tokens = enumerate_sequences(hmm, 10).tokens  # paper mode: every sequence
    mask = split_prefixes(tokens, 0.2, seed=0)
    assert mask.shape == tokens.shape and mask.dtype == torch.bool
    rows = tokens.tolist()
    for t in range(tokens.shape[1]):
        held = {tuple(r[: t + 1]) for r, m in zip(rows, mask[:, t].tolist(), strict=True) if m}
        kept = {tuple(r[: t + 1]) for r, m in zip(rows, mask[:, t].tolist(), strict=True) if not m}
        assert not held & kept, f"prefix of length {t + 1} on both sides"
        assert len(held) == round(0.2 * len(held | kept))
    assert torch.equal(mask, split_prefixes(tokens, 0.2, seed=0))
    assert not torch.equal(mask, split_prefixes(tokens, 0.2, seed=1))
    assert not split_prefixes(tokens, 0.0, seed=0).any()
    with pytest.raises(BeliefLensError, match=r"test_fraction must be in \[0, 1\)"):
        split_prefixes(tokens, 1.0, 0)


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def rrxor_table(shared_checkpoint):
    from belief_lens.models import load_checkpoint

    model = load_checkpoint(shared_checkpoint("rrxor_paper"))
    data = collect_probe_data(model, rrxor(), 10)
    return data, fit_probes(data)


@pytest.mark.slow
def test_rrxor_concat_equals_lstsq_and_beats_every_hook(rrxor_table):
    data, table = rrxor_table
    X = torch.cat([data.acts[h] for h in data.hooks], -1).reshape(-1, 1280)
    Y = data.beliefs.reshape(-1, data.beliefs.shape[-1])
    _, _, mse = lstsq_fit(X.double().numpy(), Y.numpy())
    concat = table["concat"]
    assert abs(concat["mse_all"] - mse) < 1e-6
    assert concat["mse_all"] <= 1e-12  # 1,280 features interpolate RRXOR's 1,046 prefixes
    # The estimator alone, on the float32 rows as the model gives them, is as exact as lstsq
    # (the normal equations gave 9.2e-4: they square the condition number).
    assert X.dtype == torch.float32
    assert abs(AffineProbe().fit(X, Y).metrics(X, Y)["mse"] - mse) < 1e-9
    for hook in data.hooks:
        assert concat["mse_all"] <= table[hook]["mse_all"] + 1e-12
    last = data.hooks[-1]
    _, _, mse_last = lstsq_fit(data.acts[last].reshape(-1, 128).double().numpy(), Y.numpy())
    assert table[last]["mse_all"] == pytest.approx(mse_last, rel=1e-6)
    # 1,280 features on 836 training prefixes: flagged with its reason, and worse than the
    # best hook held out. Of the 1,046 prefixes, those of 1-3 symbols (2 + 4 + 8) are too few to
    # fill 5 folds and stay in training; every other one is held out once.
    assert concat["overfit"] and concat["features"] == 1280
    assert concat["overfit_reason"].startswith("1,280 features on 836 training prefixes")
    assert concat["test_prefixes"] == 1046 - (2 + 4 + 8)
    assert concat["mse_heldout"] > table[table.best_hook]["mse_heldout"]
    assert table.concat_gain < 1
    assert concat["rank"] == table.probes["concat"].rank_ >= 1000
    assert "best hook (held out, 5 folds)" in str(table) and "OVERFIT" in table.to_markdown()


@pytest.mark.slow
def test_mess3_paper_in_sample_numbers(mess3_paper_probe_data):
    hooks = ["blocks.3.hook_resid_post", "ln_final.hook_normalized"]
    data = mess3_paper_probe_data.data.select_hooks(hooks)  # conftest's paper-mode pass
    assert data.mode == "paper" and data.seed == 0
    table = fit_probes(data, concat=False)
    assert table["blocks.3.hook_resid_post"]["mse_all"] == pytest.approx(0.000386, abs=5e-7)
    assert table["ln_final.hook_normalized"]["mse_all"] == pytest.approx(0.000301, abs=5e-7)
    probe = table.probes["ln_final.hook_normalized"]
    assert probe.provenance_["process"].startswith("mess3")
    assert probe.provenance_["model_fingerprint"] == data.model_fingerprint
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ln_final.safetensors")
        probe.save(path)
        assert AffineProbe.load(path).provenance_["model_fingerprint"] == data.model_fingerprint
