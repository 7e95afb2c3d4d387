"""The end-to-end analysis of one model on one process: ground truth, probes, controls, geometry,
interventions, written as one ``report.html`` and a ``metrics.json`` holding every figure shown."""

from __future__ import annotations

import html
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from belief_lens._io import atomic_write_text
from belief_lens.compmech import entropy_rate, myopic_entropy
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM

__all__ = ["AnalysisConfig", "analyse", "write_report"]

logger = logging.getLogger(__name__)


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
    max_plot_points: int = 30_000  # in the truth-vs-probe figure
    max_grid_points: int = 4_000  # in each panel of the per-layer grid


@dataclass
class Section:
    """One block of the report: a heading, a sentence, figures and tables."""

    title: str
    text: str = ""
    figures: list[Any] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)


def analyse(
    model: Any,
    hmm: HMM,
    out_dir: str | os.PathLike,
    *,
    config: AnalysisConfig | None = None,
    history: Any | None = None,
    title: str = "belief_lens report",
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the full analysis of ``model`` on ``hmm`` and write ``report.html`` and
    ``metrics.json`` into ``out_dir``; return the metrics."""
    from belief_lens import plotting, probes
    from belief_lens.activations import residual_hooks
    from belief_lens.training import evaluate_loss

    cfg = config or AnalysisConfig()
    n_ctx = int(model.cfg.n_ctx)
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
    metrics: dict[str, Any] = {"process": hmm.name, "n_ctx": n_ctx, **(extra_metrics or {})}
    sections: list[Section] = []

    # Ground truth -------------------------------------------------------------------------
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
        "exact": record.exact,
        "optimal_loss_method": record.optimal_method,  # "exact" or "estimated ± se"
        "optimal_loss_se": record.optimal_loss_se,
    }
    logger.info(
        "model loss %.5f nats, optimum %.5f (%s; ratio %.4f)",
        ml["loss"],
        ml["optimal_loss"],
        record.optimal_method,
        ml["loss_over_optimal"],
    )

    # Probes: one forward pass, shared by the fits, the controls and the figures ----------
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
    logger.info("probes fitted (%.1f s)\n%s", time.perf_counter() - t0, table.to_markdown())

    true = data.beliefs
    preds = {hk: table.probes[hk].predict(data.acts[hk].double()) for hk in hooks}
    if "concat" in table.probes:
        preds["concat"] = table.probes["concat"].predict(
            torch.cat([data.acts[hk] for hk in hooks], -1).double()
        )
    flat_true = true.reshape(-1, hmm.n_states)
    sub = _subsample(flat_true, cfg.max_plot_points, cfg.seed)
    grid = sub[: cfg.max_grid_points]
    best = table.best_hook  # by held-out MSE
    flat = {k: v.reshape(-1, hmm.n_states) for k, v in preds.items()}
    geometry = Section(
        "Belief geometry",
        f"Ground-truth beliefs (left) and the affine probe's output at {best} (right), every "
        "point coloured by its true belief; then every hook's probe output.",
        [
            plotting.compare_figure(
                flat_true[sub], flat[best][sub], titles=("Ground truth", f"Probe at {best}")
            ),
            plotting.layer_grid_figure(
                flat_true[grid],
                {k: v[grid] for k, v in flat.items()},
                {r["hook"]: r["mse_all"] for r in table.rows},
            ),
        ],
    )
    sections.append(geometry)
    sections.append(
        Section(
            "Probes per layer",
            f"Affine probes from each residual hook (and their concatenation) to beliefs; "
            f"mode={cfg.mode}, held-out split by prefix ({cfg.test_fraction:.0%} of the distinct "
            "prefixes at each length; no input on both sides). Rows marked OVERFIT have features "
            ">= a tenth of their training prefixes or held-out MSE > 2x training MSE.",
            tables=[_table(table)],
        )
    )

    # Controls -----------------------------------------------------------------------------
    if cfg.controls:
        controls = {
            "shuffled beliefs": probes.shuffle_control(data, ridge=cfg.ridge),
            "untrained model": probes.untrained_control(data, model, ridge=cfg.ridge),
            "next-token targets": probes.next_token_control(data, ridge=cfg.ridge),
        }
        metrics["controls"] = {k: v.columns() for k, v in controls.items()}
        best_pred = preds[best].reshape(-1, hmm.n_states)
        next_tok = hmm.next_token_probs(true).reshape(-1, hmm.n_symbols)
        metrics["controls"]["distance_r2"] = probes.distance_r2(
            best_pred, true.reshape(-1, hmm.n_states), next_tok
        )
        rows = [["trained (beliefs)", *_mse_cells(table)]]
        rows += [[name, *_mse_cells(t)] for name, t in controls.items()]
        sections.append(
            Section(
                "Controls",
                "Held-out MSE (and R^2) per hook for the trained model and each control. "
                "Shuffled beliefs give the variance of the beliefs; an untrained model gives "
                "what architecture alone explains; next-token targets show where the belief "
                "geometry is more than the next-token geometry.",
                tables=[(["run", *[r["hook"] for r in table.rows]], rows)],
            )
        )
        logger.info("controls done (%.1f s)", time.perf_counter() - t0)

    # Interventions ------------------------------------------------------------------------
    if cfg.interventions:
        sections.append(_interventions(model, hmm, table, metrics, cfg, hooks))
        sections.append(_patching(model, hmm, table, metrics, cfg))
        logger.info("interventions done (%.1f s)", time.perf_counter() - t0)

    # Training -----------------------------------------------------------------------------
    if history is not None and getattr(history, "loss", None):
        per_step = history.tokens_per_step
        steps = range(1, len(history.loss) + 1)
        fig = plotting.training_curve_figure(
            [s * per_step for s in steps],
            history.loss,
            float(torch.tensor(history.optimal_loss).mean()),
            eval_tokens=[e.tokens for e in history.evals],
            eval_loss=[e.loss for e in history.evals],
        )
        method = getattr(history, "optimal_method", "exact")
        sections.append(
            Section("Training", f"Loss relative to the optimal loss ({method}).", [fig])
        )
        metrics["training"] = {
            "config": getattr(history, "config", {}),
            "steps": len(history.loss),
            "seconds": getattr(history, "seconds", None),
            "tokens": len(history.loss) * per_step,
            "optimal_loss_method": method,
            "final_eval": history.evals[-1].__dict__ if history.evals else None,
        }
    metrics["analysis_seconds"] = time.perf_counter() - t0
    write_report(out_dir, title, sections, metrics)
    return metrics


def _interventions(model, hmm, table, metrics, cfg, hooks) -> Section:
    from belief_lens.interventions import intervention_report

    rows = []
    metrics["interventions"] = {}
    for hk in hooks:
        if hk.startswith("ln_final"):
            continue  # steering there bypasses nothing: the unembedding reads it directly
        rep = intervention_report(
            model,
            None,
            hmm,
            table.probes[hk],
            hk,
            n_sequences=cfg.intervention_sequences,
            seed=cfg.seed,
        )
        s = rep.summary()
        metrics["interventions"][hk] = s
        rows.append(
            [hk, f"{s['kl_before_mean']:.4f}"]
            + [f"{s[f'kl_after_{k}_mean']:.4f} ({s[f'fold_{k}']:.1f}x)" for k in rep.kl_after]
        )
    return Section(
        "Interventions",
        "Steering the last position's belief to another sequence's belief: KL(theory || model) "
        "before and after, along encoding directions, decoding directions, and a norm-matched "
        "control subspace orthogonal to the beliefs.",
        tables=[(["hook", "KL before", "encoding", "decoding", "control"], rows)],
    )


def _patching(model, hmm, table, metrics, cfg) -> Section:
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
    result = patching_report(model, clean, corrupted, hmm, probes, control_seed=cfg.seed)
    metrics["patching"] = result.summary()
    ours, control = result.recovered_at(), result.recovered_at(control=True)
    rows = [[hook, f"{ours[hook]:.3f}", f"{control[hook]:.3f}"] for hook in result.hooks]
    return Section(
        "Activation patching",
        "The clean run's belief subspace (each layer's probe encoding directions) patched into a "
        "corrupted run at every layer and position, through TransformerLens's "
        "generic_activation_patch. Colour: the fraction of KL(theory of the clean belief || "
        f"model) at the last position recovered (0 = corrupted run, KL {result.kl_corrupted:.3f};"
        f" 1 = clean run, KL {result.kl_clean:.4f}), beside a random subspace of the same rank "
        "orthogonal to it. The table gives the last position.",
        figures=[patching_figure(result)],
        tables=[(["hook", "recovered: belief subspace", "recovered: control"], rows)],
    )


def _mse_cells(table) -> list[str]:
    return [f"{r['mse_test']:.2e} (R^2 {r['r2_test']:.2f})" for r in table.rows]


def _table(table) -> tuple[list[str], list[list[Any]]]:
    cols = ["hook", "features", "train_prefixes", "mse_test", "r2_test", "mse_train", "mse_all"]
    cols += ["r2_all", "overfit"]
    rows = [[r.get(c, "") for c in cols] for r in table.rows]
    return cols, rows


def _subsample(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    n = x.shape[0]
    if n <= k:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3e}" if (v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4)) else f"{v:.4f}"
    return html.escape(str(v))


def write_report(
    out_dir: str | os.PathLike, title: str, sections: list[Section], metrics: dict[str, Any]
) -> dict[str, Path]:
    """Write ``report.html`` (one page, plotly.js inlined once) and ``metrics.json``; PNGs of the
    figures too where kaleido works, saying once when it does not."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:"
        "1100px;margin:auto}table{border-collapse:collapse;font-size:13px}td,th{border:1px "
        "solid #ccc;padding:3px 8px;text-align:right}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    first = True
    png_ok = True
    n_fig = 0
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2><p>{html.escape(sec.text)}</p>")
        for header, rows in sec.tables:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header))
            parts += ["<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows]
            parts.append("</table>")
        for fig in sec.figures:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
            first = False
            n_fig += 1
            if png_ok:
                try:
                    fig.write_image(out / f"figure_{n_fig}.png")
                except Exception as e:  # kaleido missing or broken: HTML only
                    logger.info("PNG export unavailable (%s); writing HTML only", type(e).__name__)
                    png_ok = False
    parts.append("<h2>Metrics</h2><pre>")
    parts.append(html.escape(json.dumps(_jsonable(metrics), indent=1)[:20000]))
    parts.append("</pre></body></html>")
    paths = {"html": out / "report.html", "metrics": out / "metrics.json"}
    atomic_write_text(paths["html"], "\n".join(parts))
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


def shared_structure_section(result: Any, figures: Sequence[Any] = ()) -> Section:
    """A report section for ``belief_lens.transfer.SharedStructure``: probe transfer between the
    two vocabularies, principal angles, steering transfer against its control, and the mixture's
    own belief, each with the sentence that says what it means."""
    m = result.metrics()
    shared = m["transfer_r2_a_to_b"] > 0.9 and m["transfer_r2_b_to_a"] > 0.9
    verdict = (
        "A probe fitted on one vocabulary reads the other: the model writes the shared hidden "
        "structure into one belief subspace."
        if shared
        else "A probe fitted on one vocabulary does not read the other as well as its own: the "
        "model keeps the two vocabularies' beliefs at least partly apart."
    )
    rows = [
        ["probe R^2, fit on A, held out on B", m["transfer_r2_a_to_b"]],
        ["probe R^2, fit on B, held out on A", m["transfer_r2_b_to_a"]],
        ["the same, B shifted to A's mean / A to B's", "{:.4f} / {:.4f}".format(
            m["transfer_r2_a_to_b_centred"], m["transfer_r2_b_to_a_centred"])],
        ["probe R^2 within A / within B", f"{m['within_r2_a']:.4f} / {m['within_r2_b']:.4f}"],
        ["largest cosine between A and B subspaces", m["max_cosine_a_b"]],
        ["principal angles (degrees)", ", ".join(f"{a:.1f}" for a in m["principal_angles_deg"])],
        ["KL to theory before steering B (nats)", m["steer_kl_before"]],
        ["fold: B steered along A's directions", m["steer_transfer_fold"]],
        ["fold: norm-matched control", m["steer_control_fold"]],
        ["fold: B steered along its own directions", m["steer_own_fold"]],
        ["mixture belief R^2: joint / component / within", "{:.4f} / {:.4f} / {:.4f}".format(
            m["mixture_r2_joint"], m["mixture_r2_component"], m["mixture_r2_within"])],
    ]  # fmt: skip
    return Section(
        title=f"One structure, two vocabularies ({m['hook']})",
        text=verdict + " Folds are KL(theory || model) before over after steering; an effect "
        "counts only beside its control.",
        figures=list(figures),
        tables=[(["measure", "value"], rows)],
    )
