"""Figures of attention as constrained belief updating (arXiv 2502.01954): contributions and
attention against distance on a log scale beside the predicted ``|lam|^n``, OV vectors drawn on
the simplex beside the predicted corrections, and excess loss by head count. Functions take
numbers and return figures; they never run models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from belief_lens.errors import BeliefLensError
from belief_lens.plotting.coordinates import simplex_projection
from belief_lens.plotting.traces import TEMPLATE, triangle_traces

__all__ = ["attention_distance_figure", "head_count_figure", "ov_simplex_figure"]

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


def attention_distance_figure(
    series: Mapping[str, Sequence[float]], eigenvalue: float, *, title: str | None = None
) -> go.Figure:
    """Each series (a profile from the last query, distance 0, 1, ...) divided by its value at
    distance 1, on a log axis, beside the prediction ``|lam|^(n - 1)``."""
    if not series:
        raise BeliefLensError("series is empty: give at least one profile")
    fig = go.Figure()
    longest = 0
    for k, (name, values) in enumerate(series.items()):
        v = np.asarray(values, dtype=float)
        if v.ndim != 1 or len(v) < 2 or not np.all(np.isfinite(v)) or v[1] <= 0:
            raise BeliefLensError(f"series {name!r} must be finite with a positive distance 1")
        longest = max(longest, len(v))
        n = np.arange(len(v))
        dash = "dot" if name.startswith("attention") else "solid"
        fig.add_trace(
            go.Scatter(
                x=n[1:],
                y=np.clip(v[1:] / v[1], 1e-6, None),
                mode="lines+markers",
                name=name,
                line={"color": COLORS[k % len(COLORS)], "dash": dash},
            )
        )
    n = np.arange(1, longest)
    fig.add_trace(
        go.Scatter(
            x=n,
            y=abs(eigenvalue) ** (n - 1.0),
            mode="lines",
            name=f"predicted |λ|^n, λ = {eigenvalue:.3g}",
            line={"color": "black", "width": 3, "dash": "dash"},
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        xaxis_title="distance to the source token",
        yaxis_title="relative to distance 1 (log)",
        yaxis_type="log",
        height=460,
    )
    return fig


def ov_simplex_figure(
    measured: Mapping[str, np.ndarray],
    predicted: np.ndarray,
    centre: np.ndarray,
    *,
    title: str | None = None,
) -> go.Figure:
    """Arrows from ``centre`` (the stationary belief): the predicted correction of each token,
    and each measured set of OV vectors ``[V, 3]`` (centred over tokens and scaled to the
    prediction's mean length, since only directions are predicted), on the simplex."""
    pred = np.asarray(predicted, dtype=float)
    if pred.ndim != 2 or pred.shape[1] != 3:
        raise BeliefLensError(f"predicted must be [V, 3] corrections, got shape {pred.shape}")
    fig = go.Figure(triangle_traces(["state 0", "state 1", "state 2"]))
    sets = {"predicted δ_x": pred}
    target = np.linalg.norm(pred, axis=1).mean()
    for name, vecs in measured.items():
        v = np.asarray(vecs, dtype=float)
        if v.shape != pred.shape:
            raise BeliefLensError(f"{name!r} has shape {v.shape}, the prediction {pred.shape}")
        v = v - v.mean(0)
        scale = np.linalg.norm(v, axis=1).mean()
        sets[name] = v * (target / scale) if scale > 0 else v
    c = simplex_projection(np.asarray(centre, dtype=float)[None])[0]
    for k, (name, v) in enumerate(sets.items()):
        ends = simplex_projection(np.asarray(centre, dtype=float)[None] + v)
        xs, ys = [], []
        for e in ends:
            xs += [c[0], e[0], None]
            ys += [c[1], e[1], None]
        color = "black" if k == 0 else COLORS[(k - 1) % len(COLORS)]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=name,
                line={
                    "color": color,
                    "width": 4 if k == 0 else 2,
                    "dash": "dash" if k == 0 else "solid",
                },
            )
        )
        fig.add_trace(
            go.Scatter(
                x=ends[:, 0],
                y=ends[:, 1],
                mode="markers+text" if k == 0 else "markers",
                text=[f"token {i}" for i in range(len(v))] if k == 0 else None,
                textposition="top center",
                marker={"color": color, "size": 8},
                showlegend=False,
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        height=480,
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
    )
    return fig


def head_count_figure(
    rows: Sequence[tuple[str, int, int, float]], *, title: str | None = None
) -> go.Figure:
    """Excess loss (loss / optimum - 1) per setting, one marker per seed, coloured by head count:
    ``rows`` are ``(setting, seed, heads, excess)``."""
    if not rows:
        raise BeliefLensError("rows is empty: give at least one (setting, seed, heads, excess)")
    fig = go.Figure()
    for k, heads in enumerate(sorted({r[2] for r in rows})):
        pick = [r for r in rows if r[2] == heads]
        fig.add_trace(
            go.Scatter(
                x=[r[0] for r in pick],
                y=[r[3] for r in pick],
                mode="markers",
                name=f"{heads} head{'s' if heads > 1 else ''}",
                text=[f"seed {r[1]}" for r in pick],
                marker={"size": 12, "color": COLORS[k]},
                offsetgroup=str(heads),
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        yaxis_title="loss / optimum - 1",
        scattermode="group",
        height=420,
    )
    return fig
