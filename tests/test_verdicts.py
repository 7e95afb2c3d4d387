"""Issue 21: verdicts graded against their controls, with the numbers they rest on."""

import math

import numpy as np
import pytest
import torch

from belief_lens.interventions.steering import InterventionReport
from belief_lens.report.verdicts import grade, plain


def test_rrxor_patching_is_partial_not_no_effect():
    # Measured on the RRXOR checkpoint on main: 0.66 recovered against 0.11 for the control.
    g = grade("patching", 0.66, 0.11, strong=0.9, min_ratio=5.0)
    assert g.grade == "partial" and g.ratio == pytest.approx(6.0)
    text = g.sentence()
    assert "0.66" in text and "0.11" in text and "ratio 6" in text and "partial" in text


@pytest.mark.parametrize(
    ("effect", "control", "se", "expected"),
    [
        (0.99, 0.02, None, "clear"),
        (0.66, 0.11, None, "partial"),
        (0.12, 0.11, None, "none"),  # above the control, but no effect worth the name
        (0.66, 0.11, 0.3, "none"),  # within the uncertainty
        (-0.5, 0.0, None, "reversed"),
    ],
)
def test_grades(effect, control, se, expected):
    g = grade("x", effect, control, effect_se=se, strong=0.9, min_ratio=5.0)
    assert g.grade == expected


def test_steering_made_worse_is_reversed_and_a_tiny_fold_is_none():
    # The cross-model steer: fold 0.64, i.e. steering made it worse.
    assert grade("s", 0.64, 1.0, strong=2, min_ratio=5, neutral=1.0).grade == "reversed"
    assert grade("s", 1.06, 0.93, strong=2, min_ratio=5, neutral=1.0).grade == "none"


def test_zero_is_printed_as_zero():
    assert plain(3.83e-18) == "0" and plain(-1e-15) == "0" and plain(0.0013) == "0.0013"


def test_fold_standard_error_against_a_bootstrap():
    rng = np.random.default_rng(0)
    before = torch.tensor(rng.gamma(2.0, 0.2, 400))
    after = torch.tensor(rng.gamma(2.0, 0.02, 400))
    r = InterventionReport(
        hook="h", position=0, tokens=torch.zeros(400, 1, dtype=torch.long),
        target_tokens=torch.zeros(400, 1, dtype=torch.long),
        target_beliefs=torch.zeros(400, 3), theory_probs=torch.zeros(400, 3),
        probs_before=torch.zeros(400, 3), kl_before=before, probs_after={},
        kl_after={"encoding": after}, theory_probs_before=torch.zeros(400, 3),
    )  # fmt: skip
    boot = []
    for _ in range(2000):
        i = rng.integers(0, 400, 400)
        boot.append(before.numpy()[i].mean() / after.numpy()[i].mean())
    assert r.fold_se("encoding") == pytest.approx(float(np.std(boot)), rel=0.1)
    assert math.isfinite(r.to_dict()["fold_encoding_se"])


@pytest.mark.slow  # three tiny training runs
def test_factored_verdict_over_three_seeds_with_mean_and_se(tmp_path):
    from belief_lens.experiments.factored import (
        FactoredExperiment,
        factored_training,
        run_factored_seeds,
        write_factored_seeds_report,
    )

    config = FactoredExperiment(
        epsilon=0.0,
        train=factored_training(steps=2, checkpoint_every=2),
        n_ctx=3,
        n_eval_sequences=200,
        n_vary_one=40,
        n_checkpoints=1,
    )
    with pytest.raises(Exception, match="at least 3 distinct seeds"):
        run_factored_seeds(config, tmp_path / "x", (0, 0, 1))
    runs = run_factored_seeds(config, tmp_path, (0, 1, 2))
    assert [r.config.train.seed for r in runs] == [0, 1, 2]
    metrics = write_factored_seeds_report(runs, tmp_path)
    across = metrics["across_seeds"]
    dims = np.array([r.final.dims_95 for r in runs], dtype=float)
    assert across["dims_95"]["mean"] == pytest.approx(dims.mean())
    assert across["dims_95"]["se"] == pytest.approx(dims.std(ddof=1) / np.sqrt(3))
    assert across["n_seeds"] == 3 and len(across["verdicts"]) == 3
    html = (tmp_path / "report.html").read_text()
    assert "Verdict over 3 seeds" in html and "±" in html and "Vary-one overlap" in html
    # Independent factors: the product of marginals loses exactly nothing, printed as 0.
    assert "loses 0 ± 0 nats" in html and "e-1" not in html.split("loses")[1][:30]
    assert "Under-trained" in html  # two steps
