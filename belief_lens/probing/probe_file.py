"""The ``AffineProbe`` file format: its metadata checked, field by field, against the tensors'
shapes in the header, before any tensor is read (crafted metadata is a clear error)."""

from __future__ import annotations

import json
import os
from typing import Any

from belief_lens.errors import BeliefLensError
from belief_lens.validation import check_int

__all__ = ["PROBE_FORMAT", "PROBE_PARAMS", "PROBE_TENSORS", "check_probe_metadata"]

#: The tensors a probe file holds, and its format tag.
PROBE_TENSORS = ("coef_", "intercept_", "x_mean_", "y_mean_", "simplex_basis_", "encoding_")
PROBE_FORMAT = "belief_lens.AffineProbe/1"
#: The hyperparameters a probe file may carry.
PROBE_PARAMS = ("ridge", "fit_intercept", "solver")


def check_probe_metadata(
    path: str | os.PathLike, raw: str | None, shapes: dict[str, tuple[int, ...]]
) -> dict[str, Any]:
    """The probe metadata ``raw`` (JSON) as a dict, refused with a ``BeliefLensError`` naming
    ``path`` unless every field has its type and the tensor ``shapes`` agree with it."""
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError as err:
        raise BeliefLensError(f"{path} has unreadable probe metadata: {err}") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != PROBE_FORMAT
        or set(shapes) != set(PROBE_TENSORS)
    ):
        raise BeliefLensError(
            f"{path} is not an AffineProbe file (format {PROBE_FORMAT}); tensors: {sorted(shapes)}"
        )
    params = meta.get("params")
    if not isinstance(params, dict) or not set(params) <= set(PROBE_PARAMS):
        raise BeliefLensError(
            f"{path}: probe params must be a dict with keys from {list(PROBE_PARAMS)}, "
            f"got {params!r}"
        )
    try:
        for key in ("n_features", "n_targets", "rank"):
            meta[key] = check_int(f"{path}: metadata {key}", meta.get(key), low=0)
    except (TypeError, ValueError) as err:
        raise BeliefLensError(str(err)) from None
    hook = meta.get("hook", meta.get("hook_name"))  # older files: hook_name
    if hook is not None and not isinstance(hook, str):
        raise BeliefLensError(f"{path}: metadata hook must be a string, got {hook!r}")
    if not isinstance(meta.get("provenance") or {}, dict):
        raise BeliefLensError(f"{path}: metadata provenance must be a dict")
    S, d = meta["n_targets"], meta["n_features"]
    expected = {"coef_": (S, d), "intercept_": (S,), "x_mean_": (d,), "y_mean_": (S,)}
    bad = [f"{k} {shapes[k]} (expected {v})" for k, v in expected.items() if shapes[k] != v]
    basis, enc = shapes["simplex_basis_"], shapes["encoding_"]
    if len(basis) != 2 or basis[0] != S or enc != (basis[1] if len(basis) == 2 else -1, d):
        bad.append(f"simplex_basis_ {basis} and encoding_ {enc}")
    if bad:
        raise BeliefLensError(
            f"{path}: the tensors' shapes disagree with the metadata "
            f"({S} targets, {d} features): {', '.join(bad)}"
        )
    return meta
