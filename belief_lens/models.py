"""Toy transformers across TransformerLens versions, and safetensors checkpoints.

``toy_transformer`` returns ``TransformerBridge.boot_native(...)`` on TransformerLens >= 3.4 and a
``HookedTransformer`` on 2.x. Checkpoints are always written with ``HookedTransformer`` (TL 1/2)
tensor names, the format of the paper's checkpoints, so a file saved under one TransformerLens
version loads under the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from belief_lens import tl_compat
from belief_lens.errors import BeliefLensError
from belief_lens.storage import atomic_write

__all__ = [
    "PAPER_ARCHITECTURES",
    "ModelConfig",
    "find_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "toy_transformer",
]

logger = logging.getLogger(__name__)

_ACT_FNS = ("relu", "gelu", "gelu_new", "gelu_fast", "silu", "solu_ln", "gelu_pytorch_tanh")
_NORMALIZATIONS = (None, "LN", "LNPre", "RMS", "RMSPre")
_POSITIONAL = ("standard", "rotary", "shortformer", "alibi")


def _check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise BeliefLensError(f"{owner}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise BeliefLensError(f"{owner}: {name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a toy transformer: the one list of architecture fields.

    Field names are ``HookedTransformerConfig``'s, so a config is also the ``.config.json`` of the
    paper's checkpoints. Validated at construction; ``replace(**fields)`` gives a modified copy.

    >>> ModelConfig(d_vocab=3, n_ctx=10).d_model
    64
    """

    d_vocab: int
    n_ctx: int
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 1
    d_head: int = 8
    d_mlp: int = 256
    act_fn: str = "relu"
    normalization_type: str | None = "LN"
    attn_only: bool = False
    positional_embedding_type: str = "standard"
    use_attn_scale: bool = True

    def __post_init__(self) -> None:
        for name in ("d_vocab", "n_ctx", "n_layers", "d_model", "n_heads", "d_head", "d_mlp"):
            _check_int("ModelConfig", name, getattr(self, name), 1)
            object.__setattr__(self, name, int(getattr(self, name)))
        checks = (
            ("act_fn", _ACT_FNS),
            ("normalization_type", _NORMALIZATIONS),
            ("positional_embedding_type", _POSITIONAL),
        )
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise BeliefLensError(
                    f"ModelConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        for name in ("attn_only", "use_attn_scale"):
            if not isinstance(getattr(self, name), bool):
                raise BeliefLensError(
                    f"ModelConfig: {name} must be True or False, got {getattr(self, name)!r}"
                )

    def replace(self, **fields: Any) -> ModelConfig:
        """A copy with ``fields`` changed (validated); unknown names raise."""
        unknown = sorted(set(fields) - set(self.field_names()))
        if unknown:
            raise BeliefLensError(
                f"ModelConfig has no field(s) {unknown}; fields: {', '.join(self.field_names())}"
            )
        return dataclasses.replace(self, **fields)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """From a dict of fields, such as a checkpoint's config (other keys are ignored)."""
        missing = [k for k in ("d_vocab", "n_ctx") if k not in data]
        if missing:
            raise BeliefLensError(f"a model config needs {missing}; got keys {sorted(data)}")
        return cls(**{k: data[k] for k in cls.field_names() if k in data})

    @classmethod
    def paper(cls, process: str, d_vocab: int, n_ctx: int = 10, **fields: Any) -> ModelConfig:
        """The paper's architecture for ``process``: its RRXOR model for ``"rrxor"``, its Mess3
        model (4 layers, d_model 64, 1 head) for every other process; ``fields`` override.

        >>> ModelConfig.paper("mess3", d_vocab=3).d_model
        64
        """
        arch = PAPER_ARCHITECTURES.get(process, PAPER_ARCHITECTURES["mess3"])
        return cls(d_vocab=d_vocab, n_ctx=n_ctx, **{**arch, **fields})

    @classmethod
    def from_model(cls, model: Any) -> ModelConfig:
        """The architecture of a built model, read from ``model.cfg``."""
        cfg = model.cfg
        return cls.from_dict(
            {k: getattr(cfg, k) for k in cls.field_names() if getattr(cfg, k, None) is not None}
            | {"normalization_type": getattr(cfg, "normalization_type", "LN")}
        )


#: The architectures of the paper's released models (all 4 layers, LayerNorm, ReLU, n_ctx 10).
PAPER_ARCHITECTURES: dict[str, dict[str, int]] = {
    "mess3": dict(n_layers=4, d_model=64, n_heads=1, d_head=8, d_mlp=256),
    "rrxor": dict(n_layers=4, d_model=128, n_heads=4, d_head=16, d_mlp=512),
}
_META_KEY = "belief_lens"
_FORMAT_LEGACY = "hooked_transformer"
_FORMAT_BRIDGE = "bridge"
# Buffers of HookedTransformer attention: derived from the config, never learned.
_BUFFER_SUFFIXES = (".mask", ".IGNORE")


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
    return _build(config, seed=seed, device=device, kind=kind)


def _resolve_kind(kind: str) -> str:
    if kind == "auto":
        return tl_compat.default_kind()
    if kind == "bridge":
        if not tl_compat.is_bridge_available():
            raise BeliefLensError(
                f"kind='bridge' needs TransformerLens >= 3.4, got {tl_compat.tl_version_string()}"
            )
        return kind
    if kind == "hooked":
        if not tl_compat.is_hooked_transformer_available():
            raise BeliefLensError(
                f"kind='hooked' needs TransformerLens < 4 (HookedTransformer), "
                f"got {tl_compat.tl_version_string()}"
            )
        return kind
    raise BeliefLensError(f"kind must be 'auto', 'bridge' or 'hooked', got {kind!r}")


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


def _build(
    config: ModelConfig,
    *,
    seed: int | None,
    device: str | torch.device | None,
    kind: str = "auto",
) -> Any:
    """Build a model from a ``ModelConfig`` on the chosen kind."""
    kind = _resolve_kind(kind)
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


# --- state-dict formats -------------------------------------------------------------------------


def _is_legacy_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    return "embed.W_E" in state_dict


def _bridge_to_legacy(state_dict: Mapping[str, Tensor], arch: Mapping[str, Any]) -> dict:
    """Invert TL's ``convert_tl_checkpoint``: bridge keys -> ``HookedTransformer`` keys/shapes.

    Covers the toy architecture (LayerNorm or none, dense MLP, multi-head attention); an
    unrecognised key raises, and the caller then saves bridge keys instead.
    """
    n_heads = arch["n_heads"]
    out: dict[str, Tensor] = {}
    for key, t in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        stem, _, part = prefix.rpartition(".")
        if key == "embed.weight":
            out["embed.W_E"] = t
        elif key == "pos_embed.weight":
            out["pos_embed.W_pos"] = t
        elif key == "unembed.weight":
            out["unembed.W_U"] = t.T.contiguous()
        elif key == "unembed.bias":
            out["unembed.b_U"] = t
        elif stem.endswith(".attn") and part in ("q", "k", "v"):
            name = part.upper()
            if leaf == "weight":  # [(h d), d_model] -> [h, d_model, d]
                out[f"{stem}.W_{name}"] = (
                    t.reshape(n_heads, -1, t.shape[-1]).transpose(1, 2).contiguous()
                )
            elif leaf == "bias":
                out[f"{stem}.b_{name}"] = t.reshape(n_heads, -1).contiguous()
            else:
                raise KeyError(key)
        elif stem.endswith(".attn") and part == "o":
            if leaf == "weight":  # [d_model, (h d)] -> [h, d, d_model]
                out[f"{stem}.W_O"] = t.T.reshape(n_heads, -1, t.shape[0]).contiguous()
            elif leaf == "bias":
                out[f"{stem}.b_O"] = t
            else:
                raise KeyError(key)
        elif stem.endswith(".mlp") and part in ("in", "out"):
            if leaf == "weight":
                out[f"{stem}.W_{part}"] = t.T.contiguous()
            elif leaf == "bias":
                out[f"{stem}.b_{part}"] = t
            else:
                raise KeyError(key)
        elif part in ("ln1", "ln2", "ln_final") or key.startswith("ln_final."):
            if leaf == "weight":
                out[f"{prefix}.w"] = t
            elif leaf == "bias":
                out[f"{prefix}.b"] = t
            else:
                raise KeyError(key)
        else:
            raise KeyError(key)
    return out


def _tensors_for_saving(model: Any) -> tuple[dict[str, Tensor], str]:
    """The model's weights as CPU tensors in ``HookedTransformer`` format where possible."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith(_BUFFER_SUFFIXES)}
    if _is_legacy_state_dict(state):
        return state, _FORMAT_LEGACY
    try:
        return _bridge_to_legacy(state, ModelConfig.from_model(model).to_dict()), _FORMAT_LEGACY
    except (KeyError, RuntimeError) as err:
        logger.info("saving bridge tensor names: no HookedTransformer name for %s", err)
        return state, _FORMAT_BRIDGE


# --- save / load --------------------------------------------------------------------------------


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
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise BeliefLensError(f"checkpoint path must end in .safetensors, got {str(path)!r}")
    tensors, fmt = _tensors_for_saving(model)
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
    config[_META_KEY] = {k: v for k, v in meta.items() if k != "model_config"}
    config_text = json.dumps(config, indent=2) + "\n"
    metadata = {"format": "pt", _META_KEY: meta_text}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    atomic_write(_config_path(path), lambda tmp: Path(tmp).write_text(config_text))
    return path


def _embedded_meta(path: Path) -> dict[str, Any] | None:
    """The ``belief_lens`` metadata inside a safetensors file, or None (the paper's files)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as err:
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
            config[_META_KEY] = meta
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise BeliefLensError(f"checkpoint file {str(path)!r} not found")
    config = read_checkpoint_config(path)
    meta = config.pop(_META_KEY, {}) or {}
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise BeliefLensError(f"cannot read {str(path)!r} as safetensors: {err}") from err
    model = _build(ModelConfig.from_dict(config), seed=meta.get("seed"), device="cpu")
    load_weights_into(model, state, path=path)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model


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
    target_is_legacy = _is_legacy_state_dict(target)
    file_is_legacy = _is_legacy_state_dict(state)
    state = {k: v for k, v in state.items() if not k.endswith(_BUFFER_SUFFIXES)}
    try:
        if file_is_legacy and not target_is_legacy:
            _check_keys(path, state, _bridge_to_legacy(target, arch), "HookedTransformer")
            state = tl_compat.convert_legacy_state_dict(state, model.cfg)
        elif not file_is_legacy and target_is_legacy:
            state = _bridge_to_legacy(state, arch)
    except (KeyError, ValueError) as err:
        if isinstance(err, BeliefLensError):
            raise
        raise BeliefLensError(f"checkpoint {str(path)!r}: cannot convert tensor {err}") from err
    for key, value in target.items():
        if key.endswith(_BUFFER_SUFFIXES):
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
    repo_root = Path(__file__).resolve().parent.parent
    candidates.append(repo_root.parent / "shared" / "checkpoints")
    for folder in candidates:
        if (folder / filename).is_file():
            return folder / filename
    raise FileNotFoundError(
        f"checkpoint {filename!r} not found in {[str(c) for c in candidates]}; "
        "set BELIEF_LENS_CHECKPOINTS to the folder holding it"
    )
