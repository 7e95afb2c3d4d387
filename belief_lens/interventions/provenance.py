"""Provenance checks: a probe or intervention records the fingerprint of the model it was made
from (and its hook and process); using it on another model warns with both fingerprints, raises
under ``strict=True``, and is silent under ``allow_other_model=True``.

Objects saved before fingerprints were recorded carry none: their provenance is unknown and
nothing is compared.
"""

from __future__ import annotations

import warnings
import weakref
from itertools import chain
from typing import Any

from belief_lens.errors import BeliefLensError, ProvenanceWarning
from belief_lens.probing.data import model_fingerprint
from belief_lens.validation import check_bool

__all__ = ["check_provenance", "current_fingerprint", "provenance_of"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def current_fingerprint(model: Any) -> str:
    """``model_fingerprint(model)``, cached until a parameter or buffer changes in place (an
    optimizer step or ``load_state_dict`` bumps the tensors' version counters)."""
    key = tuple((id(t), t._version) for t in chain(model.parameters(), model.buffers()))
    try:
        cached = _CACHE.get(model)
    except TypeError:  # not weak-referenceable: no cache
        return model_fingerprint(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    fingerprint = model_fingerprint(model)
    _CACHE[model] = (key, fingerprint)
    return fingerprint


def provenance_of(probe: Any) -> dict[str, str | None]:
    """The model fingerprint and process a fitted probe records (None where it records none)."""
    recorded = getattr(probe, "provenance_", None) or {}
    return {
        "model_fingerprint": recorded.get("model_fingerprint"),
        "process": recorded.get("process"),
    }


def check_provenance(
    model: Any,
    recorded: str | None,
    what: str,
    *,
    strict: bool = False,
    allow_other_model: bool = False,
) -> None:
    """Compare the fingerprint ``recorded`` by ``what`` (a probe or intervention) with
    ``model``'s: on a mismatch warn (:class:`ProvenanceWarning`) naming both, or raise under
    ``strict``; ``allow_other_model`` skips the check. Unknown provenance (None) passes."""
    strict = check_bool("strict", strict)
    if check_bool("allow_other_model", allow_other_model) or recorded is None:
        return
    now = current_fingerprint(model)
    if now == recorded:
        return
    message = (
        f"{what} was made from the model with fingerprint {recorded} but is used on a model with "
        f"fingerprint {now}: its directions may mean nothing here. Pass allow_other_model=True "
        "to transfer on purpose, or strict=True to make this an error"
    )
    if strict:
        raise BeliefLensError(message)
    warnings.warn(message, ProvenanceWarning, stacklevel=3)
