"""The report's building blocks: tables, sections composed into one page, figure export."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from belief_lens import report as rp
from belief_lens.errors import BeliefLensError
from belief_lens.probes import best_hook, heldout, is_overfit
from belief_lens.report import ReportFigure, Section, Table, compose_html, write_report


def _fig() -> go.Figure:
    trace = go.Scatter(x=[0, 1, 2], y=[1, 0, 2], mode="markers", marker={"color": "red"})
    return go.Figure(trace, layout={"template": "none"})


def test_table_uses_one_format_per_column():
    t = Table(("hook", "MSE"), (("a", 0.0309), ("b", 6.91e-3), ("c", math.nan)), ("", ".2e"))
    assert t.to_markdown().splitlines()[2:] == ["| a | 3.09e-02 |", "| b | 6.91e-03 |", "| c | – |"]
    with pytest.raises(BeliefLensError, match="2 columns but 1 formats"):
        Table(("a", "b"), (), ("",))
    with pytest.raises(BeliefLensError, match="has 1 cells, not 2"):
        Table(("a", "b"), (("x",),), ("", ""))


def test_heldout_best_hook_and_overfit_rule_have_one_home():
    assert heldout({"mse_heldout": 0.1}, "mse") == 0.1
    assert heldout({"r2_heldout": 0.9}, "r2") == 0.9
    assert math.isnan(heldout({"mse_all": 0.1}, "mse"))
    rows = [
        {"hook": "a", "mse_heldout": 0.3, "mse_all": 0.1},
        {"hook": "b", "mse_heldout": 0.2, "mse_all": 0.2},
        {"hook": "concat", "mse_heldout": 0.01, "mse_all": 0.0},
    ]
    assert best_hook(rows) == ("b", "held-out")  # never the concatenation
    rows[0]["mse_heldout"] = float("nan")
    assert best_hook(rows) == ("a", "in-sample")
    assert is_overfit(64, 100)  # features >= a tenth of the training prefixes
    assert is_overfit(64, 10_000, [0.3, 0.31, 0.29], [0.1, 0.1, 0.1])  # a material, clear gap
    assert not is_overfit(64, 10_000, [0.3], [0.1])  # one split: no spread to judge a gap by


def test_sections_compose_into_one_page_with_a_summary():
    sections = [
        Section("A", headline=("first headline",), warnings=("under-trained",)),
        Section(
            "B",
            headline=("second headline",),
            text=("some text",),
            tables=(Table(("x",), ((1.5,),), (".1f",)),),
            figures=(ReportFigure("f", _fig(), "a caption"),),
        ),
    ]
    page = compose_html("T", sections, {"k": 1})
    summary = page[page.index("class='summary'") : page.index("</ul></div>")]
    for line in ("first headline", "second headline", "under-trained"):
        assert line in summary
    assert page.count("plotly.min.js") == 1 and 'id="fig-f"' in page
    assert '"type":"scattergl"' not in page and "a caption" in page


def test_write_report_without_kaleido_names_what_is_missing(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "kaleido" else real(n, *a)
    )
    metrics: dict = {}
    paths = write_report(
        tmp_path, "T", [Section("A", figures=(ReportFigure("f", _fig()),))], metrics
    )
    assert (
        paths["figures"] == []
        and "kaleido>=1.0, which is not installed" in metrics["figure_export"]
    )
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["figure_export"] == metrics["figure_export"]
    assert "kaleido" in (tmp_path / "report.html").read_text()


def test_a_hung_export_is_killed_with_its_browser_tried_again_and_named(tmp_path, monkeypatch):
    """A child whose browser never answers (here: it sleeps, beside a grandchild standing in for
    Chrome, in a session of its own as kaleido starts it) is killed with that grandchild at the
    time limit and tried once more; the export fails with a BeliefLensError naming the wait,
    leaving no temp files; write_report then keeps the interactive page and says why no PNG was
    made."""
    from belief_lens.report import document

    pids = tmp_path / "pids"
    hang = (  # the stand-in browser in a session of its own, as kaleido starts Chrome
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],\n"
        "                     start_new_session=True)\n"
        f"open({str(pids)!r}, 'a').write(f'{{p.pid}}\\n')\n"
        "time.sleep(600)\n"
    )
    monkeypatch.setattr(document, "_EXPORT_CHILD", hang)
    monkeypatch.setattr(document, "EXPORT_TIMEOUT_SECONDS", 2.0)
    monkeypatch.setattr(document, "EXPORT_SECONDS_PER_IMAGE", 0.0)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BeliefLensError, match="no answer from the browser in 2 s"):
        document.export_figures([ReportFigure("f", _fig())], out, ("png",))
    assert not list(out.iterdir())
    grandchildren = [int(x) for x in pids.read_text().split()]
    assert len(grandchildren) == 2  # two attempts
    deadline = time.monotonic() + 10  # SIGKILLed: a loaded machine may take a moment to run it
    for pid in grandchildren:  # gone, or a zombie waiting for init to reap it
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"process {pid} outlived its killed export"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


def _needs_a_browser() -> None:
    missing = [
        what
        for what, ok in (
            ("the Python package kaleido", importlib.util.find_spec("kaleido") is not None),
            ("Chromium", any(shutil.which(b) for b in ("chromium", "google-chrome"))),
        )
        if not ok
    ]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"figure export needs {' and '.join(missing)} on CI")
        pytest.skip(
            f"figure export needs {' and '.join(missing)} (pip install 'belief_lens[export]')"
        )


def test_export_figures_as_png_and_pdf(tmp_path):
    _needs_a_browser()
    paths = rp.export_figures([ReportFigure("f", _fig())], tmp_path, ("png", "pdf"))
    assert [p.name for p in paths] == ["f.png", "f.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".*tmp*"))
    np.testing.assert_array_less(0, paths[0].stat().st_size)


def test_figures_export_alongside_the_run_and_a_failed_child_is_tried_afresh(tmp_path, monkeypatch):
    """Figures queued while the run goes on are written by one child; a figure queued twice is
    written once; a child that dies (here: the first one started) is found out at the end and
    the export is done afresh, leaving no temporary files."""
    _needs_a_browser()
    from belief_lens.report import document

    figs = [ReportFigure("a", _fig()), ReportFigure("b", _fig())]
    with document.FigureExporter(tmp_path, ("png",)) as exporter:
        exporter.submit(figs[:1])
        exporter.submit(figs[:1])
        paths = exporter.finish(figs)
    assert [p.name for p in paths] == ["a.png", "b.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]

    marker = tmp_path / "died"
    dies_once = (
        "import os, sys\n"
        f"if not os.path.exists({str(marker)!r}):\n"
        f"    open({str(marker)!r}, 'w').close(); sys.exit('the browser fell over')\n"
        + document._EXPORT_CHILD
    )
    monkeypatch.setattr(document, "_EXPORT_CHILD", dies_once)
    out = tmp_path / "again"
    with document.FigureExporter(out, ("pdf",)) as exporter:
        exporter.submit(figs)
        paths = exporter.finish()
    assert marker.exists() and [p.name for p in paths] == ["a.pdf", "b.pdf"]
    assert sorted(p.name for p in out.iterdir()) == ["a.pdf", "b.pdf"]


def test_leaving_an_export_early_kills_its_child_and_removes_its_files(tmp_path, monkeypatch):
    from belief_lens.report import document

    monkeypatch.setattr(document, "_EXPORT_CHILD", "import time; time.sleep(600)")
    real = importlib.util.find_spec
    monkeypatch.setattr(  # "kaleido is here"
        importlib.util, "find_spec", lambda n, *a: object() if n == "kaleido" else real(n, *a)
    )
    (tmp_path / ".f.tmp.png").write_bytes(b"half")  # what a killed render leaves
    with pytest.raises(KeyboardInterrupt), document.FigureExporter(tmp_path, ("png",)) as e:
        e.submit([ReportFigure("f", _fig())])
        child = e.child
        raise KeyboardInterrupt
    assert child is not None and child.poll() is not None  # killed, reaped
    assert not list(tmp_path.iterdir())


def test_analyse_composes_sections_and_takes_extra_ones(tmp_path):
    from belief_lens.models import toy_transformer
    from belief_lens.processes import rrxor

    model = toy_transformer(2, 6, n_layers=1, d_model=16, d_mlp=32, seed=0)
    seen = {}

    def extra(state: rp.Analysis) -> Section:
        seen["best"] = state.best_hook
        state.metrics["extra"] = {"value": 1.0}
        return Section("Patching", headline=("patching headline",), text=("patching text",))

    cfg = rp.AnalysisConfig(
        mode="sampled", n_sequences=300, controls=False, interventions=False, export=()
    )
    metrics = rp.analyse(model, rrxor(), tmp_path, config=cfg, extra_sections=[extra])
    assert seen["best"] == metrics["best_hook"]["hook"] != "concat"
    # An untrained model is far from the optimum: flagged first in the summary.
    assert metrics["model_loss"]["undertrained"]
    # 300 sampled probe sequences are not the evaluation sample: the loss runs its own pass.
    assert metrics["model_loss"]["logits_from"] == "a forward pass"
    assert metrics["summary"][0].startswith("Under-trained")
    assert "patching headline" in metrics["summary"] and metrics["extra"] == {"value": 1.0}
    page = (tmp_path / "report.html").read_text()
    order = [
        page.index(f"<h2>{t}</h2>") for t in ("Process and model", "Belief geometry", "Patching")
    ]
    assert order == sorted(order)
    # Five states: the headline figure is 3D, truth and best hook in shared scenes; the
    # concatenation (worse than the best hook held out for this untrained model) is left out.
    assert "no better than the best hook held out" in " ".join(metrics["summary"])
    assert page.count('"type":"scatter3d"') == 2 and '"scene2"' in page


def test_analyse_runs_a_small_model_at_one_thread_and_logs_each_stage(
    tmp_path, caplog, monkeypatch
):
    """Every stage of a small model's analysis runs at one intra-op thread (restored after), and
    each logs one line with its time, recorded in ``metrics["stage_seconds"]``."""
    import torch

    from belief_lens.models import toy_transformer
    from belief_lens.processes import rrxor
    from belief_lens.report import analysis

    model = toy_transformer(2, 6, n_layers=1, d_model=16, d_mlp=32, seed=0)
    seen = []
    fit = analysis._fit_probes

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return fit(*args, **kwargs)

    monkeypatch.setattr(analysis, "_fit_probes", spy)
    monkeypatch.setattr("belief_lens.threads.runnable_elsewhere_now", lambda: 3)  # shared machine
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = rp.AnalysisConfig(mode="sampled", n_sequences=200, interventions=False, export=())
        with caplog.at_level("INFO", logger="belief_lens.report.analysis"):
            metrics = rp.analyse(model, rrxor(), tmp_path, config=cfg)
        assert seen == [1] and torch.get_num_threads() == 2
        assert all(used == [1] for used in metrics["stage_threads"].values())
    finally:
        torch.set_num_threads(before)
    stages = ["probes", "loss", "geometry", "controls", "report"]  # the loss reuses the probes
    assert list(metrics["stage_seconds"]) == stages
    assert all(v >= 0 for v in metrics["stage_seconds"].values())
    for name in stages:
        assert any(r.getMessage().startswith(f"{name} done in ") for r in caplog.records), name


def test_the_package_re_exports_its_public_api():
    import belief_lens.plotting as plotting
    from belief_lens.report import analysis, document, experiment_sections

    assert rp.analyse is analysis.analyse and rp.Table is document.Table
    assert rp.factored_section is experiment_sections.factored_section
    for package in (rp, plotting):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert not missing, f"{package.__name__} lists {missing} but does not export them"


def test_analysis_config_is_validated_at_construction():
    assert rp.AnalysisConfig(export=["svg"]).export == ("svg",)
    for kwargs, message in (
        ({"mode": "all"}, "mode must be one of"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"n_sequences": 0}, "n_sequences"),
        ({"seed": -1}, "seed"),
        ({"export": ("jpg",)}, "png, pdf or svg"),
        ({"export": "png"}, "png, pdf or svg"),
        ({"controls": "no"}, "controls must be True or False"),
    ):
        with pytest.raises(BeliefLensError, match=message):
            rp.AnalysisConfig(**kwargs)


def test_a_table_turns_on_its_side():
    t = Table(("position", "loss"), ((0, 0.51), (1, 0.25)), ("d", ".2f"), caption="c")
    side = t.transposed()
    assert side.columns == ("", "0", "1") and side.rows == (("loss", "0.51", "0.25"),)
    assert side.caption == "c" and side.formats == ("", "", "")


def test_probe_section_reads_the_keys_the_probe_table_has():
    from belief_lens.probes import ProbeTable
    from belief_lens.report.sections import probe_section

    def row(hook, why, heldout_mse):
        return {
            "hook": hook, "features": 64, "train_prefixes": 900, "test_prefixes": 200,
            "mse_heldout": heldout_mse, "mse_heldout_se": 0.001, "r2_heldout": 0.9,
            "r2_heldout_se": 0.01, "mse_train": 0.01, "r2_train": 0.95, "mse_all": 0.01,
            "r2_all": 0.95, "folds": 5, "n_eff_heldout": 123.4, "rank": 64,
            "overfit": bool(why), "overfit_reason": why,
        }  # fmt: skip

    why = "640 features on 900 training prefixes"
    rows = [row("a", "", 0.02), row("concat", why, math.nan)]
    table = ProbeTable(rows, meta={"folds": 5, "mode": "paper"})
    section = probe_section(table, "a", "held-out", rp.AnalysisConfig())
    (t,) = section.tables
    assert t.columns == (
        "hook", "features", "training prefixes", "MSE in-sample", "R² in-sample", "MSE train",
        "MSE held-out", "± s.e.", "R² held-out", "± s.e.", "effective n held out", "flag",
    )  # fmt: skip
    assert t.rows[0][2] == 900 and t.rows[0][-1] == "" and t.rows[1][-1] == why
    assert t.rows[0][7] == 0.001 and t.rows[0][10] == 123.4
    assert math.isnan(t.rows[1][6]) and "cross-validated over 5 folds by prefix" in section.text[0]
    assert "flag column says which" in section.text[1]
    # a flagged best hook (every hook flagged) is said plainly in the headline
    from belief_lens.report.sections import _geometry_headline

    flagged = {"a": row("a", why, 0.02)}
    (line,) = _geometry_headline(flagged, "a", "held-out")
    assert line.endswith(f"Every hook is flagged; this one for: {why}.")
    (line,) = _geometry_headline({"a": rows[0]}, "a", "held-out")
    assert "flagged" not in line and "± 1.0e-03" in line
