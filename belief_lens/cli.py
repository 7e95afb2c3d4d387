"""The ``belief-lens`` command: ``demo`` trains and analyses a model, ``probe`` a checkpoint,
``factored`` runs the factored-geometry experiment, ``attention`` the constrained-belief-update
experiment, ``icl`` in-context learning and steering on a mixture, ``discover`` finds a simplex
without labels.

It parses arguments into the config objects the Python API uses, calls the recipe in
:mod:`belief_lens.experiments`, logs progress, and turns bad input into a one-line error. Each
subcommand imports its experiment when it runs, so ``--help`` pays for none of them.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from belief_lens.cli_args import (
    attention_checkpoint,
    attention_parser,
    checkpoint_arg,
    discover_parser,
    export_arg,
    export_formats,
    factored_parser,
    icl_parser,
    mismatch_arg,
    number,
    param_arg,
    resume_args,
    track_arg,
)
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.models import ModelConfig, load_checkpoint
from belief_lens.processes import PROCESSES, make_process
from belief_lens.run_dir import RunDir, staging_path
from belief_lens.storage import atomic_write_text
from belief_lens.tracking import check_track, tracking
from belief_lens.training import TrainConfig
from belief_lens.training.checkpoints import (
    check_checkpoint_process,
    prune_checkpoints,
    step_checkpoints,
)
from belief_lens.training.memory import check_training_memory

logger = logging.getLogger("belief_lens")


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


def _prepare_out(
    out: str | None, default_stem: str, overwrite: bool, command: str | None = None
) -> RunDir:
    """The run's output directory, claimed before any work (:class:`RunDir`): the run is written
    into a fresh sibling and renamed into place when complete.

    Without ``--out``: a new ``runs/<stem>-<timestamp>``. An existing non-empty ``--out`` is
    refused unless ``--overwrite``, and so is one another run is writing. ``command``: the
    subcommand that can ``--resume`` an interrupted run (demo), named in the refusal.
    """

    def claim(path: Path) -> RunDir:
        hint = f"belief-lens {command} --resume {path}" if command else "(it cannot be resumed)"
        return RunDir.open(path, overwrite=overwrite, resume_hint=hint)

    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1, 1000):
            path = Path("runs") / (f"{default_stem}-{stamp}" + (f"-{i}" if i > 1 else ""))
            if path.exists() or staging_path(path).exists():
                continue
            run = claim(path)
            break
    else:
        run = claim(Path(out))
    probe = run.staging / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise BeliefLensError(f"--out {run.final} is not writable: {err.strerror}") from None
    return run


def _analysis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        choices=("paper", "weighted", "sampled"),
        default=None,
        help="probe data: every sequence unweighted (paper), probability-weighted, or sampled "
        "(default: paper where at most 200,000 sequences exist, else sampled)",
    )
    p.add_argument(
        "--n-sequences", type=number(int), default=None, help="sequences for --mode sampled"
    )
    p.add_argument(
        "--weighting", choices=("rows", "prefixes"), default="rows",
        help="rows by their sequences' weight (default), or each distinct prefix once",
    )  # fmt: skip
    p.add_argument("--ridge", type=number(float, positive=False), default=0.0, help="ridge penalty")
    p.add_argument("--no-controls", action="store_true", help="skip the probe controls")
    p.add_argument("--no-interventions", action="store_true", help="skip the steering experiments")
    p.add_argument(
        "--seed", type=number(int, positive=False), default=0,
        help="seed for splits, sampling and controls",
    )  # fmt: skip
    p.add_argument(
        "--debug", action="store_true", help="show the full traceback of an unexpected error"
    )
    p.add_argument(
        "--overwrite", action="store_true",
        help="write into an existing --out that holds files (replacing them)",
    )  # fmt: skip
    export_arg(p)


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
        "--param", type=param_arg, action="append", default=[], metavar="NAME=VALUE",
        help="a process parameter, e.g. --param x=0.05 (repeatable)",
    )  # fmt: skip
    demo.add_argument(
        "--minutes", type=number(float), default=1.5,
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
    demo.add_argument("--n-ctx", type=number(int), default=10, help="context length (default 10)")
    demo.add_argument("--batch-size", type=number(int), default=None, help="training batch size")
    demo.add_argument("--lr", type=number(float), default=None, help="peak learning rate")
    demo.add_argument(
        "--max-steps", type=number(int), default=None, help="stop after this many steps"
    )
    resume_args(demo)
    _analysis_args(demo)
    track_arg(demo)

    probe = sub.add_parser(
        "probe",
        help="analyse an existing checkpoint",
        description="Load a checkpoint (this package's or the paper's), fit probes per layer, "
        "run controls and interventions, and write report.html and metrics.json.",
    )
    probe.add_argument("--checkpoint", required=True, help="path to a .safetensors checkpoint")
    probe.add_argument("--process", required=True, help="process the model was trained on")
    probe.add_argument(
        "--param", type=param_arg, action="append", default=[], metavar="NAME=VALUE",
        help="a process parameter, e.g. --param alpha=0.85 (repeatable)",
    )  # fmt: skip
    probe.add_argument(
        "--out", default=None,
        help="output directory (default: a new runs/probe-<process>-<time>); must be new or empty",
    )  # fmt: skip
    mismatch_arg(probe)
    _analysis_args(probe)
    track_arg(probe)
    factored_parser(sub)
    attention_parser(sub)
    icl_parser(sub)
    discover_parser(sub)
    return parser


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
        export=export_formats(args.export),
    )


#: The commands that train: each writes step checkpoints into its run, and ``--resume DIR``
#: finishes an interrupted one.
RESUMABLE = ("demo", "factored", "attention", "icl")
#: Options that are not a run's settings (not saved for ``--resume``).
_NOT_SETTINGS = ("command", "resume", "quiet", "debug", "run_dir", "track")


def _resumed_run(args: argparse.Namespace) -> RunDir | None:
    """With ``--resume DIR``: claim the interrupted run, take back its saved settings (a run of
    another command is refused, naming the one that resumes it) and clear its partial outputs."""
    if not args.resume:
        return None
    run = RunDir.resume(args.resume)
    saved = json.loads((run.staging / "args.json").read_text(encoding="utf-8"))
    kind = saved.pop("resumes", "demo")
    if kind != args.command:
        raise BeliefLensError(
            f"{args.resume} is an interrupted `{kind}` run; resume it with "
            f"`belief-lens {kind} --resume {args.resume}`"
        )
    vars(args).update({k: v for k, v in saved.items() if k not in _NOT_SETTINGS})
    run.clear_outputs()
    args.out, args.run_dir = str(run.final), run
    return run


def _new_run(args: argparse.Namespace, stem: str, overwrite: bool = False) -> RunDir:
    """Claim a new run for a training command and save its settings for ``--resume``."""
    run = _prepare_out(args.out, stem, overwrite, args.command)
    settings = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    atomic_write_text(run.staging / "args.json", json.dumps(settings | {"resumes": args.command}))
    args.out, args.run_dir = str(run.final), run
    return run


def _finish(run: RunDir, keep_checkpoints: int) -> None:
    """Commit a finished training run, keeping ``keep_checkpoints`` step checkpoints of each
    model (none at 0)."""
    if keep_checkpoints == 0:
        shutil.rmtree(run.checkpoints, ignore_errors=True)
    elif run.checkpoints.is_dir():
        for directory in [run.checkpoints, *run.checkpoints.rglob("*")]:
            if step_checkpoints(directory):  # one model's training
                prune_checkpoints(directory, keep_checkpoints)
    run.commit()


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """The ``demo`` subcommand: :func:`belief_lens.experiments.paper.run_paper_demo`, written as
    a transaction (:class:`RunDir`) with step checkpoints in the run, so it can ``--resume``."""
    run = _resumed_run(args)
    if run is not None:
        args.param = [tuple(p) for p in args.param]
    hmm = _process(args.process, args.param)
    batch = args.batch_size or TrainConfig.preset(args.targets, args.process, steps=1).batch_size
    model = ModelConfig.paper(args.process, d_vocab=hmm.n_symbols, n_ctx=args.n_ctx)
    check_training_memory(model, batch)  # in a second, before the analysis stack is imported
    from belief_lens.experiments import paper
    from belief_lens.report.analysis import check_analysis_memory

    n_hooks = 2 * model.n_layers + 2  # residual_hooks: resid_pre, mid and post, ln_final
    analysis = _analysis_config(args)
    check_analysis_memory(hmm, args.n_ctx, model.d_model, n_hooks, analysis)

    demo = paper.PaperDemo.preset(
        args.process,
        hmm,
        n_ctx=args.n_ctx,
        targets=args.targets,
        analysis=analysis,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        seconds=args.minutes * 60,
        steps=args.max_steps,
        keep_checkpoints=max(1, args.keep_checkpoints),
    )
    if run is None:
        run = _new_run(args, args.process, args.overwrite)
    metrics = paper.run_paper_demo(
        demo,
        run.staging,
        progress=not args.quiet,
        checkpoint_dir=run.checkpoints,
        final_dir=run.final,
    )
    _finish(run, args.keep_checkpoints)
    return metrics


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    """The ``probe`` subcommand: :func:`belief_lens.experiments.paper.analyse_checkpoint`."""
    from belief_lens.experiments import paper

    hmm = _process(args.process, args.param)
    checkpoint = checkpoint_arg(args.checkpoint)
    config = _analysis_config(args)
    provenance = check_checkpoint_process(
        checkpoint, hmm, allow_mismatch=args.allow_process_mismatch
    )
    model = load_checkpoint(checkpoint)
    run = _prepare_out(args.out, f"probe-{args.process}", args.overwrite)
    args.out, args.run_dir = str(run.final), run
    metrics = paper.analyse_checkpoint(
        model, hmm, run.staging, checkpoint=checkpoint, analysis=config, provenance=provenance
    )
    run.commit()
    return metrics


def run_factored(args: argparse.Namespace) -> dict[str, Any]:
    """The ``factored`` subcommand: :mod:`belief_lens.experiments.factored`."""
    from belief_lens.experiments import factored

    run = _resumed_run(args)
    training = factored.factored_training(
        seconds=args.minutes * 60, steps=args.max_steps, seed=args.seed
    )
    config = factored.FactoredExperiment(epsilon=args.epsilon, train=training)
    seeds = tuple(range(args.seed, args.seed + args.seeds))
    resume = run is not None
    run = run or _new_run(args, "factored")
    out = run.staging
    logger.info("training on %s, seeds %s, up to %.1f min each", config.process().name,
                list(seeds), args.minutes)  # fmt: skip
    runs = factored.run_factored_seeds(
        config, out, seeds, checkpoint_root=run.checkpoints, resume=resume
    )
    metrics = factored.write_factored_seeds_report(runs, out, export=export_formats(args.export))
    run.commit()  # every checkpoint is kept: the geometry over training was measured on them
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


def run_attention(args: argparse.Namespace) -> dict[str, Any]:
    """The ``attention`` subcommand: :mod:`belief_lens.experiments.attention`."""
    from belief_lens.experiments import attention

    run_dir = _resumed_run(args)
    seeds = tuple(args.seeds)
    config = attention.AttentionExperiment(
        seeds=seeds,
        steps=args.steps,
        seconds_per_model=args.minutes * 60 / (4 * len(seeds)),
        checkpoint=attention_checkpoint(args.checkpoint),
    )
    run_dir = run_dir or _new_run(args, "attention")
    logger.info("training %d single-layer models, %d steps each", 4 * len(seeds), args.steps)
    export = export_formats(args.export)
    run = attention.run_attention_experiment(config, checkpoint_dir=run_dir.checkpoints)
    metrics = attention.write_attention_report(run, run_dir.staging, export=export)
    _finish(run_dir, args.keep_checkpoints)
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


def run_icl(args: argparse.Namespace) -> dict[str, Any]:
    """The ``icl`` subcommand: :mod:`belief_lens.experiments.icl`."""
    from belief_lens.experiments import icl

    run_dir = _resumed_run(args)
    training = icl.icl_training(seconds=args.minutes * 60, steps=args.max_steps, seed=args.seed)
    config = icl.ICLExperiment(train=training)
    run_dir = run_dir or _new_run(args, "icl")
    logger.info("training on %s for up to %.1f CPU min", config.process().name, args.minutes)
    run = icl.run_icl_experiment(config, checkpoint_dir=run_dir.checkpoints)
    metrics = icl.write_icl_report(run, run_dir.staging, export=export_formats(args.export))
    _finish(run_dir, args.keep_checkpoints)
    metrics["summary"] = metrics["verdicts"]
    return metrics


def run_discover(args: argparse.Namespace) -> dict[str, Any]:
    """The ``discover`` subcommand: returns the metrics it wrote to ``DIR/discovery.json``."""
    from belief_lens.experiments import discovery

    hmm = _process(args.process, args.param)
    checkpoint = checkpoint_arg(args.checkpoint)
    check_checkpoint_process(checkpoint, hmm, allow_mismatch=args.allow_process_mismatch)
    return discovery.discover_in_checkpoint(
        checkpoint,
        hmm,
        args.out,
        hook=args.hook,
        n_vertices=args.n_vertices,
        seed=args.seed,
    )


#: The files a tracked run uploads from its run directory (those that exist).
TRACKED_FILES = ("report.html", "metrics.json", "model.safetensors")


def _run_tracked(args: argparse.Namespace, run: Any) -> dict[str, Any]:
    """``run(args)``, logged to ``--track``'s tracker when one is asked for: the command's
    options as parameters (the process and its ``--param`` values among them), each training's
    parameters and steps (``train`` logs to the active tracker), then every number in the run's
    ``metrics.json`` and its files. A missing tracker package is refused before any work."""
    track = check_track(getattr(args, "track", "none"), "--track")
    if track == "none":
        return run(args)
    name = Path(args.out).name if args.out else f"{args.command}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tracking(track, name=name, group=f"belief_lens-{args.command}") as tracker:
        options = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
        options["param"] = {k: v for k, v in getattr(args, "param", [])}
        tracker.log_params({"cli": options})
        metrics = run(args)
        out = Path(args.out)
        written = out / "metrics.json"
        final = json.loads(written.read_text(encoding="utf-8")) if written.is_file() else metrics
        tracker.log_final(final)
        files = [out / f for f in TRACKED_FILES]
        if getattr(args, "checkpoint", None) and args.command == "probe":
            files.append(Path(args.checkpoint))
        tracker.log_artifacts(files)
    return metrics


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


def _abandon(args: argparse.Namespace) -> None:
    """After a failed run: keep a training command's partial run (its checkpoints resume it);
    remove the partial output of the others, which cannot resume. ``--out`` itself is never
    touched."""
    run = getattr(args, "run_dir", None)
    if run is not None and args.command not in RESUMABLE and run.staging.exists():
        shutil.rmtree(run.staging, ignore_errors=True)


def _resume_hint(args: argparse.Namespace) -> str:
    """How to resume an interrupted training run: where its checkpoints are, and the command."""
    run = getattr(args, "run_dir", None)
    if run is None or args.command not in RESUMABLE or not run.staging.exists():
        return ""
    return (
        f"; the latest checkpoint is kept in {run.checkpoints}; resume with: "
        f"belief-lens {args.command} --resume {run.final}"
    )


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # This package's progress at INFO; other libraries' (kaleido's browser chatter) only from
    # WARNING up, so a piped log stays readable.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
    )
    logging.getLogger("belief_lens").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        if args.command == "discover":
            print(_discover_summary(run_discover(args)))
            return 0
        run = {
            "demo": run_demo,
            "probe": run_probe,
            "factored": run_factored,
            "attention": run_attention,
            "icl": run_icl,
        }[args.command]
        metrics = _run_tracked(args, run)
    except (BeliefLensError, OSError, json.JSONDecodeError) as e:
        _abandon(args)
        if args.debug:
            raise
        print(f"belief-lens {args.command}: error: {_one_line(e)}{_resume_hint(args)}",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        _abandon(args)
        print(f"belief-lens {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except Exception as e:
        _abandon(args)
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


def console_main() -> int:
    """The ``belief-lens`` command: :func:`main`, then the objects it leaves are frozen out of
    the interpreter's final garbage collection, which after a probe run took 1.3 s to free what
    the OS frees at once on exit. Exit handlers and teardown still run; only a process that ends
    next may do this (a test calling ``main`` in-process must not)."""
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
