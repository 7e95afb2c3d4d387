"""The architecture of a toy transformer (:class:`ModelConfig`) and the paper's named presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from belief_lens.errors import BeliefLensError
from belief_lens.validation import check_bool, check_int, check_option

__all__ = ["PAPER_ARCHITECTURES", "ModelConfig"]

ACT_FNS = ("relu", "gelu", "gelu_new", "gelu_fast", "silu", "solu_ln", "gelu_pytorch_tanh")
NORMALIZATIONS = (None, "LN", "LNPre", "RMS", "RMSPre")
POSITIONAL_EMBEDDINGS = ("standard", "rotary", "shortformer", "alibi")

#: The architectures of the paper's released models (all 4 layers, LayerNorm, ReLU, n_ctx 10).
PAPER_ARCHITECTURES: dict[str, dict[str, int]] = {
    "mess3": dict(n_layers=4, d_model=64, n_heads=1, d_head=8, d_mlp=256),
    "rrxor": dict(n_layers=4, d_model=128, n_heads=4, d_head=16, d_mlp=512),
}


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
            value = check_int(f"ModelConfig.{name}", getattr(self, name), low=1)
            object.__setattr__(self, name, value)
        check_option("ModelConfig.act_fn", self.act_fn, ACT_FNS)
        check_option("ModelConfig.normalization_type", self.normalization_type, NORMALIZATIONS)
        check_option(
            "ModelConfig.positional_embedding_type",
            self.positional_embedding_type,
            POSITIONAL_EMBEDDINGS,
        )
        for name in ("attn_only", "use_attn_scale"):
            object.__setattr__(self, name, check_bool(f"ModelConfig.{name}", getattr(self, name)))

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
        """The architecture fields, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
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
