"""Model checkpoints: safetensors files whose metadata carries the architecture and a sha256 of
the weights, written atomically, and the paper's checkpoints (a ``.config.json`` beside the
weights).

Files are always written with ``HookedTransformer`` (TL 1/2) tensor names, the format of the
paper's checkpoints, so a file saved under one TransformerLens version loads under the other.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from belief_lens import tl_compat
from belief_lens.errors import BeliefLensError
from belief_lens.models.build import toy_transformer
from belief_lens.models.config import ModelConfig
from belief_lens.models.convert import load_weights_into, tensors_for_saving
from belief_lens.storage import (
    atomic_write,
    load_tensors,
    read_metadata,
    refuse_existing,
    save_tensors,
)
from belief_lens.validation import check_seed

__all__ = ["find_checkpoint", "load_checkpoint", "read_checkpoint_config", "save_checkpoint"]

#: The key of this package's metadata, in the safetensors header and in ``.config.json``.
META_KEY = "belief_lens"
#: Where ``find_checkpoint`` looks when ``$BELIEF_LENS_CHECKPOINTS`` is unset.
SHARED_CHECKPOINTS = Path(__file__).resolve().parents[3] / "shared" / "checkpoints"


def _config_path(path: Path) -> Path:
    return path.with_suffix(".config.json")


def save_checkpoint(
    model: Any,
    path: str | os.PathLike,
    *,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    config_json: bool = False,
) -> Path:
    """Save weights and architecture to ``path`` (safetensors) in one atomic, fsync'd write.

    The ``ModelConfig``, TransformerLens version, seed, tensor format, ``extra``
    (JSON-serialisable) and the tensors' sha256 ride in the safetensors metadata, so weights and
    config land together or not at all. An existing file is kept unless ``overwrite=True``, and
    no other file is touched: the ``path.config.json`` the paper's checkpoints carry is written
    (atomically, after the weights) only when ``config_json=True``. Returns the weights path.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise BeliefLensError(f"checkpoint path must end in .safetensors, got {str(path)!r}")
    refuse_existing(path, overwrite)
    if config_json:
        refuse_existing(_config_path(path), overwrite)
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
    save_tensors(path, tensors, {"format": "pt", META_KEY: meta_text}, overwrite=overwrite)
    if config_json:
        config[META_KEY] = {k: v for k, v in meta.items() if k != "model_config"}
        text = json.dumps(config, indent=2) + "\n"
        atomic_write(_config_path(path), lambda tmp: Path(tmp).write_text(text), overwrite=True)
    return path


def _embedded_meta(path: Path, header: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``belief_lens`` metadata of a safetensors header, or None (the paper's files)."""
    text = header.get(META_KEY)
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
        meta = _embedded_meta(path, read_metadata(path)[0])
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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BeliefLensError(f"checkpoint config {str(config_path)!r} is not JSON: {err}") from err
    if not isinstance(config, dict):
        raise BeliefLensError(f"checkpoint config {str(config_path)!r} must hold a JSON object")
    missing = [k for k in ("n_layers", "d_model", "d_head", "n_ctx", "d_vocab") if k not in config]
    if missing:
        raise BeliefLensError(f"checkpoint config {str(config_path)!r} lacks fields {missing}")
    return config


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of the ``HookedTransformer`` tensors that pin down ``config``'s sizes."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {
        "embed.W_E": (c.d_vocab, c.d_model),
        "unembed.W_U": (c.d_model, c.d_vocab),
    }
    if c.positional_embedding_type == "standard":
        shapes["pos_embed.W_pos"] = (c.n_ctx, c.d_model)
    for layer in range(c.n_layers):
        shapes[f"blocks.{layer}.attn.W_Q"] = (c.n_heads, c.d_model, c.d_head)
        if not c.attn_only:
            shapes[f"blocks.{layer}.mlp.W_in"] = (c.d_model, c.d_mlp)
    return shapes


def check_config_fits(
    path: Path, config: ModelConfig, shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """Refuse a config that does not describe the file's tensors (read from its header), before
    a model is built: crafted sizes must not allocate anything."""
    if "embed.W_E" not in shapes:  # not HookedTransformer names: load_weights_into checks
        return
    layers = {int(k.split(".")[1]) for k in shapes if re.match(r"blocks\.\d+\.", k)}
    if layers != set(range(config.n_layers)):
        raise BeliefLensError(
            f"checkpoint {str(path)!r}: the config says {config.n_layers} layers but the file "
            f"holds blocks {sorted(layers)}"
        )
    bad = [
        f"{k}: file {shapes.get(k)} vs config {v}"
        for k, v in expected_shapes(config).items()
        if k in shapes and shapes[k] != v  # missing keys: load_weights_into names them
    ]
    if bad:
        raise BeliefLensError(
            f"checkpoint {str(path)!r} does not fit its config; shape mismatches: "
            + "; ".join(bad[:6])
        )


def load_checkpoint(path: str | os.PathLike, device: str | torch.device | None = None) -> Any:
    """Load a checkpoint as a model of the installed TransformerLens (bridge or HookedTransformer).

    Accepts this package's checkpoints (config in the safetensors metadata) and
    ``HookedTransformer`` state dicts in safetensors with a ``.config.json`` of
    ``HookedTransformerConfig`` fields (the paper's). Never unpickles. The config is checked
    against the tensors' shapes in the header before the model is built, and the tensors against
    the sha256 in the metadata (files written before it carry none). Anything that does not fit
    raises a ``BeliefLensError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise BeliefLensError(f"checkpoint file {str(path)!r} not found")
    header, shapes = read_metadata(path)
    config = read_checkpoint_config(path)
    meta = config.pop(META_KEY, {}) or {}
    try:
        architecture = ModelConfig.from_dict(config)
        seed = meta.get("seed") if isinstance(meta, dict) else None
        seed = None if seed is None else check_seed(f"{str(path)!r} metadata seed", seed)
    except (TypeError, ValueError) as err:
        raise BeliefLensError(f"checkpoint {str(path)!r} has a bad config: {err}") from None
    check_config_fits(path, architecture, shapes)
    state = load_tensors(path, header)
    model = toy_transformer(architecture, seed=seed, device="cpu")
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
