"""Training toy transformers (and token-mapped models) on process data, within a step, token or
time budget, with resumable checkpoints that a crash cannot corrupt.

The parts: :mod:`.config` (``TrainConfig``, its presets, the learning-rate schedule),
:mod:`.data` (``make_batch``, the one data path), :mod:`.evaluate` (the evaluation set, the loss
floor, ``evaluate_loss``), :mod:`.history` (``TrainingHistory``), :mod:`.checkpoints` (step
checkpoints), :mod:`.progress` (a bar on a terminal, log lines in a piped log) and :mod:`.loop`
(``train``).
"""

from belief_lens.training.checkpoints import check_checkpoint_process, step_checkpoints
from belief_lens.training.config import (
    DEFAULTS,
    PROCESS_LEARNING_RATES,
    OptimizerName,
    Schedule,
    Targets,
    TrainConfig,
    lr_at,
)
from belief_lens.training.data import make_batch
from belief_lens.training.evaluate import evaluate_loss, loss_evaluator
from belief_lens.training.history import EvalRecord, TrainingHistory, process_fingerprint
from belief_lens.training.loop import train

__all__ = [
    "check_checkpoint_process",
    "DEFAULTS",
    "PROCESS_LEARNING_RATES",
    "EvalRecord",
    "OptimizerName",
    "Schedule",
    "Targets",
    "TrainConfig",
    "TrainingHistory",
    "evaluate_loss",
    "loss_evaluator",
    "lr_at",
    "make_batch",
    "process_fingerprint",
    "step_checkpoints",
    "train",
]
