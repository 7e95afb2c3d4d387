"""The in-context-learning demo runs end to end at reduced size and writes the issue's metrics."""

import importlib.util
import json
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "demos" / "icl.py"
KEYS = {
    "loss_ratio_max", "gap_recovered_last", "component_probe_r2_heldout",
    "steer_grid_correlation", "phase_boundary_rel_error", "control_switches", "train_seconds",
}  # fmt: skip


def test_icl_demo_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("icl_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    argv = ["--max-steps", "2", "--n-ctx", "6", "--n-sequences", "100"]
    argv += ["--n-probe-sequences", "120", "--n-steer-sequences", "8", "--export", "none"]
    argv += ["--out", str(tmp_path)]
    assert demo.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert KEYS <= set(metrics)
    assert metrics["loss_ratio_max"] == pytest.approx(max(metrics["loss_ratio"]))
    assert "In-context learning and steering" in (tmp_path / "report.html").read_text()
    with pytest.raises(SystemExit, match="exists"):  # nothing is overwritten
        demo.main(argv)
