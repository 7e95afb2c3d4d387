"""Toy transformers across TransformerLens versions: their configs and the paper's presets
(:mod:`.config`), building (:mod:`.build`), state-dict conversion between ``HookedTransformer``
and ``TransformerBridge`` (:mod:`.convert`), and safetensors checkpoints (:mod:`.checkpoints`).
"""

from belief_lens.models.build import preserve_global_rng, seeded, toy_transformer
from belief_lens.models.checkpoints import (
    find_checkpoint,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from belief_lens.models.config import PAPER_ARCHITECTURES, ModelConfig
from belief_lens.models.convert import load_weights_into

__all__ = [
    "PAPER_ARCHITECTURES",
    "ModelConfig",
    "find_checkpoint",
    "load_checkpoint",
    "load_weights_into",
    "preserve_global_rng",
    "read_checkpoint_config",
    "save_checkpoint",
    "seeded",
    "toy_transformer",
]
