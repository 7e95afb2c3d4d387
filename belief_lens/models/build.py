"""Building toy transformers on the installed TransformerLens, reproducibly.

``toy_transformer`` returns ``TransformerBridge.boot_native(...)`` on TransformerLens >= 3.4 and a
``HookedTransformer`` on 2.x. The same config and seed give the same weights, and the caller's
global RNG state is left as it was (TL 2 seeds all three global RNGs while building).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from belief_lens import tl_compat
from belief_lens.errors import BeliefLensError
from belief_lens.models.config import ModelConfig
from belief_lens.validation import check_option, check_seed

__all__ = ["preserve_global_rng", "seeded", "toy_transformer"]

KINDS = ("auto", "bridge", "hooked")


def toy_transformer(
    config: ModelConfig | int | None = None,
    n_ctx: int | None = None,
    /,
    *,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    kind: str = "auto",
    **overrides: Any,
) -> Any:
    """A randomly initialised toy transformer on the installed TransformerLens, with no hub access.

    ``toy_transformer(ModelConfig(...))``; keyword ``overrides`` replace config fields, and
    ``toy_transformer(d_vocab, n_ctx, **fields)`` is shorthand for
    ``toy_transformer(ModelConfig(d_vocab, n_ctx, **fields))``. The same config and seed give the
    same weights on the same TransformerLens version; the caller's global RNG state is left
    untouched. ``device=None`` means CPU. ``kind`` is ``"auto"`` (bridge on TL >= 3.4, else
    ``HookedTransformer``), ``"bridge"`` or ``"hooked"``.
    """
    if isinstance(config, ModelConfig):
        if n_ctx is not None:
            raise BeliefLensError("toy_transformer: give n_ctx inside the ModelConfig")
        config = config.replace(**overrides) if overrides else config
    elif config is None or isinstance(config, (int, np.integer)):
        fields = dict(overrides)
        if config is not None:
            fields["d_vocab"] = config
        if n_ctx is not None:
            fields["n_ctx"] = n_ctx
        unknown = sorted(set(fields) - set(ModelConfig.field_names()))
        if unknown:
            raise BeliefLensError(
                f"toy_transformer: unknown field(s) {unknown}; ModelConfig fields: "
                f"{', '.join(ModelConfig.field_names())}"
            )
        config = ModelConfig.from_dict(fields)
    else:
        raise BeliefLensError(
            f"toy_transformer: expected a ModelConfig, got {type(config).__name__}"
        )
    if seed is not None:
        seed = check_seed("seed", seed)
    return _build(config, seed=seed, device=device, kind=_resolve_kind(kind))


def _resolve_kind(kind: str) -> str:
    """``"bridge"`` or ``"hooked"``; ``"auto"`` picks what the installed TransformerLens has."""
    kind = check_option("kind", kind, KINDS)
    if kind == "auto":
        return tl_compat.default_kind()
    if kind == "bridge" and not tl_compat.is_bridge_available():
        raise BeliefLensError(
            f"kind='bridge' needs TransformerLens >= 3.4, got {tl_compat.tl_version_string()}"
        )
    if kind == "hooked" and not tl_compat.is_hooked_transformer_available():
        raise BeliefLensError(
            f"kind='hooked' needs TransformerLens < 4 (HookedTransformer), "
            f"got {tl_compat.tl_version_string()}"
        )
    return kind


@contextlib.contextmanager
def preserve_global_rng() -> Iterator[None]:
    """Restore torch, numpy and ``random`` global RNG states (TL 2 seeds all three)."""
    np_state = np.random.get_state()  # noqa: NPY002 (TL 2 seeds the legacy global RNG)
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch inside (when ``seed`` is given), and restore the caller's global RNG state
    afterwards: for building models whose constructors draw from the global RNG."""
    with preserve_global_rng():
        if seed is not None:
            torch.manual_seed(check_seed("seed", seed))
        yield


def _build(
    config: ModelConfig, *, seed: int | None, device: str | torch.device | None, kind: str
) -> Any:
    """Build a model from a ``ModelConfig`` on ``kind`` (``"bridge"`` or ``"hooked"``)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    fields = config.to_dict()
    fields["seed"] = seed
    try:
        # TL 2's config seeds the global RNGs in __post_init__, so build it inside the guard too.
        with preserve_global_rng():
            if kind == "bridge":
                bridge_cls, config_cls = tl_compat.bridge_classes()
                model = bridge_cls.boot_native(config_cls(**fields), device=device)
            else:
                model_cls, config_cls = tl_compat.hooked_classes()
                model = model_cls(config_cls(**fields, device=str(device)))
    except (TypeError, ValueError) as err:
        raise BeliefLensError(f"cannot build a {kind} model from {config}: {err}") from err
    return model
