"""Model checkpoints: safetensors files whose metadata carries the architecture, written
atomically, and the paper's checkpoints (a ``.config.json`` beside the weights).

Files are always written with ``HookedTransformer`` (TL 1/2) tensor names, the format of the
paper's checkpoints, so a file saved under one TransformerLens version loads under the other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from belief_lens import tl_compat
from belief_lens.errors import BeliefLensError
from belief_lens.models.build import toy_transformer
from belief_lens.models.config import ModelConfig
from belief_lens.models.convert import load_weights_into, tensors_for_saving
from belief_lens.storage import atomic_write

__all__ = ["find_checkpoint", "load_checkpoint", "read_checkpoint_config", "save_checkpoint"]

#: The key of this package's metadata, in the safetensors header and in ``.config.json``.
META_KEY = "belief_lens"
#: Where ``find_checkpoint`` looks when ``$BELIEF_LENS_CHECKPOINTS`` is unset.
SHARED_CHECKPOINTS = Path(__file__).resolve().parents[3] / "shared" / "checkpoints"


def _config_path(path: Path) -> Path:
    return path.with_suffix(".config.json")


def save_checkpoint(
    model: Any, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Save weights and architecture to ``path`` (safetensors) in one atomic, fsync'd write.

    The ``ModelConfig``, TransformerLens version, seed, tensor format and ``extra``
    (JSON-serialisable) ride in the safetensors metadata, so weights and config land together or
    not at all. A ``path.config.json`` with the architecture at top level (like the paper's) is
    written beside it for people and older readers; ``load_checkpoint`` prefers the metadata.
    Returns the weights path.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise BeliefLensError(f"checkpoint path must end in .safetensors, got {str(path)!r}")
    tensors, fmt = tensors_for_saving(model)
    config = ModelConfig.from_model(model).to_dict()
    meta = {
        "model_config": dict(config),
        "transformer_lens_version": tl_compat.tl_version_string(),
        "seed": getattr(model.cfg, "seed", None),
        "format": fmt,
        "extra": dict(extra) if extra is not None else {},
    }
    try:
        meta_text = json.dumps(meta, sort_keys=False)
    except TypeError as err:
        raise BeliefLensError(f"save_checkpoint: extra must be JSON-serialisable: {err}") from err
    config[META_KEY] = {k: v for k, v in meta.items() if k != "model_config"}
    config_text = json.dumps(config, indent=2) + "\n"
    metadata = {"format": "pt", META_KEY: meta_text}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=metadata))
    atomic_write(_config_path(path), lambda tmp: Path(tmp).write_text(config_text))
    return path


def _embedded_meta(path: Path) -> dict[str, Any] | None:
    """The ``belief_lens`` metadata inside a safetensors file, or None (the paper's files)."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(META_KEY)
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise BeliefLensError(f"cannot read {str(path)!r} as safetensors: {err}") from err
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise BeliefLensError(f"checkpoint {str(path)!r} has corrupt metadata: {err}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("model_config"), dict):
        raise BeliefLensError(f"checkpoint {str(path)!r} metadata lacks its model_config")
    return meta


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's config as a dict: the architecture fields plus a ``belief_lens`` entry.

    From the safetensors metadata when present, else the ``.config.json`` beside the file (the
    paper's checkpoints).
    """
    path = Path(path)
    if path.is_file():
        meta = _embedded_meta(path)
        if meta is not None:
            config = dict(meta.pop("model_config"))
            config[META_KEY] = meta
            return config
    config_path = _config_path(path)
    if not config_path.is_file():
        raise BeliefLensError(
            f"checkpoint config {str(config_path)!r} not found; it must sit beside {path.name}"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise BeliefLensError(f"checkpoint config {str(config_path)!r} is not JSON: {err}") from err
    if not isinstance(config, dict):
        raise BeliefLensError(f"checkpoint config {str(config_path)!r} must hold a JSON object")
    missing = [k for k in ("n_layers", "d_model", "d_head", "n_ctx", "d_vocab") if k not in config]
    if missing:
        raise BeliefLensError(f"checkpoint config {str(config_path)!r} lacks fields {missing}")
    return config


def load_checkpoint(path: str | os.PathLike, device: str | torch.device | None = None) -> Any:
    """Load a checkpoint as a model of the installed TransformerLens (bridge or HookedTransformer).

    Accepts this package's checkpoints (config in the safetensors metadata) and
    ``HookedTransformer`` state dicts in safetensors with a ``.config.json`` of
    ``HookedTransformerConfig`` fields (the paper's). Never unpickles. Keys or shapes that don't
    fit raise a ``BeliefLensError`` naming the file and the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise BeliefLensError(f"checkpoint file {str(path)!r} not found")
    config = read_checkpoint_config(path)
    meta = config.pop(META_KEY, {}) or {}
    try:
        state = safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise BeliefLensError(f"cannot read {str(path)!r} as safetensors: {err}") from err
    model = toy_transformer(ModelConfig.from_dict(config), seed=meta.get("seed"), device="cpu")
    load_weights_into(model, state, path=path)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


def find_checkpoint(name: str) -> Path:
    """Locate a shared checkpoint such as ``"mess3_paper"`` (``.safetensors`` optional).

    Looks in ``$BELIEF_LENS_CHECKPOINTS`` if set, else ``../shared/checkpoints/`` beside the
    repository root. Raises ``FileNotFoundError`` (listing where it looked) when absent.
    """
    filename = name if name.endswith(".safetensors") else f"{name}.safetensors"
    candidates = []
    env = os.environ.get("BELIEF_LENS_CHECKPOINTS")
    if env:
        candidates.append(Path(env))
    candidates.append(SHARED_CHECKPOINTS)
    for folder in candidates:
        if (folder / filename).is_file():
            return folder / filename
    raise FileNotFoundError(
        f"checkpoint {filename!r} not found in {[str(c) for c in candidates]}; "
        "set BELIEF_LENS_CHECKPOINTS to the folder holding it"
    )
