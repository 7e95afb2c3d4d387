"""The report as a document: tables with one number format per column, figures, sections, and
the page they compose into (``report.html`` beside ``plotly.min.js``, ``metrics.json``, and each
figure exported as PNG/PDF where kaleido and a browser are available).

A report is a list of :class:`Section` values composed by :func:`compose_html`. Each section
carries its own headline lines (gathered into the summary at the top of the page), text, tables
and figures, so an analysis adds itself to the report by returning one more ``Section``.
"""

from __future__ import annotations

import contextlib
import html
import importlib.util
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from plotly.offline import get_plotlyjs

from belief_lens.errors import BeliefLensError
from belief_lens.storage import atomic_write_text, jsonable

__all__ = [
    "ExportFormat",
    "FigureExporter",
    "ReportFigure",
    "Section",
    "Table",
    "compose_html",
    "export_figures",
    "write_report",
]

logger = logging.getLogger(__name__)

ExportFormat = Literal["png", "pdf", "svg"]


@dataclass(frozen=True)
class Table:
    """A table with one number format per column (a ``format`` spec such as ``".3e"``, ``".4f"``,
    ``"d"``, or ``""`` for text), so a column never mixes notations.

    ``groups`` optionally spans header cells: ``(("", 1), ("beliefs", 2), ...)``.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    formats: tuple[str, ...]
    caption: str = ""
    groups: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if len(self.formats) != len(self.columns):
            raise BeliefLensError(
                f"Table has {len(self.columns)} columns but {len(self.formats)} formats"
            )
        for r in self.rows:
            if len(r) != len(self.columns):
                raise BeliefLensError(
                    f"Table row {r!r} has {len(r)} cells, not {len(self.columns)}"
                )
        if self.groups and sum(n for _, n in self.groups) != len(self.columns):
            raise BeliefLensError("Table groups must span every column exactly once")

    def cell(self, value: Any, fmt: str) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
            return format(value, fmt)
        return str(value)

    def to_html(self) -> str:
        parts = ["<div class='table'><table>"]
        if self.caption:
            parts.append(f"<caption>{html.escape(self.caption)}</caption>")
        if self.groups:
            parts.append(
                "<tr>"
                + "".join(
                    f"<th colspan={n} class='group'>{html.escape(g)}</th>" for g, n in self.groups
                )
                + "</tr>"
            )
        parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in self.columns) + "</tr>")
        for r in self.rows:
            cells = []
            for v, f in zip(r, self.formats, strict=True):
                cls = " class='text'" if not f else ""
                cells.append(f"<td{cls}>{html.escape(self.cell(v, f))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table></div>")
        return "".join(parts)

    def transposed(self) -> Table:
        """A long, narrow table turned on its side: one row per column after the first, whose
        cells head the columns (every cell formatted as text)."""
        cols = ("", *(self.cell(r[0], self.formats[0]) for r in self.rows))
        rows = tuple(
            (name, *(self.cell(r[j], self.formats[j]) for r in self.rows))
            for j, name in enumerate(self.columns)
            if j > 0
        )
        return Table(cols, rows, ("",) * len(cols), caption=self.caption)

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += [
            "| " + " | ".join(self.cell(v, f) for v, f in zip(r, self.formats, strict=True)) + " |"
            for r in self.rows
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class ReportFigure:
    """A plotly figure with the file name it is exported under and a caption."""

    name: str
    figure: Any
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """One block of the report. ``headline`` lines also go into the summary at the top."""

    title: str
    headline: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[ReportFigure, ...] = ()
    warnings: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------- writing

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1180px;margin:auto;padding:0 10px;color:#222}
h1{font-size:26px}h2{font-size:21px;margin-top:34px;border-bottom:1px solid #ddd}
.summary{background:#f5f7fa;border:1px solid #d8dee6;padding:8px 18px;font-size:15px}
.summary li{margin:5px 0}.warn{color:#a40000;font-weight:600}
.table{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}th.group{text-align:center}td.text{text-align:left}
caption{caption-side:top;text-align:left;font-size:13px;color:#555;padding:3px 0}
.figure{margin:10px 0}.caption{font-size:13px;color:#555}
details{margin:20px 0}pre{font-size:11px;max-height:400px;overflow:auto}
"""


def compose_html(
    title: str, sections: Sequence[Section], metrics: Mapping[str, Any] | None = None
) -> str:
    """One HTML page: the summary (every section's headline and warnings), then each section.
    plotly.js is loaded once from ``plotly.min.js`` beside the page."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>",
        "<script src='plotly.min.js'></script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<div class='summary'><b>Summary</b><ul>",
    ]
    for sec in sections:
        parts += [f"<li class='warn'>{html.escape(w)}</li>" for w in sec.warnings]
        parts += [f"<li>{html.escape(line)}</li>" for line in sec.headline]
    parts.append("</ul></div>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        parts += [f"<p class='warn'>{html.escape(w)}</p>" for w in sec.warnings]
        parts += [f"<p>{html.escape(t)}</p>" for t in (*sec.headline, *sec.text)]
        parts += [t.to_html() for t in sec.tables]
        for f in sec.figures:
            parts.append("<div class='figure'>")
            parts.append(
                f.figure.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    div_id=f"fig-{f.name}",
                    config={"displaylogo": False, "responsive": False},
                )
            )
            if f.caption:
                parts.append(f"<div class='caption'>{html.escape(f.caption)}</div>")
            parts.append("</div>")
    if metrics is not None:
        parts.append("<details><summary>Every number (metrics.json)</summary><pre>")
        parts.append(html.escape(json.dumps(jsonable(metrics), indent=1)[:50_000]))
        parts.append("</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


#: The export runs in a child process (kaleido drives Chrome from there): a browser that dies
#: mid-export leaves kaleido waiting on its pipe forever, so the child is given this many
#: seconds, plus :data:`EXPORT_SECONDS_PER_IMAGE` per image, then killed with its browser.
EXPORT_TIMEOUT_SECONDS = 120.0
EXPORT_SECONDS_PER_IMAGE = 15.0

#: The child: starts its browser at once, then exports each job list whose path arrives on
#: stdin, until stdin closes. With ``--yield`` it and its browser run under ``SCHED_IDLE``, only
#: on idle cores (a nice value would not hold: Chromium renices itself where it may).
_EXPORT_CHILD = """
import json, os, sys
if "--yield" in sys.argv and hasattr(os, "SCHED_IDLE"):
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
import kaleido
kaleido.start_sync_server(silence_warnings=True)  # one browser for every figure, starting now
keys = ("format", "width", "height", "scale")
for line in sys.stdin:
    jobs = json.load(open(line.strip()))
    figs = {path: json.load(open(path)) for path in {j["figure"] for j in jobs}}
    specs = [
        {"fig": figs[j["figure"]], "path": j["path"], "opts": {k: j[k] for k in keys}}
        for j in jobs
    ]
    kaleido.write_fig_from_object_sync(specs)
    for spec in specs:  # kaleido has been seen to return without writing a file under load
        if not os.path.exists(spec["path"]) or os.path.getsize(spec["path"]) == 0:
            kaleido.write_fig_sync(spec["fig"], path=spec["path"], opts=spec["opts"])
kaleido.stop_sync_server(silence_warnings=True)
"""


def _check_kaleido() -> None:
    if importlib.util.find_spec("kaleido") is None:
        raise BeliefLensError(
            "figure export needs the Python package kaleido>=1.0, which is not installed: "
            "pip install 'belief_lens[export]' (it also needs Chrome or Chromium, e.g. "
            "apt-get install chromium)"
        )


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp.{path.suffix[1:]}")


def _write_jobs(
    figures: Sequence[ReportFigure], out: Path, formats: Sequence[str], work: Path, tag: str
) -> Path:
    """Write each figure's JSON and the job list (one job per figure and format, into its
    temporary path in ``out``) into ``work``; returns the job list's path."""
    jobs = []
    for k, f in enumerate(figures):
        spec = work / f"figure{tag}_{k}.json"
        spec.write_text(f.figure.to_json(), encoding="utf-8")
        for fmt in formats:
            jobs.append({
                "figure": str(spec),
                "path": str(_tmp_path(out / f"{f.name}.{fmt}")),
                "format": fmt,
                "width": f.figure.layout.width or 900,
                "height": f.figure.layout.height or 500,
                "scale": 2 if fmt == "png" else 1,
            })  # fmt: skip
    manifest = work / f"jobs{tag}.json"
    manifest.write_text(json.dumps(jobs), encoding="utf-8")
    return manifest


def _start_export_child(log: Path, yielding: bool = False) -> subprocess.Popen:
    """The export child, its stderr into ``log`` (a pipe nobody reads until the end could fill
    and stall it); ``yielding``: at the lowest priority."""
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", _EXPORT_CHILD, *(["--yield"] if yielding else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
            start_new_session=True,  # its browser shares the session: killed with it
        )


def _kill_tree(pid: int) -> None:
    """SIGKILL process ``pid``, its descendants and their process groups: kaleido starts its
    browser in a session of its own, which killing the child's group alone leaves running."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        with contextlib.suppress(OSError, IndexError, ValueError):  # one that ended meanwhile
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    groups = set()
    for p in tree:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(p))
    for group in groups - {os.getpgrp()}:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


def _wait_export_child(child: subprocess.Popen, n_images: int, log: Path, last: str = "") -> None:
    """Close the child's stdin (after writing ``last``) and wait for it; past the time limit
    kill it and its browser. Raises with the child's last error line."""
    limit = EXPORT_TIMEOUT_SECONDS + EXPORT_SECONDS_PER_IMAGE * n_images
    try:
        child.communicate(last or None, timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_tree(child.pid)
        child.communicate()
        raise TimeoutError(f"no answer from the browser in {limit:.0f} s") from None
    if child.returncode != 0:
        err = log.read_text(errors="replace").strip() if log.exists() else ""
        raise RuntimeError(err or f"the export process exited with {child.returncode}")


def _move_into_place(paths: list[Path]) -> list[Path]:
    """Rename each export's temporary file to its path; raises (removing them all) when one is
    missing or empty."""
    tmps = [_tmp_path(p) for p in paths]
    unwritten = [p.name for p in tmps if not p.exists() or p.stat().st_size == 0]
    if unwritten:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise RuntimeError(f"kaleido wrote nothing for {', '.join(unwritten)}")
    for t, p in zip(tmps, paths, strict=True):
        os.replace(t, p)
    return paths


def _export_error(e: Exception) -> BeliefLensError:
    first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    return BeliefLensError(
        f"figure export failed: kaleido could not render with Chrome/Chromium ({first}); "
        "install Chromium (Debian: apt-get install chromium) or run plotly_get_chrome"
    )


def export_figures(
    figures: Sequence[ReportFigure],
    out_dir: str | os.PathLike,
    formats: Sequence[ExportFormat] = ("png", "pdf"),
) -> list[Path]:
    """Write each figure as ``{name}.{fmt}`` with kaleido (>= 1.0, which drives a Chrome or
    Chromium found on the system), in a child process killed after its time limit and tried
    once more. Raises ``BeliefLensError`` naming what is missing or what failed."""
    if not figures or not formats:
        return []
    _check_kaleido()
    out = Path(out_dir)
    paths = [out / f"{f.name}.{fmt}" for f in figures for fmt in formats]
    try:
        with tempfile.TemporaryDirectory(prefix="belief-lens-export-") as work:
            manifest = _write_jobs(figures, out, formats, Path(work), "")
            log = Path(work) / "stderr"
            for attempt in (1, 2):
                try:
                    child = _start_export_child(log)
                    _wait_export_child(child, len(paths), log, f"{manifest}\n")
                    break
                except TimeoutError as e:
                    logger.warning("figure export: %s (attempt %d)", e, attempt)
                    if attempt == 2:
                        raise
        return _move_into_place(paths)
    except Exception as e:
        for p in paths:
            _tmp_path(p).unlink(missing_ok=True)
        raise _export_error(e) from e


class FigureExporter:
    """Exports a run's figures while the run goes on computing: one child process and browser,
    started with the first figures and fed with :meth:`submit` as sections are built, so the
    browser's start-up and each figure's rendering overlap the rest of the analysis. They run
    under ``SCHED_IDLE``, on the cycles the run leaves idle; while they render, the run's thread
    guards count them as work elsewhere (``threads.running_elsewhere``) and give a small model's
    stage one thread, so the browser has the other core (beside two threads the RRXOR controls
    took 12 s, not 5). :meth:`finish` waits for them and moves the files into place; where they
    failed, :func:`export_figures` tries afresh.

    Use it as a context manager: leaving the block early kills the child and removes its
    temporary files.
    """

    def __init__(self, out_dir: str | os.PathLike, formats: Sequence[ExportFormat]) -> None:
        self.out, self.formats = Path(out_dir), tuple(formats)
        self.figures: list[ReportFigure] = []
        self.child: subprocess.Popen | None = None
        self._work: tempfile.TemporaryDirectory | None = None
        self._can = bool(self.formats) and importlib.util.find_spec("kaleido") is not None

    def submit(self, figures: Sequence[ReportFigure]) -> None:
        """Queue ``figures`` (those not queued already, by name) for export; the first figures
        start the child (not before: a browser starting beside the Mess3 run's first and
        heaviest pass took it from 5 s to 9 s)."""
        seen = {f.name for f in self.figures}
        new = [f for f in figures if f.name not in seen]
        self.figures += new
        if new and self._can and self._work is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self._work = tempfile.TemporaryDirectory(prefix="belief-lens-export-")
            self.child = _start_export_child(Path(self._work.name) / "stderr", yielding=True)
        if not new or self.child is None or self._work is None or self.child.poll() is not None:
            return
        manifest = _write_jobs(new, self.out, self.formats, Path(self._work.name), str(len(seen)))
        with contextlib.suppress(OSError):  # a child that died is found out by finish()
            self.child.stdin.write(f"{manifest}\n")  # type: ignore[union-attr]
            self.child.stdin.flush()  # type: ignore[union-attr]

    def finish(self, figures: Sequence[ReportFigure] = ()) -> list[Path]:
        """Queue ``figures`` too, wait for every export and return the files written. Raises
        ``BeliefLensError`` naming what is missing or what failed."""
        self.submit(figures)
        if not self.figures or not self.formats:
            return []
        paths = [self.out / f"{f.name}.{fmt}" for f in self.figures for fmt in self.formats]
        if self.child is not None:
            child, self.child = self.child, None
            try:
                _wait_export_child(child, len(paths), Path(self._work.name) / "stderr")  # type: ignore[union-attr]
                return _move_into_place(paths)
            except Exception as e:  # noqa: BLE001 - told, then tried afresh
                logger.warning("figure export alongside the run failed (%s); trying again", e)
        return export_figures(self.figures, self.out, self.formats)

    def close(self) -> None:
        """Kill a child still running and remove the temporary files."""
        if self.child is not None:
            _kill_tree(self.child.pid)
            self.child.communicate()
            self.child = None
            for f in self.figures:
                for fmt in self.formats:
                    _tmp_path(self.out / f"{f.name}.{fmt}").unlink(missing_ok=True)
        if self._work is not None:
            self._work.cleanup()
            self._work = None

    def __enter__(self) -> FigureExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_report(
    out_dir: str | os.PathLike,
    title: str,
    sections: Sequence[Section],
    metrics: dict[str, Any],
    *,
    export: Sequence[str] = ("png", "pdf"),
    exporter: FigureExporter | None = None,
) -> dict[str, Any]:
    """Write ``report.html``, ``plotly.min.js`` beside it, ``metrics.json`` and, where kaleido
    and a browser are available, each figure as PNG and PDF (saying once what is missing when
    not). With ``exporter`` (already exporting some figures alongside the run) the figures go
    through it, in its formats. Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "plotly.min.js"
    lib = get_plotlyjs()
    if not js.is_file() or js.read_text(encoding="utf-8") != lib:
        atomic_write_text(js, lib)
    paths: dict[str, Any] = {"html": out / "report.html", "metrics": out / "metrics.json"}
    metrics["summary"] = [line for s in sections for line in (*s.warnings, *s.headline)]
    figures = [f for s in sections for f in s.figures]
    try:
        paths["figures"] = (
            exporter.finish(figures)
            if exporter is not None
            else export_figures(figures, out, tuple(export))  # type: ignore[arg-type]
        )
    except BeliefLensError as e:
        logger.warning("%s; the report has every figure, interactive", e)
        metrics["figure_export"] = str(e)
        paths["figures"] = []
    atomic_write_text(paths["html"], compose_html(title, sections, metrics))
    atomic_write_text(paths["metrics"], json.dumps(jsonable(metrics), indent=2))
    return paths
