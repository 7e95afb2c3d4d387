"""Training progress that a person can read in a piped log: a bar on a terminal, otherwise a
line every tenth of the run (or 30 s) with step, loss, ratio to optimum, learning rate and time
left; TransformerLens's own bars silent off a terminal."""

from __future__ import annotations

import io
import logging
import re
import sys
import types

import pytest

from belief_lens.errors import BeliefLensError
from belief_lens.models import toy_transformer
from belief_lens.processes import mess3
from belief_lens.training import train
from belief_lens.training.progress import Progress, check_progress, quiet_unwatched_bars

TINY = dict(n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=32)


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("bad", ["yes", 1, None, 0.5, "none"])
def test_progress_refuses_anything_else(bad):
    with pytest.raises(BeliefLensError, match="progress must be True, False, 'bar' or 'log'"):
        check_progress(bad)


def test_progress_true_is_a_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert check_progress(True) == "bar"
    monkeypatch.setattr(sys, "stderr", _Pipe())
    assert check_progress(True) == "log"
    assert check_progress(False) is None
    assert check_progress("bar") == "bar"


def test_bad_progress_is_refused_before_training():
    model = toy_transformer(3, 10, **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BeliefLensError, match="progress"):
        train(model, mess3(), steps=5, progress="verbose")
    assert all((before[k] == v).all() for k, v in model.state_dict().items())


def test_piped_training_writes_about_ten_readable_lines(monkeypatch, caplog):
    """100 steps, piped: a line per tenth (not a frame per step), each with what a person needs."""
    monkeypatch.setattr(sys, "stderr", _Pipe())
    model = toy_transformer(3, 10, **TINY)
    with caplog.at_level(logging.INFO, logger="belief_lens"):
        train(model, mess3(), steps=100, batch_size=4, eval_sequences=64, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "belief_lens.training"]
    assert 9 <= len(lines) <= 12, lines
    pattern = re.compile(
        r"train \(tokens\): step (\d+)/100 \(\d+%\), loss \d\.\d{5}, eval loss \d\.\d{5} = "
        r"\d\.\d{4} x optimal \(step \1\), lr [\d.e-]+, (\d+ s|[\d.]+ min) left"
    )
    assert all(pattern.fullmatch(line) for line in lines), lines
    assert lines[-1].startswith("train (tokens): step 100/100 (100%)")
    assert sys.stderr.getvalue() == ""  # no bar frames


def test_log_lines_also_every_30_seconds():
    """Between tenths, a line once 30 s (of the run's clock) have passed since the last."""
    now = [0.0]
    p = Progress("log", desc="train", steps=1000, done=0, clock=lambda: now[0])
    assert not p.due(0.01)
    now[0] = 29.0
    assert not p.due(0.02)
    now[0] = 31.0
    assert p.due(0.03)
    assert p.due(0.1)


def test_log_lines_without_logging_go_to_stderr(monkeypatch):
    """A Python user who set up no logging still sees the lines (on stderr)."""
    monkeypatch.setattr(sys, "stderr", _Pipe())
    monkeypatch.setattr(logging.getLogger("belief_lens.training"), "hasHandlers", lambda: False)
    now = [0.0]
    p = Progress("log", desc="train (bayes)", steps=None, done=0, clock=lambda: now[0])
    now[0] = 10.0
    p.evaluated(5, 1.1, 1.05)
    p.update(5, 0.25, lambda: 1.2, 1e-3)
    assert sys.stderr.getvalue() == (
        "train (bayes): step 5 (25%), loss 1.20000, eval loss 1.10000 = 1.0500 x optimal "
        "(step 5), lr 0.001, 30 s left\n"
    )


def test_time_budget_bar_has_no_percent_per_second_unit(monkeypatch):
    out = _Terminal()
    monkeypatch.setattr(sys, "stderr", out)
    model = toy_transformer(3, 10, **TINY)
    ticks = iter(range(10**6))  # a clock that advances per reading: independent of the load
    clock = lambda: 0.005 * next(ticks)  # noqa: E731
    train(model, mess3(), seconds=1.0, batch_size=4, eval_sequences=64, progress="bar",
          clock=clock)  # fmt: skip
    text = out.getvalue()
    assert "train (tokens)" in text and "100%" in text and "step " in text
    assert "%/s" not in text and "it/s" not in text


def test_quiet_unwatched_bars_silences_a_module_bar_off_a_terminal(monkeypatch):
    from tqdm import tqdm

    module = types.SimpleNamespace(tqdm=tqdm)
    err = _Pipe()
    monkeypatch.setattr(sys, "stderr", err)
    with quiet_unwatched_bars(module):
        assert list(module.tqdm(range(5), file=err)) == [0, 1, 2, 3, 4]
    assert err.getvalue() == ""
    assert module.tqdm is tqdm  # restored
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with quiet_unwatched_bars(module):
        assert module.tqdm is tqdm  # a terminal keeps its bars


def test_one_line_at_the_end_even_if_the_run_reports_100_percent_twice():
    now = [0.0]
    p = Progress("log", desc="train", steps=None, done=0, clock=lambda: now[0])
    assert p.due(0.95)
    p.update(1, 0.95, lambda: 1.0, 1e-3)
    assert p.due(1.0)
    p.update(2, 1.0, lambda: 1.0, 1e-3)
    assert not p.due(1.0)


def test_finish_writes_the_closing_line_once():
    now = [0.0]
    lines = []
    p = Progress("log", desc="train", steps=None, done=0, clock=lambda: now[0])
    p.update = lambda step, *args, _u=p.update: (lines.append(step), _u(step, *args))  # type: ignore
    p.update(7, 0.95, lambda: 1.0, 1e-3)
    p.finish(7, 1.0, lambda: 1.0, 1e-3)  # the last line already was this step's
    p.finish(9, 1.0, lambda: 1.0, 1e-3)
    assert lines == [7, 9]
