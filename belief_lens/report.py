"""The end-to-end analysis of one model on one process: ground truth, probes, controls, geometry,
interventions, written as one ``report.html`` and a ``metrics.json`` holding every figure shown.

A report is a list of :class:`Section` values composed by :func:`compose_html`. Each section
carries its own headline lines (gathered into the summary at the top of the page), text, tables
and figures, so an analysis adds itself to the report by returning one more ``Section``.
"""

from __future__ import annotations

import html
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from belief_lens.compmech import entropy_rate, myopic_entropy
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.probing.table import best_hook, heldout
from belief_lens.storage import atomic_write_text

__all__ = [
    "Analysis",
    "AnalysisConfig",
    "ReportFigure",
    "Section",
    "Table",
    "analyse",
    "compose_html",
    "export_figures",
    "write_report",
]

logger = logging.getLogger(__name__)

ExportFormat = Literal["png", "pdf", "svg"]
#: A model whose loss is above this multiple of the optimum is flagged as under-trained.
UNDERTRAINED_RATIO = 1.01
#: A control is "clearly worse" when its held-out R^2 is at least this much below the model's.
CLEAR_R2_MARGIN = 0.1


@dataclass
class AnalysisConfig:
    """What ``analyse`` runs; the defaults are the paper's analysis (all sequences, unweighted)."""

    mode: str = "paper"  # "paper" | "weighted" | "sampled"
    n_sequences: int | None = None  # for mode="sampled"
    test_fraction: float = 0.2
    ridge: float = 0.0
    seed: int = 0
    controls: bool = True
    interventions: bool = True
    intervention_sequences: int = 512
    max_plot_points: int = 5_000  # drawn per panel of the headline geometry figure
    max_grid_points: int = 1_000  # drawn per panel of the per-hook grid
    export: tuple[str, ...] = ("png", "pdf")  # figure files written beside the report

    def __post_init__(self) -> None:
        bad = [f for f in self.export if f not in ("png", "pdf", "svg")]
        if bad:
            raise BeliefLensError(f"export formats must be png, pdf or svg, got {bad}")


# ----------------------------------------------------------------------------- report values


@dataclass(frozen=True)
class Table:
    """A table with one number format per column (a ``format`` spec such as ``".3e"``, ``".4f"``,
    ``"d"``, or ``""`` for text), so a column never mixes notations.

    ``groups`` optionally spans header cells: ``(("", 1), ("beliefs", 2), ...)``.
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    formats: tuple[str, ...]
    caption: str = ""
    groups: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if len(self.formats) != len(self.columns):
            raise BeliefLensError(
                f"Table has {len(self.columns)} columns but {len(self.formats)} formats"
            )
        for r in self.rows:
            if len(r) != len(self.columns):
                raise BeliefLensError(
                    f"Table row {r!r} has {len(r)} cells, not {len(self.columns)}"
                )
        if self.groups and sum(n for _, n in self.groups) != len(self.columns):
            raise BeliefLensError("Table groups must span every column exactly once")

    def cell(self, value: Any, fmt: str) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
            return format(value, fmt)
        return str(value)

    def to_html(self) -> str:
        parts = ["<div class='table'><table>"]
        if self.caption:
            parts.append(f"<caption>{html.escape(self.caption)}</caption>")
        if self.groups:
            parts.append(
                "<tr>"
                + "".join(
                    f"<th colspan={n} class='group'>{html.escape(g)}</th>" for g, n in self.groups
                )
                + "</tr>"
            )
        parts.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in self.columns) + "</tr>")
        for r in self.rows:
            cells = []
            for v, f in zip(r, self.formats, strict=True):
                cls = " class='text'" if not f else ""
                cells.append(f"<td{cls}>{html.escape(self.cell(v, f))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table></div>")
        return "".join(parts)

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += [
            "| " + " | ".join(self.cell(v, f) for v, f in zip(r, self.formats, strict=True)) + " |"
            for r in self.rows
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class ReportFigure:
    """A plotly figure with the file name it is exported under and a caption."""

    name: str
    figure: Any
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """One block of the report. ``headline`` lines also go into the summary at the top."""

    title: str
    headline: tuple[str, ...] = ()
    text: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    figures: tuple[ReportFigure, ...] = ()
    warnings: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------- reading metrics


def _in_sample(row: Mapping[str, Any], metric: str) -> float:
    v = row.get(f"{metric}_all")
    return float(v) if isinstance(v, (int, float)) else math.nan


def _overfit(row: Mapping[str, Any]) -> bool:
    return bool(row.get("overfit"))


# ----------------------------------------------------------------------------- the analysis


@dataclass(frozen=True)
class Analysis:
    """What a section builder can read: the model and process, the probe data and table (from
    ``belief_lens.probes``), the best hook by held-out MSE, and the metrics so far."""

    model: Any
    hmm: HMM
    config: AnalysisConfig
    data: Any
    table: Any
    best_hook: str
    metrics: dict[str, Any]


def analyse(
    model: Any,
    hmm: HMM,
    out_dir: str | os.PathLike,
    *,
    config: AnalysisConfig | None = None,
    history: Any | None = None,
    title: str = "belief_lens report",
    extra_metrics: dict[str, Any] | None = None,
    extra_sections: Sequence[Callable[[Analysis], Section]] = (),
) -> dict[str, Any]:
    """Run the full analysis of ``model`` on ``hmm`` and write ``report.html``, ``metrics.json``
    and the figures into ``out_dir``; return the metrics.

    ``extra_sections`` are functions of the finished :class:`Analysis` (model, data, probe table,
    best hook, metrics) that return one more ``Section`` each, placed before the training
    section; they may add their numbers to ``analysis.metrics``.
    """
    from belief_lens import probes
    from belief_lens.activations import residual_hooks

    cfg = config or AnalysisConfig()
    d_vocab = int(model.cfg.d_vocab)
    if d_vocab < hmm.n_symbols:
        raise BeliefLensError(
            f"the model has a vocabulary of {d_vocab} tokens but {hmm.name} emits "
            f"{hmm.n_symbols} symbols"
        )
    if d_vocab > hmm.n_symbols:
        logger.warning("the model has %d tokens for %d symbols", d_vocab, hmm.n_symbols)
    model.eval()
    t0 = time.perf_counter()
    n_ctx = int(model.cfg.n_ctx)
    arch = {
        k: getattr(model.cfg, k)
        for k in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "d_vocab")
        if isinstance(getattr(model.cfg, k, None), int)
    }
    metrics: dict[str, Any] = {
        "process": hmm.name,
        "n_states": hmm.n_states,
        "n_symbols": hmm.n_symbols,
        "n_ctx": n_ctx,
        "model": arch,
        **(extra_metrics or {}),
    }
    sections = [_model_section(model, hmm, metrics, cfg, n_ctx)]

    # One forward pass, shared by the fits, the controls and the figures.
    hooks = residual_hooks(model)
    data = probes.collect_probe_data(
        model,
        hmm,
        n_ctx,
        hooks,
        mode=cfg.mode,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        n_sequences=cfg.n_sequences,
    )
    table = probes.fit_probes(data, ridge=cfg.ridge)
    metrics["probes"] = table.columns()
    metrics["probes_summary"] = table.summary()
    best, ranked_by = best_hook(table.rows)
    metrics["best_hook"] = {"hook": best, "ranked_by": ranked_by}
    logger.info("probes fitted (%.1f s)\n%s", time.perf_counter() - t0, table.to_markdown())
    sections.append(_geometry_section(hmm, table, data, hooks, best, ranked_by, cfg))
    sections.append(_probe_section(table, best, ranked_by, cfg))

    if cfg.controls:
        controls = {
            "shuffled beliefs": probes.shuffle_control(data, seed=cfg.seed, ridge=cfg.ridge),
            "untrained model": probes.untrained_control(
                model, data, seed=cfg.seed, ridge=cfg.ridge
            ),
            "next-token targets": probes.next_token_control(data, ridge=cfg.ridge),
        }
        metrics["controls"] = {k: v.columns() for k, v in controls.items()}
        true = data.beliefs.reshape(-1, hmm.n_states)
        best_pred = table.probes[best].predict(data.acts[best].double()).reshape(-1, hmm.n_states)
        next_tok = hmm.next_token_probs(data.beliefs).reshape(-1, hmm.n_symbols)
        metrics["controls"]["distance_r2"] = probes.distance_r2(best_pred, true, next_tok)
        sections.append(_controls_section(table, controls, best))
        logger.info("controls done (%.1f s)", time.perf_counter() - t0)

    if cfg.interventions:
        sections.append(_interventions_section(model, hmm, table, metrics, cfg, hooks, best))
        sections.append(_patching_section(model, hmm, table, metrics, cfg))
        logger.info("interventions done (%.1f s)", time.perf_counter() - t0)

    state = Analysis(model, hmm, cfg, data, table, best, metrics)
    sections += [build(state) for build in extra_sections]
    if history is not None and getattr(history, "loss", None):
        sections.append(_training_section(history, metrics))
    metrics["analysis_seconds"] = time.perf_counter() - t0
    write_report(out_dir, title, sections, metrics, export=cfg.export)
    return metrics


def _model_section(model, hmm: HMM, metrics, cfg: AnalysisConfig, n_ctx: int) -> Section:
    from belief_lens.training import evaluate_loss

    h = myopic_entropy(hmm, min(n_ctx, 12))
    try:
        h_mu = entropy_rate(hmm)
    except BeliefLensError:
        h_mu = entropy_rate(hmm, "chaos_game")
    metrics["ground_truth"] = {"entropy_rate": h_mu, "myopic_entropy": h.tolist()}
    record = evaluate_loss(model, hmm, seed=cfg.seed)
    metrics["model_loss"] = ml = {
        "loss": record.loss,
        "optimal_loss": record.loss / record.loss_over_optimal,
        "loss_over_optimal": record.loss_over_optimal,
        "loss_per_position": record.loss_per_position,
        "optimal_per_position": [
            v / r if r > 0 else math.nan
            for v, r in zip(
                record.loss_per_position, record.loss_over_optimal_per_position, strict=True
            )
        ],
        "exact": record.exact,
        "optimal_loss_method": record.optimal_method,  # "exact" or "estimated ± se"
        "optimal_loss_se": record.optimal_loss_se,
        "undertrained": record.loss_over_optimal > UNDERTRAINED_RATIO,
    }
    logger.info(
        "model loss %.5f nats, optimum %.5f (%s; ratio %.4f)",
        ml["loss"],
        ml["optimal_loss"],
        record.optimal_method,
        ml["loss_over_optimal"],
    )
    arch = metrics["model"]
    desc = ", ".join(f"{k} {v}" for k, v in arch.items())
    source = metrics.get("checkpoint") or "trained in this run"
    lines = [
        f"Process: {hmm.name} ({hmm.n_states} hidden states, {hmm.n_symbols} symbols, entropy "
        f"rate {h_mu:.4f} nats). Model: {desc} ({source}).",
        f"Loss {ml['loss']:.4f} nats against the optimum {ml['optimal_loss']:.4f}: "
        f"{ml['loss_over_optimal']:.4f}x optimal"
        + (" (exact over every sequence)." if ml["exact"] else " (on a sample of sequences)."),
    ]
    warn = ()
    if ml["undertrained"]:
        warn = (
            f"Under-trained: the loss is {ml['loss_over_optimal']:.3f}x the optimum (above "
            f"{UNDERTRAINED_RATIO}x); the belief geometry below may be incomplete.",
        )
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
        "Process and model",
        headline=tuple(lines),
        warnings=warn,
        tables=(_transpose(per_pos),),
    )


def _transpose(t: Table) -> Table:
    """A long, narrow table turned on its side: one row per column of ``t``."""
    cols = ("", *(t.cell(r[0], t.formats[0]) for r in t.rows))
    rows = tuple(
        (name, *(t.cell(r[j], t.formats[j]) for r in t.rows))
        for j, name in enumerate(t.columns)
        if j > 0
    )
    return Table(cols, rows, ("",) * len(cols), caption=t.caption)


def _predictions(table, data, hooks) -> dict[str, torch.Tensor]:
    preds = {hk: table.probes[hk].predict(data.acts[hk].double()) for hk in hooks}
    if "concat" in table.probes:
        preds["concat"] = table.probes["concat"].predict(
            torch.cat([data.acts[hk] for hk in table.meta.get("hooks", hooks)], -1).double()
        )
    return preds


def _geometry_section(hmm, table, data, hooks, best, ranked_by, cfg) -> Section:
    from belief_lens import plotting

    S = hmm.n_states
    true = data.beliefs.reshape(-1, S)
    preds = {k: v.reshape(-1, S) for k, v in _predictions(table, data, hooks).items()}
    rows = {r["hook"]: r for r in table.rows}

    def label(hook: str) -> str:
        r = rows[hook]
        mse = heldout(r, "mse")
        score = f"held-out MSE {mse:.2e}" if not math.isnan(mse) else "no held-out data"
        return f"Probe at {hook}<br>{score}"

    shown = {best: preds[best]}
    c_mse = heldout(rows["concat"], "mse") if "concat" in rows else math.nan
    # The concatenation is drawn only when it beats the best hook held out and is not flagged.
    if "concat" in preds and c_mse < heldout(rows[best], "mse") and not _overfit(rows["concat"]):
        shown["concat"] = preds["concat"]
    kind = "the simplex" if S == 3 else "the top three principal axes of the true beliefs"
    head = plotting.geometry_figure(
        true,
        shown,
        titles={k: label(k) for k in shown},
        max_points=cfg.max_plot_points,
        seed=cfg.seed,
    )
    grid = plotting.layer_grid_figure(
        true,
        {k: v for k, v in preds.items()},
        {k: heldout(r, "mse") for k, r in rows.items()},
        max_points=cfg.max_grid_points,
        score_name="held-out MSE",
    )
    r = rows[best]
    text = (
        f"Ground truth (left) and the affine probe's output at {best}, the hook with the "
        f"lowest {ranked_by} MSE, drawn in the same coordinates ({kind}); every point is "
        "coloured by its true belief, the same way in every panel."
        + (
            " The concatenation of all hooks is shown beside it with its held-out MSE."
            if "concat" in shown
            else ""
        ),
        "Below: every hook's probe output"
        + (" on the simplex." if S == 3 else " on the first two principal axes.")
        + " Points are deduplicated for display (and subsampled above "
        f"{cfg.max_plot_points:,} per panel); every number comes from all "
        f"{true.shape[0]:,} rows.",
    )
    headline = (
        f"Best hook by {ranked_by} MSE: {best}, held-out MSE {heldout(r, 'mse'):.2e}, "
        f"R² {heldout(r, 'r2'):.3f} (in-sample MSE {_in_sample(r, 'mse'):.2e}).",
    )
    if "concat" in rows:
        c = rows["concat"]
        gain = heldout(r, "mse") / heldout(c, "mse")
        headline += (
            f"Concatenation of all hooks: held-out MSE {heldout(c, 'mse'):.2e}, "
            f"{gain:.2f}x lower than the best hook"
            + (" (flagged: it may overfit)." if _overfit(c) else ".")
            if gain >= 1
            else f"Concatenation of all hooks: held-out MSE {heldout(c, 'mse'):.2e}, no better "
            f"than the best hook held out ({gain:.2f}x).",
        )
    return Section(
        "Belief geometry",
        headline=headline,
        text=text,
        figures=(
            ReportFigure("geometry", head, "Ground truth beside the best hook's probe output."),
            ReportFigure("geometry_per_hook", grid, "Every hook's probe output."),
        ),
    )


def _probe_section(table, best, ranked_by, cfg) -> Section:
    wanted = [
        ("hook", "hook", ""),
        ("features|d", "features", "d"),
        ("mse_all", "MSE in-sample", ".3e"),
        ("r2_all", "R² in-sample", ".4f"),
        ("mse_train", "MSE train", ".3e"),
        ("mse_heldout|mse_heldout", "MSE held-out", ".3e"),
        ("r2_heldout|r2_heldout", "R² held-out", ".4f"),
    ]
    present = set().union(*(r.keys() for r in table.rows)) if table.rows else set()
    for extra in ("train_prefixes", "n_train_prefixes"):
        if extra in present:
            wanted.insert(2, (extra, "training prefixes", "d"))
            break
    cols, fmts, keys = [], [], []
    for key, name, fmt in wanted:
        k = next((k for k in key.split("|") if k in present), None)
        if k is not None:
            cols.append(name)
            fmts.append(fmt)
            keys.append(k)
    flag = any(_overfit(r) for r in table.rows)
    rows = []
    for r in table.rows:
        cells = [r.get(k) for k in keys]
        if flag:
            cells.append("overfit" if _overfit(r) else "")
        rows.append(tuple(cells))
    if flag:
        cols.append("flag")
        fmts.append("")
    split = "by prefix" if "train_prefixes" in present else "by sequence"
    return Section(
        "Probes per hook",
        text=(
            f"Affine probes from each residual hook (and their concatenation) to the belief "
            f"states; mode={table.meta.get('mode', cfg.mode)}, held-out split {split} "
            f"({cfg.test_fraction:.0%} held out). The best hook by {ranked_by} MSE is {best}. "
            "In-sample is the paper's number (fit and scored on every row).",
        )
        + (
            (
                "Flagged rows may overfit: their features are at least a tenth of their "
                "distinct training prefixes, or their held-out MSE is above twice their "
                "training MSE.",
            )
            if flag
            else ()
        ),
        tables=(Table(tuple(cols), tuple(rows), tuple(fmts)),),
    )


def _controls_section(table, controls: Mapping[str, Any], best: str) -> Section:
    from belief_lens import plotting

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
    series = {
        name: [heldout(by_hook[name].get(hk, {}), "r2") for hk in hooks if hk != "concat"]
        for name in runs
    }
    fig = plotting.probe_scores_figure(
        [hk for hk in hooks if hk != "concat"], series, y_title="held-out R²"
    )
    trained_r2 = heldout(by_hook["trained (beliefs)"].get(best, {}), "r2")
    verdicts, clear = [], True
    for name in ("shuffled beliefs", "untrained model"):
        if name not in controls:
            continue
        r2 = max(
            (heldout(r, "r2") for r in controls[name].rows if r["hook"] != "concat"),
            default=math.nan,
        )
        ok = r2 <= trained_r2 - CLEAR_R2_MARGIN
        clear &= ok
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
    return Section(
        "Controls",
        headline=head,
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


def _interventions_section(model, hmm, table, metrics, cfg, hooks, best) -> Section:
    from belief_lens.interventions import intervention_report

    rows = []
    metrics["interventions"] = {}
    for hk in hooks:
        if hk.startswith("ln_final"):
            continue  # steering there bypasses nothing: the unembedding reads it directly
        rep = intervention_report(
            model,
            None,
            table.probes[hk],
            hk,
            hmm,
            n_sequences=cfg.intervention_sequences,
            seed=cfg.seed,
        )
        s = rep.to_dict()
        metrics["interventions"][hk] = s
        rows.append(
            (hk, s["kl_before_mean"])
            + tuple(
                v
                for k in ("encoding", "decoding", "control")
                for v in (s.get(f"kl_after_{k}_mean"), s.get(f"fold_{k}"))
            )
        )
    head: tuple[str, ...] = ()
    steered = metrics["interventions"]
    at = (
        best
        if best in steered
        else (max(steered, key=lambda h: steered[h].get("fold_encoding", 0)) if steered else None)
    )
    if at is not None:
        s = steered[at]
        enc, ctl = s.get("fold_encoding", math.nan), s.get("fold_control", math.nan)
        works = enc >= 2 and enc >= 5 * ctl
        head = (
            f"Steering at {at}"
            + ("" if at == best else f" (the largest effect; {best} is not steered)")
            + f": KL(theory || model) {s['kl_before_mean']:.4f} -> "
            f"{s.get('kl_after_encoding_mean', math.nan):.4f} along the belief directions "
            f"({enc:.1f}x), against {ctl:.2f}x for a norm-matched control: "
            + ("steering works, the control does not." if works else "no clear steering effect."),
        )
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
                tuple(rows),
                ("", ".4f", ".4f", ".1f", ".4f", ".1f", ".4f", ".2f"),
                groups=(("", 2), ("encoding", 2), ("decoding", 2), ("control", 2)),
            ),
        ),
    )


def _patching_section(model, hmm, table, metrics, cfg) -> Section:
    """Activation patching of each layer's belief subspace against theory, beside its control:
    the ``metrics["patching"]`` entry and its section (two heatmaps and a per-layer table)."""
    from belief_lens.beliefs import sample_sequences
    from belief_lens.interventions import patching_report
    from belief_lens.plotting import patching_figure

    n_ctx, n = int(model.cfg.n_ctx), cfg.intervention_sequences
    probes = {
        layer: table.probes[f"blocks.{layer}.hook_resid_post"]
        for layer in range(int(model.cfg.n_layers))
    }
    clean = sample_sequences(hmm, n, n_ctx, seed=cfg.seed + 1)
    corrupted = sample_sequences(hmm, n, n_ctx, seed=cfg.seed + 2)
    result = patching_report(model, clean, corrupted, probes, hmm, control_seed=cfg.seed)
    metrics["patching"] = result.to_dict()
    ours, control = result.recovered_at(), result.recovered_at(control=True)
    rows = tuple((hook, ours[hook], control[hook]) for hook in result.hooks)
    worst, top_control = min(ours.values()), max(abs(v) for v in control.values())
    works = worst >= 0.9 and top_control <= 0.1
    head = (
        f"Patching the belief subspace recovers {worst:.3f}-{max(ours.values()):.3f} of the "
        f"clean run's KL to theory at the last position of every layer, against at most "
        f"{top_control:.3f} for a control subspace: "
        + ("the belief subspace carries the prediction." if works else "no clear patching effect."),
    )
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


def _training_section(history, metrics) -> Section:
    from belief_lens import plotting

    per_step = history.tokens_per_step
    steps = range(1, len(history.loss) + 1)
    optimum = float(torch.tensor(history.optimal_loss).mean())
    fig = plotting.training_curve_figure(
        [s * per_step for s in steps],
        history.loss,
        optimum,
        eval_tokens=[e.tokens for e in history.evals],
        eval_loss=[e.loss for e in history.evals],
    )
    final = history.evals[-1] if history.evals else None
    method = getattr(history, "optimal_method", "exact")
    metrics["training"] = {
        "config": getattr(history, "config", {}),
        "steps": len(history.loss),
        "seconds": getattr(history, "seconds", None),
        "tokens": len(history.loss) * per_step,
        "optimal_loss_method": method,
        "final_eval": final.__dict__ if final else None,
    }
    return Section(
        "Training",
        text=(
            f"{len(history.loss):,} steps, {len(history.loss) * per_step:,} tokens; loss divided "
            f"by the optimal loss ({method}; 1 = a Bayes-optimal predictor).",
        ),
        figures=(ReportFigure("training", fig, "Training loss against the optimum."),),
    )


# ----------------------------------------------------------------------------- writing

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1180px;margin:auto;padding:0 10px;color:#222}
h1{font-size:26px}h2{font-size:21px;margin-top:34px;border-bottom:1px solid #ddd}
.summary{background:#f5f7fa;border:1px solid #d8dee6;padding:8px 18px;font-size:15px}
.summary li{margin:5px 0}.warn{color:#a40000;font-weight:600}
.table{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}th.group{text-align:center}td.text{text-align:left}
caption{caption-side:top;text-align:left;font-size:13px;color:#555;padding:3px 0}
.figure{margin:10px 0}.caption{font-size:13px;color:#555}
details{margin:20px 0}pre{font-size:11px;max-height:400px;overflow:auto}
"""


def compose_html(
    title: str, sections: Sequence[Section], metrics: Mapping[str, Any] | None = None
) -> str:
    """One HTML page: the summary (every section's headline and warnings), then each section.
    plotly.js is loaded once from ``plotly.min.js`` beside the page."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>",
        "<script src='plotly.min.js'></script></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<div class='summary'><b>Summary</b><ul>",
    ]
    for sec in sections:
        parts += [f"<li class='warn'>{html.escape(w)}</li>" for w in sec.warnings]
        parts += [f"<li>{html.escape(line)}</li>" for line in sec.headline]
    parts.append("</ul></div>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        parts += [f"<p class='warn'>{html.escape(w)}</p>" for w in sec.warnings]
        parts += [f"<p>{html.escape(t)}</p>" for t in (*sec.headline, *sec.text)]
        parts += [t.to_html() for t in sec.tables]
        for f in sec.figures:
            parts.append("<div class='figure'>")
            parts.append(
                f.figure.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    div_id=f"fig-{f.name}",
                    config={"displaylogo": False, "responsive": False},
                )
            )
            if f.caption:
                parts.append(f"<div class='caption'>{html.escape(f.caption)}</div>")
            parts.append("</div>")
    if metrics is not None:
        parts.append("<details><summary>Every number (metrics.json)</summary><pre>")
        parts.append(html.escape(json.dumps(_jsonable(metrics), indent=1)[:50_000]))
        parts.append("</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def export_figures(
    figures: Sequence[ReportFigure],
    out_dir: str | os.PathLike,
    formats: Sequence[ExportFormat] = ("png", "pdf"),
) -> list[Path]:
    """Write each figure as ``{name}.{fmt}`` with kaleido (>= 1.0, which drives a Chrome or
    Chromium found on the system). Raises ``BeliefLensError`` naming what is missing."""
    if not figures or not formats:
        return []
    if importlib.util.find_spec("kaleido") is None:
        raise BeliefLensError(
            "figure export needs the Python package kaleido>=1.0, which is not installed: "
            "pip install 'belief_lens[export]' (it also needs Chrome or Chromium, e.g. "
            "apt-get install chromium)"
        )
    import plotly.io as pio

    out = Path(out_dir)
    figs = [f.figure for f in figures for _ in formats]
    paths = [out / f"{f.name}.{fmt}" for f in figures for fmt in formats]
    tmps = [p.with_name(f".{p.stem}.tmp.{p.suffix[1:]}") for p in paths]
    try:
        sizes = [
            {
                "width": fig.layout.width or 900,
                "height": fig.layout.height or 500,
                "scale": 2 if p.suffix == ".png" else 1,
            }
            for fig, p in zip(figs, tmps, strict=True)
        ]
        if hasattr(pio, "write_images"):  # plotly >= 6.1: one browser for every figure
            pio.write_images(
                figs,
                tmps,
                format=[p.suffix[1:] for p in paths],
                **{k: [s[k] for s in sizes] for k in ("width", "height", "scale")},
            )
        else:
            for fig, p, size in zip(figs, tmps, sizes, strict=True):
                fig.write_image(p, **size)
    except Exception as e:
        for t in tmps:
            t.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BeliefLensError(
            f"figure export failed: kaleido could not render with Chrome/Chromium ({first}); "
            "install Chromium (Debian: apt-get install chromium) or run plotly_get_chrome"
        ) from e
    for t, p in zip(tmps, paths, strict=True):
        os.replace(t, p)
    return paths


def write_report(
    out_dir: str | os.PathLike,
    title: str,
    sections: Sequence[Section],
    metrics: dict[str, Any],
    *,
    export: Sequence[str] = ("png", "pdf"),
) -> dict[str, Any]:
    """Write ``report.html``, ``plotly.min.js`` beside it, ``metrics.json`` and, where kaleido
    and a browser are available, each figure as PNG and PDF (saying once what is missing when
    not). Returns the paths written."""
    from plotly.offline import get_plotlyjs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "plotly.min.js"
    lib = get_plotlyjs()
    if not js.is_file() or js.read_text(encoding="utf-8") != lib:
        atomic_write_text(js, lib)
    paths: dict[str, Any] = {"html": out / "report.html", "metrics": out / "metrics.json"}
    metrics["summary"] = [line for s in sections for line in (*s.warnings, *s.headline)]
    figures = [f for s in sections for f in s.figures]
    try:
        paths["figures"] = export_figures(figures, out, tuple(export))  # type: ignore[arg-type]
    except BeliefLensError as e:
        logger.warning("%s; the report has every figure, interactive", e)
        metrics["figure_export"] = str(e)
        paths["figures"] = []
    atomic_write_text(paths["html"], compose_html(title, sections, metrics))
    atomic_write_text(paths["metrics"], json.dumps(_jsonable(metrics), indent=2))
    return paths


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


# ----------------------------------------------------------------------------- factored geometry


def factored_section(run: Any, max_points: int = 4000) -> Section:
    """The report section of a :class:`belief_lens.factored.FactoredRun`: each factor's simplex
    (truth beside probe), the principal-angle table, and effective dimension over training
    against both hypotheses' predictions (arXiv 2602.02385)."""
    from belief_lens import plotting

    g = run.final
    text = (
        f"{run.process_name}, {run.steps} steps ({run.train_seconds:.0f} s) at {g.hook_name}. "
        f"Held-out R^2 per factor {', '.join(f'{r:.4f}' for r in g.factor_r2)}; joint probe "
        f"{g.joint_r2:.4f}, factored probe {g.factored_r2:.4f}. PCs for 95%/99% of the variance: "
        f"{g.dims_95}/{g.dims_99}, against {g.predicted.factored} (factored) and "
        f"{g.predicted.joint} (joint). Verdict: {g.verdict}. The product of marginals loses "
        f"{run.factored_cost:.3g} nats per position on the next token."
    )
    figures = [
        ReportFigure(
            f"factor_{i}",
            plotting.compare_figure(
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
            plotting.factored_dims_figure(
                run.over_training, title="effective dimension over training"
            ),
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
