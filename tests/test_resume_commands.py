"""Issue 22: every command that trains writes step checkpoints into its run; Ctrl-C keeps them and
names the command that resumes; ``--resume`` finishes the run as if it had never stopped; a
finished run keeps what its retention setting says."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from belief_lens.cli import main
from belief_lens.run_dir import staging_path
from belief_lens.training import step_checkpoints

ATTENTION = ["-q", "attention", "--steps", "6", "--seeds", "0", "--checkpoint", "none"]


def _interrupt(monkeypatch, module, step: int, where: str = "") -> None:
    """Make ``module.train`` raise KeyboardInterrupt (Ctrl-C) after ``step`` steps of the first
    training whose checkpoint directory contains ``where``."""
    real = module.train

    def train(*args, **kwargs):
        def callback(s, history):
            if s == step and where in str(kwargs.get("checkpoint_dir")):
                raise KeyboardInterrupt

        return real(*args, callback=callback, **kwargs)

    monkeypatch.setattr(module, "train", train)


def _same_numbers(a, b, path="") -> None:
    """Equal structure, strings and booleans; numbers equal to rounding (a near-zero R² is a
    difference of near-equal sums: absolute 1e-9); timings aside."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if "seconds" not in k:
                _same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (path, a, b)
    else:
        assert a == b, path


def test_attention_ctrl_c_keeps_checkpoints_and_resume_finishes_the_same_run(
    tmp_path, monkeypatch, capsys
):
    from belief_lens.experiments import attention

    monkeypatch.chdir(tmp_path)
    assert main([*ATTENTION, "--export", "none", "--out", "straight"]) == 0
    _interrupt(monkeypatch, attention, 4, where="negative-1h")
    assert main([*ATTENTION, "--export", "none", "--out", "A"]) == 130
    err = capsys.readouterr().err
    assert "resume with: belief-lens attention --resume A" in err
    assert not Path("A").exists()
    saved = staging_path(Path("A")) / "checkpoints"
    # The models trained before the interruption, and the interrupted one's latest steps.
    assert [s for s, _ in step_checkpoints(saved / "positive-1h-0")][-1] == 6
    assert [s for s, _ in step_checkpoints(saved / "negative-1h-0")] == [1, 2, 3]
    assert main([*ATTENTION, "--out", "A"]) == 2  # a new run into A names the resume command
    assert "belief-lens attention --resume A" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "attention", "--resume", "A"]) == 0
    _same_numbers(
        json.loads(Path("straight/metrics.json").read_text()),
        json.loads(Path("A/metrics.json").read_text()),
    )
    # Retention 0 (the default): a finished run keeps no checkpoints; nothing is left aside.
    assert sorted(p.name for p in Path("A").iterdir()) == sorted(
        p.name for p in Path("straight").iterdir()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "straight"]


def test_resume_refuses_a_run_of_another_command(tmp_path, monkeypatch, capsys):
    from belief_lens.experiments import attention

    monkeypatch.chdir(tmp_path)
    _interrupt(monkeypatch, attention, 2)
    assert main([*ATTENTION, "--export", "none", "--out", "A"]) == 130
    capsys.readouterr()
    assert main(["-q", "icl", "--resume", "A"]) == 2
    err = capsys.readouterr().err
    assert "is an interrupted `attention` run" in err
    assert "belief-lens attention --resume A" in err
    assert staging_path(Path("A")).is_dir()  # the interrupted run is left as it was


def test_keep_checkpoints_keeps_that_many_per_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [*ATTENTION, "--export", "none", "--keep-checkpoints", "1", "--out", "K"]
    assert main(argv) == 0
    kept = {p.name: [s for s, _ in step_checkpoints(p)] for p in Path("K/checkpoints").iterdir()}
    assert kept == {f"{s}-{h}h-0": [6] for s in ("positive", "negative") for h in (1, 2)}


def test_icl_training_resumes_from_its_checkpoints(tmp_path, monkeypatch):
    from belief_lens.experiments import icl

    config = icl.ICLExperiment(
        train=icl.icl_training(steps=6, seconds=None, eval_sequences=64, batch_size=16),
        n_ctx=8,
    )
    straight, steps, _, _ = icl._train(config, config.process(), tmp_path / "straight")
    _interrupt(monkeypatch, icl, 4)
    with pytest.raises(KeyboardInterrupt):
        icl._train(config, config.process(), tmp_path / "cut")
    assert step_checkpoints(tmp_path / "cut")  # the latest is kept
    monkeypatch.undo()
    resumed, steps_resumed, _, _ = icl._train(config, config.process(), tmp_path / "cut")
    assert steps == steps_resumed == 6
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_factored_resume_continues_and_a_fresh_run_refuses_old_checkpoints(tmp_path, monkeypatch):
    from belief_lens.errors import BeliefLensError
    from belief_lens.experiments import factored

    config = factored.FactoredExperiment(
        epsilon=0.1,
        train=factored.factored_training(steps=4, checkpoint_every=2),
        n_ctx=3,
        n_eval_sequences=300,
        n_vary_one=60,
        n_checkpoints=2,
    )
    straight = factored.run_factored_experiment(config, tmp_path / "straight")
    _interrupt(monkeypatch, factored, 3)
    with pytest.raises(KeyboardInterrupt):
        factored.run_factored_experiment(config, tmp_path / "cut")
    assert [s for s, _ in step_checkpoints(tmp_path / "cut" / "checkpoints")] == [2]
    monkeypatch.undo()
    with pytest.raises(BeliefLensError, match="already holds checkpoints.*resume=True"):
        factored.run_factored_experiment(config, tmp_path / "cut")
    resumed = factored.run_factored_experiment(config, tmp_path / "cut", resume=True)
    assert [s for s, _ in step_checkpoints(tmp_path / "cut" / "checkpoints")] == [2, 4]
    _same_numbers(straight.to_dict(), resumed.to_dict())
