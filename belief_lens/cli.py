"""The ``belief-lens`` command: ``demo`` trains and analyses a model, ``probe`` a checkpoint,
``factored`` runs the factored-geometry experiment, ``attention`` the constrained-belief-update
experiment, ``discover`` finds a simplex without labels.

It parses arguments into the config objects the Python API uses, calls the recipe in
:mod:`belief_lens.experiments`, logs progress, and turns bad input into a one-line error. Each
subcommand imports its experiment when it runs, so ``--help`` pays for none of them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.models import find_checkpoint, load_checkpoint
from belief_lens.processes import PROCESSES, make_process
from belief_lens.training.checkpoints import check_checkpoint_process

logger = logging.getLogger("belief_lens")


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, value


def _number(kind: type, *, positive: bool = True):
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


def _typed_param(name: str, key: str, text: str, annotation: Any) -> Any:
    """``text`` as the type the process function declares for ``key`` (int, float or bool)."""
    kinds = {int: "an integer", float: "a number", bool: "true or false"}
    kind = annotation if annotation in kinds else float
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        value = kind(text)
    except ValueError:
        raise BeliefLensError(
            f"--param {key}={text}: {name} expects {kinds[kind]} for {key}"
        ) from None
    if kind is float and not math.isfinite(value):
        raise BeliefLensError(f"--param {key}={text}: {key} must be a finite number")
    return value


def _process(name: str, params: Sequence[tuple[str, str]]) -> HMM:
    """The named process, its ``--param`` values typed by the process function's signature."""
    fn = PROCESSES.get(name)
    signature = inspect.signature(fn, eval_str=True).parameters if fn is not None else {}
    typed = {}
    for key, text in params:
        annotation = signature[key].annotation if key in signature else float
        typed[key] = _typed_param(name, key, text, annotation)
    return make_process(name, **typed)


def _prepare_out(out: str | None, default_stem: str, overwrite: bool) -> Path:
    """The run's output directory, created and checked writable before any work.

    Without ``--out``: a new ``runs/<stem>-<timestamp>`` directory. An existing non-empty
    ``--out`` is refused unless ``--overwrite``: no run replaces another's files silently.
    """
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1, 1000):
            path = Path("runs") / (f"{default_stem}-{stamp}" + (f"-{i}" if i > 1 else ""))
            try:
                path.mkdir(parents=True, exist_ok=False)
                break
            except FileExistsError:
                continue
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise BeliefLensError(f"--out {path} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise BeliefLensError(
                f"--out {path} already holds files (of another run?); choose a new directory, "
                "leave out --out for a fresh runs/<process>-<time> one, or pass --overwrite"
            )
        path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BeliefLensError(f"--out {path} is not writable: {err.strerror}") from None
    return path


def _analysis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        choices=("paper", "weighted", "sampled"),
        default=None,
        help="probe data: every sequence unweighted (paper), probability-weighted, or sampled "
        "(default: paper where at most 200,000 sequences exist, else sampled)",
    )
    p.add_argument(
        "--n-sequences", type=_number(int), default=None, help="sequences for --mode sampled"
    )
    p.add_argument(
        "--weighting", choices=("rows", "prefixes"), default="rows",
        help="rows by their sequences' weight (default), or each distinct prefix once",
    )  # fmt: skip
    p.add_argument(
        "--ridge", type=_number(float, positive=False), default=0.0, help="ridge penalty"
    )
    p.add_argument("--no-controls", action="store_true", help="skip the probe controls")
    p.add_argument("--no-interventions", action="store_true", help="skip the steering experiments")
    p.add_argument(
        "--seed", type=_number(int, positive=False), default=0,
        help="seed for splits, sampling and controls",
    )  # fmt: skip
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )
    p.add_argument(
        "--overwrite", action="store_true",
        help="write into an existing --out that holds files (replacing them)",
    )  # fmt: skip
    p.add_argument(
        "--export",
        choices=("png,pdf", "png", "pdf", "svg", "none"),
        default="png,pdf",
        help="figure files written beside report.html (needs kaleido and Chrome/Chromium; "
        "default png,pdf; none to skip)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="belief-lens",
        description="Belief-state geometry in transformer residual streams (Shai et al. 2024).",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="train the paper architecture on a process on CPU, then analyse it",
        description="Train the paper's 4-layer architecture from scratch, then fit probes per "
        "layer, run controls and interventions, and write report.html and metrics.json.",
    )
    demo.add_argument("--process", default="mess3", help="process name (default: mess3)")
    demo.add_argument(
        "--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
        help="a process parameter, e.g. --param x=0.05 (repeatable)",
    )  # fmt: skip
    demo.add_argument(
        "--minutes", type=_number(float), default=1.5,
        help="training time budget in minutes, evaluations included (default 1.5)",
    )  # fmt: skip
    demo.add_argument(
        "--out", default=None,
        help="output directory (default: a new runs/<process>-<time>); must be new or empty",
    )  # fmt: skip
    demo.add_argument(
        "--targets",
        choices=("bayes", "tokens"),
        default="bayes",
        help="train on exact next-token distributions (bayes, default) or sampled tokens "
        "(tokens: the paper's literal setup)",
    )
    demo.add_argument("--n-ctx", type=_number(int), default=10, help="context length (default 10)")
    demo.add_argument("--batch-size", type=_number(int), default=None, help="training batch size")
    demo.add_argument("--lr", type=_number(float), default=None, help="peak learning rate")
    demo.add_argument(
        "--max-steps", type=_number(int), default=None, help="stop after this many steps"
    )
    _analysis_args(demo)

    probe = sub.add_parser(
        "probe",
        help="analyse an existing checkpoint",
        description="Load a checkpoint (this package's or the paper's), fit probes per layer, "
        "run controls and interventions, and write report.html and metrics.json.",
    )
    probe.add_argument("--checkpoint", required=True, help="path to a .safetensors checkpoint")
    probe.add_argument("--process", required=True, help="process the model was trained on")
    probe.add_argument(
        "--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
        help="a process parameter, e.g. --param alpha=0.85 (repeatable)",
    )  # fmt: skip
    probe.add_argument(
        "--out", default=None,
        help="output directory (default: a new runs/probe-<process>-<time>); must be new or empty",
    )  # fmt: skip
    _mismatch_arg(probe)
    _analysis_args(probe)
    _factored_parser(sub)
    _attention_parser(sub)
    _discover_parser(sub)
    return parser


def _mismatch_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-process-mismatch", action="store_true",
        help="analyse the checkpoint on --process even where it records another process",
    )  # fmt: skip


def _checkpoint(text: str) -> Path:
    """The ``--checkpoint`` argument as a path to an existing file."""
    path = Path(text)
    if not path.is_file():
        raise BeliefLensError(f"checkpoint {path} does not exist or is not a file")
    return path


def _analysis_config(args: argparse.Namespace) -> Any:
    """The analysis options of ``demo`` and ``probe`` as an ``AnalysisConfig``."""
    from belief_lens.report import AnalysisConfig  # plotly and the probes: not for --help

    return AnalysisConfig(
        mode=args.mode or "auto",
        n_sequences=args.n_sequences,
        weighting=args.weighting,
        ridge=args.ridge,
        seed=args.seed,
        controls=not args.no_controls,
        interventions=not args.no_interventions,
        export=() if args.export == "none" else tuple(args.export.split(",")),
    )


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """The ``demo`` subcommand: :func:`belief_lens.experiments.paper.run_paper_demo`."""
    from belief_lens.experiments import paper

    demo = paper.PaperDemo.preset(
        args.process,
        _process(args.process, args.param),
        n_ctx=args.n_ctx,
        targets=args.targets,
        analysis=_analysis_config(args),
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        seconds=args.minutes * 60,
        steps=args.max_steps,
    )
    out = _prepare_out(args.out, args.process, args.overwrite)
    args.out = str(out)
    return paper.run_paper_demo(demo, out, progress=not args.quiet)


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    """The ``probe`` subcommand: :func:`belief_lens.experiments.paper.analyse_checkpoint`."""
    from belief_lens.experiments import paper

    hmm = _process(args.process, args.param)
    checkpoint = _checkpoint(args.checkpoint)
    config = _analysis_config(args)
    provenance = check_checkpoint_process(
        checkpoint, hmm, allow_mismatch=args.allow_process_mismatch
    )
    model = load_checkpoint(checkpoint)
    out = _prepare_out(args.out, f"probe-{args.process}", args.overwrite)
    args.out = str(out)
    return paper.analyse_checkpoint(
        model, hmm, out, checkpoint=checkpoint, analysis=config, provenance=provenance
    )


def _factored_parser(sub: Any) -> None:
    p = sub.add_parser(
        "factored",
        help="factored belief geometry on Mess3 x Mess3 (arXiv 2602.02385)",
        description="Train the paper's Mess3 architecture on Mess3 x Mess3 (epsilon 0) or on its "
        "joint-vocabulary-noise version, then measure per-factor probes, subspace angles and "
        "effective dimension over training against the factored (4) and joint (8) predictions.",
    )
    p.add_argument("--epsilon", type=float, default=0.0, help="joint-vocabulary noise (default 0)")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget (default 4)")
    p.add_argument(
        "--out", default=None, help="a new output directory (default: runs/factored-<time>)"
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--seed", type=int, default=0, help="first seed for weights, data and splits")
    p.add_argument(
        "--seeds", type=_number(int), default=3,
        help="runs with seeds --seed, --seed + 1, ... (at least 3; the verdict is given over "
        "them as mean ± s.e.; --minutes is per run)",
    )  # fmt: skip
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )


def _attention_parser(sub: Any) -> None:
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
        "--minutes", type=_number(float), default=8.0,
        help="wall-clock training budget for all models together (default 8)",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=_number(int), default=1500, help="steps per model (default 1500)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1], help="seeds, one model each (0 1)"
    )
    p.add_argument(
        "--checkpoint", default="mess3_paper",
        help="a 4-layer Mess3 checkpoint to analyse (default: the paper's, if found), or none",
    )  # fmt: skip
    p.add_argument(
        "--out", default=None, help="a new output directory (default: runs/attention-<time>)"
    )
    p.add_argument(
        "--export", choices=("png,pdf", "png", "pdf", "svg", "none"), default="png,pdf",
        help="figure files beside report.html (needs kaleido and Chrome; none to skip)",
    )  # fmt: skip
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )


def _discover_parser(sub: Any) -> None:
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
        "--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
        help="a process parameter (repeatable)",
    )  # fmt: skip
    p.add_argument("--n-vertices", type=int, default=None, help="vertices (default: eigengap)")
    p.add_argument("--out", default="runs/discover", help="output directory (runs/discover)")
    p.add_argument("--seed", type=int, default=0, help="seed for the fitting subsample")
    _mismatch_arg(p)
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )


def run_factored(args: argparse.Namespace) -> dict[str, Any]:
    """The ``factored`` subcommand: :mod:`belief_lens.experiments.factored`."""
    from belief_lens.experiments import factored

    training = factored.factored_training(
        seconds=args.minutes * 60, steps=args.max_steps, seed=args.seed
    )
    config = factored.FactoredExperiment(epsilon=args.epsilon, train=training)
    seeds = tuple(range(args.seed, args.seed + args.seeds))
    out = _prepare_out(args.out, "factored", overwrite=False)
    args.out = str(out)
    logger.info("training on %s, seeds %s, up to %.1f min each", config.process().name,
                list(seeds), args.minutes)  # fmt: skip
    runs = factored.run_factored_seeds(config, out, seeds)
    metrics = factored.write_factored_seeds_report(runs, out)
    m = metrics["across_seeds"]
    logger.info(
        "over %d seeds: dims95 %.1f ± %.1f (factored %d, joint %d), verdict %s",
        m["n_seeds"],
        m["dims_95"]["mean"],
        m["dims_95"]["se"],
        runs[0].final.predicted.factored,
        runs[0].final.predicted.joint,
        m["verdict"],
    )
    return metrics


def _attention_checkpoint(text: str) -> str | None:
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


def run_attention(args: argparse.Namespace) -> dict[str, Any]:
    """The ``attention`` subcommand: :mod:`belief_lens.experiments.attention`."""
    from belief_lens.experiments import attention

    seeds = tuple(args.seeds)
    config = attention.AttentionExperiment(
        seeds=seeds,
        steps=args.steps,
        seconds_per_model=args.minutes * 60 / (4 * len(seeds)),
        checkpoint=_attention_checkpoint(args.checkpoint),
    )
    out = _prepare_out(args.out, "attention", overwrite=False)
    args.out = str(out)
    logger.info("training %d single-layer models, %d steps each", 4 * len(seeds), args.steps)
    export = () if args.export == "none" else tuple(args.export.split(","))
    run = attention.run_attention_experiment(config)
    metrics = attention.write_attention_report(run, out, export=export)
    logger.info(
        "contribution log-slope %.3f (raw attention %.3f) against predicted %.3f; OV cosine min "
        "%.3f; head-count prediction holds: %s",
        metrics["attention_slope_measured"],
        metrics["attention_slope_raw"],
        metrics["attention_slope_predicted"],
        metrics["ov_cosine_min"],
        metrics["head_count_prediction_holds"],
    )
    return metrics


def run_discover(args: argparse.Namespace) -> dict[str, Any]:
    """The ``discover`` subcommand: returns the metrics it wrote to ``DIR/discovery.json``."""
    from belief_lens.experiments import discovery

    hmm = _process(args.process, args.param)
    checkpoint = _checkpoint(args.checkpoint)
    check_checkpoint_process(checkpoint, hmm, allow_mismatch=args.allow_process_mismatch)
    return discovery.discover_in_checkpoint(
        checkpoint,
        hmm,
        args.out,
        hook=args.hook,
        n_vertices=args.n_vertices,
        seed=args.seed,
    )


def _discover_summary(m: dict[str, Any]) -> str:
    line = (
        f"wrote {m['out']}/discovery.html: {m['n_vertices']} vertices ({m['n_vertices_chosen_by']})"
    )
    if "r2" in m:
        line += f", R^2 {m['r2']:.4f} and MSE {m['mse']:.5f} against the true beliefs"
    return "\n  ".join([line, *m.get("warnings", []), m["verdict"]])


def _summary(metrics: dict[str, Any], out: str) -> str:
    lines = [f"wrote {Path(out) / 'report.html'} and {Path(out) / 'metrics.json'}"]
    lines += [f"  {line}" for line in metrics.get("summary", [])]
    for row in metrics.get("probes", {}).get("rows", []):
        flag = f"  OVERFIT: {row['overfit_reason']}" if row["overfit"] else ""
        lines.append(
            f"  probe {row['hook']:28s} held-out MSE {row['mse_heldout']:.5f} "
            f"± {row['mse_heldout_se']:.1g} R^2 {row['r2_heldout']:.3f}   "
            f"in-sample MSE {row['mse_all']:.5f}{flag}"
        )
    if "figure_export" in metrics:
        lines.append(f"  {metrics['figure_export']}")
    return "\n".join(lines)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
    )
    try:
        if args.command == "discover":
            print(_discover_summary(run_discover(args)))
            return 0
        run = {
            "demo": run_demo,
            "probe": run_probe,
            "factored": run_factored,
            "attention": run_attention,
        }[args.command]
        metrics = run(args)
    except (BeliefLensError, OSError, json.JSONDecodeError) as e:
        if args.debug:
            raise
        print(f"belief-lens {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"belief-lens {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(
            f"belief-lens {args.command}: unexpected error: {type(e).__name__}: {_one_line(e)} "
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    print(_summary(metrics, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
