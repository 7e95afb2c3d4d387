"""The training loop: configs, targets and alignment, loss going down, time budgets, any context
length, and checkpoints that survive crashes, corruption and the wrong process."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import pytest
import torch

from belief_lens.beliefs import next_token_distributions
from belief_lens.compmech import estimate_optimal_loss, loss_floor, optimal_loss
from belief_lens.errors import BeliefLensError
from belief_lens.models import ModelConfig, toy_transformer
from belief_lens.processes import mess3, rrxor
from belief_lens.token_map import TokenMap
from belief_lens.training import (
    TrainConfig,
    TrainingHistory,
    evaluate_loss,
    lr_at,
    make_batch,
    process_fingerprint,
    step_checkpoints,
    train,
)

TINY = dict(n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=32)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _state_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", 0, r"TrainConfig.steps must be an integer in \[1, inf\], got 0"),
        ("steps", 2.5, r"TrainConfig.steps must be an integer, got 2.5"),
        ("n_tokens", -5, r"n_tokens must be an integer in \[1, inf\], got -5"),
        ("seconds", float("nan"), "seconds must be a finite real number, got nan"),
        ("seconds", 0, r"seconds must be in \(0, inf\], got 0.0"),
        ("batch_size", 0, r"batch_size must be an integer in \[1, inf\], got 0"),
        ("lr", float("inf"), "lr must be a finite real number, got inf"),
        ("lr", -1e-3, r"lr must be in \(0, inf\], got -0.001"),
        ("warmup_steps", -1, r"warmup_steps must be an integer in \[0, inf\], got -1"),
        ("min_lr_ratio", 1.5, r"min_lr_ratio must be in \[0, 1\], got 1.5"),
        ("weight_decay", float("nan"), "weight_decay must be a finite real number, got nan"),
        ("betas", (0.9, 1.0), r"betas\[1\] must be in \[0, 1\), got 1.0"),
        ("betas", (0.9,), r"betas must be two numbers in \[0, 1\), got \(0.9,\)"),
        ("grad_clip", -1.0, r"grad_clip must be in \(0, inf\], got -1.0"),
        ("grad_clip", 0.0, r"grad_clip must be in \(0, inf\], got 0.0"),
        ("targets", "soft", "TrainConfig.targets must be 'tokens' or 'bayes', got 'soft'"),
        ("schedule", "step", "schedule must be one of 'cosine', 'linear', 'constant', got 'step'"),
        ("optimizer", "lion", "optimizer must be one of 'adamw', 'adam', 'sgd', got 'lion'"),
        ("bos", 1, "TrainConfig.bos must be True or False, got 1"),
        ("length", 0, r"length must be an integer in \[1, inf\], got 0"),
        ("seed", -1, r"seed must be an integer in \[0, 9223372036854775807\], got -1"),
        ("seed", 2**63, r"seed must be an integer in \[0, 9223372036854775807\]"),
        ("eval_every", 0, r"eval_every must be an integer in \[1, inf\], got 0"),
        ("eval_sequences", 0, r"eval_sequences must be an integer in \[1, inf\], got 0"),
        ("checkpoint_every", 0, r"checkpoint_every must be an integer in \[1, inf\], got 0"),
        ("keep_checkpoints", 0, r"keep_checkpoints must be an integer in \[1, inf\], got 0"),
        ("resume", "yes", "TrainConfig.resume must be True or False, got 'yes'"),
    ],
)
def test_each_invalid_train_config_field_raises(field, value, message):
    with pytest.raises(BeliefLensError, match=message):
        TrainConfig(steps=10, **{field: value}) if field != "steps" else TrainConfig(steps=value)


def test_train_config_needs_one_length():
    with pytest.raises(BeliefLensError, match="steps, n_tokens or seconds"):
        TrainConfig()
    with pytest.raises(BeliefLensError, match="steps or n_tokens, not both"):
        TrainConfig(steps=2, n_tokens=100)
    with pytest.raises(BeliefLensError, match=r"no field\(s\) \['n_steps'\]"):
        TrainConfig(steps=2).replace(n_steps=3)
    config = TrainConfig(steps=5, seconds=3.0, betas=[0.8, 0.9])
    assert config.betas == (0.8, 0.9)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("d_model", 0, r"ModelConfig.d_model must be an integer in \[1, inf\], got 0"),
        ("n_heads", 1.5, "n_heads must be an integer"),
        ("d_vocab", True, "d_vocab must be an integer"),
        ("act_fn", "tanh", "act_fn must be one of"),
        ("normalization_type", "BN", "normalization_type must be one of"),
        ("positional_embedding_type", "learned", "positional_embedding_type must be one of"),
        ("attn_only", "no", "attn_only must be True or False"),
    ],
)
def test_each_invalid_model_config_field_raises(field, value, message):
    with pytest.raises(BeliefLensError, match=message):
        ModelConfig(**{"d_vocab": 3, "n_ctx": 8, field: value})


def test_train_takes_a_config_and_overrides():
    model = toy_transformer(ModelConfig(d_vocab=3, n_ctx=6, **TINY))
    config = TrainConfig(steps=2, eval_sequences=64)
    history = train(model, mess3(), config, progress=False, lr=2e-3)
    assert history.config["lr"] == 2e-3 and history.steps == 2
    assert history.model_config == ModelConfig(d_vocab=3, n_ctx=6, **TINY).to_dict()
    with pytest.raises(BeliefLensError, match="config must be a TrainConfig"):
        train(model, mess3(), {"steps": 2})


def _count_hmm_checks(monkeypatch) -> dict[str, int]:
    """Count ``check_hmm`` (through every module's reference to it) and ``HMM.check_belief``."""
    import importlib
    import pkgutil

    import belief_lens
    from belief_lens import beliefs
    from belief_lens.hmm import HMM

    counts = {"check_hmm": 0, "check_belief": 0}
    real_check_hmm, real_check_belief = beliefs.check_hmm, HMM.check_belief

    def check_hmm(*args, **kwargs):
        counts["check_hmm"] += 1
        return real_check_hmm(*args, **kwargs)

    def check_belief(self, *args, **kwargs):
        counts["check_belief"] += 1
        return real_check_belief(self, *args, **kwargs)

    for info in pkgutil.walk_packages(belief_lens.__path__, "belief_lens."):
        module = importlib.import_module(info.name)
        if getattr(module, "check_hmm", None) is real_check_hmm:
            monkeypatch.setattr(module, "check_hmm", check_hmm)
    monkeypatch.setattr(HMM, "check_belief", check_belief)
    return counts


@pytest.mark.parametrize("process", [mess3, rrxor])
def test_train_validates_the_process_once(monkeypatch, process):
    """The train route checks the HMM at its entry and nowhere inside: not in the data blocks,
    the evaluation set (enumerated for RRXOR, sampled for Mess3) or the loss floor."""
    hmm = process()
    model = toy_transformer(hmm.n_symbols, 10, **TINY)
    counts = _count_hmm_checks(monkeypatch)
    history = train(model, hmm, steps=65, batch_size=4, eval_sequences=1024, progress=False)
    assert history.steps == 65  # three data blocks of 32 steps
    assert counts == {"check_hmm": 1, "check_belief": 0}
    counts.update(check_hmm=0)
    evaluate_loss(model, hmm, n_sequences=1024)
    assert counts == {"check_hmm": 1, "check_belief": 0}


# ------------------------------------------------------------------------------------ data
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


def test_make_batch_checks_its_arguments():
    hmm = mess3()
    with pytest.raises(BeliefLensError, match="hmm must be an HMM"):
        make_batch("mess3", 4, 6, targets="tokens")
    with pytest.raises(BeliefLensError, match="targets must be 'tokens' or 'bayes'"):
        make_batch(hmm, 4, 6, targets="soft")
    with pytest.raises(BeliefLensError, match="bos must be True or False"):
        make_batch(hmm, 4, 6, targets="tokens", bos=1)
    with pytest.raises(BeliefLensError, match=r"n_ctx must be an integer in \[1, inf\]"):
        make_batch(hmm, 4, 0, targets="bayes")
    with pytest.raises(BeliefLensError, match="generator must be a torch.Generator"):
        make_batch(hmm, 4, 6, targets="tokens", generator=0)


@pytest.mark.parametrize("targets", ["tokens", "bayes"])
@pytest.mark.parametrize("bos", [False, True])
def test_training_batches_are_make_batch_data(targets, bos):
    """train's data is make_batch's: DATA_BLOCK steps drawn at once from the block's generator,
    and for a token-mapped model the same symbols encoded through the map."""
    from belief_lens.training.data import DATA_BLOCK, TrainingBatches, block_generator, data_layout

    hmm = mess3()
    config = TrainConfig(steps=40, batch_size=3, targets=targets, bos=bos, seed=5)
    model = toy_transformer(3 + bos, 7, **TINY)
    batches = TrainingBatches(hmm, data_layout(model, hmm, config, None), config)
    n = 3 * DATA_BLOCK
    for block in (0, 1):
        inputs, target = make_batch(
            hmm, n, 7, targets=targets, bos=bos, generator=block_generator(5, block)
        )
        for step in (block * DATA_BLOCK, block * DATA_BLOCK + 31):
            got_inputs, got_target = batches(step)
            rows = slice((step % DATA_BLOCK) * 3, (step % DATA_BLOCK) * 3 + 3)
            assert torch.equal(got_inputs, inputs[rows])
            expected = target[rows].float() if targets == "bayes" else target[rows]
            assert torch.equal(got_target, expected)
    if bos:  # a token map brings its own BOS
        tm = TokenMap([3, 1, 2], separator=[0], bos=4)
        config = config.replace(bos=False)
        mapped = TrainingBatches(hmm, data_layout(toy_transformer(5, 13, **TINY), hmm, config, tm),
                                 config)  # fmt: skip
        inputs, target = make_batch(
            hmm, n, 7, targets=targets, bos=True, generator=block_generator(5, 0)
        )
        got_inputs, got_target = mapped(0)
        assert torch.equal(got_inputs, tm.encode(inputs[:3, 1:]))
        assert torch.equal(got_target, target[:3].float() if targets == "bayes" else target[:3])


# ------------------------------------------------------------------------------------ schedule
def test_lr_schedule():
    config = TrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(0, 0.0, config) == pytest.approx(0.1)
    assert lr_at(9, 0.0, config) == pytest.approx(1.0)
    assert lr_at(50, 0.5, config) == pytest.approx(0.5)
    assert lr_at(99, 1.0, config) == pytest.approx(0.0)
    assert lr_at(99, 1.0, config.replace(min_lr_ratio=0.1)) == pytest.approx(0.1)
    assert lr_at(50, 0.5, config.replace(schedule="constant")) == 1.0
    assert lr_at(50, 0.25, config.replace(schedule="linear")) == pytest.approx(0.75)


class FakeClock:
    """A clock that moves only when told: one second per training step (via the callback)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, step, history) -> None:
        self.now += 1.0


def test_time_budget_lays_the_schedule_over_elapsed_time():
    clock = FakeClock()
    config = TrainConfig(seconds=20.0, lr=1.0, warmup_steps=0, eval_sequences=64)
    model = toy_transformer(3, 6, **TINY)
    history = train(model, mess3(), config, clock=clock, callback=clock.tick, progress=False)
    # One second per step, 20 seconds: 20 steps, the schedule at elapsed / budget.
    assert history.steps == 20
    expected = [0.5 * (1 + math.cos(math.pi * i / 20)) for i in range(20)]
    assert history.lr == pytest.approx(expected)
    assert history.seconds == pytest.approx(20.0)
    assert history.evals[-1].step == 20
    assert [e.step for e in history.evals] == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]


def test_time_budget_with_a_step_cap_ends_at_the_first():
    clock = FakeClock()
    config = TrainConfig(seconds=100.0, steps=10, lr=1.0, warmup_steps=0, eval_sequences=64)
    model = toy_transformer(3, 6, **TINY)
    history = train(model, mess3(), config, clock=clock, callback=clock.tick, progress=False)
    assert history.steps == 10
    # Steps progress (i / 10) runs ahead of time progress (i / 100): it sets the schedule.
    assert history.lr == pytest.approx([0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)])


# ------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("targets", ["bayes", "tokens"])
def test_training_lowers_loss(targets):
    hmm = mess3()
    model = toy_transformer(3, 8, **TINY, seed=0)
    history = train(
        model,
        hmm,
        steps=120,
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
    assert history.optimal_exact and history.optimal_method == "exact"
    assert last.loss_over_optimal_per_position[0] == pytest.approx(
        last.loss_per_position[0] / history.optimal_loss[0]
    )
    assert model.training  # the mode it came in with


def test_training_leaves_the_global_rng_alone():
    model = toy_transformer(3, 6, **TINY)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train(model, mess3(), steps=3, progress=False, eval_sequences=64)
    assert torch.equal(torch.rand(3), expected)


def test_exact_evaluation_when_few_sequences():
    model = toy_transformer(2, 6, **TINY).eval()
    history = train(model, rrxor(), steps=2, progress=False, targets="bayes")
    assert history.evals[0].exact  # RRXOR has few length-6 sequences
    assert not model.training
    history = train(toy_transformer(3, 10, **TINY), mess3(), steps=1, progress=False)
    assert not history.evals[0].exact  # 59,049 > eval_sequences
    assert history.optimal_exact  # but the belief tree still fits


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
    assert history.config["n_tokens"] == 5120 and history.tokens_per_step == 512
    assert seen == [1, 2, 3, 4] and history.steps == 4
    assert [e.step for e in history.evals] == [0, 4]


def test_token_mapped_training():
    """A model reading symbols through a map (ids, separator, BOS) learns at its prediction
    positions, against the full-vocabulary softmax."""
    hmm = rrxor()
    tm = TokenMap([3, 1], separator=[0], bos=4)
    model = toy_transformer(5, 13, **TINY)  # BOS + 6 symbols with separators
    history = train(model, hmm, steps=60, lr=1e-2, targets="bayes", token_map=tm, progress=False)
    assert len(history.optimal_loss) == 7  # the BOS prediction and one after each symbol
    assert history.evals[-1].exact
    assert history.evals[-1].loss < history.evals[0].loss - 0.05
    assert history.process["token_map"] == repr(tm)
    with pytest.raises(BeliefLensError, match="need 15 model positions, but n_ctx=13"):
        train(model, hmm, steps=1, token_map=tm, length=7, progress=False)


# ------------------------------------------------------------------------------ long contexts
def _reference_myopic_entropy(hmm, max_length):
    """h(0..max_length) by brute force over every word, with a plain forward algorithm."""
    T = hmm.T.numpy()
    h = []
    for L in range(max_length + 1):
        total = 0.0
        for word in itertools.product(range(hmm.n_symbols), repeat=L):
            v = hmm.initial_state.numpy()
            for x in word:
                v = v @ T[x]
            p_word = v.sum()
            if p_word <= 0:
                continue
            nxt = [(v @ T[x]).sum() / p_word for x in range(hmm.n_symbols)]
            total += p_word * -sum(p * math.log(p) for p in nxt if p > 0)
        h.append(total)
    return torch.tensor(h, dtype=torch.float64)


def test_loss_floor_exact_and_estimated_against_brute_force():
    hmm = mess3()
    reference = _reference_myopic_entropy(hmm, 6)
    exact = loss_floor(hmm, 6)
    assert exact.exact and exact.method == "exact"
    torch.testing.assert_close(exact.per_position, reference[1:], rtol=1e-12, atol=1e-14)
    with_bos = loss_floor(hmm, 6, bos=True)
    torch.testing.assert_close(with_bos.per_position, reference[:6], rtol=1e-12, atol=1e-14)
    # Over the memory bound, the same figure is estimated, within its standard error.
    estimate = loss_floor(hmm, 6, max_states=10, n_sequences=20_000, seed=1)
    assert not estimate.exact and estimate.method.startswith("estimated ± ")
    assert abs(estimate.mean - float(reference[1:].mean())) < 4 * estimate.mean_se
    # (h(1) of Mess3 has no variance: the three beliefs after one token are symmetric.)
    error = (estimate.per_position - reference[1:]).abs()
    assert (error <= 5 * estimate.per_position_se + 1e-12).all()
    direct = estimate_optimal_loss(hmm, 6, n_sequences=20_000, seed=1)
    assert direct.mean == estimate.mean


def test_mess3_trains_and_evaluates_at_n_ctx_64():
    model = toy_transformer(3, 64, **TINY)
    history = train(
        model, mess3(), steps=3, batch_size=8, targets="bayes", eval_sequences=256, progress=False
    )
    assert len(history.optimal_loss) == 64 and not history.optimal_exact
    assert history.optimal_method.startswith("estimated ± ")
    assert all(se > 0 for se in history.optimal_loss_se[1:])  # h(1) has no variance
    last = history.evals[-1]
    assert not last.exact and not last.optimal_exact and len(last.loss_per_position) == 64
    assert last.optimal_loss == pytest.approx(history.optimal_mean)
    # The floor is estimated on the evaluation's own sample, so the ratio is at least 1.
    assert last.loss_over_optimal > 1
    # h(L) for Mess3 decreases towards its entropy rate (about 0.794 nats).
    assert 0.78 < history.optimal_loss[-1] < 0.81


# ------------------------------------------------------------------------------ checkpoints
KW = dict(steps=24, batch_size=32, lr=3e-3, checkpoint_every=8, eval_sequences=256)


@pytest.mark.parametrize("targets", ["bayes", "tokens"])
def test_resume_matches_uninterrupted(tmp_path, targets):
    hmm = mess3()
    config = TrainConfig(**KW, targets=targets)
    straight = toy_transformer(3, 8, **TINY, seed=0)
    full = train(straight, hmm, config, checkpoint_dir=tmp_path / "a", progress=False)

    class Crash(Exception):
        pass

    def crash(step, history):
        if step == 13:
            raise Crash

    interrupted = toy_transformer(3, 8, **TINY, seed=0)
    with pytest.raises(Crash):
        train(interrupted, hmm, config, checkpoint_dir=tmp_path / "b", callback=crash,
              progress=False)  # fmt: skip
    assert [s for s, _ in step_checkpoints(tmp_path / "b")] == [8]
    resumed_model = toy_transformer(3, 8, **TINY, seed=99)  # weights come from the checkpoint
    resumed = train(resumed_model, hmm, config, checkpoint_dir=tmp_path / "b", progress=False)
    assert _state_equal(straight, resumed_model)
    assert resumed.loss == full.loss and resumed.lr == full.lr
    assert resumed.evals == full.evals
    # A finished run resumes to itself without training further.
    again = train(resumed_model, hmm, config, checkpoint_dir=tmp_path / "b", progress=False)
    assert again.loss == full.loss
    # Step checkpoints are pruned to the last keep_checkpoints (3).
    assert [s for s, _ in step_checkpoints(tmp_path / "b")] == [8, 16, 24]


def test_checkpoints_are_pruned_to_the_last_k(tmp_path):
    model = toy_transformer(3, 6, **TINY)
    train(model, mess3(), steps=10, checkpoint_every=1, keep_checkpoints=2, eval_sequences=64,
          checkpoint_dir=tmp_path, progress=False)  # fmt: skip
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["step_00000009", "step_00000010"]


def test_crash_between_checkpoint_writes_leaves_the_previous_one(tmp_path, monkeypatch):
    import safetensors.torch

    hmm = mess3()
    config = TrainConfig(**KW, targets="bayes")
    straight = toy_transformer(3, 8, **TINY, seed=0)
    full = train(straight, hmm, config, progress=False)

    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def crash_on_second_file_of_step_16(tensors, filename, metadata=None):
        calls["n"] += 1
        if "step_00000016" in str(filename) and "optimizer" in str(filename):
            with open(filename, "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt  # killed after the weights, before the optimizer state
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", crash_on_second_file_of_step_16)
    model = toy_transformer(3, 8, **TINY, seed=0)
    with pytest.raises(KeyboardInterrupt):
        train(model, hmm, config, checkpoint_dir=tmp_path, progress=False)
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0].startswith(".step_00000016.tmp-") and names[1:] == ["step_00000008"]
    # The previous checkpoint loads as a model on its own, and the run resumes exactly.
    from belief_lens.models import load_checkpoint

    load_checkpoint(tmp_path / "step_00000008" / "model.safetensors")
    resumed_model = toy_transformer(3, 8, **TINY, seed=5)
    resumed = train(resumed_model, hmm, config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.loss == full.loss and _state_equal(straight, resumed_model)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # stale temp cleaned


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    hmm = mess3()
    config = TrainConfig(**KW, targets="bayes")
    straight = toy_transformer(3, 8, **TINY, seed=0)
    full = train(straight, hmm, config, progress=False)
    model = toy_transformer(3, 8, **TINY, seed=0)
    train(model, hmm, config.replace(steps=24), checkpoint_dir=tmp_path, progress=False,
          callback=lambda step, h: step == 16)  # fmt: skip
    assert [s for s, _ in step_checkpoints(tmp_path)] == [8, 16]
    weights = tmp_path / "step_00000016" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    resumed_model = toy_transformer(3, 8, **TINY, seed=5)
    with pytest.warns(RuntimeWarning, match=r"step_00000016.*corrupt or incomplete.*falling back"):
        resumed = train(resumed_model, hmm, config, checkpoint_dir=tmp_path, progress=False)
    assert resumed.loss == full.loss and _state_equal(straight, resumed_model)
    # A garbled state file falls back the same way.
    (tmp_path / "step_00000024" / "state.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="step_00000024"):
        train(resumed_model, hmm, config, checkpoint_dir=tmp_path, progress=False)


def test_resume_with_another_process_of_the_same_shape_is_refused(tmp_path):
    model = toy_transformer(3, 8, **TINY)
    train(model, mess3(), steps=4, eval_sequences=64, progress=False, checkpoint_dir=tmp_path)
    other = mess3(x=0.1, alpha=0.85)
    assert process_fingerprint(other) != process_fingerprint(mess3())
    message = (
        r"cannot resume.*trained on mess3\(x=0\.05.*fingerprint [0-9a-f]{16}\).*"
        r"this run's process is mess3\(x=0\.1"
    )
    with pytest.raises(BeliefLensError, match=message):
        train(model, other, steps=4, eval_sequences=64, progress=False, checkpoint_dir=tmp_path)


def test_resume_with_other_settings_raises(tmp_path):
    hmm = mess3()
    model = toy_transformer(3, 8, **TINY)
    train(model, hmm, steps=4, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(BeliefLensError, match=r"cannot resume.*lr: checkpoint 0\.001 vs now 0\.01"):
        train(model, hmm, steps=4, lr=1e-2, progress=False, checkpoint_dir=tmp_path)
    bigger = toy_transformer(3, 8, **{**TINY, "d_mlp": 64})
    with pytest.raises(BeliefLensError, match=r"model config differ \(d_mlp: checkpoint 32 vs"):
        train(bigger, hmm, steps=4, progress=False, checkpoint_dir=tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(BeliefLensError, match="resume=False would overwrite them"):
        train(model, hmm, steps=4, resume=False, progress=False, checkpoint_dir=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_history_roundtrip():
    history = train(toy_transformer(3, 8, **TINY), mess3(), steps=3, progress=False)
    assert TrainingHistory.from_dict(json.loads(json.dumps(history.to_dict()))) == history


def test_bad_arguments_raise():
    hmm = mess3()
    model = toy_transformer(3, 8, **TINY)
    with pytest.raises(BeliefLensError, match="steps, n_tokens or seconds"):
        train(model, hmm, progress=False)
    with pytest.raises(BeliefLensError, match="d_vocab=3 is too small.*plus BOS; need >= 4"):
        train(model, hmm, steps=2, bos=True, progress=False)
    with pytest.raises(BeliefLensError, match="targets must be"):
        train(model, hmm, steps=2, targets="soft", progress=False)


def test_evaluate_loss_is_exact_expected_cross_entropy():
    from belief_lens.beliefs import enumerate_sequences

    hmm = rrxor()
    model = toy_transformer(2, 6, n_layers=1, d_model=16, d_mlp=32, seed=1).train()
    record = evaluate_loss(model, hmm)
    assert record.exact and record.optimal_exact and model.training  # the caller's mode is kept
    data = enumerate_sequences(hmm, 6)
    with torch.no_grad():
        logp = model.eval()(data.tokens).double().log_softmax(-1)
    ce = -(hmm.next_token_probs(data.beliefs) * logp).sum(-1)
    expected = (data.probs[:, None] * ce).sum(0)
    torch.testing.assert_close(
        torch.tensor(record.loss_per_position, dtype=torch.float64), expected
    )
    assert record.loss_over_optimal == pytest.approx(expected.mean() / optimal_loss(hmm, 6).mean())


def test_step_checkpoint_is_a_plain_loadable_model(tmp_path):
    from belief_lens.models import load_checkpoint

    model = toy_transformer(3, 6, **TINY)
    train(model, mess3(), steps=2, eval_sequences=64, checkpoint_dir=tmp_path, progress=False)
    loaded = load_checkpoint(tmp_path / "step_00000002" / "model.safetensors")
    tokens = torch.zeros(2, 6, dtype=torch.long)
    assert torch.equal(loaded(tokens), model.eval()(tokens))
    shutil.rmtree(tmp_path)


_KILLED_RUN = """
import os, signal, sys
import belief_lens.training as training
import belief_lens.training.checkpoints as checkpoints
from belief_lens.models import toy_transformer
from belief_lens.processes import mess3

real_rename = os.rename

def rename(src, dst):
    # SIGKILL at the last moment of step 3's checkpoint: every file written, nothing renamed.
    if ".step_00000003.tmp-" in str(src):
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rename(src, dst)

checkpoints.os.rename = rename
model = toy_transformer(3, 8, n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=32, seed=0)
training.train(model, mess3(), steps=6, batch_size=32, lr=3e-3, checkpoint_every=1,
               eval_sequences=256, checkpoint_dir=sys.argv[1], progress=False)
"""


def test_sigkill_during_step_checkpointing_resumes_exactly(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(tmp_path)], env=env)
    assert run.returncode == -signal.SIGKILL
    assert [s for s, _ in step_checkpoints(tmp_path)] == [1, 2]
    kw = dict(steps=6, batch_size=32, lr=3e-3, checkpoint_every=1, eval_sequences=256)
    straight = toy_transformer(3, 8, **TINY, seed=0)
    full = train(straight, mess3(), progress=False, **kw)
    resumed_model = toy_transformer(3, 8, **TINY, seed=3)
    resumed = train(resumed_model, mess3(), checkpoint_dir=tmp_path, progress=False, **kw)
    assert resumed.loss == full.loss and _state_equal(straight, resumed_model)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
