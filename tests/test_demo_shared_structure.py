"""The shared-structure demo runs end to end at reduced size and writes its metrics."""

import importlib.util
import json
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "demos" / "shared_structure.py"
KEYS = {
    "transfer_r2_a_to_b", "transfer_r2_b_to_a", "max_cosine_a_b", "steer_transfer_fold",
    "steer_control_fold",
}  # fmt: skip


def test_shared_structure_demo_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("shared_structure", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    argv = ["--minutes", "0.1", "--max-steps", "2", "--n-sequences", "200"]
    argv += ["--eval-sequences", "500", "--export", "none", "--out", str(tmp_path)]
    assert demo.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert KEYS <= set(metrics)
    assert 0.0 <= metrics["max_cosine_a_b"] <= 1.0
    assert metrics["steer_transfer_fold"] == pytest.approx(
        metrics["steer_kl_before"] / metrics["steer_kl_transfer"]
    )
    assert "One structure, two vocabularies" in (tmp_path / "report.html").read_text()
    with pytest.raises(SystemExit, match="exists"):  # nothing is overwritten
        demo.main(argv)
