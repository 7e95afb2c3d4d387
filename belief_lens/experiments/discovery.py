"""Discovery: find a belief simplex in one hook's activations of a checkpoint with no belief
labels (:func:`belief_lens.discovery.discover_simplex`), draw it, and score it against the true
beliefs where the vertex count matches the process's states.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from belief_lens.activations import residual_stream, resolve_hook
from belief_lens.beliefs import check_hmm, enumerate_sequences
from belief_lens.discovery import discover_simplex
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.models import load_checkpoint
from belief_lens.plotting import discovery_figure
from belief_lens.storage import atomic_write_text, exclusive_lock

__all__ = ["discover_in_checkpoint"]


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
        atomic_write_text(html, fig.to_html(include_plotlyjs=True), overwrite=False)
        atomic_write_text(js, json.dumps(metrics, indent=2), overwrite=False)
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
    acts = residual_stream(model, seqs.tokens, hook)[hook]
    found = discover_simplex(acts, n_vertices, seed=seed)
    metrics: dict[str, Any] = {
        "checkpoint": str(path),
        "hook": hook,
        "process": hmm.name,
        "n_points": int(acts.shape[0] * acts.shape[1]),
        "n_vertices": found.n_vertices,
        "n_vertices_chosen_by": found.chosen_by,
        "explained_variance_ratio": [float(v) for v in found.explained_variance_ratio],
    }
    beliefs = seqs.beliefs if found.n_vertices == hmm.n_states else None
    title = f"simplex found without labels: {path.name}, {hook}"
    if beliefs is not None:
        score = found.score(beliefs)
        metrics.update(r2=score.r2, mse=score.mse, permutation=list(score.permutation))
        title += f" (R^2 {metrics['r2']:.3f} vs true beliefs)"
    fig = discovery_figure(found, beliefs, title=title)
    return metrics, fig
