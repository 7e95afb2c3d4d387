"""The sections of the analysis report, each drawn from numbers :func:`belief_lens.report.analyse`
has already put in ``metrics`` or handed over: the process and model, the belief geometry, the
probes per hook, the controls, steering, activation patching and training. Builders compute
nothing about the model; they word and draw what was measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from belief_lens.hmm import HMM
from belief_lens.interventions import PatchingResult
from belief_lens.plotting import (
    geometry_figure,
    layer_grid_figure,
    patching_figure,
    position_error_figure,
    probe_scores_figure,
    training_curve_figure,
)
from belief_lens.probes import CONCAT, ProbeData, ProbeTable, heldout, tied_hooks
from belief_lens.probing.data import MIN_PREFIXES_PER_FOLD
from belief_lens.probing.sweep import out_of_fold_predictions
from belief_lens.probing.table import (
    OVERFIT_FEATURE_RATIO,
    OVERFIT_GAP_FRACTION,
    OVERFIT_GAP_SE,
)
from belief_lens.report.document import ReportFigure, Section, Table
from belief_lens.report.verdicts import grade

__all__ = [
    "CLEAR_R2_MARGIN",
    "UNDERTRAINED_RATIO",
    "controls_section",
    "geometry_section",
    "model_section",
    "patching_section",
    "skipped_section",
    "probe_section",
    "steering_section",
    "training_section",
    "undertrained_warning",
]

#: A model whose loss is above this multiple of the optimum is flagged as under-trained.
UNDERTRAINED_RATIO = 1.01
#: A control is "clearly worse" when its held-out R^2 is at least this much below the model's.
CLEAR_R2_MARGIN = 0.1


def undertrained_warning(loss_over_optimal: float | None, what: str = "below") -> tuple[str, ...]:
    """The under-trained warning every analysis puts in its summary: empty at or below
    :data:`UNDERTRAINED_RATIO` x the optimum; a line saying what it means above it, or where the
    loss is unknown (None)."""
    if loss_over_optimal is None:
        return ("The model's loss against the optimum is unknown: whether it is trained enough "
                "for the findings " + what + " is not checked.",)  # fmt: skip
    if loss_over_optimal <= UNDERTRAINED_RATIO:
        return ()
    return (
        f"Under-trained: the loss is {loss_over_optimal:.3f}x the optimum (above "
        f"{UNDERTRAINED_RATIO}x); the findings {what} may be incomplete or wrong.",
    )


def model_section(hmm: HMM, metrics: Mapping[str, Any]) -> Section:
    """The process, the model and its loss against the optimum, overall and per position, with
    a warning first when the model is under-trained."""
    ml, h_mu = metrics["model_loss"], metrics["ground_truth"]["entropy_rate"]
    desc = ", ".join(f"{k} {v}" for k, v in metrics["model"].items())
    source = metrics.get("model_source") or (
        f"loaded from {metrics['checkpoint']}"
        if metrics.get("checkpoint")
        else "given by the caller: where it was trained is not recorded"
    )
    lines = (
        f"Process: {hmm.name} ({hmm.n_states} hidden states, {hmm.n_symbols} symbols, entropy "
        f"rate {h_mu:.4f} nats). Model: {desc} ({source}).",
        f"Loss {ml['loss']:.4f} nats against the optimum {ml['optimal_loss']:.4f}: "
        f"{ml['loss_over_optimal']:.4f}x optimal"
        + (" (exact over every sequence)." if ml["exact"] else " (on a sample of sequences)."),
    )
    warn: tuple[str, ...] = ()
    mismatch = (metrics.get("provenance") or {}).get("process_mismatch")
    if mismatch:
        warn += (f"Process mismatch, analysed on purpose: {mismatch}.",)
    warn += undertrained_warning(ml["loss_over_optimal"])
    rows = tuple(
        (t, opt, got, got / opt if opt > 0 else math.nan)
        for t, (opt, got) in enumerate(
            zip(ml["optimal_per_position"], ml["loss_per_position"], strict=True)
        )
    )
    per_pos = Table(
        ("position", "optimal (nats)", "model (nats)", "ratio"),
        rows,
        ("d", ".4f", ".4f", ".4f"),
        caption="Loss per context position against the optimum h(t+1).",
    )
    return Section(
        "Process and model", headline=lines, warnings=warn, tables=(per_pos.transposed(),)
    )


def geometry_section(
    table: ProbeTable, data: ProbeData, best: str, ranked_by: str, cfg: Any
) -> Section:
    """Ground truth beside the best hook's probe output (and the concatenation's where it beats
    the best hook held out and is not flagged), then every hook's output in a grid. ``cfg`` is
    the :class:`~belief_lens.report.AnalysisConfig` (point budgets and seed)."""
    S = data.beliefs.shape[-1]
    if S < 2:
        return skipped_section(
            "Belief geometry", "the process has one hidden state, so a single belief: no geometry"
        )
    oof, held = out_of_fold_predictions(table, data)  # the rows each score was measured on
    if not bool(held.any()):
        return skipped_section(
            "Belief geometry",
            f"no row is held out ({data.tokens.shape[0]} sequences of {data.tokens.shape[1]} "
            "tokens have too few distinct prefixes to hold any out), so no out-of-fold probe "
            "output exists to draw; use a longer context",
        )
    true = data.beliefs[held]
    preds = {k: v[held] for k, v in oof.items()}
    rows = {r["hook"]: r for r in table.rows}

    def label(hook: str) -> str:
        mse, se = heldout(rows[hook], "mse"), rows[hook].get("mse_heldout_se", math.nan)
        score = f"held-out MSE {mse:.2e} ± {se:.1e}" if not math.isnan(mse) else "no held-out data"
        return f"Probe at {hook}, out of fold<br>{score}"

    shown = {best: preds[best]}
    c_mse = heldout(rows[CONCAT], "mse") if CONCAT in rows else math.nan
    if CONCAT in preds and c_mse < heldout(rows[best], "mse") and not rows[CONCAT]["overfit"]:
        shown[CONCAT] = preds[CONCAT]
    kind = "the simplex" if S == 3 else "the top three principal axes of the true beliefs"
    head = geometry_figure(
        true,
        shown,
        titles={k: label(k) for k in shown},
        max_points=cfg.max_plot_points,
        seed=cfg.seed,
    )
    grid = layer_grid_figure(
        true,
        preds,
        {k: heldout(r, "mse") for k, r in rows.items()},
        max_points=cfg.max_grid_points,
        score_name="held-out MSE",
    )
    text = (
        f"Ground truth (left) and the affine probe's output at {best}, the hook with the "
        f"lowest {ranked_by} MSE, drawn in the same coordinates ({kind}); every point is "
        "coloured by its true belief, the same way in every panel."
        + (
            " The concatenation of all hooks is shown beside it with its held-out MSE."
            if CONCAT in shown
            else ""
        ),
        "Below: every hook's probe output"
        + (" on the simplex." if S == 3 else " on the first two principal axes.")
        + " Every probe output is out of fold: each row is drawn where the probe fitted without "
        f"its fold puts it, so the panels show what the held-out scores measure ({true.shape[0]:,}"
        f" held-out rows of {held.numel():,}; lengths too short to hold out are not drawn). "
        f"Points are deduplicated for display (and subsampled above {cfg.max_plot_points:,} "
        "per panel).",
    )
    return Section(
        "Belief geometry",
        headline=_geometry_headline(rows, best, ranked_by),
        text=text,
        figures=(
            ReportFigure("geometry", head, "Ground truth beside the best hook's probe output."),
            ReportFigure("geometry_per_hook", grid, "Every hook's probe output."),
        ),
    )


def _geometry_headline(rows: Mapping[str, Any], best: str, ranked_by: str) -> tuple[str, ...]:
    """The best hook's scores, and whether the concatenation of all hooks beats it held out."""
    r = rows[best]
    ties = tied_hooks(list(rows.values()))[1:]
    headline = (
        f"Best hook by {ranked_by} MSE: {best}, held-out MSE {heldout(r, 'mse'):.2e} "
        f"± {r.get('mse_heldout_se', math.nan):.1e}, R² {heldout(r, 'r2'):.3f} "
        f"(in-sample MSE {r['mse_all']:.2e})"
        + (f"; tied within one standard error: {', '.join(ties)}" if ties else "")
        + (
            f". Every hook is flagged; this one for: {r['overfit_reason']}."
            if r["overfit"]
            else "."
        ),
    )
    if CONCAT not in rows:
        return headline
    c = rows[CONCAT]
    gain = heldout(r, "mse") / heldout(c, "mse")
    if gain >= 1:
        return headline + (
            f"Concatenation of all hooks: held-out MSE {heldout(c, 'mse'):.2e}, "
            f"{gain:.2f}x lower than the best hook"
            + (f" (flagged: {c['overfit_reason']})." if c["overfit"] else "."),
        )
    return headline + (
        f"Concatenation of all hooks: held-out MSE {heldout(c, 'mse'):.2e}, no better "
        f"than the best hook held out ({gain:.2f}x).",
    )


#: The probe table's columns: (row key, header, number format).
PROBE_COLUMNS = (
    ("hook", "hook", ""),
    ("features", "features", "d"),
    ("train_prefixes", "training prefixes", "d"),
    ("mse_all", "MSE in-sample", ".3e"),
    ("r2_all", "R² in-sample", ".4f"),
    ("mse_train", "MSE train", ".3e"),
    ("mse_heldout", "MSE held-out", ".3e"),
    ("mse_heldout_se", "± s.e.", ".1e"),
    ("r2_heldout", "R² held-out", ".4f"),
    ("r2_heldout_se", "± s.e.", ".1e"),
    ("n_eff_heldout", "effective n held out", ".0f"),
)


def probe_section(table: ProbeTable, best: str, ranked_by: str, cfg: Any) -> Section:
    """Every hook's probe scores, in-sample (the paper's number), on the training rows and held
    out, with the rows the overfit rule flags marked. ``cfg`` is the analysis config."""
    flag = any(r["overfit"] for r in table.rows)
    cols = [name for _, name, _ in PROBE_COLUMNS] + (["flag"] if flag else [])
    fmts = [fmt for _, _, fmt in PROBE_COLUMNS] + ([""] if flag else [])
    rows = []
    for r in table.rows:
        cells = [
            heldout(r, key.removesuffix("_heldout")) if key.endswith("_heldout") else r[key]
            for key, _, _ in PROBE_COLUMNS
        ]
        rows.append(tuple(cells + ([r["overfit_reason"]] if flag else [])))
    folds = table.meta.get("folds")
    split = (
        f"cross-validated over {folds} folds by prefix (mean ± standard error over folds; a "
        f"length with fewer than {MIN_PREFIXES_PER_FOLD * folds} distinct prefixes stays in "
        "every training set)"
        if folds
        else f"one split by prefix ({table.meta.get('test_fraction', cfg.test_fraction):.0%} "
        "held out)"
    )
    text = (
        f"Affine probes from each residual hook (and their concatenation) to the belief "
        f"states; mode={table.meta.get('mode', cfg.mode)}, weights="
        f"{_weights_text(table.meta)}"
        f", held out {split}. The effective n counts distinct held-out prefixes weighted by "
        f"their rows (Kish). The best hook by {ranked_by} MSE is {best}. In-sample is the "
        "paper's number (fit and scored on every row).",
    )
    if flag:
        text += (
            f"A row is flagged when its features are at least {OVERFIT_FEATURE_RATIO:.0%} of "
            f"its distinct training prefixes, or when its held-out MSE exceeds the in-sample "
            f"MSE on the same rows by more than {OVERFIT_GAP_SE:g} standard errors and "
            f"{OVERFIT_GAP_FRACTION:.0%}; the flag column says which.",
        )
    return Section(
        "Probes per hook", text=text, tables=(Table(tuple(cols), tuple(rows), tuple(fmts)),)
    )


def _weights_text(meta: Mapping[str, Any]) -> str:
    if meta.get("weighting") == "prefixes":
        return "uniform over distinct prefixes (each position and prefix counts once)"
    if meta.get("weighted"):
        return "sequence probability (each prefix by its probability)"
    return "uniform over sequences (each prefix by its number of sequences)"


def position_section(rows: Sequence[Mapping[str, Any]], folds: int) -> Section:
    """Held-out error of the best hook at each context position (``heldout_by_position``), with
    the rule that scored each position."""
    hook = rows[0]["hook"]
    loo = [r["position"] for r in rows if r["rule"] == "leave-one-prefix-out"]
    table_rows = tuple(
        (
            r["position"],
            r["rule"] if r["rule"] == "folds" else f"leave one out ({r['prefixes']} prefixes)",
            _pm(r["mse_heldout"], r["mse_heldout_se"]),
            _pm(r["r2_heldout"], r["r2_heldout_se"]),
            r["mse_all"],
        )
        for r in rows
    )
    text = (
        f"Held-out MSE and R² of {hook} at each context position. Positions the {folds} folds "
        "hold out give the mean ± standard error over folds.",
    )
    if loo:
        text += (
            f"Positions {', '.join(map(str, loo))} have fewer than "
            f"{MIN_PREFIXES_PER_FOLD * folds} distinct prefixes, so every fold trains on them; "
            "each of their prefixes is predicted instead by the probe fitted on every other row "
            "(leave one prefix out): extrapolation to a prefix the probe never saw, a harder "
            "test than the folds'.",
        )
    return Section(
        "Held-out error by position",
        text=text,
        tables=(
            Table(
                ("position", "rule", "held-out MSE", "held-out R²", "in-sample MSE"),
                table_rows,
                ("", "", "", "", ".3g"),
            ),
        ),
        figures=(
            ReportFigure(
                "positions",
                position_error_figure(rows),
                f"Held-out MSE of {hook} by context position (log scale).",
            ),
        ),
    )


def _pm(value: float, se: float | None) -> str:
    return f"{value:.3g}" if se is None else f"{value:.3g} ± {se:.2g}"


def controls_section(table: ProbeTable, controls: Mapping[str, ProbeTable], best: str) -> Section:
    """Held-out scores per hook for the trained model beside each control, and whether every
    control is clearly worse (by ``CLEAR_R2_MARGIN`` R² at its best hook)."""
    runs = {"trained (beliefs)": table, **controls}
    by_hook = {name: {r["hook"]: r for r in t.rows} for name, t in runs.items()}
    hooks = [r["hook"] for r in table.rows]
    cols, fmts, groups = ["hook"], [""], [("", 1)]
    for name in runs:
        cols += ["MSE", "R²"]
        fmts += [".2e", ".3f"]
        groups.append((name, 2))
    rows = []
    for hk in hooks:
        cells: list[Any] = [hk]
        for name in runs:
            r = by_hook[name].get(hk, {})
            cells += [heldout(r, "mse"), heldout(r, "r2")]
        rows.append(tuple(cells))
    per_hook = [hk for hk in hooks if hk != CONCAT]
    series = {name: [heldout(by_hook[name].get(hk, {}), "r2") for hk in per_hook] for name in runs}
    fig = probe_scores_figure(per_hook, series, y_title="held-out R²")
    return Section(
        "Controls",
        headline=_controls_headline(by_hook, controls, best),
        text=(
            "Held-out MSE and R² per hook for the trained model and each control. R² is the "
            "fraction of the target's variance explained, so runs with different targets compare "
            "fairly (next-token distributions have less variance than beliefs, so their MSE is "
            "smaller for the same fit). Shuffled beliefs: no map can beat the mean. Untrained "
            "model: what the architecture alone explains. Next-token targets: where the belief "
            "geometry is more than the next-token geometry.",
        ),
        tables=(Table(tuple(cols), tuple(rows), tuple(fmts), groups=tuple(groups)),),
        figures=(ReportFigure("controls_r2", fig, "Held-out R² per hook, trained and controls."),),
    )


def _controls_headline(
    by_hook: Mapping[str, Mapping[str, Any]], controls: Mapping[str, ProbeTable], best: str
) -> tuple[str, ...]:
    trained_r2 = heldout(by_hook["trained (beliefs)"].get(best, {}), "r2")
    verdicts, clear = [], True
    for name in ("shuffled beliefs", "untrained model"):
        if name not in controls:
            continue
        r2 = max(
            (heldout(r, "r2") for r in controls[name].rows if r["hook"] != CONCAT),
            default=math.nan,
        )
        clear &= r2 <= trained_r2 - CLEAR_R2_MARGIN
        verdicts.append(f"{name} best R² {r2:.3f}")
    head = (
        f"Controls (held-out R² at their best hook, against {trained_r2:.3f} for the trained "
        f"model at {best}): "
        + "; ".join(verdicts)
        + ". "
        + (
            f"Every control is clearly worse (by at least {CLEAR_R2_MARGIN} R²)."
            if clear
            else f"NOT every control is clearly worse (margin {CLEAR_R2_MARGIN} R²)."
        ),
    )
    if "next-token targets" in controls:
        nt = heldout(by_hook["next-token targets"].get(best, {}), "r2")
        head += (
            f"Next-token targets at {best}: held-out R² {nt:.3f} of the next-token variance "
            "(next-token distributions are linear in the belief, so this is a comparison, not a "
            "bar the beliefs must clear).",
        )
    return head


def steering_section(steered: Mapping[str, Mapping[str, Any]], best: str) -> Section:
    """KL(theory || model) before and after steering at each hook along the encoding and
    decoding directions and a control; the headline reads the best hook (or, where it was not
    steered, the hook with the largest effect)."""
    rows = tuple(
        (hk, s["kl_before_mean"])
        + tuple(
            v
            for k in ("encoding", "decoding", "control")
            for v in (s.get(f"kl_after_{k}_mean"), s.get(f"fold_{k}"))
        )
        for hk, s in steered.items()
    )
    head: tuple[str, ...] = ()
    at = (
        best
        if best in steered
        else (max(steered, key=lambda h: steered[h].get("fold_encoding", 0)) if steered else None)
    )
    if at is not None:
        s = steered[at]
        verdict = grade(
            f"Steering at {at}"
            + ("" if at == best else f" (the largest effect; {best} is not steered)")
            + f", KL(theory || model) {s['kl_before_mean']:.4f} -> "
            f"{s.get('kl_after_encoding_mean', math.nan):.4f} along the belief directions; fold",
            s.get("fold_encoding", math.nan),
            s.get("fold_control", math.nan),
            effect_se=s.get("fold_encoding_se"),
            control_se=s.get("fold_control_se"),
            strong=2.0,
            min_ratio=5.0,
            neutral=1.0,
            unit="x",
        )
        s["verdict"] = verdict.to_dict()  # also in metrics.json
        head = (verdict.sentence(),)
    return Section(
        "Steering",
        headline=head,
        text=(
            "Steering the last position's belief to another sequence's belief: mean "
            "KL(theory || model) before, and after steering along the encoding directions, the "
            "decoding directions, and a norm-matched control subspace orthogonal to the beliefs "
            "(fold = before / after).",
        ),
        tables=(
            Table(
                ("hook", "KL before", "KL", "fold", "KL", "fold", "KL", "fold"),
                rows,
                ("", ".4f", ".4f", ".1f", ".4f", ".1f", ".4f", ".2f"),
                groups=(("", 2), ("encoding", 2), ("decoding", 2), ("control", 2)),
            ),
        ),
    )


def skipped_section(title: str, reason: str) -> Section:
    """A section for an analysis that could not run here, saying why (in the summary too)."""
    return Section(title, headline=(f"{title} skipped: {reason}",))


def patching_section(result: PatchingResult) -> Section:
    """Activation patching of each layer's belief subspace against theory, beside its control:
    two heatmaps and a table of the last position."""
    ours, control = result.recovered_at(), result.recovered_at(control=True)
    rows = tuple((hook, ours[hook], control[hook]) for hook in result.hooks)
    worst, top_control = min(ours.values()), max(abs(v) for v in control.values())
    mean_ours = sum(ours.values()) / len(ours)
    mean_control = sum(control.values()) / len(control)
    verdict = grade(
        f"Patching the belief subspace recovers {worst:.3f}-{max(ours.values()):.3f} of the "
        f"clean run's KL to theory at the last position (per layer; the control at most "
        f"{top_control:.3f}); mean over layers",
        mean_ours,
        mean_control,
        strong=0.9,
        min_ratio=5.0,
    )
    head = (verdict.sentence(),)
    return Section(
        "Activation patching",
        headline=head,
        text=(
            "The clean run's belief subspace (each layer's probe encoding directions) patched into "
            "a corrupted run at every layer and position, through TransformerLens's "
            "generic_activation_patch. Colour: the fraction of KL(theory of the clean belief || "
            "model) at the last position recovered (0 = corrupted run, KL "
            f"{result.kl_corrupted:.3f}; 1 = clean run, KL {result.kl_clean:.4f}), beside a "
            "random subspace of the same rank orthogonal to it. The table gives the last "
            "position.",
        ),
        tables=(
            Table(
                ("hook", "recovered: belief subspace", "recovered: control"),
                rows,
                ("", ".3f", ".3f"),
            ),
        ),
        figures=(
            ReportFigure(
                "patching", patching_figure(result), "Fraction recovered, per layer and position."
            ),
        ),
    )


def training_section(history: Any, training: Mapping[str, Any]) -> Section:
    """The training curve against the optimum; ``training`` is ``metrics["training"]``."""
    per_step = history.tokens_per_step
    steps = range(1, len(history.loss) + 1)
    optimum = float(torch.tensor(history.optimal_loss).mean())
    fig = training_curve_figure(
        [s * per_step for s in steps],
        history.loss,
        optimum,
        eval_tokens=[e.tokens for e in history.evals],
        eval_loss=[e.loss for e in history.evals],
    )
    return Section(
        "Training",
        text=(
            f"{training['steps']:,} steps, {training['tokens']:,} tokens; loss divided by the "
            f"optimal loss ({training['optimal_loss_method']}; 1 = a Bayes-optimal predictor).",
        ),
        figures=(ReportFigure("training", fig, "Training loss against the optimum."),),
    )
