"""In-context curves and per-position probes on a GPT-2-architecture model (50,257 tokens).

One model is built locally (no hub), measured untrained, then trained for a few seconds on mapped
Mess3 text, and measured again.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.processes import mess3
from belief_lens.token_map import TokenMap

pytest.importorskip("transformer_lens")

from belief_lens.activations import residual_stream  # noqa: E402
from belief_lens.beliefs import belief_states, sample_sequences  # noqa: E402
from belief_lens.in_context import (  # noqa: E402
    InContextResult,
    PositionProbeTable,
    fit_position_probes,
    in_context_curve,
)
from belief_lens.pretrained import gpt2_like  # noqa: E402
from belief_lens.probes import AffineProbe, split_prefixes  # noqa: E402
from belief_lens.probing.positions import batch_row_order  # noqa: E402
from belief_lens.training import TrainConfig, train  # noqa: E402

IDS = [317, 347, 327]  # GPT-2's " A", " B", " C"
COMMA, PERIOD, EOT = 11, 13, 50256
LENGTH = 8
#: A brief training on Bayes targets through a token map, with few evaluation sequences.
MAPPED = TrainConfig(
    steps=80, length=LENGTH, batch_size=8, lr=5e-3, targets="bayes", warmup_steps=8,
    eval_sequences=64,
)  # fmt: skip
MAPS = {
    "plain": TokenMap(IDS),
    "bos": TokenMap(IDS, bos=EOT),
    "comma_bos": TokenMap(IDS, separator=[COMMA], bos=EOT),
    "two_token_separator": TokenMap(IDS, separator=[COMMA, PERIOD]),
}


def last_symbol_chain() -> HMM:
    """A Markov chain whose hidden state is the last symbol: the belief after symbol t is
    one-hot(x_t), so the embedding at symbol t's position carries it exactly, and no other
    position does (separators are constant, neighbours only correlate)."""
    P = torch.tensor([[0.6, 0.2, 0.2], [0.3, 0.5, 0.2], [0.25, 0.25, 0.5]], dtype=torch.float64)
    T = torch.zeros(3, 3, 3, dtype=torch.float64)
    for x in range(3):
        T[x, :, x] = P[:, x]
    return HMM(T, name="last_symbol_chain")


@pytest.fixture(scope="module")
def models():
    """An untrained baseline's measurements, then the same model after 80 training steps."""
    hmm = mess3()
    tm = MAPS["bos"]
    model = gpt2_like(n_ctx=32, n_layers=2, d_model=64, n_heads=2, seed=0)
    hook = "blocks.1.hook_resid_post"

    def measure():
        curve = in_context_curve(model, hmm, tm, 128, LENGTH, seed=1)
        table = fit_position_probes(
            model, hmm, tm, [hook], n_sequences=400, length=LENGTH, window=None, seed=2
        )
        return curve, table

    before = measure()
    losses = train(model, hmm, MAPPED, token_map=tm, progress=False).loss
    after = measure()
    return {"model": model, "hmm": hmm, "map": tm, "hook": hook, "before": before,
            "after": after, "losses": losses}  # fmt: skip


# ------------------------------------------------------------------------------ the model
def test_gpt2_like_is_a_gpt2_architecture(models):
    model = models["model"]
    assert int(model.cfg.d_vocab) == 50257
    assert "ln_final.hook_normalized" in model.hook_dict
    assert not any(m.training for m in model.modules())
    again = gpt2_like(n_ctx=32, n_layers=2, d_model=64, n_heads=2, seed=0)
    tokens = torch.tensor([[EOT, 317, 347]])
    fresh = gpt2_like(n_ctx=32, n_layers=2, d_model=64, n_heads=2, seed=0)
    torch.testing.assert_close(again(tokens), fresh(tokens))  # same seed, same weights


# ------------------------------------------------------------------------------ alignment
@pytest.mark.parametrize("name", list(MAPS))
def test_probes_find_a_belief_planted_at_symbol_positions(models, name):
    """The embedding of symbol t's token is an exact affine code of the chain's belief after
    symbol t, so per-position probes at the embeddings must reach R^2 = 1 when read at symbol
    positions; the same probe read at the separator, or one symbol early, must not."""
    model, tm, hmm = models["model"], MAPS[name], last_symbol_chain()
    hook = "blocks.0.hook_resid_pre"
    table = fit_position_probes(
        model, hmm, tm, [hook], n_sequences=120, length=6, window=1, test_fraction=0.25,
        n_folds=None,
    )  # fmt: skip
    assert len(table) == 6
    # Position 0 has 3 distinct prefixes and one is held out: an input no probe has seen (its
    # one-hot belief is outside the span of the two trained ones), so the split must show it.
    assert table[(hook, 0)]["test_prefixes"] == 1 and table[(hook, 0)]["mse_heldout"] > 0.01
    later = [row for row in table if row["window_start"] >= 1]
    assert max(row["mse_heldout"] for row in later) < 1e-8  # (R^2 is degenerate: one-hot targets)

    # Controls, fitted directly with AffineProbe on the same kind of data.
    symbols = sample_sequences(hmm, 200, 6, seed=5)
    beliefs = belief_states(hmm, symbols)
    acts = residual_stream(model, tm.encode(symbols), hook)[hook]
    train, test = slice(0, 150), slice(150, 200)
    t = 3
    wrong = {"previous symbol": tm.symbol_positions(6)[t - 1]}
    if tm.separator.numel():
        wrong["separator"] = tm.prediction_positions(6)[t]
    for label, pos in wrong.items():
        probe = AffineProbe().fit(acts[train, pos], beliefs[train, t])
        r2 = probe.score(acts[test, pos], beliefs[test, t])
        assert r2 < 0.5, f"{label}: R^2 {r2} should be far from 1"
    # Reading at the prediction positions is the separators when there are any.
    at_prediction = fit_position_probes(
        model,
        hmm,
        tm,
        [hook],
        n_sequences=120,
        length=6,
        window=1,
        test_fraction=0.25,
        read_at="prediction",
        n_folds=None,
    )
    if tm.separator.numel():
        assert max(row["r2_heldout"] for row in at_prediction) < 0.5
    else:
        assert at_prediction.rows == table.rows


def test_window_none_and_windows_shapes(models):
    model, tm, hmm = models["model"], MAPS["comma_bos"], mess3()
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    table = fit_position_probes(model, hmm, tm, hooks, n_sequences=60, length=7, window=3)
    assert isinstance(table, PositionProbeTable)
    assert table.windows == [(0, 3), (3, 6), (6, 7)]
    assert table.hooks == hooks
    assert len(table) == 6
    exported = table.to_dict()
    json.dumps(exported, allow_nan=False)  # JSON-ready, strictly
    cols = {k: [row[k] for row in exported["rows"]] for k in exported["rows"][0]}
    keys = ("hook", "window_start", "window_stop", "features", "train_prefixes", "test_prefixes")
    for key in (*keys, "mse_train", "r2_train", "mse_heldout", "r2_heldout", "overfit"):
        assert len(cols[key]) == 6
    assert cols["features"][0] == 64
    assert table.grid("mse_heldout").shape == (2, 3)
    assert table.window_centres == [2.0, 5.0, 7.0]
    row = table[("blocks.1.hook_resid_post", 3)]
    assert row["window_stop"] == 6 and all(
        torch.isfinite(torch.tensor(row["mse_heldout"])).view(-1)
    )
    probe = table.probes[("blocks.1.hook_resid_post", 3)]
    assert probe.coef_.shape == (3, 64) and probe.hook_ == "blocks.1.hook_resid_post"
    assert probe.belief_basis("encoding").shape == (64, 2)
    with pytest.raises(BeliefLensError, match="no row for"):
        table[("blocks.1.hook_resid_post", 1)]
    assert "| hook | window_start |" in table.to_markdown()


def test_streaming_matches_a_direct_fit(models):
    """Sufficient statistics over batches give the probe AffineProbe.fit gives on all rows; the
    answer depends neither on the batch size nor on how hooks are grouped under a memory bound."""
    model, tm, hmm = models["model"], MAPS["comma_bos"], mess3()
    hooks = ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_post"]
    symbols = sample_sequences(hmm, 150, 5, seed=3)
    # A little ridge makes the solution unique: few distinct contexts fit in 5 symbols.
    kw = {"symbols": symbols, "window": 2, "test_fraction": 0.2, "ridge": 1e-2, "n_folds": None}
    big = fit_position_probes(model, hmm, tm, hooks, batch_size=256, **kw)
    # Room for one hook's statistics (3 windows of (64 + 3)^2 float64) and a few sequences.
    per_hook = 2 * 3 * 8 * ((64 + 3) ** 2 + 2 * (64 + 3) + 1)  # train + test Moments
    assert per_hook == big.meta["stats_bytes_per_hook"]
    limit = 4 * per_hook - 8
    small = fit_position_probes(model, hmm, tm, hooks, memory_limit_bytes=limit, **kw)
    assert small.meta["hook_groups"] == 2 and big.meta["hook_groups"] == 1
    assert 1 <= small.meta["batch_size"] < 20 and big.meta["batch_size"] == 150
    for a, b in zip(big.rows, small.rows, strict=True):
        for key in ("mse_train", "mse_heldout", "r2_heldout"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-8)
    # Against a direct fit on the training sequences of window (2, 4).
    hook = hooks[1]
    acts = residual_stream(model, tm.encode(symbols), hook)[hook][:, tm.symbol_positions(5)]
    beliefs = belief_states(hmm, symbols)
    streamed = big.probes[(hook, 2)]
    test_mask = split_prefixes(symbols, 0.2, 0)[:, 2:4]  # the one split every fitter uses
    train = ~test_mask
    distinct = sum(len(set(map(tuple, symbols[train[:, k], : 3 + k].tolist()))) for k in range(2))
    assert big[(hook, 2)]["train_prefixes"] == distinct
    A, B = acts[:, 2:4], beliefs[:, 2:4]
    direct = AffineProbe(ridge=1e-2).fit(A[train], B[train])
    # (float32 activations differ in the last bits between batch compositions)
    torch.testing.assert_close(
        streamed.predict(acts[:, 2:4]), direct.predict(acts[:, 2:4]), rtol=0, atol=1e-4
    )
    held_out = direct.metrics(A[test_mask], B[test_mask])
    assert big[(hook, 2)]["mse_heldout"] == pytest.approx(held_out["mse"], rel=1e-3)
    assert big[(hook, 2)]["r2_heldout"] == pytest.approx(held_out["r2"], rel=1e-3)


def test_cross_validated_by_default_equals_a_numpy_kfold_loop():
    """The default: each window's folds of ``prefix_folds`` held out in turn, scored as a plain
    lstsq K-fold loop on the rows scores them (mean and s.e.), the table's probe fitted on every
    row; a window too short to hold prefixes out says so with NaN, not a number."""
    from belief_lens.probes import prefix_folds

    model, tm, hmm = (
        gpt2_like(n_ctx=16, n_layers=1, d_model=16, n_heads=2, seed=1),
        MAPS["plain"],
        mess3(),
    )
    hook = "blocks.0.hook_resid_post"
    symbols = sample_sequences(hmm, 300, 6, seed=4)
    table = fit_position_probes(model, hmm, tm, [hook], symbols=symbols, window=3, seed=7,
                                n_folds=4, batch_size=64)  # fmt: skip
    acts = residual_stream(model, tm.encode(symbols), hook)[hook][:, tm.symbol_positions(6)]
    X, Y = acts.double().numpy(), belief_states(hmm, symbols).numpy()
    folds = prefix_folds(symbols, 4, 7).numpy()
    for lo in (0, 3):
        x, y, f = (
            X[:, lo : lo + 3].reshape(-1, 16),
            Y[:, lo : lo + 3].reshape(-1, 3),
            folds[:, lo : lo + 3].reshape(-1),
        )
        ones = np.ones((len(x), 1))
        mse = []
        for k in range(4):
            if not (f == k).any():
                continue
            coef = np.linalg.lstsq(np.c_[x, ones][f != k], y[f != k], rcond=None)[0]
            mse.append(float(((y[f == k] - np.c_[x, ones][f == k] @ coef) ** 2).mean()))
        row = table[(hook, lo)]
        assert row["folds"] == len(mse) == 4
        assert row["mse_heldout"] == pytest.approx(np.mean(mse), rel=1e-6)
        assert row["mse_heldout_se"] == pytest.approx(np.std(mse, ddof=1) / 2, rel=1e-5)
        whole = np.linalg.lstsq(np.c_[x, ones], y, rcond=None)[0]
        assert row["mse_all"] == pytest.approx(
            float(((y - np.c_[x, ones] @ whole) ** 2).mean()), rel=1e-6
        )
        # The coefficients reach several hundred here (nearly collinear features), so they are
        # compared at float64's precision relative to their scale, not at a fixed 1e-6.
        scale = float(np.abs(whole).max())
        np.testing.assert_allclose(
            table.probes[(hook, lo)].coef_.numpy(), whole[:-1].T, rtol=0, atol=1e-7 * scale
        )
    assert table.meta["folds"] == 4 and table.meta["test_fraction"] is None
    # one position at a time, position 0 (3 prefixes) cannot be held out: NaN, with no folds
    per_position = fit_position_probes(model, hmm, tm, [hook], symbols=symbols, window=1, n_folds=4)
    first = per_position[(hook, 0)]
    assert first["folds"] == 0 and math.isnan(first["mse_heldout"]) and first["test_prefixes"] == 0
    with pytest.raises(BeliefLensError, match="n_folds must be"):
        fit_position_probes(model, hmm, tm, [hook], symbols=symbols, n_folds=1)


def test_each_row_lands_on_its_side_of_the_split_once():
    """Training and held-out metrics equal numpy's on exactly those rows: a row counted twice,
    or on the wrong side, or read at the wrong model position, moves them."""
    model = gpt2_like(n_ctx=16, n_layers=1, d_model=8, n_heads=2, seed=0)
    hmm, tm, hook, length, B = mess3(), MAPS["comma_bos"], "blocks.0.hook_resid_post", 6, 64
    symbols = sample_sequences(hmm, 200, length, seed=5)  # 3 full batches and one of 8
    table = fit_position_probes(
        model,
        hmm,
        tm,
        [hook],
        symbols=symbols,
        window=4,
        test_fraction=0.3,
        batch_size=B,
        n_folds=None,
    )
    assert table.windows == [(0, 4), (4, 6)] and table.meta["batch_size"] == B
    tokens = tm.encode(symbols)
    acts = (
        torch.cat(  # the same batches as the harvest, so the same float32 activations
            [residual_stream(model, tokens[i : i + B], hook)[hook] for i in range(0, 200, B)]
        )[:, tm.symbol_positions(length)]
        .double()
        .numpy()
    )
    beliefs = belief_states(hmm, symbols).numpy()
    held = split_prefixes(symbols, 0.3, 0).numpy()
    for lo, hi in table.windows:
        X, Y, m = acts[:, lo:hi].reshape(-1, 8), beliefs[:, lo:hi].reshape(-1, 3), held[:, lo:hi]
        m = m.reshape(-1)
        A = np.hstack([X, np.ones((len(X), 1))])
        coef = np.linalg.lstsq(A[~m], Y[~m], rcond=None)[0]  # full rank: the unique fit
        probe = table.probes[(hook, lo)]
        np.testing.assert_allclose(probe.predict(X), A @ coef, rtol=0, atol=1e-9)
        row = table[(hook, lo)]
        for side, rows in (("train", ~m), ("heldout", m)):
            res = Y[rows] - A[rows] @ coef
            mse = float((res**2).mean())
            ss_tot = ((Y[rows] - Y[rows].mean(0)) ** 2).sum(0)
            r2 = float((1 - (res**2).sum(0) / ss_tot).mean())
            assert row[f"mse_{side}"] == pytest.approx(mse, rel=1e-9)
            assert row[f"r2_{side}"] == pytest.approx(r2, rel=1e-9, abs=1e-12)
        # the check can tell the sides apart: all rows would give another held-out MSE
        everything = float(((Y - A @ coef) ** 2).mean())
        assert row["mse_heldout"] != pytest.approx(everything, rel=1e-4)
    # the batch layout: every row once, in segments of (window, side)
    window_of = torch.tensor([0, 0, 0, 0, 1, 1])
    order, bounds = batch_row_order(torch.from_numpy(held[:B]), window_of, 2)
    assert sorted(order.tolist()) == list(range(B * length)) and bounds[-1] == B * length
    flat_held = torch.from_numpy(held[:B]).reshape(-1)
    for j, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
        seg = order[start:stop]
        assert (window_of[seg % length] == j // 2).all() and (flat_held[seg] == bool(j % 2)).all()


#: Bytes of one window's statistics for d_model 64 and 3 states: Moments of 67 columns for each of
#: 5 folds and the rows every fold trains on.
PER_WINDOW = 6 * 8 * (67 * 67 + 2 * 67 + 1)


def test_memory_bound_is_enforced(models):
    model, tm, hmm = models["model"], MAPS["plain"], mess3()
    with pytest.raises(BeliefLensError, match="use window >= 4 or raise the limit"):
        fit_position_probes(
            model, hmm, tm, ["blocks.0.hook_resid_pre"], n_sequences=10, length=8, window=1,
            memory_limit_bytes=2 * 2 * PER_WINDOW + 2**14,  # room for two windows' statistics
        )  # fmt: skip
    with pytest.raises(BeliefLensError, match="one sequence needs about"):
        in_context_curve(model, hmm, tm, 4, 8, memory_limit_bytes=10_000)


# ------------------------------------------------------------------------------ the curve
def test_in_context_curve_shapes_and_alignment(models):
    curve, _ = models["before"]
    assert isinstance(curve, InContextResult)
    assert curve.n_seen.tolist() == list(range(LENGTH + 1))  # BOS: the prediction of symbol 0 first
    for name in ("kl_mean", "kl_std", "model_ce_mean", "bayes_ce_mean", "optimal_entropy",
                 "off_map_mass_mean", "off_map_mass_std"):  # fmt: skip
        assert getattr(curve, name).shape == (LENGTH + 1,)
    assert (curve.kl_mean >= 0).all()
    # Before any symbol the optimal prediction is P(. | pi): uniform for Mess3, entropy log 3.
    assert curve.optimal_entropy[0].item() == pytest.approx(math.log(3), abs=1e-12)
    # The Bayes cross-entropy on sampled symbols estimates the optimal entropy.
    assert (curve.bayes_ce_mean - curve.optimal_entropy).abs().max() < 0.2
    assert ((curve.off_map_mass_mean > 0) & (curve.off_map_mass_mean <= 1)).all()
    plain = in_context_curve(models["model"], models["hmm"], MAPS["plain"], 16, 5)
    assert plain.n_seen.tolist() == [1, 2, 3, 4, 5]


def test_in_context_curve_matches_a_manual_computation(models):
    model, hmm = models["model"], models["hmm"]
    tm = MAPS["comma_bos"]
    symbols = sample_sequences(hmm, 6, 5, seed=9)
    curve = in_context_curve(model, hmm, tm, 0, 0, symbols=symbols, batch_size=4)
    logits = model(tm.encode(symbols[:, :4]))
    full = torch.softmax(logits.double(), -1)
    pos = [0, 2, 4, 6, 8]  # BOS, then each comma
    q = full[:, pos][..., IDS]
    off = 1 - q.sum(-1)
    q = q / q.sum(-1, keepdim=True)
    beliefs = torch.cat([hmm.initial_state.expand(6, 1, -1), belief_states(hmm, symbols[:, :4])], 1)
    p = hmm.next_token_probs(beliefs)
    kl = (p * (p.log() - q.log())).sum(-1)
    ce = -q.log().gather(-1, symbols[:, :, None])[..., 0]
    torch.testing.assert_close(curve.kl_mean, kl.mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(curve.model_ce_mean, ce.mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(curve.off_map_mass_mean, off.mean(0), rtol=1e-4, atol=1e-6)


def test_training_through_the_map_moves_the_model_toward_bayes(models):
    (curve0, table0), (curve1, table1) = models["before"], models["after"]
    losses = models["losses"]
    assert sum(losses[-10:]) / 10 < losses[0] / 5
    assert curve1.kl_mean.mean() < curve0.kl_mean.mean() / 2
    assert curve1.off_map_mass_mean.mean() < 0.1 < curve0.off_map_mass_mean.mean()
    assert curve1.excess_ce.mean() < curve0.excess_ce.mean()
    hook = models["hook"]
    assert table1[(hook, 0)]["mse_heldout"] < table0[(hook, 0)]["mse_heldout"]


# ------------------------------------------------------------------------------ errors
def test_errors_name_what_mismatched(models):
    model, hmm = models["model"], models["hmm"]
    with pytest.raises(BeliefLensError, match="maps 2 symbols but mess3.* emits 3"):
        in_context_curve(model, hmm, TokenMap([1, 2]), 4, 4)
    with pytest.raises(
        BeliefLensError, match="take 41 model positions.*n_ctx=32; use length <= 15"
    ):
        fit_position_probes(model, hmm, MAPS["comma_bos"], n_sequences=4, length=20)
    with pytest.raises(BeliefLensError, match="d_vocab=50257"):
        in_context_curve(model, hmm, TokenMap([1, 2, 60000]), 4, 4)
    with pytest.raises(BeliefLensError, match="window must be a positive int"):
        fit_position_probes(model, hmm, MAPS["plain"], n_sequences=4, length=4, window=0)
    with pytest.raises(BeliefLensError, match="unknown hook"):
        fit_position_probes(model, hmm, MAPS["plain"], ["blocks.9.hook_resid_post"], 4, 4)


def test_load_pretrained_fails_fast_offline(monkeypatch):
    from belief_lens import pretrained

    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(pretrained, "_cached", lambda name: False)
    with pytest.raises(BeliefLensError, match="model hub unreachable: cannot load 'gpt2'"):
        pretrained.load_pretrained("gpt2")


# ------------------------------------------------------------------------------ steering
def test_steering_through_the_token_map(models):
    """Steering the last symbol's residual stream to another sequence's belief, along the
    encoding directions of a probe fitted at symbol positions, moves the map-restricted
    prediction toward that belief's; a norm-matched control direction does not."""
    from belief_lens.interventions import intervention_report

    model, hmm, tm, hook = models["model"], models["hmm"], models["map"], models["hook"]
    table = fit_position_probes(model, hmm, tm, [hook], n_sequences=400, length=LENGTH, window=None)
    probe = table.probes[(hook, 0)]
    tokens = sample_sequences(hmm, 64, LENGTH, seed=11)
    report = intervention_report(
        model,
        tokens,
        probe,
        hook,
        hmm,
        position=-1,
        token_map=tm,
        directions=("encoding", "control"),
    )
    summary = report.to_dict()
    assert summary["fold_encoding"] > 4, summary
    assert summary["fold_control"] < 2, summary


def test_steering_through_a_separated_map():
    """With separators, the next symbol is predicted at the separator: steering acts there,
    with a probe read at the prediction positions, and moves the restricted prediction."""
    from belief_lens.interventions import intervention_report

    hmm, tm, hook = mess3(), MAPS["comma_bos"], "blocks.1.hook_resid_post"
    model = gpt2_like(n_ctx=32, n_layers=2, d_model=64, n_heads=2, seed=0)
    train(model, hmm, MAPPED, token_map=tm, progress=False)
    table = fit_position_probes(
        model, hmm, tm, [hook], n_sequences=400, length=LENGTH, window=None, read_at="prediction"
    )
    report = intervention_report(
        model, sample_sequences(hmm, 64, LENGTH, seed=3), table.probes[(hook, 0)], hook, hmm,
        token_map=tm, directions=("encoding", "control"),
    )  # fmt: skip
    summary = report.to_dict()
    assert summary["fold_encoding"] > 3, summary
    assert summary["fold_control"] < 2, summary
