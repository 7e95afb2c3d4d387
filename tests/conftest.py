"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

# Tests never reach for the model hub: everything they need is built locally or in ../shared/.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist (``make test`` runs one worker per core), each worker and the processes it
# starts compute on one thread: two workers at torch's default threads would fight for the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy's and scipy's BLAS, already loaded in this process


@pytest.fixture(scope="session")
def shared_checkpoint():
    """Resolve a paper checkpoint by name (``"mess3_paper"``) to its ``.safetensors`` path.

    Looks in ``$BELIEF_LENS_CHECKPOINTS``, else ``../shared/checkpoints/`` beside the repository.
    A missing file fails the test on CI (``CI=true``) and skips it elsewhere.
    """
    from belief_lens.models import find_checkpoint

    def resolve(name: str) -> Path:
        try:
            return find_checkpoint(name)
        except FileNotFoundError as err:
            if os.environ.get("CI") == "true":
                pytest.fail(f"paper checkpoint missing on CI: {err}")
            pytest.skip(f"paper checkpoint not available: {err}")

    return resolve


#: Commands too slow to run twice, each run once per worker and shared across test modules:
#: every test that requests one goes to the same worker (``pytest_collection_modifyitems``).
SHARED_RUNS = ("mess3_paper_probe_run", "mess3_paper_probe_data")


@pytest.fixture(scope="session")
def mess3_paper_probe_data(shared_checkpoint) -> SimpleNamespace:
    """The paper's Mess3 checkpoint (``model``) and its paper-mode probe data (``data``, all
    59,049 sequences, seed 0) at every block's ``hook_resid_post`` and the final norm, from one
    forward pass: tests/test_probes.py and tests/test_probing.py fit it (``select_hooks``)."""
    from belief_lens.models import load_checkpoint
    from belief_lens.probes import collect_probe_data
    from belief_lens.processes import mess3

    model = load_checkpoint(shared_checkpoint("mess3_paper"))
    hooks = [*(f"blocks.{i}.hook_resid_post" for i in range(4)), "ln_final.hook_normalized"]
    data = collect_probe_data(model, mess3(), 10, hooks, mode="paper")
    return SimpleNamespace(model=model, data=data)


@pytest.fixture(scope="session")
def mess3_paper_probe_run(shared_checkpoint, tmp_path_factory) -> SimpleNamespace:
    """``belief-lens -q probe`` on the paper's Mess3 checkpoint in paper mode (all 59,049
    sequences) with controls, without interventions or figure files: tests/test_cli.py checks
    its numbers against the paper, tests/test_report_browser.py its page (the heaviest one).
    ``code`` (the exit status) and ``out`` (the run directory)."""
    from belief_lens.cli import main

    path = shared_checkpoint("mess3_paper")
    out = tmp_path_factory.mktemp("mess3_probe") / "probe"
    argv = ["-q", "probe", "--checkpoint", str(path), "--process", "mess3", "--out", str(out)]
    code = main([*argv, "--no-interventions", "--export", "none"])
    return SimpleNamespace(code=code, out=out)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the marks
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup``, tests that share an expensive module-scoped fixture (a trained
    model, a demo run) go to one worker, so the fixture is built once, and so do the tests of
    every module that request one of the :data:`SHARED_RUNS`; the rest spread freely."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        names = info.name2fixturedefs
        runs = sorted(name for name in SHARED_RUNS if name in names)
        shared = sorted(name for name, defs in names.items() if defs and defs[-1].scope == "module")
        if runs:
            group = "session:" + ",".join(runs)
        elif shared:
            group = f"{item.module.__name__}:{','.join(shared)}"
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))


class _LoadGroupIds:
    """pytest-xdist 3.8 hands ``--dist loadgroup`` its groups by appending ``@<group>`` to each
    marked test's node id through ``item._nodeid``, which pytest 9.2's structured node ids no
    longer read (pytest-dev/pytest-xdist#1386): every group would be split across workers,
    silently. Where the suffix did not take, write it into the id pytest reads."""

    @pytest.hookimpl(trylast=True)  # after pytest-xdist's own
    def pytest_collection_modifyitems(self, config, items):
        try:
            from _pytest.nodeid import NodeId  # pytest >= 9.2
        except ImportError:
            return
        if not config.getvalue("loadgroup"):
            return

        for item in items:
            names = {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
            if names and "@" not in item.nodeid and isinstance(getattr(item, "_id", None), NodeId):
                item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        config.pluginmanager.register(_LoadGroupIds(), "belief_lens_loadgroup_ids")
