"""Report sections of the experiments beyond the paper's analysis: the factored belief geometry
(:mod:`belief_lens.experiments.factored`) and one structure under two vocabularies
(:mod:`belief_lens.transfer`). Each words and draws a finished result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from belief_lens.plotting import compare_figure, factored_dims_figure
from belief_lens.report.document import ReportFigure, Section, Table
from belief_lens.report.sections import undertrained_warning
from belief_lens.report.verdicts import grade, plain

__all__ = ["factored_section", "factored_seeds_section", "shared_structure_section"]


def factored_section(run: Any, max_points: int = 4000) -> Section:
    """The report section of a :class:`belief_lens.experiments.factored.FactoredRun`: each
    factor's simplex (truth beside probe), the principal-angle table, and effective dimension over
    training against both hypotheses' predictions (arXiv 2602.02385)."""
    g = run.final
    text = (
        f"{run.process_name}, {run.steps} steps ({run.train_seconds:.0f} s) at {g.hook}. "
        f"Held-out R^2 per factor {', '.join(f'{r:.4f}' for r in g.factor_r2)}; joint probe "
        f"{g.joint_r2:.4f}, factored probe {g.factored_r2:.4f}. PCs for 95%/99% of the variance: "
        f"{g.dims_95}/{g.dims_99}, against {g.predicted.factored} (factored) and "
        f"{g.predicted.joint} (joint). Verdict: {g.verdict}. The product of marginals loses "
        f"{plain(run.factored_cost)} nats per position on the next token."
    )
    figures = [
        ReportFigure(
            f"factor_{i}",
            compare_figure(
                truth,
                probed,
                titles=(f"factor {i}: true marginal belief", f"factor {i}: probe"),
                max_points=max_points,
            ),
            f"Factor {i}'s marginal belief and the per-factor probe's output, shared coordinates.",
        )
        for i, (truth, probed) in enumerate(zip(run.truth, run.probed, strict=True))
    ]
    figures.append(
        ReportFigure(
            "factored_dims",
            factored_dims_figure(run.over_training, title="effective dimension over training"),
            "PCs for 95% and 99% of the activation variance, against both predictions.",
        )
    )
    rows = tuple(
        (
            f"{p.factors[0]} vs {p.factors[1]}",
            ", ".join(f"{c:.3f}" for c in p.cosines),
            math.nan if p.overlap is None else p.overlap,
            p.baseline,
        )
        for p in g.pairs
    )
    header = ("factors", "principal-angle cosines", "vary-one overlap", "random baseline k/d")
    return Section(
        "Factored belief geometry",
        headline=(text,),
        warnings=undertrained_warning(run.loss_over_optimal),
        tables=(Table(header, rows, ("", "", ".4f", ".4f")),),
        figures=tuple(figures),
    )


def _pm(entry: Any, fmt: str = ".3f") -> str:
    return f"{plain(entry['mean'], 4) if fmt == 'plain' else format(entry['mean'], fmt)} ± " + (
        plain(entry["se"], 2)
    )


def factored_seeds_section(runs: Sequence[Any], summary: dict[str, Any]) -> Section:
    """The factored verdict over seeds: each measurement as mean ± standard error, each seed's
    verdict, and what the dimensions say against both predictions (``summary`` is
    ``experiments.factored.seed_summary(runs)``)."""
    p = runs[0].final.predicted
    d95, d99, n = summary["dims_95"], summary["dims_99"], summary["n_seeds"]
    notes = []
    if d99["mean"] > p.joint:
        notes.append(
            f"dims99 ({_pm(d99, '.1f')}) exceeds even the joint prediction ({p.joint}): the "
            "activations hold more than either hypothesis's belief geometry (training not done, "
            "or other features)"
        )
    head = (
        f"Verdict over {n} seeds: {summary['verdict']} (per seed: "
        f"{', '.join(summary['verdicts'])}). dims95 {_pm(d95, '.1f')} and dims99 "
        f"{_pm(d99, '.1f')} against {p.factored} (factored) and {p.joint} (joint); the "
        f"factors' largest subspace cosine {_pm(summary['max_subspace_cosine'])}; the product "
        f"of marginals loses {_pm(summary['factored_cost_nats'], 'plain')} nats per position."
        + ("" if not notes else " " + "; ".join(notes) + "."),
    )
    if "vary_one_overlap" in summary:
        ov, base = summary["vary_one_overlap"], summary["vary_one_random_baseline"]
        head += (
            f"Vary-one overlap of the factors' subspaces {_pm(ov, 'plain')} against "
            f"{plain(base)} for random subspaces (ratio {plain(ov['mean'] / base)}; the factored "
            "hypothesis predicts 0, the joint one about the random value).",
        )
    keys = [k for k in summary if k.endswith("_r2_heldout")] + ["joint_r2"]
    rows = tuple(
        (f"seed {run.config.train.seed}", run.steps, *(summary[k]["values"][i] for k in keys),
         run.final.dims_95, run.final.dims_99, run.final.verdict)
        for i, run in enumerate(runs)
    ) + (("mean ± s.e.", "", *(_pm(summary[k]) for k in keys), _pm(d95, ".1f"),
          _pm(d99, ".1f"), summary["verdict"]),)  # fmt: skip
    header = ("seed", "steps", *(k.replace("_heldout", "") for k in keys), "dims95", "dims99",
              "verdict")  # fmt: skip
    ratios = [r.loss_over_optimal for r in runs]
    worst = None if any(r is None for r in ratios) else max(ratios)
    return Section(
        f"Factored verdict over {n} seeds",
        headline=head,
        warnings=undertrained_warning(worst),
        tables=(Table(header, rows, ("", "") + (".4f",) * len(keys) + ("", "", "")),),
    )


def shared_structure_section(
    result: Any, figures: Sequence[Any] = (), *, loss_over_optimal: float | None = None
) -> Section:
    """A report section for ``belief_lens.transfer.SharedStructure``: probe transfer between the
    two vocabularies, principal angles, steering transfer against its control, and the mixture's
    own belief, each with the sentence that says what it means; warned as under-trained from
    the model's ``loss_over_optimal`` (None: unknown, and said so)."""
    m = result.to_dict()
    transfer = min(m["transfer_r2_a_to_b"], m["transfer_r2_b_to_a"])
    own = min(m["within_r2_a"], m["within_r2_b"])
    probe_verdict = grade(
        "Probe transfer between the vocabularies (the worse direction's held-out R², against "
        "the worse vocabulary's own probe as the reference)",
        transfer,
        own,
        strong=0.9 * own,
        min_ratio=0.9,
    )
    shared = transfer > 0.9 and probe_verdict.ratio >= 0.9
    verdict = (
        "A probe fitted on one vocabulary reads the other: the model writes the shared hidden "
        "structure into one belief subspace. "
        if shared
        else "A probe fitted on one vocabulary does not read the other as well as its own: the "
        "model keeps the two vocabularies' beliefs at least partly apart. "
    ) + (
        f"Transfer R² {transfer:.3f} against {own:.3f} within a vocabulary (ratio "
        f"{plain(probe_verdict.ratio)})."
    )
    steer_verdict = grade(
        "Steering B along A's belief directions, fold in KL(theory || model)",
        m["steer_transfer_fold"],
        m["steer_control_fold"],
        strong=2.0,
        min_ratio=5.0,
        neutral=1.0,
        unit="x",
    )
    rows = (
        ("probe R², fit on A, held out on B", f"{m['transfer_r2_a_to_b']:.4f}"),
        ("probe R², fit on B, held out on A", f"{m['transfer_r2_b_to_a']:.4f}"),
        ("the same, B shifted to A's mean / A to B's",
         f"{m['transfer_r2_a_to_b_centred']:.4f} / {m['transfer_r2_b_to_a_centred']:.4f}"),
        ("probe R² within A / within B", f"{m['within_r2_a']:.4f} / {m['within_r2_b']:.4f}"),
        ("largest cosine between A and B subspaces", f"{m['max_cosine_a_b']:.4f}"),
        ("principal angles (degrees)", ", ".join(f"{a:.1f}" for a in m["principal_angles_deg"])),
        ("KL to theory before steering B (nats)", f"{m['steer_kl_before']:.4f}"),
        ("fold: B steered along A's directions", f"{m['steer_transfer_fold']:.2f}"),
        ("fold: norm-matched control", f"{m['steer_control_fold']:.2f}"),
        ("fold: B steered along its own directions", f"{m['steer_own_fold']:.2f}"),
        ("mixture belief R²: joint / component / within",
         f"{m['mixture_r2_joint']:.4f} / {m['mixture_r2_component']:.4f} / "
         f"{m['mixture_r2_within']:.4f}"),
    )  # fmt: skip
    return Section(
        f"One structure, two vocabularies ({m['hook']})",
        headline=(verdict, steer_verdict.sentence()),
        warnings=undertrained_warning(loss_over_optimal),
        text=(
            "Folds are KL(theory || model) before over after steering; an effect counts only "
            "beside its control.",
        ),
        figures=tuple(
            f if isinstance(f, ReportFigure) else ReportFigure(f"shared_structure_{k}", f)
            for k, f in enumerate(figures)
        ),
        tables=(Table(("measure", "value"), rows, ("", "")),),
    )
