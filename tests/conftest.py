"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

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


def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup``, tests that share an expensive module-scoped fixture (a trained
    model, a demo run) go to one worker, so the fixture is built once; the rest spread freely."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        shared = sorted(
            name
            for name, defs in info.name2fixturedefs.items()
            if defs and defs[-1].scope == "module"
        )
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{','.join(shared)}"))
