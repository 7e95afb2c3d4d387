"""Figures of in-context learning and steering on a mixture of processes: the loss curve against
its references, the component log-odds probe against the truth, and the ``(n, alpha)`` phase
diagram measured beside predicted. Functions take numbers and return figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from belief_lens.errors import BeliefLensError
from belief_lens.plotting.traces import TEMPLATE

__all__ = ["icl_loss_figure", "log_odds_figure", "phase_diagram_figure"]


def icl_loss_figure(
    n_seen: Sequence[int], curves: Mapping[str, Sequence[float]], *, title: str | None = None
) -> go.Figure:
    """Loss per context length, one line per predictor (the model and its references)."""
    if not curves:
        raise BeliefLensError("curves is empty: give at least one predictor's losses")
    fig = go.Figure()
    for name, values in curves.items():
        if len(values) != len(n_seen):
            raise BeliefLensError(f"curve {name!r} has {len(values)} values for {len(n_seen)} n")
        fig.add_trace(go.Scatter(x=list(n_seen), y=list(values), mode="lines+markers", name=name))
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        width=900,
        height=420,
        xaxis_title="tokens seen",
        yaxis_title="loss (nats)",
        margin={"l": 60, "r": 10, "t": 40 if title else 20, "b": 50},
        legend={"orientation": "h", "y": 1.1},
    )
    return fig


def log_odds_figure(
    truth: Sequence[float] | np.ndarray,
    probed: Sequence[float] | np.ndarray,
    *,
    title: str | None = None,
    max_points: int = 4000,
    seed: int = 0,
) -> go.Figure:
    """The probe's component log-odds against the true log-odds (one point per held-out prefix,
    at most ``max_points`` drawn, chosen with ``seed``), with the identity line."""
    t, p = np.asarray(truth, dtype=float).ravel(), np.asarray(probed, dtype=float).ravel()
    if t.shape != p.shape or t.size == 0:
        raise BeliefLensError(f"truth {t.shape} and probed {p.shape} must be equal, non-empty")
    if t.size > max_points:
        keep = np.random.default_rng(seed).choice(t.size, max_points, replace=False)
        t, p = t[keep], p[keep]
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    fig = go.Figure(
        [
            go.Scatter(x=t, y=p, mode="markers", marker={"size": 3, "opacity": 0.4}, name="prefix"),
            go.Scatter(
                x=[lo, hi], y=[lo, hi], mode="lines", name="identity", line={"dash": "dash"}
            ),
        ]
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        width=520,
        height=480,
        xaxis_title="true log-odds of component 0",
        yaxis_title="probe",
        margin={"l": 60, "r": 10, "t": 40 if title else 20, "b": 50},
        showlegend=False,
    )
    return fig


def phase_diagram_figure(
    alphas: Sequence[float],
    n_seen: Sequence[int],
    measured: np.ndarray,
    predicted: np.ndarray,
    boundaries: Mapping[str, Sequence[float | None]],
    *,
    title: str | None = None,
) -> go.Figure:
    """Heatmaps of the component posterior over ``(n, alpha)`` (``[A, N]`` each), measured beside
    predicted, with each named boundary (one ``alpha`` or None per ``n``) drawn on both."""
    m, p = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    if m.shape != p.shape or m.shape != (len(alphas), len(n_seen)):
        raise BeliefLensError(
            f"measured {m.shape} and predicted {p.shape} must be [A, N] = "
            f"{(len(alphas), len(n_seen))}"
        )
    fig = make_subplots(1, 2, subplot_titles=("measured", "predicted (closed form)"))
    for col, z in ((1, m), (2, p)):
        fig.add_trace(
            go.Heatmap(
                x=list(n_seen), y=list(alphas), z=np.clip(z, 0, 1), zmin=0, zmax=1,
                colorscale="RdBu", showscale=col == 2,
                colorbar={"title": "P(component 0)"},
            ),
            1, col,
        )  # fmt: skip
        for k, (name, values) in enumerate(boundaries.items()):
            xs = [n for n, a in zip(n_seen, values, strict=True) if a is not None]
            ys = [a for a in values if a is not None]
            fig.add_trace(
                go.Scatter(
                    x=xs, y=ys, mode="lines+markers", name=name, showlegend=col == 1,
                    line={"color": ["black", "gold", "green"][k % 3]},
                ),
                1, col,
            )  # fmt: skip
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        width=1000,
        height=440,
        margin={"l": 60, "r": 10, "t": 60, "b": 50},
        legend={"orientation": "h", "y": -0.15},
    )
    fig.update_xaxes(title_text="tokens seen n")
    fig.update_yaxes(title_text="steering strength α", col=1)
    return fig
