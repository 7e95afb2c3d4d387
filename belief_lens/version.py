"""The package version, in one place: ``pyproject.toml`` and ``belief_lens.__version__`` read it."""

__version__ = "0.1.0"
