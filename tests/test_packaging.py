"""The wheel holds the whole package: every module of the source tree, the ``belief-lens``
command, the extras and the single-sourced version. (``.ci/wheel-check`` goes further: it installs
the wheel into a fresh environment and runs the demo from outside the repository.)"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import belief_lens

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        # sdist first, then the wheel from the unpacked sdist (nothing built in the source tree,
        # and a file the sdist misses is missing from the wheel too)
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(list(out.glob("belief_lens-*.tar.gz"))) == 1
    (path,) = out.glob("belief_lens-*.whl")
    return path


def test_wheel_holds_every_module_the_command_and_the_extras(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    source = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "belief_lens").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert source and source <= names, sorted(source - names)
    assert not any(n.startswith(("tests/", "bench/", "demos/")) for n in names)
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert f"Version: {belief_lens.__version__}" in metadata
    for extra in ("wandb", "mlflow", "export", "dev"):
        assert f"Provides-Extra: {extra}" in metadata
    entry = zipfile.ZipFile(wheel).read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "belief-lens = belief_lens.cli:console_main" in entry
