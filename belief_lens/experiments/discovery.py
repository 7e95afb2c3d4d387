"""Discovery: find a belief simplex in one hook's activations of a checkpoint with no belief
labels (:func:`belief_lens.discovery.discover_simplex`), draw it, and score it against the true
beliefs where the vertex count matches the process's states.
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from belief_lens.activations import (
    final_logits,
    logits_match_forward,
    residual_stream,
    resolve_hook,
)
from belief_lens.beliefs import check_hmm, enumerate_sequences
from belief_lens.discovery import discover_simplex, judge_discovery
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.models import load_checkpoint
from belief_lens.plotting import discovery_figure
from belief_lens.probing.prefixes import MAX_LOGITS_BYTES
from belief_lens.report import undertrained_warning
from belief_lens.storage import atomic_write_text, exclusive_lock, jsonable
from belief_lens.training import loss_evaluator

__all__ = ["discover_in_checkpoint"]

logger = logging.getLogger(__name__)


def discover_in_checkpoint(
    checkpoint: str | os.PathLike,
    hmm: HMM,
    out_dir: str | os.PathLike,
    *,
    hook: str = "blocks.3.hook_resid_post",
    n_vertices: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``checkpoint`` on every sequence of ``hmm`` of its context length, find a simplex in
    the activations at ``hook`` (``n_vertices``, default chosen by the eigengap; ``seed`` for the
    fitting subsample), and write ``out_dir/discovery.html`` and ``out_dir/discovery.json``,
    never over existing ones. Returns the metrics written, with ``out`` added."""
    out = Path(out_dir)
    html, js = out / "discovery.html", out / "discovery.json"
    with exclusive_lock(out / ".discovery.lock", f"--out {out}"):
        for f in (html, js):
            if f.exists():
                raise BeliefLensError(f"{f} exists; choose another --out (nothing is overwritten)")
        metrics, fig = _discover(Path(checkpoint), hmm, hook, n_vertices, seed)
        atomic_write_text(html, _page(fig, metrics), overwrite=False)
        atomic_write_text(js, json.dumps(jsonable(metrics), indent=2), overwrite=False)
    metrics["out"] = str(out)
    return metrics


def _discover(
    path: Path, hmm: HMM, hook: str, n_vertices: int | None, seed: int
) -> tuple[dict[str, Any], Any]:
    """The discovery's metrics and figure (the work of ``discover_in_checkpoint``)."""
    check_hmm(hmm)
    model = load_checkpoint(path)
    model.eval()
    hook = resolve_hook(model, hook)
    seqs = enumerate_sequences(hmm, int(model.cfg.n_ctx))
    logger.info("running %s on %d sequences of %s", path.name, len(seqs), hmm.name)
    acts, loss = _acts_and_loss(model, hmm, seqs.tokens, hook, seed)
    logger.info("finding a simplex in %s (loss %.4fx the optimum)", hook, loss)
    found = discover_simplex(acts, n_vertices, seed=seed)
    logger.info(
        "found %d vertices; scoring against the true beliefs and baselines", found.n_vertices
    )
    metrics: dict[str, Any] = {
        "checkpoint": str(path),
        "hook": hook,
        "process": hmm.name,
        "n_points": int(acts.shape[0] * acts.shape[1]),
        "n_vertices": found.n_vertices,
        "n_vertices_chosen_by": found.chosen_by,
        "noise_floor": found.noise_floor,
        "explained_variance_ratio": [float(v) for v in found.explained_variance_ratio],
        "loss_over_optimal": loss,
        "warnings": list(undertrained_warning(loss)),
    }
    verdict = judge_discovery(found, acts, seqs.beliefs, seed=seed)
    metrics.update(found=verdict.found, verdict=verdict.summary(), **_scores(verdict))
    candidates = {"chosen": verdict.to_dict()}
    if found.n_vertices != hmm.n_states and hmm.n_states - 1 <= acts.shape[-1]:
        # The process's own vertex count, scored too: is there a belief simplex the spectrum
        # missed?
        at_s = discover_simplex(acts, hmm.n_states, seed=seed)
        candidates["one vertex per state"] = judge_discovery(at_s, acts, seqs.beliefs, seed=seed)
        candidates["one vertex per state"] = candidates["one vertex per state"].to_dict()
        if candidates["one vertex per state"]["found"]:
            metrics["found"] = True
    metrics["candidates"] = candidates
    beliefs = seqs.beliefs if found.n_vertices == hmm.n_states else None
    title = f"simplex found without labels: {path.name}, {hook}"
    if beliefs is not None:
        score = found.score(beliefs)
        metrics["permutation"] = list(score.permutation)
        title += f" (R^2 {metrics['r2']:.3f} vs true beliefs)"
    fig = discovery_figure(found, beliefs, title=title)
    return metrics, fig


def _acts_and_loss(
    model: Any, hmm: HMM, tokens: Tensor, hook: str, seed: int
) -> tuple[Tensor, float]:
    """The activations at ``hook`` on ``tokens`` and the model's loss over its optimum
    (``evaluate_loss``'s): from one pass that also keeps the last block's residual stream, whose
    final norm and unembedding give the logits, where the loss's evaluation sequences are
    ``tokens`` (every sequence, probability-weighted); else from a pass of its own."""
    evaluator = loss_evaluator(model, hmm, seed=seed)
    last = f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post"
    fits = tokens.numel() * int(model.cfg.d_vocab) * 4 <= MAX_LOGITS_BYTES
    if not (fits and hasattr(model, "unembed") and torch.equal(evaluator.data.inputs, tokens)):
        return residual_stream(model, tokens, hook)[hook], _own_loss(evaluator, model)
    acts = residual_stream(model, tokens, [hook, last])
    logits = final_logits(model, acts[last])
    if not logits_match_forward(model, logits, tokens):
        return acts[hook], _own_loss(evaluator, model)
    return acts[hook], evaluator.score_logits(logits).loss_over_optimal


def _own_loss(evaluator: Any, model: Any) -> float:
    return evaluator(model, step=0, tokens=0).loss_over_optimal


def _scores(verdict: Any) -> dict[str, Any]:
    """The verdict's score and baselines, as top-level metrics."""
    keys = ("r2", "mse", "r2_pcs", "r2_random", "r2_random_se", "explained_variance")
    return {k: getattr(verdict, k) for k in keys if getattr(verdict, k) is not None}


def _page(fig: Any, metrics: dict[str, Any]) -> str:
    """The discovery page: the verdict in words, each candidate's score beside its baselines,
    the explained variance, then the figure."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{c['n_vertices']}</td>"
        f"<td>{'-' if c['r2'] is None else format(c['r2'], '.3f')}</td>"
        f"<td>{c['r2_pcs']:.3f}</td><td>{c['r2_random']:.3f} ± {c['r2_random_se']:.3f}</td>"
        f"<td>{c['explained_variance']:.1%}</td><td>{'yes' if c['found'] else 'no'}</td></tr>"
        for name, c in metrics["candidates"].items()
    )
    ev = ", ".join(f"{v:.3f}" for v in metrics["explained_variance_ratio"])
    head = "Simplex found" if metrics["found"] else "No simplex found"
    warn = "".join(
        f"<p style='color:#a40000'><b>{html.escape(w)}</b></p>" for w in metrics["warnings"]
    )
    body = (
        f"<h1>{head}</h1>{warn}<p>{html.escape(metrics['verdict'])}</p>"
        f"<p>Criterion: {html.escape(metrics['candidates']['chosen']['criterion'])}.</p>"
        "<table border=1 cellpadding=4><tr><th>candidate</th><th>vertices</th>"
        "<th>R² (matched, not refitted)</th><th>R² top PCs + affine map (ceiling)</th>"
        "<th>R² random directions (chance)</th><th>explained variance</th><th>found</th></tr>"
        f"{rows}</table><p>Explained-variance ratios of the leading components: {ev} "
        f"(noise floor {metrics['noise_floor']:.1g} of the largest).</p>"
    )
    plot = fig.to_html(full_html=False, include_plotlyjs=True)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>discovery</title></head>"
        f"<body>{body}{plot}</body></html>"
    )
