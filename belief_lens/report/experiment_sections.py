"""Report sections of the experiments beyond the paper's analysis: the factored belief geometry
(:mod:`belief_lens.experiments.factored`), one structure under two vocabularies
(:mod:`belief_lens.transfer`), attention (:mod:`belief_lens.experiments.attention`), and
in-context learning with steering on a mixture (:mod:`belief_lens.experiments.icl`). Each words
and draws a finished result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from belief_lens.plotting import (
    attention_distance_figure,
    compare_figure,
    factored_dims_figure,
    head_count_figure,
    icl_loss_figure,
    log_odds_figure,
    ov_simplex_figure,
    phase_diagram_figure,
)
from belief_lens.report.document import ReportFigure, Section, Table
from belief_lens.report.sections import undertrained_warning
from belief_lens.report.verdicts import grade, plain

__all__ = [
    "CONSTRAINED_UPDATE",
    "FIRST_ORDER",
    "attention_section",
    "factored_section",
    "icl_section",
    "factored_seeds_section",
    "shared_structure_section",
]


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


def icl_section(run: Any, max_points: int = 4000) -> Section:
    """The report section of a :class:`belief_lens.experiments.icl.ICLRun`: which predictions
    held and by how much, then the loss curve against both references, the component log-odds
    probe against the truth, and the ``(n, alpha)`` phase diagram measured beside predicted."""
    refs, g, st, ctl = run.references, run.geometry, run.steering, run.control
    best, other = run.excess_fits
    n = [int(x) for x in run.n_seen]
    curves = {
        "model": run.model_loss.tolist(),
        "mixture optimum": refs.optimal.tolist(),
        "never updates the component": refs.never_updating.tolist(),
        "told the component": refs.oracle.tolist(),
    }
    boundaries = {"measured": list(st.boundary_measured)}
    for form, (r, _) in sorted(run.steering_forms.items(), key=lambda kv: kv[0] != st.form):
        boundaries[f"{form} form"] = list(r.boundary_predicted)  # the headline's first
    figures = (
        ReportFigure("icl_loss", icl_loss_figure(n, curves), "Loss per context length (nats)."),
        ReportFigure(
            "icl_log_odds",
            log_odds_figure(g.truth, g.probed, max_points=max_points),
            f"Component log-odds at {g.hook}: out-of-fold probe output against the truth, "
            "held-out prefixes.",
        ),
        ReportFigure(
            "icl_phase_diagram",
            phase_diagram_figure(
                st.alphas.tolist(), n, st.posterior_measured, st.posterior_predicted, boundaries
            ),
            "Implied posterior of component 0 on sequences of component 1, steered along the "
            f"probe's direction at {g.hook}, predicted by the {st.form} closed form; lines: "
            "where it crosses 1/2.",
        ),
    )
    rows = (
        ("loss / optimum, max over positions", f"{float(run.loss_ratio.max()):.5f}"),
        ("gap recovered: n = 2 / last",
         f"{float(run.gap_recovered[1]):.3f} / {float(run.gap_recovered[-1]):.3f}"),
        ("optimum / never-updating at the last position (nats)",
         f"{float(refs.optimal[-1]):.4f} / {float(refs.never_updating[-1]):.4f}"),
        (f"excess over the oracle: {best.form} fit (better)",
         f"a={best.a:.4g}, b={best.b:.4g}, RMSE {best.rmse:.2g} nats ({best.rel_rmse:.1%})"),
        (f"excess over the oracle: {other.form} fit",
         f"a={other.a:.4g}, b={other.b:.4g}, RMSE {other.rmse:.2g} nats ({other.rel_rmse:.1%})"),
        ("log-odds probe held-out R²", f"{g.log_odds_r2:.4f} ± {g.log_odds_r2_se:.4f}"),
        ("posterior probe held-out R² (comparison)",
         f"{g.posterior_r2:.4f} ± {g.posterior_r2_se:.4f}"),
        ("within-component probes held-out R²",
         ", ".join(f"{r:.4f} ± {s:.4f}" for r, s in zip(g.within_r2, g.within_r2_se, strict=True))),
        ("angle, log-odds direction vs each component's belief subspace",
         ", ".join(f"{a:.1f}°" for a in g.angles_deg)),
        *((f"{form} closed form: s / correlation / mean KL / boundary error",
           f"{r.s:.4f} / {r.correlation:.4f} / {r.mean_kl:.4f} / {_boundary_text(r)}")
          for form, (r, _) in run.steering_forms.items()),
        ("control: correlation / mean KL", f"{ctl.correlation:.4f} / {ctl.mean_kl:.4f}"),
        ("control switches the component", "yes" if ctl.switches else "no"),
    )  # fmt: skip
    return Section(
        "In-context learning and steering as one belief dynamics",
        headline=tuple(run.verdicts()),
        text=(
            f"{run.process_name}, {run.steps} steps ({run.train_cpu_seconds:.0f} CPU s, "
            f"{run.train_seconds:.0f} s wall). Losses are expected cross-entropies on "
            f"{refs.n_sequences} sampled prefixes. Steering adds α units of the probe's "
            "log-odds along its encoding direction at every position. Two closed forms, each "
            "with only s fitted: log_odds, softmax(log prior + α s + Σ log P(x_t | x_<t, c)) "
            "(a change of prior); simplex, (1 − λ) P(c | x) + λ e_target with λ = 1 − exp(−α s) "
            "(the belief moved toward the target's vertex). The headline is the "
            f"{st.form} form.",
            *st.verdicts(),
        ),
        tables=(Table(("measure", "value"), rows, ("", "")), _steering_by_hook_table(run)),
        figures=figures,
    )


def _boundary_text(r: Any) -> str:
    err = r.phase_boundary_rel_error
    if not any(r.scored):
        return "none scored"
    return "no switch where predicted" if err is None else f"{err:.1%}"


def _steering_by_hook_table(run: Any) -> Table:
    """Every layer's log-odds probe and steering, so the headline hook is seen among them."""
    r2 = run.geometry.log_odds_r2_by_hook
    rows = tuple(
        (
            hook,
            r2[hook],
            r.s,
            r.correlation,
            "none scored"
            if r.phase_boundary_rel_error is None
            else f"{r.phase_boundary_rel_error:.1%}",
            "yes" if c.switches else "no",
        )
        for hook, (r, c) in run.steering_by_hook.items()
    )
    header = ("hook", "log-odds R²", "s", "correlation", "boundary error", "control switches")
    return Table(header, rows, ("", ".4f", ".4f", ".4f", "", ""))


#: The constrained update the attention experiment tests (arXiv 2502.01954), in this package's
#: notation.
CONSTRAINED_UPDATE = (
    "eta_d ≈ pi + Σ_{s≤d} (pi_{x_s} T^(d−s) − pi), pi_x = pi T^(x) / (pi T^(x) 1); where every "
    "correction delta_x = pi_x − pi is an eigenvector of T = Σ_x T^(x) with eigenvalue lam "
    "(Mess3: lam = 1 − 3x), the token n steps back contributes lam^n delta_x: a log-slope of "
    "ln|lam| per step, along delta_x."
)

#: Why each process gets a first-order check beside the prediction.
FIRST_ORDER = (
    "The constrained update is Bayes' rule to first order in the emission contrast: products of "
    "the per-token corrections are dropped, so it holds only where those are small beside the "
    "decay (Mess3: alpha near 1/3). The check, on the process alone: regress the exact belief at "
    "the last of 16 positions on the one-hot token at every distance at once (the best any "
    "mechanism summing one vector per past token can do), and fit the log of each distance's "
    "centred coefficient norm over distances 1–6. Where that slope is more than 20% from "
    "ln|lam|, the optimum itself does not decay as lam^d, and a model is not expected to."
)


def _agreement(run: Any) -> str:
    m = run.to_dict()
    within = m["attention_slope_rel_error"] <= 0.2
    ov_ok = m["ov_cosine_min"] >= 0.9
    v = run.validity["positive"]
    return (
        f"At the positive setting ({v.process}) the attention pattern (the quantity the paper "
        f"predicts, as lam^(d − s)) decays with log-slope "
        f"{m['attention_slope_measured']:.3f} (± {m['attention_slope_measured_se']:.3f}) per "
        f"step, against the predicted ln(1 − 3x) = {m['attention_slope_predicted']:.3f}: relative "
        f"error {m['attention_slope_rel_error']:.0%}, {'within' if within else 'not within'} 20%. "
        f"Each past token's contribution (attention × its token-dependent OV output in belief "
        f"coordinates): {m['contribution_slope_measured']:.3f} "
        f"(± {m['contribution_slope_measured_se']:.3f}), "
        f"{m['contribution_slope_rel_error']:.0%} from the prediction. "
        f"The OV directions {'agree' if ov_ok else 'do not agree'} with the predicted corrections "
        f"(smallest cosine {m['ov_cosine_min']:.3f}; 0.9 asked). {_validity_sentence(v)} "
        f"The measured slope is {m['attention_slope_measured'] / v.slope:.2f}x that best token "
        "sum's."
    )


def _validity_sentence(v: Any) -> str:
    """Whether the derivation's first-order assumption holds for one process, in numbers."""
    verdict = (
        "the first-order assumption holds there"
        if v.applies
        else "the first-order assumption fails there, so the decay prediction is outside its domain"
    )
    return (
        f"On exact beliefs of {v.process} the best sum of one vector per past token decays at "
        f"{v.slope:.3f} (± {v.se:.2g}) per step against ln|lam| = {v.predicted:.3f}, "
        f"{v.rel_gap:.0%} apart (20% allowed): {verdict}."
    )


def _head_count_sentence(run: Any) -> str:
    holds = [r.prediction_holds for r in run.results]

    def helps(setting: str) -> str:
        rs = [r for r in run.results if r.setting == setting]
        gains = ", ".join(
            f"seed {r.seed}: {r.gain_from_second_head:.2g} ± {r.gain_se:.1g} "
            f"({r.relative_gain_from_second_head:.0%})"
            for r in rs
        )
        return f"{sum(r.second_head_helps for r in rs)} of {len(rs)} seeds ({gains})"

    return (
        f"The head-count prediction holds in {sum(holds)} of {len(holds)} (setting, seed) pairs. "
        f"A second head counts as helping when it lowers the excess loss by more than twice the "
        f"paired per-sequence standard error and by at least {run.config.min_share:.0%} of the "
        f"1-head model's excess loss. It helps where the eigenvalue is negative in "
        f"{helps('negative')}, and where it is positive in {helps('positive')} (gain ± paired "
        f"s.e., share of the 1-head excess loss)."
    )


def attention_section(run: Any) -> Section:
    """The report section of a :class:`belief_lens.experiments.attention.AttentionRun`: the
    agreement in words (with each process's first-order check), attention and contributions
    against distance beside ``|lam|^n``, OV vectors on the simplex, excess loss by head count, and
    the 4-layer checkpoint per layer."""
    theory = run.theories["positive"]
    worst = max((1 + v for r in run.results for v in r.excess_loss.values()), default=None)
    headline = [_agreement(run), _head_count_sentence(run)]
    if "checkpoint" in run.validity:
        headline.append(
            "The 4-layer checkpoint was trained on another Mess3. "
            + _validity_sentence(run.validity["checkpoint"])
        )
    return Section(
        "Attention as constrained belief updating",
        headline=tuple(headline),
        warnings=undertrained_warning(worst, "below (for the least trained model)"),
        text=(
            "Tested (Piotrowski, Riechers, Filan & Shai, arXiv 2502.01954): " + CONSTRAINED_UPDATE,
            FIRST_ORDER,
            f"Slopes are fitted over distances ≥ 1 from every query position (one intercept per "
            f"query); predicted slope at the positive setting {theory.log_slope:.3f} per step. "
            "The odd-distance share is the fraction of a head's attention (distances ≥ 1, last "
            "query) on odd distances; an OV cosine near −1 means the head writes against delta_x.",
        ),
        figures=_attention_figures(run),
        tables=_attention_tables(run),
    )


def _attention_figures(run: Any) -> tuple[ReportFigure, ...]:
    theory = run.theories["positive"]
    series: dict[str, Any] = {}
    ov: dict[str, Any] = {}
    for r in run.results:
        a = r.analyses[1].measurements[0].heads[0]
        if r.setting == "positive":
            series[f"contribution, 1 head, seed {r.seed}"] = a.by_distance("contribution").tolist()
            series[f"attention, 1 head, seed {r.seed}"] = a.by_distance().tolist()
            ov[f"OV, 1 head, seed {r.seed}"] = a.ov_vectors.numpy()
    if run.checkpoint is not None:
        h0 = run.checkpoint.measurements[0].heads[0]
        series["contribution, 4-layer checkpoint, layer 0"] = h0.by_distance(
            "contribution"
        ).tolist()
        ov["OV, 4-layer checkpoint, layer 0"] = h0.ov_vectors.numpy()
    caption = "From the last position, relative to distance 1; dashed black: the prediction."
    if "checkpoint" in run.validity:
        v = run.validity["checkpoint"]
        caption += (
            f" The checkpoint's process, {v.process}, is outside the derivation's first-order "
            f"domain ({v.rel_gap:.0%} gap)."
            if not v.applies
            else f" The checkpoint's process, {v.process}, is inside the first-order domain."
        )
    figures = [
        ReportFigure(
            "attention_distance",
            attention_distance_figure(
                series, theory.eigenvalue, title="contribution and attention by distance"
            ),
            caption,
        ),
        ReportFigure(
            "attention_ov",
            ov_simplex_figure(
                ov,
                theory.corrections.numpy(),
                theory.stationary.numpy(),
                title="OV vectors in belief coordinates",
            ),
            "Each token's mean OV output through the layer's probe, centred, beside delta_x.",
        ),
        ReportFigure(
            "attention_head_count",
            head_count_figure(
                [
                    (f"{r.setting} (λ = {r.eigenvalue:.2f})", r.seed, h, v)
                    for r in run.results
                    for h, v in r.excess_loss.items()
                ],
                title="excess loss by head count",
            ),
            "Loss over the optimum minus 1 on the analysis sequences (paired), per seed.",
        ),
    ]
    return tuple(figures)


def _attention_tables(run: Any) -> tuple[Table, ...]:
    rows = tuple(
        (
            r.setting,
            f"{r.eigenvalue:.2f}",
            r.seed,
            h,
            r.steps[h],
            r.excess_loss[h],
            r.excess_loss_se[h],
            a.comparisons[0][0].contribution.slope,
            a.comparisons[0][0].attention.slope,
            ", ".join(f"{m.odd_share():.2f}" for m in a.measurements[0].heads),
            ", ".join(f"{sum(c.ov_cosines) / len(c.ov_cosines):+.2f}" for c in a.comparisons[0]),
        )
        for r in run.results
        for h, a in r.analyses.items()
    )
    header = (
        "setting", "λ", "seed", "heads", "steps", "excess loss", "± s.e.",
        "contribution slope (head 0)", "attention slope (head 0)", "odd-distance share per head",
        "OV cosine per head",
    )  # fmt: skip
    formats = ("", "", "", "", "", ".3e", ".1e", ".3f", ".3f", "", "")
    tables = [Table(header, rows, formats), _head_count_table(run), _validity_table(run)]
    if run.checkpoint is not None:
        tables.append(_checkpoint_table(run))
    return tuple(tables)


def _head_count_table(run: Any) -> Table:
    rows = tuple(
        (
            r.setting,
            f"{r.eigenvalue:.2f}",
            r.seed,
            r.excess_loss[1],
            r.gain_from_second_head,
            r.gain_se,
            r.relative_gain_from_second_head,
            "yes" if r.second_head_helps else "no",
            "yes" if r.eigenvalue < 0 else "no",
            "yes" if r.prediction_holds else "no",
        )
        for r in run.results
    )
    header = (
        "setting", "λ", "seed", "1-head excess loss", "gain from a second head", "± paired s.e.",
        "share of 1-head excess", "second head helps", "predicted to help", "prediction holds",
    )  # fmt: skip
    return Table(
        header,
        rows,
        ("", "", "", ".3e", ".2e", ".1e", ".0%", "", "", ""),
        caption=f"Helps: gain > 2 paired s.e. and ≥ {run.config.min_share:.0%} of the 1-head "
        "excess loss (the best multi-head model against one head, on the same sequences).",
    )


def _validity_table(run: Any) -> Table:
    rows = tuple(
        (
            name,
            v.process,
            v.predicted,
            v.slope,
            v.se,
            v.rel_gap,
            v.r2,
            "yes" if v.applies else "no",
        )
        for name, v in run.validity.items()
    )
    header = (
        "used for", "process", "ln|lam|", "best token-sum slope", "± s.e.", "gap",
        "token-sum R²", "first-order assumption holds",
    )  # fmt: skip
    return Table(
        header,
        rows,
        ("", "", ".3f", ".3f", ".1e", ".0%", ".4f", ""),
        caption="The derivation's first-order check on exact beliefs, process only (20% gap "
        "allowed).",
    )


def _checkpoint_table(run: Any) -> Table:
    ck = tuple(
        (
            c[0].layer,
            f"{r2:.4f}",
            c[0].contribution.slope,
            c[0].contribution.se,
            c[0].attention.slope,
            c[0].attention.se,
            c[0].rel_error,
            min(c[0].ov_cosines),
            min(c[0].embedding_cosines),
        )
        for c, r2 in zip(run.checkpoint.comparisons, run.checkpoint.probe_r2, strict=True)
    )
    header = (
        "checkpoint layer", "probe R² (resid_mid)", "contribution slope", "± s.e.",
        "attention slope", "± s.e.", "rel. error", "OV cos min", "embedding cos min",
    )  # fmt: skip
    return Table(
        header,
        ck,
        ("", "", ".3f", ".3f", ".3f", ".3f", ".0%", ".3f", ".3f"),
        caption=f"On {run.validity['checkpoint'].process}, what the checkpoint was trained on.",
    )
