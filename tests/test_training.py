"""The training loop: targets and alignment, loss going down, and resumable checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from belief_lens.beliefs import next_token_distributions
from belief_lens.compmech import optimal_loss
from belief_lens.errors import BeliefLensError
from belief_lens.models import toy_transformer
from belief_lens.processes import mess3, rrxor
from belief_lens.training import TrainingHistory, lr_at, make_batch, train

TINY = dict(n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=32)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_make_batch_alignment():
    hmm = mess3()
    inputs, target = make_batch(hmm, 5, 6, targets="tokens", generator=_gen())
    again, _ = make_batch(hmm, 5, 7, targets="bayes", generator=_gen())
    assert inputs.shape == target.shape == (5, 6)
    torch.testing.assert_close(inputs[:, 1:], target[:, :-1])  # position t predicts token t+1
    torch.testing.assert_close(inputs, again[:, :6])  # same stream of samples

    inputs, probs = make_batch(hmm, 5, 6, targets="bayes", generator=_gen())
    assert probs.shape == (5, 6, 3) and probs.dtype == torch.float64
    torch.testing.assert_close(probs, next_token_distributions(hmm, inputs))


def test_make_batch_with_bos():
    hmm = mess3()
    inputs, target = make_batch(hmm, 4, 6, targets="tokens", bos=True, generator=_gen())
    assert (inputs[:, 0] == 3).all() and inputs.shape == target.shape == (4, 6)
    torch.testing.assert_close(inputs[:, 1:], target[:, :-1])  # position t predicts token t
    inputs, probs = make_batch(hmm, 4, 6, targets="bayes", bos=True, generator=_gen())
    assert (inputs[:, 0] == 3).all() and probs.shape == (4, 6, 3)
    torch.testing.assert_close(probs[:, 0], hmm.next_token_probs(hmm.initial_state).expand(4, 3))
    torch.testing.assert_close(probs[:, 1:], next_token_distributions(hmm, inputs[:, 1:]))


def test_lr_schedule():
    kw = dict(lr=1.0, n_steps=110, warmup_steps=10)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.5)
    assert lr_at(110, **kw) == pytest.approx(0.0)
    assert lr_at(110, **kw, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(50, **kw, schedule="constant") == 1.0
    assert lr_at(60, **kw, schedule="linear") == pytest.approx(0.5)
    with pytest.raises(BeliefLensError, match="schedule must be"):
        lr_at(50, **kw, schedule="step")


@pytest.mark.parametrize("targets", ["bayes", "tokens"])
def test_training_lowers_loss(targets):
    hmm = mess3()
    model = toy_transformer(3, 8, **TINY, seed=0)
    history = train(
        model,
        hmm,
        n_steps=120,
        batch_size=64,
        lr=1e-2,
        targets=targets,
        progress=False,
        eval_sequences=512,
    )
    first, last = history.evals[0], history.evals[-1]
    assert (first.step, last.step) == (0, 120)
    assert last.loss < first.loss - 0.1
    assert last.loss_over_optimal < 1.05
    assert len(history.loss) == 120 and len(last.loss_per_position) == 8
    torch.testing.assert_close(
        torch.tensor(history.optimal_loss, dtype=torch.float64),
        optimal_loss(hmm, 8),
        rtol=1e-12,
        atol=0,
    )
    assert last.loss_over_optimal_per_position[0] == pytest.approx(
        last.loss_per_position[0] / history.optimal_loss[0]
    )
    assert model.training  # the mode it came in with


def test_exact_evaluation_when_few_sequences():
    model = toy_transformer(2, 6, **TINY).eval()
    history = train(model, rrxor(), n_steps=2, progress=False, targets="bayes")
    assert history.evals[0].exact  # RRXOR has few length-6 sequences
    assert not model.training
    history = train(toy_transformer(3, 10, **TINY), mess3(), n_steps=1, progress=False)
    assert not history.evals[0].exact  # 59,049 > eval_sequences


def test_n_tokens_and_callback_stop():
    model = toy_transformer(3, 8, **TINY)
    seen = []
    history = train(
        model,
        mess3(),
        n_tokens=64 * 8 * 10,
        batch_size=64,
        progress=False,
        eval_every=5,
        callback=lambda step, h: seen.append(step) or step == 4,
    )
    assert history.config["n_steps"] == 10 and history.tokens_per_step == 512
    assert seen == [1, 2, 3, 4] and history.steps == 4
    assert [e.step for e in history.evals] == [0, 4]


def _state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("targets", ["bayes", "tokens"])
def test_resume_matches_uninterrupted(tmp_path, targets):
    hmm = mess3()
    kwargs = dict(
        n_steps=24,
        batch_size=32,
        lr=3e-3,
        targets=targets,
        progress=False,
        checkpoint_every=8,
        eval_sequences=256,
    )
    straight = toy_transformer(3, 8, **TINY, seed=0)
    full = train(straight, hmm, checkpoint_dir=tmp_path / "a", **kwargs)

    class Crash(Exception):
        pass

    def crash(step, history):
        if step == 13:
            raise Crash

    interrupted = toy_transformer(3, 8, **TINY, seed=0)
    with pytest.raises(Crash):
        train(interrupted, hmm, checkpoint_dir=tmp_path / "b", callback=crash, **kwargs)
    latest = json.loads((tmp_path / "b" / "latest.json").read_text())
    assert latest["step"] == 8
    resumed_model = toy_transformer(3, 8, **TINY, seed=99)  # weights come from the checkpoint
    resumed = train(resumed_model, hmm, checkpoint_dir=tmp_path / "b", **kwargs)
    assert _state_equal(straight, resumed_model)
    assert resumed.loss == full.loss
    assert resumed.evals == full.evals
    # A finished run resumes to itself without training further.
    again = train(resumed_model, hmm, checkpoint_dir=tmp_path / "b", **kwargs)
    assert again.loss == full.loss


def test_resume_with_other_settings_raises(tmp_path):
    hmm = mess3()
    model = toy_transformer(3, 8, **TINY)
    train(model, hmm, n_steps=4, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(BeliefLensError, match=r"cannot resume.*lr: checkpoint 0\.001 vs now 0\.01"):
        train(model, hmm, n_steps=4, lr=1e-2, progress=False, checkpoint_dir=tmp_path)
    history = train(
        model, hmm, n_steps=4, lr=1e-2, progress=False, checkpoint_dir=tmp_path, resume=False
    )
    assert history.steps == 4


def test_history_roundtrip():
    history = train(toy_transformer(3, 8, **TINY), mess3(), n_steps=3, progress=False)
    assert TrainingHistory.from_dict(json.loads(json.dumps(history.to_dict()))) == history


def test_bad_arguments_raise():
    hmm = mess3()
    model = toy_transformer(3, 8, **TINY)
    with pytest.raises(BeliefLensError, match="exactly one of n_steps or n_tokens"):
        train(model, hmm, progress=False)
    with pytest.raises(BeliefLensError, match="exactly one of n_steps or n_tokens"):
        train(model, hmm, n_steps=2, n_tokens=100, progress=False)
    with pytest.raises(BeliefLensError, match="d_vocab=3 is too small.*plus BOS; need >= 4"):
        train(model, hmm, n_steps=2, bos=True, progress=False)
    with pytest.raises(BeliefLensError, match="targets must be"):
        train(model, hmm, n_steps=2, targets="soft", progress=False)
    with pytest.raises(BeliefLensError, match="optimizer must be"):
        train(model, hmm, n_steps=2, optimizer="lion", progress=False)
    with pytest.raises(BeliefLensError, match="batch_size must be >= 1"):
        train(model, hmm, n_steps=2, batch_size=0, progress=False)


def test_budget_steps_leaves_the_model_untouched():
    from belief_lens.training import DEFAULTS, budget_steps

    hmm = mess3()
    model = toy_transformer(3, 6, n_layers=1, d_model=16, d_mlp=32, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = budget_steps(model, hmm, 5.0, targets="bayes", **DEFAULTS["bayes"])
    assert isinstance(n, int) and n >= 1
    # A longer budget buys more steps (loosely: timing on shared machines is noisy).
    assert budget_steps(model, hmm, 60.0, targets="bayes", **DEFAULTS["bayes"]) > n
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    with pytest.raises(BeliefLensError, match="seconds must be positive"):
        budget_steps(model, hmm, 0)


def test_evaluate_loss_is_exact_expected_cross_entropy():
    from belief_lens.beliefs import enumerate_sequences
    from belief_lens.training import evaluate_loss

    hmm = rrxor()
    model = toy_transformer(2, 6, n_layers=1, d_model=16, d_mlp=32, seed=1).train()
    record = evaluate_loss(model, hmm)
    assert record.exact and model.training  # every sequence; the caller's mode is kept
    data = enumerate_sequences(hmm, 6)
    with torch.no_grad():
        logp = model.eval()(data.tokens).double().log_softmax(-1)
    ce = -(hmm.next_token_probs(data.beliefs) * logp).sum(-1)
    expected = (data.probs[:, None] * ce).sum(0)
    torch.testing.assert_close(
        torch.tensor(record.loss_per_position, dtype=torch.float64), expected
    )
    assert record.loss_over_optimal == pytest.approx(expected.mean() / optimal_loss(hmm, 6).mean())
