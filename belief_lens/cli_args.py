"""The command line's argument types and the experiment subcommands' parsers (``factored``,
``attention``, ``icl``, ``discover``): argparse only, nothing heavy, so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from belief_lens.errors import BeliefLensError
from belief_lens.models import find_checkpoint

__all__ = [
    "attention_checkpoint",
    "attention_parser",
    "checkpoint_arg",
    "discover_parser",
    "export_arg",
    "export_formats",
    "factored_parser",
    "icl_parser",
    "mismatch_arg",
    "number",
    "param_arg",
    "track_arg",
]

logger = logging.getLogger("belief_lens")


def param_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def number(kind: type, *, positive: bool = True):
    """An argparse type: a finite number of ``kind``, positive (or >= 0), with a clear message."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        if not positive and value < 0:
            raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
        return value

    parse.__name__ = f"positive {kind.__name__}" if positive else kind.__name__
    return parse


EXPORT_CHOICES = ("png,pdf", "png", "pdf", "svg", "none")


def export_arg(p: argparse.ArgumentParser) -> None:
    """``--export``: the figure files written beside ``report.html``."""
    p.add_argument(
        "--export", choices=EXPORT_CHOICES, default="png,pdf", metavar="FORMATS",
        help="figure files written beside report.html: png,pdf (default), png, pdf, svg, or "
        "none to skip (needs kaleido and Chrome/Chromium)",
    )  # fmt: skip


def export_formats(value: str) -> tuple[str, ...]:
    """The formats an ``--export`` value names (``none``: no figure files)."""
    return () if value == "none" else tuple(value.split(","))


def resume_args(p: argparse.ArgumentParser, *, keep: bool = True) -> None:
    """``--resume DIR`` (finish an interrupted run) and, with ``keep``, ``--keep-checkpoints``
    (how many step checkpoints of each model a finished run keeps)."""
    p.add_argument(
        "--resume", default=None, metavar="DIR",
        help="finish the interrupted run into DIR with its own settings (other options ignored)",
    )  # fmt: skip
    if keep:
        p.add_argument(
            "--keep-checkpoints", type=number(int, positive=False), default=0,
            help="step checkpoints of each model a finished run keeps in DIR/checkpoints "
            "(default 0: none; an interrupted run keeps its latest for --resume)",
        )  # fmt: skip


def track_arg(p: argparse.ArgumentParser) -> None:
    """``--track``: log the run to Weights & Biases or MLflow (optional extras)."""
    p.add_argument(
        "--track", choices=("none", "wandb", "mlflow"), default="none",
        help="log parameters, per-step loss, ratio to optimum and learning rate, final metrics "
        "and artefacts to wandb or mlflow (pip install 'belief_lens[wandb]' or "
        "'belief_lens[mlflow]'; default none)",
    )  # fmt: skip


def mismatch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-process-mismatch", action="store_true",
        help="analyse the checkpoint on --process even where it records another process",
    )  # fmt: skip


def checkpoint_arg(text: str) -> Path:
    """The ``--checkpoint`` argument as a path to an existing file."""
    path = Path(text)
    if not path.is_file():
        raise BeliefLensError(f"checkpoint {path} does not exist or is not a file")
    return path


def factored_parser(sub: Any) -> None:
    p = sub.add_parser(
        "factored",
        help="factored belief geometry on Mess3 x Mess3 (arXiv 2602.02385)",
        description="Train the paper's Mess3 architecture on Mess3 x Mess3 (epsilon 0) or on its "
        "joint-vocabulary-noise version, then measure per-factor probes, subspace angles and "
        "effective dimension over training against the factored (4) and joint (8) predictions.",
    )
    p.add_argument(
        "--epsilon", type=number(float, positive=False), default=0.0,
        help="joint-vocabulary noise (default 0)",
    )  # fmt: skip
    p.add_argument("--minutes", type=number(float), default=4.0, help="training budget (default 4)")
    p.add_argument(
        "--out", default=None, help="a new output directory (default: runs/factored-<time>)"
    )
    p.add_argument("--max-steps", type=number(int), default=None, help="stop after this many steps")
    p.add_argument(
        "--seed", type=number(int, positive=False), default=0,
        help="first seed for weights, data and splits",
    )  # fmt: skip
    resume_args(p, keep=False)  # every checkpoint is kept: the geometry is measured over them
    export_arg(p)
    p.add_argument(
        "--seeds", type=number(int), default=3,
        help="runs with seeds --seed, --seed + 1, ... (at least 3; the verdict is given over "
        "them as mean ± s.e.; --minutes is per run)",
    )  # fmt: skip
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )
    track_arg(p)


def attention_parser(sub: Any) -> None:
    p = sub.add_parser(
        "attention",
        help="attention as constrained belief updating (arXiv 2502.01954)",
        description="Train single-layer Mess3 models with 1 and 2 heads where 1 - 3x > 0 and "
        "where it is negative, over seeds; compare each head's attention, per-token "
        "contributions and OV vectors with the constrained-update theory, and the losses with "
        "the optimum; analyse the paper's 4-layer checkpoint too. Writes report.html and "
        "metrics.json.",
    )
    p.add_argument(
        "--minutes", type=number(float), default=8.0,
        help="wall-clock training budget for all models together (default 8)",
    )  # fmt: skip
    p.add_argument("--steps", type=number(int), default=1500, help="steps per model (default 1500)")
    p.add_argument(
        "--seeds",
        type=number(int, positive=False),
        nargs="+",
        default=[0, 1],
        help="seeds, one model each (0 1)",
    )
    p.add_argument(
        "--checkpoint", default="mess3_paper",
        help="a 4-layer Mess3 checkpoint to analyse (default: the paper's, if found), or none",
    )  # fmt: skip
    p.add_argument(
        "--out", default=None, help="a new output directory (default: runs/attention-<time>)"
    )
    resume_args(p)
    export_arg(p)
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )
    track_arg(p)


def icl_parser(sub: Any) -> None:
    p = sub.add_parser(
        "icl",
        help="in-context learning and steering as one belief dynamics, on a mixture of Mess3s",
        description="Train the paper's Mess3 architecture (n_ctx 32, Bayes targets) on "
        "mixture([mess3(0.05, 0.85), mess3(0.25, 0.5)]), then measure its in-context loss curve "
        "against the mixture's optimum and the never-updating predictor, probe the component "
        "log-odds, and steer along the probe's direction over an (n, alpha) grid against the "
        "closed-form Bayesian prediction and a norm-matched control. Writes report.html and "
        "metrics.json.",
    )
    p.add_argument(
        "--minutes", type=number(float), default=5.0,
        help="training budget in CPU minutes of this process, all threads (default 5)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="a new output directory (default: runs/icl-<time>)")
    p.add_argument("--max-steps", type=number(int), default=None, help="stop after this many steps")
    resume_args(p)
    export_arg(p)
    p.add_argument(
        "--seed", type=number(int, positive=False), default=0,
        help="seed for weights, data and splits",
    )  # fmt: skip
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )
    track_arg(p)


def discover_parser(sub: Any) -> None:
    p = sub.add_parser(
        "discover",
        help="find a belief simplex in a checkpoint's activations without labels",
        description="Run a checkpoint on the process's sequences, find a simplex in one hook's "
        "activations with no belief labels, draw it, and score it against the true beliefs. "
        "Writes DIR/discovery.html and DIR/discovery.json; never overwrites them.",
    )
    p.add_argument("--checkpoint", required=True, help="path to a .safetensors checkpoint")
    p.add_argument("--hook", default="blocks.3.hook_resid_post", help="hook to read")
    p.add_argument("--process", default="mess3", help="process whose sequences to run (mess3)")
    p.add_argument(
        "--param", type=param_arg, action="append", default=[], metavar="NAME=VALUE",
        help="a process parameter (repeatable)",
    )  # fmt: skip
    p.add_argument("--n-vertices", type=int, default=None, help="vertices (default: eigengap)")
    p.add_argument("--out", default="runs/discover", help="output directory (runs/discover)")
    p.add_argument("--seed", type=int, default=0, help="seed for the fitting subsample")
    mismatch_arg(p)
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )


def attention_checkpoint(text: str) -> str | None:
    """``--checkpoint``: ``none``, a path, or a shared checkpoint's name (absent: skipped)."""
    if text.lower() == "none":
        return None
    if Path(text).is_file():
        return text
    try:
        return str(find_checkpoint(text))
    except FileNotFoundError as err:
        if text != "mess3_paper":
            raise BeliefLensError(str(err)) from None
        logger.info("the paper's checkpoint is not here; skipping its analysis")
        return None
