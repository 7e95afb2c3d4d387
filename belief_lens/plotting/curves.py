"""Figures of numbers over hooks, training and positions: probe scores per hook, the training
curve against the optimum, activation-patching recovery, and effective dimension over training.
Functions take results and return figures; they never run models or show anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from belief_lens.errors import BeliefLensError
from belief_lens.plotting.traces import TEMPLATE

__all__ = [
    "factored_dims_figure",
    "patching_figure",
    "position_error_figure",
    "probe_scores_figure",
    "training_curve_figure",
]


def probe_scores_figure(
    hooks: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    y_title: str = "held-out R²",
    title: str | None = None,
) -> go.Figure:
    """One line per run (trained model, each control) of a score against the hook."""
    if not series:
        raise BeliefLensError("series is empty: give at least one run's scores")
    fig = go.Figure()
    for name, values in series.items():
        if len(values) != len(hooks):
            raise BeliefLensError(
                f"series {name!r} has {len(values)} values for {len(hooks)} hooks"
            )
        fig.add_trace(go.Scatter(x=list(hooks), y=list(values), mode="lines+markers", name=name))
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        width=900,
        height=380,
        yaxis_title=y_title,
        margin={"l": 60, "r": 10, "t": 40 if title else 20, "b": 120},
        legend={"orientation": "h", "y": 1.08},
    )
    fig.update_xaxes(tickangle=-35)
    return fig


def position_error_figure(
    rows: Sequence[Mapping[str, Any]], *, title: str | None = None
) -> go.Figure:
    """Held-out MSE per context position (rows of ``heldout_by_position``, one hook), with its
    fold standard error, leave-one-prefix-out positions marked apart, beside the in-sample MSE."""
    if not rows:
        raise BeliefLensError("rows is empty: give heldout_by_position's rows for one hook")
    fig = go.Figure()
    for rule, name, symbol in (
        ("folds", "held out (fold mean ± s.e.)", "circle"),
        ("leave-one-prefix-out", "unseen prefix (leave one out)", "diamond-open"),
    ):
        part = [r for r in rows if r["rule"] == rule]
        if not part:
            continue
        se = [r["mse_heldout_se"] or 0.0 for r in part]
        fig.add_trace(
            go.Scatter(
                x=[r["position"] for r in part],
                y=[r["mse_heldout"] for r in part],
                error_y={"type": "data", "array": se, "visible": rule == "folds"},
                mode="markers",
                marker={"symbol": symbol, "size": 9},
                name=name,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[r["position"] for r in rows],
            y=[r["mse_all"] for r in rows],
            mode="lines",
            line={"dash": "dot"},
            name="in-sample (all-rows probe)",
        )
    )
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        width=900,
        height=380,
        xaxis_title="context position",
        yaxis_title="MSE",
        yaxis_type="log",
        margin={"l": 60, "r": 10, "t": 40 if title else 20, "b": 50},
        legend={"orientation": "h", "y": 1.1},
    )
    return fig


def training_curve_figure(
    tokens: Sequence[float],
    loss: Sequence[float],
    optimal: float,
    *,
    eval_tokens: Sequence[float] | None = None,
    eval_loss: Sequence[float] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Loss divided by the optimal loss against tokens seen; 1.0 is a Bayes-optimal predictor."""
    if optimal <= 0:
        raise BeliefLensError(f"optimal loss must be positive, got {optimal}")
    if len(tokens) != len(loss):
        raise BeliefLensError(f"tokens has {len(tokens)} entries but loss has {len(loss)}")
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=list(tokens),
            y=[v / optimal for v in loss],
            mode="lines",
            name="train loss / optimal",
            line={"width": 1},
        )
    )
    if eval_tokens is not None and eval_loss is not None:
        fig.add_trace(
            go.Scatter(
                x=list(eval_tokens),
                y=[v / optimal for v in eval_loss],
                mode="lines+markers",
                name="eval loss / optimal",
            )
        )
    fig.add_hline(y=1.0, line_dash="dash", line_color="gray")
    # On a log axis an annotation's y is log10 of the value: 0 is the optimum's line.
    fig.add_annotation(
        x=1, xref="paper", xanchor="right", y=0, yref="y", yanchor="bottom",
        text="optimal", showarrow=False, font={"color": "gray"},
    )  # fmt: skip
    fig.update_layout(
        title=title,
        xaxis_title="tokens seen",
        yaxis_title="loss / optimal loss",
        template=TEMPLATE,
        width=800,
        height=400,
        legend={"orientation": "h", "y": 1.1},
    )
    fig.update_yaxes(type="log")
    return fig


def patching_figure(result, *, title: str | None = None) -> go.Figure:
    """Activation patching against theory: the fraction of the KL gap recovered by patching the
    belief subspace at each ``[hook, position]`` beside the same for its control subspace.

    ``result`` is an ``interventions.PatchingResult`` (anything with ``recovery``,
    ``control_recovery``, ``hooks``, ``positions`` and ``rank``).
    """
    grids = [np.asarray(result.recovery, dtype=float), np.asarray(result.control_recovery, float)]
    hooks, positions = [str(h) for h in result.hooks], [str(p) for p in result.positions]
    for grid in grids:
        if grid.shape != (len(hooks), len(positions)):
            raise BeliefLensError(
                f"a recovery grid {grid.shape} does not match {len(hooks)} hooks x "
                f"{len(positions)} positions"
            )
    titles = (
        f"Belief subspace (rank {result.rank})",
        f"Control: random rank-{result.rank} subspace orthogonal to it",
    )
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.2)
    for col, grid in enumerate(grids, start=1):
        fig.add_trace(
            go.Heatmap(
                z=grid,
                x=positions,
                y=hooks,
                coloraxis="coloraxis",
                text=np.round(grid, 2),
                texttemplate="%{text}",
                hovertemplate="%{y}, position %{x}: %{z:.3f} recovered<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="patched position", row=1, col=col)
    fig.update_layout(
        title=title or "Fraction of KL(theory || model) recovered by patching",
        coloraxis={"colorscale": "RdBu", "cmin": -1, "cmax": 1, "colorbar": {"title": "recovered"}},
        template="plotly_white",
        width=1100,
        height=120 + 40 * len(hooks) + 120,
    )
    return fig


def factored_dims_figure(over_training: Any, *, title: str | None = None) -> go.Figure:
    """Effective dimension (PCs for 95% and 99% of the variance) over training, with the
    factored and joint hypotheses' predicted dimensions drawn as lines.

    Takes a :class:`belief_lens.factored_geometry.GeometryOverTraining`.
    """
    steps = list(over_training.steps)
    if not steps:
        raise BeliefLensError("over_training has no steps to plot")
    predicted = over_training.geometries[0].predicted
    fig = go.Figure()
    for name in ("dims_95", "dims_99"):
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=over_training.series(name),
                mode="lines+markers",
                name=f"PCs for {name[-2:]}% variance",
            )
        )
    fig.add_hline(
        y=predicted.factored,
        line_dash="dash",
        line_color="green",
        annotation_text=f"factored prediction {predicted.factored}",
    )
    fig.add_hline(
        y=predicted.joint,
        line_dash="dot",
        line_color="firebrick",
        annotation_text=f"joint prediction {predicted.joint}",
    )
    fig.update_layout(
        title=title,
        xaxis_title="training step",
        yaxis_title="effective dimension",
        template="plotly_white",
        width=700,
        height=420,
    )
    return fig
