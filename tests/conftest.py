"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach for the model hub: everything they need is built locally or in ../shared/.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
