"""Activations kept once per distinct prefix (``probing.prefixes``): the same rows, the same fits,
scores and held-out numbers as the per-row activations, and a per-row view equal to the model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from belief_lens.activations import residual_stream
from belief_lens.errors import BeliefLensError
from belief_lens.models import toy_transformer
from belief_lens.probes import collect_probe_data, fit_probes, untrained_control
from belief_lens.probing.data import model_fingerprint, prefix_ids
from belief_lens.probing.prefixes import (
    PrefixActs,
    acts_at,
    acts_dim,
    prefix_logits,
    prefix_reps,
)
from belief_lens.probing.sweep import out_of_fold_predictions
from belief_lens.processes import mess3
from belief_lens.training import evaluate_loss, loss_evaluator


@pytest.fixture(scope="module")
def setup():
    """A small causal model on every Mess3 sequence of length 5 (243 sequences, 363 prefixes),
    collected in batches of 100 so prefixes span batches; and the same data with the model's
    per-row activations in a plain dict (the path without prefix rows)."""
    model = toy_transformer(3, 5, n_layers=2, d_model=16, d_mlp=32, seed=0).eval()
    data = collect_probe_data(model, mess3(), 5, batch_size=100)
    plain_acts = residual_stream(model, data.tokens, data.hooks, batch_size=100)
    plain = data.with_acts(plain_acts, dedupe=True, fingerprint=model_fingerprint(model))
    return model, data, plain


def test_rows_are_one_per_distinct_prefix_and_the_view_is_the_models(setup):
    _, data, plain = setup
    assert isinstance(data.acts, PrefixActs)
    n_prefixes = [int(ids.max()) + 1 for ids in prefix_ids(data.tokens)]
    assert n_prefixes == [3, 9, 27, 81, 243]
    for h in data.hooks:
        assert [len(r) for r in data.acts.rows[h]] == n_prefixes
        assert data.acts.shape(h) == tuple(plain.acts[h].shape) == (243, 5, 16)
        assert acts_dim(data.acts, h) == 16
        torch.testing.assert_close(data.acts[h], plain.acts[h], rtol=1e-5, atol=1e-6)
        view = data.acts[h].double().reshape(-1, 16)
        torch.testing.assert_close(data.acts.mean(h), view.mean(0), rtol=1e-12, atol=1e-12)
    assert "ProbeData(" in repr(data) and "[243, 5, 16]" in repr(data)


def test_fits_scores_and_heldout_numbers_equal_the_per_row_path(setup):
    _, data, plain = setup
    a, b = fit_probes(data), fit_probes(plain)
    for h in [*data.hooks, "concat"]:
        for key in ("mse_all", "r2_all", "mse_heldout", "r2_heldout", "mse_train"):
            assert a[h][key] == pytest.approx(b[h][key], rel=1e-6, abs=1e-10), (h, key)
        torch.testing.assert_close(a.probes[h].coef_, b.probes[h].coef_, rtol=1e-5, atol=1e-6)
    pa, mask_a = out_of_fold_predictions(a, data)
    pb, mask_b = out_of_fold_predictions(b, plain)
    assert torch.equal(mask_a, mask_b)
    for h in pa:
        torch.testing.assert_close(pa[h][mask_a], pb[h][mask_b], rtol=1e-6, atol=1e-8)


def test_out_of_fold_predictions_once_per_prefix_equal_the_row_by_row_ones(setup):
    """One table's out-of-fold outputs, predicted once per distinct prefix, equal the same
    probes applied row by row; a split that cuts a prefix's rows apart (not by prefix) is
    predicted row by row, each row by its own side's probe."""
    _, data, plain = setup
    table = fit_probes(data)
    pa, mask = out_of_fold_predictions(table, data)
    pb, _ = out_of_fold_predictions(table, plain)
    for h in pa:
        torch.testing.assert_close(pa[h], pb[h], rtol=1e-12, atol=1e-14, equal_nan=True)
    assert int(mask.sum()) > 0 and not bool(pa[data.hooks[-1]][mask].isnan().any())

    cut = data.test_mask.clone()
    cut[:, 2:] = False
    cut[::2, 2:] = True  # sequences 0 and 1 share their first three tokens, not their side
    assert torch.equal(data.tokens[0, :3], data.tokens[1, :3])
    split = plain.with_acts(data.acts, dedupe=True, fingerprint=None)
    split.test_mask[:] = cut
    one = fit_probes(split, n_folds=None)
    got, held = out_of_fold_predictions(one, split)
    assert torch.equal(held, cut)
    h = data.hooks[-1]
    want = one.fold_probes[h][0].predict(plain.acts[h][held].double())
    torch.testing.assert_close(got[h][held], want, rtol=1e-10, atol=1e-12)
    assert bool(got[h][~held].isnan().all())


def test_prefix_logits_are_the_models_logits_and_give_the_evaluators_loss(setup):
    """Logits rebuilt from the kept last-block rows (final norm, unembedding) equal the model's
    forward pass on every sequence, and score the same loss as ``evaluate_loss``; without that
    hook, or where the rebuild disagrees with the model, there are none."""
    model, data, _ = setup
    logits = prefix_logits(model, data.acts, data.tokens)
    with torch.no_grad():
        own = model(data.tokens)
    torch.testing.assert_close(logits, own, rtol=1e-5, atol=1e-5)
    evaluator = loss_evaluator(model, mess3())
    assert torch.equal(evaluator.data.inputs, data.tokens)  # every sequence, in the same order
    reused, ran = evaluator.score_logits(logits), evaluate_loss(model, mess3())
    assert reused.loss == pytest.approx(ran.loss, rel=1e-7)  # float32 logits, other batches
    assert reused.loss_per_position == pytest.approx(ran.loss_per_position, rel=1e-6)

    assert prefix_logits(model, data.acts.select(data.hooks[:1]), data.tokens) is None
    shifted = [("blocks.0.hook_resid_post", lambda act, hook: act.flip(-1))]
    with model.hooks(fwd_hooks=shifted):  # the model no longer gives what the rows were
        assert prefix_logits(model, data.acts, data.tokens) is None
    with pytest.raises(BeliefLensError, match=r"logits must have shape \[N, n_ctx, d_vocab\]"):
        evaluator.score_logits(logits[:10])


def test_fit_equals_lstsq_on_repeated_rows(setup):
    """One row per prefix, weighted by its count, equals least squares on every row repeated."""
    _, data, _ = setup
    h = data.hooks[-1]
    table = fit_probes(data)
    X = data.acts[h].reshape(-1, 16).double().numpy()
    Y = data.beliefs.reshape(-1, 3).numpy()
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    coef = np.linalg.lstsq(Xc, Yc, rcond=None)[0]
    mse = float(((Xc @ coef - Yc) ** 2).mean())
    assert table[h]["mse_all"] == pytest.approx(mse, rel=1e-5, abs=1e-12)
    pred = table.probes[h].predict(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(pred, Xc @ coef + Y.mean(0), atol=1e-6)


def test_untrained_control_equals_the_per_row_path(setup):
    model, data, plain = setup
    a = untrained_control(model, data, seed=3, batch_size=100)
    b = untrained_control(model, plain.with_acts(dict(plain.acts), dedupe=False, fingerprint=None),
                          seed=3, batch_size=100)  # fmt: skip
    for h in [*data.hooks, "concat"]:
        assert a[h]["mse_all"] == pytest.approx(b[h]["mse_all"], rel=1e-6, abs=1e-10)


def test_at_select_and_membership_build_no_view(setup, monkeypatch):
    _, data, plain = setup
    mask = torch.rand(243, 5, generator=torch.Generator().manual_seed(0)) < 0.3
    h = data.hooks[1]
    torch.testing.assert_close(acts_at(data.acts, h, mask), plain.acts[h][mask], rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    torch.testing.assert_close(acts_at(plain.acts, h, mask), plain.acts[h][mask])

    def no_view(self, hook):
        raise AssertionError("built a per-row view")

    monkeypatch.setattr(PrefixActs, "__getitem__", no_view)
    assert h in data.acts and "nope" not in data.acts and len(data.acts) == len(data.hooks)
    sub = data.select_hooks([h])
    assert isinstance(sub.acts, PrefixActs) and list(sub.acts) == [h]
    assert sub.acts.rows[h] is data.acts.rows[h]


def test_prefix_reps_and_a_bad_row_count():
    tokens = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 0]])
    (ids0, reps0), (ids1, reps1) = prefix_reps(tokens, dedupe=True)
    assert ids0.tolist() == [0, 0, 1, 0] and len(reps0) == 2
    assert ids1.tolist() == [1, 1, 2, 0] and len(reps1) == 3
    for ids, reps in ((ids0, reps0), (ids1, reps1)):
        assert torch.equal(ids[reps], torch.arange(len(reps)))  # each rep has its own prefix
    (ids, reps), _ = prefix_reps(tokens, dedupe=False)
    assert torch.equal(ids, torch.arange(4)) and torch.equal(reps, torch.arange(4))
    with pytest.raises(BeliefLensError, match="has 1 positions, expected 2"):
        PrefixActs({"h": [torch.zeros(2, 4)]}, [ids0, ids1])
