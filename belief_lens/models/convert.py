"""State dicts in either TransformerLens format: ``HookedTransformer`` (TL 1/2 names, the format of
the paper's checkpoints) and ``TransformerBridge`` (TL >= 3.4), converted both ways.

TL's own ``convert_tl_checkpoint`` turns legacy names into bridge names; :func:`bridge_to_legacy`
inverts it for the toy architecture, so files are always written in the legacy format and load
under either TransformerLens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from belief_lens import tl_compat
from belief_lens.errors import BeliefLensError
from belief_lens.models.config import ModelConfig

__all__ = [
    "BUFFER_SUFFIXES",
    "FORMAT_BRIDGE",
    "FORMAT_LEGACY",
    "bridge_to_legacy",
    "is_legacy_state_dict",
    "load_weights_into",
    "tensors_for_saving",
]

logger = logging.getLogger(__name__)

FORMAT_LEGACY = "hooked_transformer"
FORMAT_BRIDGE = "bridge"
#: Buffers of HookedTransformer attention: derived from the config, never learned.
BUFFER_SUFFIXES = (".mask", ".IGNORE")


def is_legacy_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a state dict has ``HookedTransformer`` (TL 1/2) tensor names."""
    return "embed.W_E" in state_dict


def _attention_tensor(stem: str, part: str, leaf: str, t: Tensor, n_heads: int) -> dict:
    """One bridge attention tensor (``q``, ``k``, ``v`` or ``o``) in legacy name and shape."""
    name = part.upper()
    if part == "o":
        if leaf == "weight":  # [d_model, (h d)] -> [h, d, d_model]
            return {f"{stem}.W_O": t.T.reshape(n_heads, -1, t.shape[0]).contiguous()}
        if leaf == "bias":
            return {f"{stem}.b_O": t}
    elif leaf == "weight":  # [(h d), d_model] -> [h, d_model, d]
        w = t.reshape(n_heads, -1, t.shape[-1]).transpose(1, 2)
        return {f"{stem}.W_{name}": w.contiguous()}
    elif leaf == "bias":
        return {f"{stem}.b_{name}": t.reshape(n_heads, -1).contiguous()}
    raise KeyError(f"{stem}.{part}.{leaf}")


def bridge_to_legacy(state_dict: Mapping[str, Tensor], arch: Mapping[str, Any]) -> dict:
    """Invert TL's ``convert_tl_checkpoint``: bridge keys -> ``HookedTransformer`` keys/shapes.

    Covers the toy architecture (LayerNorm or none, dense MLP, multi-head attention); an
    unrecognised key raises ``KeyError``, and a caller saving then keeps bridge keys instead.
    """
    renamed = {
        "embed.weight": "embed.W_E",
        "pos_embed.weight": "pos_embed.W_pos",
        "unembed.bias": "unembed.b_U",
    }
    out: dict[str, Tensor] = {}
    for key, t in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        stem, _, part = prefix.rpartition(".")
        if key in renamed:
            out[renamed[key]] = t
        elif key == "unembed.weight":
            out["unembed.W_U"] = t.T.contiguous()
        elif stem.endswith(".attn") and part in ("q", "k", "v", "o"):
            out.update(_attention_tensor(stem, part, leaf, t, arch["n_heads"]))
        elif stem.endswith(".mlp") and part in ("in", "out") and leaf in ("weight", "bias"):
            out[f"{stem}.{'W' if leaf == 'weight' else 'b'}_{part}"] = (
                t.T.contiguous() if leaf == "weight" else t
            )
        elif (part in ("ln1", "ln2", "ln_final") or key.startswith("ln_final.")) and leaf in (
            "weight",
            "bias",
        ):
            out[f"{prefix}.{'w' if leaf == 'weight' else 'b'}"] = t
        else:
            raise KeyError(key)
    return out


def tensors_for_saving(model: Any) -> tuple[dict[str, Tensor], str]:
    """The model's weights as CPU tensors in ``HookedTransformer`` format where possible, and the
    format's name (:data:`FORMAT_LEGACY` or :data:`FORMAT_BRIDGE`)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith(BUFFER_SUFFIXES)}
    if is_legacy_state_dict(state):
        return state, FORMAT_LEGACY
    try:
        return bridge_to_legacy(state, ModelConfig.from_model(model).to_dict()), FORMAT_LEGACY
    except (KeyError, RuntimeError) as err:
        logger.info("saving bridge tensor names: no HookedTransformer name for %s", err)
        return state, FORMAT_BRIDGE


def load_weights_into(
    model: Any, state: Mapping[str, Tensor], *, path: str | os.PathLike = "<state dict>"
) -> None:
    """Load a state dict of either tensor format into a built model of the same architecture.

    ``HookedTransformer`` names are converted for a bridge and back; the derived attention
    buffers (causal mask, IGNORE) come from the model. Mismatches raise naming ``path``.
    """
    path = Path(path)
    target = model.state_dict()
    arch = ModelConfig.from_model(model).to_dict()
    target_is_legacy = is_legacy_state_dict(target)
    file_is_legacy = is_legacy_state_dict(state)
    state = {k: v for k, v in state.items() if not k.endswith(BUFFER_SUFFIXES)}
    try:
        if file_is_legacy and not target_is_legacy:
            _check_keys(path, state, bridge_to_legacy(target, arch), "HookedTransformer")
            state = tl_compat.convert_legacy_state_dict(state, model.cfg)
        elif not file_is_legacy and target_is_legacy:
            state = bridge_to_legacy(state, arch)
    except (KeyError, ValueError) as err:
        if isinstance(err, BeliefLensError):
            raise
        raise BeliefLensError(f"checkpoint {str(path)!r}: cannot convert tensor {err}") from err
    for key, value in target.items():
        if key.endswith(BUFFER_SUFFIXES):
            state[key] = value
    _check_keys(path, state, target, "model")
    model.load_state_dict(state, strict=True)


def _check_keys(
    path: Path, state: Mapping[str, Tensor], target: Mapping[str, Tensor], what: str
) -> None:
    """Raise naming the missing, unexpected and mis-shaped tensors of ``state`` vs ``target``."""
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs {what} {tuple(target[k].shape)}"
        for k in sorted(set(state) & set(target))
        if tuple(state[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches [{'; '.join(shapes)}]")
        raise BeliefLensError(
            f"checkpoint {str(path)!r} does not fit its config ({what} keys): " + ", ".join(parts)
        )
