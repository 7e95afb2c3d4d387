"""The pretrained-model demo runs end to end on a local GPT-2-like model, and fails politely
where the hub is unreachable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformer_lens")

DEMO = Path(__file__).resolve().parent.parent / "demos" / "pretrained_in_context.py"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("pretrained_in_context", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_runs_locally(demo, tmp_path, capsys):
    out = tmp_path / "run"
    status = demo.main(
        ["--local", "--out", str(out), "--n-sequences", "12", "--length", "6", "--window", "3",
         "--local-d-model", "16", "--local-layers", "1"]
    )  # fmt: skip
    assert status == 0
    for name in ("in_context_curve.html", "position_probes.html", "metrics.json"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"model", "mess3", "rrxor"}
    assert len(metrics["mess3"]["curve"]["kl_mean"]) == 7  # BOS prediction + 6 symbols
    assert len(metrics["rrxor"]["probes"]["rows"]) == 4 * 2  # 4 residual hooks x 2 windows
    printed = capsys.readouterr().out
    assert "mess3" in printed and "KL(Bayes || model)" in printed


def test_demo_says_when_the_hub_is_unreachable(demo, tmp_path, monkeypatch, capsys):
    from belief_lens import pretrained

    monkeypatch.setattr(pretrained, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(pretrained, "_cached", lambda name: False)
    monkeypatch.delenv("BELIEF_LENS_LOCAL_MODEL", raising=False)
    status = demo.main(["--out", str(tmp_path / "hub")])
    assert status == demo.EXIT_HUB_UNREACHABLE == 75
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "model hub unreachable" in lines[0]
    assert not (tmp_path / "hub").exists()
