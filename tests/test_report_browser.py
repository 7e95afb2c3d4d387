"""report.html as a person sees it: opened in headless Chromium, screenshotted, every figure
region checked for drawn content and the page for JavaScript errors.

Needs Chromium (Debian package ``chromium``); skips with the reason where it is missing, and fails
under ``CI=true`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1400
SCALE = 0.5  # device pixels per CSS pixel in the screenshot: smaller PNGs decode faster

# Injected at the top of a copy of the page: records errors (uncaught, rejected promises and
# console.error) and, after load, every figure's box and the page height into a <pre>.
PROBE = """<script>
window.__errors = [];
addEventListener('error', e => __errors.push('error: ' + (e.message || e)));
addEventListener('unhandledrejection', e => __errors.push('rejection: ' + e.reason));
const __ce = console.error;
console.error = (...a) => { __errors.push('console.error: ' + a.join(' ')); __ce(...a); };
addEventListener('load', () => setTimeout(() => {
  const rects = [...document.querySelectorAll('.js-plotly-plot')].map(d => {
    const r = d.getBoundingClientRect();
    return {id: d.id, x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height};
  });
  // Every 2-D marker drawn outside its panel (beyond the displayed ranges with clipping off;
  // clipped markers are not drawn), and every subplot title outside its panel's columns.
  const outside = [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
    const L = gd._fullLayout, bad = [];
    (gd._fullData || []).forEach(tr => {
      if (tr.type !== 'scatter' || !tr.x || !String(tr.mode).includes('markers')) return;
      if (tr.cliponaxis !== false) return;
      const xa = L[tr.xaxis.replace('x', 'xaxis')], ya = L[tr.yaxis.replace('y', 'yaxis')];
      let n = 0;
      for (let k = 0; k < tr.x.length; k++) {
        if (tr.x[k] < xa.range[0] || tr.x[k] > xa.range[1] ||
            tr.y[k] < ya.range[0] || tr.y[k] > ya.range[1]) n++;
      }
      if (n) bad.push(`${n} of ${tr.x.length} points of '${tr.name}'`);
    });
    const cols = Object.keys(L).filter(k => /^xaxis\\d*$/.test(k)).map(k => L[k].domain);
    (L.annotations || []).forEach(a => {
      if (a.xref !== 'paper' || !cols.length) return;
      if (!cols.some(d => a.x >= d[0] - 1e-9 && a.x <= d[1] + 1e-9)) bad.push(`title '${a.text}'`);
    });
    return {id: gd.id, bad};
  });
  const pre = document.createElement('pre');
  pre.id = '__probe';
  pre.textContent = JSON.stringify(
    {errors: __errors, rects, outside, height: document.documentElement.scrollHeight});
  document.body.appendChild(pre);
}, 1000));
</script>"""


def _chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = "Chromium not found (Debian: apt-get install chromium); the browser test needs it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; .ci/run installs it")
    pytest.skip(reason)


def _run_browser(exe: str, url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={profile}", "--virtual-time-budget=20000", *args, url,
        ]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced grey/RGB/RGBA PNG to ``uint8 [h, w, channels]``."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, head = 8, [], None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = head
    assert depth == 8 and not interlace and ctype in (0, 2, 4, 6), f"unsupported PNG {head}"
    c = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, 1 + w * c)
    out = np.zeros((h, w * c), np.uint8)
    prev = np.zeros(w * c, np.int64)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if f == 0:  # None
            cur = line
        elif f == 1:  # Sub: a running sum along the row, per channel
            cur = np.cumsum(line.reshape(w, c), axis=0).reshape(-1) & 255
        elif f == 2:  # Up
            cur = (line + prev) & 255
        else:  # Average, Paeth: sequential along the row
            cur = np.array(_unfilter(line.tolist(), prev.tolist(), c, int(f)), np.int64)
        out[y] = cur
        prev = cur
    return out.reshape(h, w, c)


def _unfilter(line: list[int], prev: list[int], c: int, f: int) -> list[int]:
    cur = [0] * len(line)
    for i, x in enumerate(line):
        a = cur[i - c] if i >= c else 0
        b = prev[i]
        if f == 3:
            cur[i] = (x + ((a + b) >> 1)) & 255
            continue
        d = prev[i - c] if i >= c else 0
        p = a + b - d
        pa, pb, pd = abs(p - a), abs(p - b), abs(p - d)
        cur[i] = (x + (a if pa <= pb and pa <= pd else b if pb <= pd else d)) & 255
    return cur


def test_png_reader_against_a_hand_built_file(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    rows, prev = [], np.zeros(12, np.int64)
    for y, f in enumerate([0, 1, 2, 3, 4]):  # one row per filter type, encoded by hand
        x = img[y].reshape(-1).astype(np.int64)
        a = np.concatenate([[0] * 3, x[:-3]])
        d = np.concatenate([[0] * 3, prev[:-3]])
        p = a + prev - d
        pa, pb, pd = abs(p - a), abs(p - prev), abs(p - d)
        paeth = np.where((pa <= pb) & (pa <= pd), a, np.where(pb <= pd, prev, d))
        pred = [0 * x, a, prev, (a + prev) // 2, paeth][f]
        rows.append(bytes([f]) + ((x - pred) & 255).astype(np.uint8).tobytes())
        prev = x

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 5, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    (tmp_path / "x.png").write_bytes(png)
    np.testing.assert_array_equal(read_png(tmp_path / "x.png"), img)


def check_in_browser(report: Path, shots: Path) -> dict:
    """Open ``report`` in headless Chromium; assert no JavaScript errors and that every figure
    region of the screenshot holds drawn, coloured content. Returns the probe's record."""
    exe = _chromium()
    page = report.with_name("browser_check.html")
    text = report.read_text(encoding="utf-8")
    page.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    url = page.resolve().as_uri()
    dom = _run_browser(exe, url, f"--window-size={WIDTH},3000", "--dump-dom")
    m = re.search(r'<pre id="__probe">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"the page never finished loading; stderr:\n{dom.stderr[-2000:]}"
    probe = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["errors"] == [], probe["errors"]
    uncaught = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and "Uncaught" in ln]
    assert uncaught == [], uncaught
    assert probe["rects"], "no plotly figure on the page"
    drawn_outside = {o["id"]: o["bad"] for o in probe["outside"] if o["bad"]}
    assert drawn_outside == {}, f"drawn outside their panels: {drawn_outside}"

    shot = shots / f"{report.parent.name}.png"
    height = int(probe["height"]) + 20
    run = _run_browser(
        exe, url, f"--window-size={WIDTH},{height}", f"--force-device-scale-factor={SCALE}",
        f"--screenshot={shot}",
    )  # fmt: skip
    assert shot.is_file(), f"no screenshot; stderr:\n{run.stderr[-2000:]}"
    img = read_png(shot)[..., :3].astype(float)
    for r in probe["rects"]:
        y0, y1 = int(r["y"] * SCALE), int((r["y"] + r["h"]) * SCALE)
        x0, x1 = int(r["x"] * SCALE), int((r["x"] + r["w"]) * SCALE)
        region = img[y0:y1, x0:x1]
        assert region.size, f"figure {r['id']} lies outside the screenshot {img.shape}"
        coloured = (region.max(-1) - region.min(-1) > 40).mean()
        assert region.std() > 3 and coloured > 1e-3, (
            f"figure {r['id']} looks blank: pixel std {region.std():.2f}, "
            f"coloured fraction {coloured:.2e}"
        )
    page.unlink()
    return probe


@pytest.fixture(scope="module")
def rrxor_demo(tmp_path_factory) -> Path:
    """A demo's page (its training section among the rest) on RRXOR's geometry, tiny: 8 steps,
    context 6 (the Mess3 probe's page below is the heavy one)."""
    from belief_lens.cli import main

    out = tmp_path_factory.mktemp("rrxor") / "demo"
    argv = ["-q", "demo", "--process", "rrxor", "--max-steps", "8", "--minutes", "1"]
    argv += ["--n-ctx", "6", "--no-interventions", "--export", "none"]  # the page, not files
    assert main([*argv, "--out", str(out)]) == 0
    return out / "report.html"


# The Mess3 page is conftest's shared run (once per worker; its numbers are checked by
# tests/test_cli.py): the paper checkpoint probed in paper mode with controls, 59,049 sequences,
# the heaviest page.
def test_mess3_report_is_light(mess3_paper_probe_run):
    assert mess3_paper_probe_run.code == 0
    report = mess3_paper_probe_run.out / "report.html"
    size = report.stat().st_size
    assert size <= 2_000_000, f"report.html weighs {size / 1e6:.2f} MB"
    text = report.read_text(encoding="utf-8")
    assert '"type":"scattergl"' not in text
    assert text.count("<script src='plotly.min.js'>") == 1
    assert (report.parent / "plotly.min.js").is_file()


def check_report_figures(path: Path, tmp_path: Path) -> dict:
    probe = check_in_browser(path, tmp_path)
    ids = {r["id"] for r in probe["rects"]}
    assert {"fig-geometry", "fig-geometry_per_hook", "fig-controls_r2"} <= ids
    return probe


# Each report is requested by name, so the test runner keeps a fixture's tests on one worker.
def test_mess3_probe_report_renders_in_a_browser(mess3_paper_probe_run, tmp_path):
    assert mess3_paper_probe_run.code == 0
    check_report_figures(mess3_paper_probe_run.out / "report.html", tmp_path)


def test_rrxor_demo_report_renders_in_a_browser(rrxor_demo, tmp_path):
    probe = check_report_figures(rrxor_demo, tmp_path)
    assert "fig-training" in {r["id"] for r in probe["rects"]}


def test_shared_structure_figure_draws_inside_its_panels(tmp_path):
    # The demo's figure: a probe read on the other vocabulary, far off the simplex (as in a
    # transfer that fails), beside the true beliefs.
    from belief_lens.plotting import compare_figure
    from belief_lens.report import shared_structure_section, write_report

    rng = np.random.default_rng(0)
    truth = rng.dirichlet([1.0, 1.0, 1.0], 3000)
    read = truth @ rng.normal(size=(3, 3)) * 3 + rng.normal(size=(3000, 3))
    fig = compare_figure(truth, read, titles=("B: true beliefs", "B read by A's probe"),
                         title="Probe fitted on vocabulary A, applied to vocabulary B")  # fmt: skip

    class Result:  # the numbers the section words; only the figure matters here
        def to_dict(self):
            keys = ("transfer_r2_a_to_b", "transfer_r2_b_to_a", "transfer_r2_a_to_b_centred",
                    "transfer_r2_b_to_a_centred", "within_r2_a", "within_r2_b", "max_cosine_a_b",
                    "steer_kl_before", "steer_transfer_fold", "steer_control_fold",
                    "steer_own_fold", "mixture_r2_joint", "mixture_r2_component",
                    "mixture_r2_within")  # fmt: skip
            return {"hook": "h", "principal_angles_deg": [10.0], **dict.fromkeys(keys, 0.5)}

    section = shared_structure_section(Result(), [fig], loss_over_optimal=1.0175)
    assert any("Under-trained" in w for w in section.warnings)
    out = tmp_path / "shared"
    write_report(out, "One structure, two vocabularies", [section], {}, export=())
    probe = check_in_browser(out / "report.html", tmp_path)
    assert [o["bad"] for o in probe["outside"]] == [[]]
