"""Lazy, version-aware access to TransformerLens.

TransformerLens 2.x builds toy models as ``HookedTransformer``; 4.x only has
``TransformerBridge.boot_native``; 3.4+ has both. Everything here imports TransformerLens
inside functions, so ``import belief_lens`` stays fast and works without it. Feature detection
imports specific submodules under ``try/except ImportError``: ``hasattr(transformer_lens, ...)``
raises ImportError on TL 4 for removed names.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from typing import Any, Literal

from belief_lens.errors import BeliefLensError

ModelKind = Literal["bridge", "hooked"]

__all__ = [
    "ModelKind",
    "attention_output_weights",
    "bridge_classes",
    "convert_legacy_state_dict",
    "default_kind",
    "embedding_weights",
    "get_act_name",
    "hooked_classes",
    "is_bridge_available",
    "is_hooked_transformer_available",
    "start_skips_blocks",
    "tl_version",
    "tl_version_string",
]


@functools.lru_cache(maxsize=1)
def tl_version_string() -> str:
    """The installed TransformerLens version, read from package metadata (no import)."""
    try:
        return importlib.metadata.version("transformer-lens")
    except importlib.metadata.PackageNotFoundError:
        raise BeliefLensError(
            "TransformerLens is not installed; install it with `pip install transformer-lens`"
        ) from None


def tl_version() -> tuple[int, int, int]:
    """The installed TransformerLens version as ``(major, minor, patch)``."""
    parts = [int(m) for m in re.findall(r"\d+", tl_version_string())[:3]]
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


@functools.lru_cache(maxsize=1)
def bridge_classes() -> tuple[Any, Any]:
    """``(TransformerBridge, TransformerBridgeConfig)``, with ``boot_native`` registered.

    Raises ImportError when the installed TransformerLens has no native bridge.
    """
    from transformer_lens.model_bridge import TransformerBridge

    try:
        from transformer_lens.config import TransformerBridgeConfig
    except ImportError:
        from transformer_lens.model_bridge import TransformerBridgeConfig  # type: ignore
    if getattr(TransformerBridge, "boot_native", None) is None:
        # boot_native is attached to the class when its source module is imported.
        import transformer_lens.model_bridge.sources.native  # noqa: F401
    if getattr(TransformerBridge, "boot_native", None) is None:
        raise ImportError("this TransformerLens has no TransformerBridge.boot_native")
    return TransformerBridge, TransformerBridgeConfig


@functools.lru_cache(maxsize=1)
def hooked_classes() -> tuple[Any, Any]:
    """``(HookedTransformer, HookedTransformerConfig)``; ImportError on TransformerLens 4+."""
    from transformer_lens.HookedTransformer import HookedTransformer
    from transformer_lens.HookedTransformerConfig import HookedTransformerConfig

    return HookedTransformer, HookedTransformerConfig


def is_bridge_available() -> bool:
    """Whether ``TransformerBridge.boot_native`` can build toy models here (TL >= 3.4)."""
    try:
        bridge_classes()
    except ImportError:
        return False
    return True


def is_hooked_transformer_available() -> bool:
    """Whether ``HookedTransformer`` exists here (TL < 4)."""
    try:
        hooked_classes()
    except ImportError:
        return False
    return True


def start_skips_blocks(model: Any) -> bool:
    """Whether ``model(residual, start_at_layer=k)`` runs blocks ``k..`` only: a
    ``HookedTransformer`` does; the bridge (TL 4.3) runs every block and swaps the residual in
    at block ``k``, so starting late saves nothing there."""
    return is_hooked_transformer_available() and isinstance(model, hooked_classes()[0])


def default_kind() -> ModelKind:
    """The model kind this package builds: the bridge on TL >= 3.4, else ``HookedTransformer``."""
    if tl_version() >= (3, 4, 0) and is_bridge_available():
        return "bridge"
    if is_hooked_transformer_available():
        return "hooked"
    if is_bridge_available():
        return "bridge"
    raise BeliefLensError(
        f"TransformerLens {tl_version_string()} has neither TransformerBridge.boot_native "
        "nor HookedTransformer; install transformer-lens>=2.16"
    )


def convert_legacy_state_dict(state_dict: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """Convert a ``HookedTransformer`` (TL 1/2) state dict to bridge keys with TL's converter."""
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    return convert_tl_checkpoint(state_dict, cfg)


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """TransformerLens's ``get_act_name`` shorthand (``("resid_post", 3)`` -> full hook name)."""
    try:
        from transformer_lens.utilities import get_act_name as _get_act_name
    except ImportError:
        from transformer_lens.utils import get_act_name as _get_act_name  # TL 2.x
    return _get_act_name(name, layer, layer_type)


def residual_write_problem(model: Any, hook: str) -> str | None:
    """Why a write at ``hook`` would not patch the residual stream of ``model``, or None.

    TransformerLens 4's ``TransformerBridge`` makes ``blocks.i.hook_resid_mid`` an alias of the
    second norm's (or the MLP's) input: reading it gives the residual stream, but a value written
    there reaches only the MLP, while the unpatched residual is still added after it.
    ``HookedTransformer``'s ``hook_resid_mid`` is the residual stream itself.
    """
    if not hook.endswith("hook_resid_mid"):
        return None
    point = model.hook_dict.get(hook)
    prefix = hook[: -len("hook_resid_mid")]
    for inner in ("ln2.hook_in", "mlp.hook_in"):
        if point is not None and model.hook_dict.get(prefix + inner) is point:
            return (
                f"{hook} is this TransformerBridge's alias of {prefix}{inner}: a value written "
                "there reaches the MLP but not the residual stream added after it, so it is no "
                "residual-stream intervention; use resid_pre or resid_post"
            )
    return None


def attention_output_weights(model: Any, layer: int) -> Any:
    """``W_O`` of block ``layer``, ``[n_heads, d_head, d_model]``, detached: the same attribute on
    ``HookedTransformer`` and TransformerLens 4's ``TransformerBridge``."""
    W_O = model.blocks[layer].attn.W_O.detach()
    want = (model.cfg.n_heads, model.cfg.d_head, model.cfg.d_model)
    if tuple(W_O.shape) != want:
        raise BeliefLensError(f"blocks.{layer}.attn.W_O has shape {tuple(W_O.shape)}, not {want}")
    return W_O


def embedding_weights(model: Any) -> Any:
    """The token embedding ``W_E`` ``[d_vocab, d_model]``, detached (both model kinds)."""
    return model.W_E.detach()
