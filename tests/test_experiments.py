"""The experiments' recipes are built from the presets and validate their inputs once, before any
training; the command line imports none of them for --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from belief_lens.errors import BeliefLensError
from belief_lens.experiments.paper import PaperDemo
from belief_lens.models import ModelConfig
from belief_lens.processes import mess3, rrxor
from belief_lens.report import AnalysisConfig
from belief_lens.report.analysis import resolve_mode
from belief_lens.training import TrainConfig


def test_paper_demo_is_built_from_the_presets():
    hmm = rrxor()
    demo = PaperDemo.preset("rrxor", hmm, n_ctx=6, seconds=60, lr=None, seed=3)
    assert demo.model == ModelConfig.paper("rrxor", d_vocab=2, n_ctx=6)
    assert demo.train == TrainConfig.preset("bayes", "rrxor", seconds=60, seed=3)
    assert demo.analysis == AnalysisConfig(mode="auto", seed=3)
    tokens = PaperDemo.preset("mess3", mess3(), targets="tokens", steps=5, batch_size=7)
    assert tokens.train.targets == "tokens" and tokens.train.batch_size == 7


def test_paper_demo_refuses_bad_input_before_any_work():
    with pytest.raises(BeliefLensError, match="hmm must be an HMM"):
        PaperDemo.preset("mess3", "mess3", steps=1)
    with pytest.raises(BeliefLensError, match="steps, n_tokens or seconds"):
        PaperDemo.preset("mess3", mess3())
    demo = PaperDemo.preset("mess3", mess3(), steps=1)
    with pytest.raises(BeliefLensError, match="vocabulary of 2 tokens but mess3"):
        PaperDemo("mess3", demo.hmm, demo.model.replace(d_vocab=2), demo.train, demo.analysis)
    with pytest.raises(BeliefLensError, match="analysis must be a AnalysisConfig"):
        PaperDemo("mess3", demo.hmm, demo.model, demo.train, {"mode": "paper"})


def test_auto_mode_enumerates_where_it_can():
    assert resolve_mode(rrxor(), 6, "auto") == "paper"
    assert resolve_mode(mess3(), 12, "auto") == "sampled"  # 3^12 sequences
    assert resolve_mode(mess3(), 12, "weighted") == "weighted"


def test_help_imports_no_experiment():
    heavy = ("plotly", "belief_lens.report", "belief_lens.experiments", "belief_lens.probing")
    code = (
        "import sys, belief_lens.cli\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
