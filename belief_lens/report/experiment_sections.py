"""Report sections of the experiments beyond the paper's analysis: the factored belief geometry
(:mod:`belief_lens.experiments.factored`), one structure under two vocabularies
(:mod:`belief_lens.transfer`), and in-context learning with steering on a mixture
(:mod:`belief_lens.experiments.icl`). Each words and draws a finished result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from belief_lens.plotting import (
    compare_figure,
    factored_dims_figure,
    icl_loss_figure,
    log_odds_figure,
    phase_diagram_figure,
)
from belief_lens.report.document import ReportFigure, Section, Table

__all__ = ["factored_section", "icl_section", "shared_structure_section"]


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
        f"{run.factored_cost:.3g} nats per position on the next token."
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
        tables=(Table(header, rows, ("", "", ".4f", ".4f")),),
        figures=tuple(figures),
    )


def shared_structure_section(result: Any, figures: Sequence[Any] = ()) -> Section:
    """A report section for ``belief_lens.transfer.SharedStructure``: probe transfer between the
    two vocabularies, principal angles, steering transfer against its control, and the mixture's
    own belief, each with the sentence that says what it means."""
    m = result.to_dict()
    shared = m["transfer_r2_a_to_b"] > 0.9 and m["transfer_r2_b_to_a"] > 0.9
    verdict = (
        "A probe fitted on one vocabulary reads the other: the model writes the shared hidden "
        "structure into one belief subspace."
        if shared
        else "A probe fitted on one vocabulary does not read the other as well as its own: the "
        "model keeps the two vocabularies' beliefs at least partly apart."
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
        headline=(verdict,),
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
    boundaries = {"measured": list(st.boundary_measured), "predicted": list(st.boundary_predicted)}
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
            f"probe's direction at {g.hook}; lines: where it crosses 1/2.",
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
        ("fitted s (log-odds per unit α)", f"{st.s:.4f}"),
        ("steered grid: correlation / mean KL", f"{st.correlation:.4f} / {st.mean_kl:.4f}"),
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
            "log-odds along its encoding direction at every position; the closed form "
            "softmax(log prior + α s + Σ log P(x_t | x_<t, c)) has only s fitted.",
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
