"""Figures of belief geometry: ground truth beside probe outputs in shared coordinates, the
simplex, one panel per hook, and a simplex found without labels. Functions take results and return
figures; they never run models or show anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from belief_lens.errors import BeliefLensError
from belief_lens.plotting.coordinates import (
    TRIANGLE,
    as_points,
    belief_colors,
    belief_coordinates,
    display_points,
    marker_size_for,
    project_beliefs,
)
from belief_lens.plotting.traces import (
    FONT,
    TEMPLATE,
    scatter3d_trace,
    scatter_trace,
    triangle_traces,
    vertex_labels,
)

__all__ = [
    "compare_figure",
    "discovery_figure",
    "geometry_figure",
    "layer_grid_figure",
    "simplex_figure",
]


@dataclass(frozen=True)
class _Panel:
    """One panel of :func:`geometry_figure`: its title and the points it draws."""

    title: str
    points: np.ndarray  # [k, 2] or [k, 3] in the shared coordinates
    colors: list[str]
    size: float


def geometry_figure(
    true_beliefs,
    predictions: Mapping[str, object],
    *,
    titles: Mapping[str, str] | None = None,
    state_labels: Sequence[str] | None = None,
    max_points: int = 6_000,
    seed: int = 0,
    title: str | None = None,
) -> go.Figure:
    """Ground truth beside each probe's output, in shared coordinates.

    Three states: the simplex with labelled vertices. Four or more: the top three principal axes
    of the true beliefs (3D), with every probe's output projected onto the same axes and every
    scene given the same ranges. Every point is coloured by its true belief, identically in all
    panels; marker size follows the number of distinct points drawn.
    """
    t = as_points(true_beliefs)
    preds = {k: as_points(v, f"predictions[{k!r}]") for k, v in predictions.items()}
    for k, p in preds.items():
        if p.shape != t.shape:
            raise BeliefLensError(
                f"true beliefs {t.shape} and predictions[{k!r}] {p.shape} differ in shape"
            )
    coords = belief_coordinates(t)
    named = [("Ground truth", t)] + [((titles or {}).get(k, k), p) for k, p in preds.items()]
    panels = []
    for name, p in named:
        xy = coords(p)
        idx = display_points(xy, max_points, seed)
        colors = belief_colors(t[idx], reference=t)  # only the points drawn
        panels.append(_Panel(name, xy[idx], colors, marker_size_for(len(idx))))
    lo = np.min([p.points.min(0) for p in panels], axis=0)
    hi = np.max([p.points.max(0) for p in panels], axis=0)
    pad = 0.06 * (hi - lo).max()
    if coords.kind == "simplex":
        lo, hi = np.minimum(lo, [-0.12, -0.1]), np.maximum(hi, [1.12, 0.98])
        fig = _simplex_panels(panels, vertex_labels(3, state_labels), lo - pad, hi + pad)
    else:
        fig = _scene_panels(panels, coords.labels(), lo - pad, hi + pad)
    fig.update_annotations(font=FONT)
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        width=min(1150, 400 * len(panels) + 50),
        height=460,
        margin={"l": 10, "r": 40, "t": 70 if title else 45, "b": 10},
        font={"size": 13},
        modebar={"orientation": "v"},
    )
    return fig


def _simplex_panels(
    panels: Sequence[_Panel], labels: Sequence[str], lo: np.ndarray, hi: np.ndarray
) -> go.Figure:
    """Side-by-side triangles with labelled vertices, equal ranges ``lo..hi`` and aspect."""
    n = len(panels)
    fig = make_subplots(rows=1, cols=n, subplot_titles=[p.title for p in panels])
    for col, p in enumerate(panels, start=1):
        for tr in triangle_traces(labels):
            fig.add_trace(tr, row=1, col=col)
        fig.add_trace(scatter_trace(p.points, p.colors, p.size, p.title), 1, col)
    for col in range(1, n + 1):
        fig.update_xaxes(range=[lo[0], hi[0]], visible=False, row=1, col=col)
        # constrain="domain": the equal aspect shrinks the panel, never the ranges that hold
        # every point, so nothing is drawn beyond its own panel.
        fig.update_xaxes(constrain="domain", row=1, col=col)
        fig.update_yaxes(
            range=[lo[1], hi[1]],
            visible=False,
            scaleanchor=f"x{'' if col == 1 else col}",
            constrain="domain",
            row=1,
            col=col,
        )
    return fig


def _scene_panels(
    panels: Sequence[_Panel], names: Sequence[str], lo: np.ndarray, hi: np.ndarray
) -> go.Figure:
    """Side-by-side 3D scenes with the same axes (ranges ``lo..hi``, titles ``names``) and
    camera."""
    n = len(panels)
    specs = [[{"type": "scene"}] * n]
    fig = make_subplots(rows=1, cols=n, specs=specs, subplot_titles=[p.title for p in panels])
    for col, p in enumerate(panels, start=1):
        scene = "scene" if col == 1 else f"scene{col}"
        fig.add_trace(scatter3d_trace(p.points, p.colors, p.size, p.title, scene))
    axes = {
        f"{a}axis": {"range": [lo[i], hi[i]], "title": {"text": names[i]}}
        for i, a in enumerate("xyz")
    }
    camera = {"eye": {"x": 1.75, "y": 1.75, "z": 1.25}}
    for col in range(1, n + 1):
        scene = "scene" if col == 1 else f"scene{col}"
        fig.update_layout({scene: {**axes, "aspectmode": "cube", "camera": camera}})
    return fig


def compare_figure(
    true_beliefs,
    predicted_beliefs,
    *,
    titles: Sequence[str] = ("Ground truth", "Probe output"),
    title: str | None = None,
    max_points: int = 6_000,
) -> go.Figure:
    """Ground truth and one probe's output side by side (see ``geometry_figure``)."""
    t, p = as_points(true_beliefs), as_points(predicted_beliefs, "predicted_beliefs")
    if t.shape != p.shape:
        raise BeliefLensError(f"true beliefs {t.shape} and predictions {p.shape} differ in shape")
    fig = geometry_figure(t, {titles[1]: p}, title=title, max_points=max_points)
    fig.layout.annotations[0].text = titles[0]
    return fig


def simplex_figure(
    beliefs,
    colors=None,
    *,
    title: str | None = None,
    marker_size: float | None = None,
    max_points: int = 10_000,
) -> go.Figure:
    """Beliefs as points on the labelled simplex (3 states) or their first two principal
    components."""
    b = as_points(beliefs)
    coords = belief_coordinates(b, 2)
    xy = coords(b)
    idx = display_points(xy, max_points)
    colors = np.asarray(belief_colors(b) if colors is None else list(colors))
    size = marker_size_for(len(idx)) if marker_size is None else marker_size
    fig = go.Figure()
    if b.shape[1] == 3:
        fig.add_traces(triangle_traces(vertex_labels(3, None)))
    fig.add_trace(scatter_trace(xy[idx], colors[idx].tolist(), size, "beliefs"))
    fig.update_layout(title=title, template=TEMPLATE, width=520, height=480)
    fig.update_xaxes(visible=b.shape[1] != 3, title=coords.labels()[0])
    fig.update_yaxes(visible=b.shape[1] != 3, title=coords.labels()[1], scaleanchor="x")
    return fig


def layer_grid_figure(
    true_beliefs,
    predictions: Mapping[str, object],
    scores: Mapping[str, float] | None = None,
    *,
    n_cols: int = 4,
    max_points: int = 1_500,
    score_name: str = "MSE",
    title: str | None = None,
) -> go.Figure:
    """One 2-D panel per hook: its probe output in the true beliefs' coordinates (simplex, or
    their first two principal axes), coloured by true belief, titled with its score."""
    if not predictions:
        raise BeliefLensError("predictions is empty: give at least one hook's probe output")
    t = as_points(true_beliefs)
    coords = belief_coordinates(t, 2)
    names = list(predictions)
    n_cols = min(n_cols, len(names))
    n_rows = math.ceil(len(names) / n_cols)
    sub = [f"{n}<br>{score_name} {scores[n]:.2e}" if scores and n in scores else n for n in names]
    fig = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=sub, vertical_spacing=0.3 / max(n_rows, 1)
    )
    for k, name in enumerate(names):
        row, col = divmod(k, n_cols)
        xy = coords(as_points(predictions[name], name))
        idx = display_points(xy, max_points)
        if coords.kind == "simplex":
            fig.add_trace(triangle_traces(["", "", ""])[0], row=row + 1, col=col + 1)
        fig.add_trace(
            scatter_trace(
                xy[idx], belief_colors(t[idx], reference=t), marker_size_for(len(idx)) * 0.8, name
            ),
            row=row + 1,
            col=col + 1,
        )
    fig.update_annotations(font_size=12)
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        width=min(1150, 280 * n_cols),
        height=290 * n_rows + 40,
        margin={"l": 10, "r": 40, "t": 50, "b": 10},
        modebar={"orientation": "v"},
    )
    for i in range(1, n_rows * n_cols + 1):
        suffix = "" if i == 1 else str(i)
        fig.update_layout(
            {
                f"xaxis{suffix}": {"visible": False},
                f"yaxis{suffix}": {"visible": False, "scaleanchor": f"x{suffix}"},
            }
        )
    return fig


def discovery_figure(
    discovery,
    beliefs=None,
    *,
    max_points: int = 20_000,
    seed: int = 0,
    title: str | None = None,
    marker_size: float = 2.0,
) -> go.Figure:
    """A simplex found without labels (``belief_lens.discovery.Discovery``): the points in its
    top two principal components with the found vertices joined, and their barycentric
    coordinates on the simplex. Points are coloured by ``beliefs`` when given (vertices matched
    to states by ``discovery.score``), else by their coordinates; at most ``max_points`` drawn."""
    coords = discovery.coords.reshape(-1, discovery.n_vertices).numpy()
    if beliefs is not None:
        perm = list(discovery.score(beliefs).permutation)
        colour_by = as_points(beliefs)[:, perm]
    else:
        colour_by = np.clip(coords, 0, None) / np.clip(coords, 0, None).sum(1, keepdims=True)
    n = coords.shape[0]
    keep = np.random.default_rng(seed).permutation(n)[:max_points] if n > max_points else None
    pick = (lambda a: a[keep]) if keep is not None else (lambda a: a)
    colors = belief_colors(pick(colour_by))
    basis = discovery.components.numpy()[:2]
    verts = discovery.vertices.numpy() - discovery.mean.numpy()
    vxy = verts @ basis.T
    pts = pick(coords) @ vxy  # a point's reduced coordinates are its coords times the vertices
    if vxy.shape[1] == 1:
        vxy, pts = np.pad(vxy, ((0, 0), (0, 1))), np.pad(pts, ((0, 0), (0, 1)))
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["activations (top PCs) and found simplex", "barycentric coordinates"],
    )
    fig.add_trace(scatter_trace(pts, colors, marker_size, "activations"), row=1, col=1)
    edges = [(i, j) for i in range(len(vxy)) for j in range(i + 1, len(vxy))]
    for i, j in edges:
        fig.add_trace(
            go.Scatter(
                x=vxy[[i, j], 0],
                y=vxy[[i, j], 1],
                mode="lines",
                line={"color": "black", "width": 1},
                showlegend=False,
            ),
            row=1,
            col=1,
        )
    if discovery.n_vertices == 3:
        for trace in triangle_traces([f"vertex {k}" for k in range(3)]):
            fig.add_trace(trace, row=1, col=2)
        xy = pick(coords) @ TRIANGLE
    else:
        xy = project_beliefs(pick(coords))
    fig.add_trace(scatter_trace(xy, colors, marker_size, "coordinates"), row=1, col=2)
    fig.update_layout(title=title, template=TEMPLATE, width=1000, height=480)
    for col in (1, 2):
        fig.update_xaxes(visible=False, row=1, col=col)
        fig.update_yaxes(visible=False, scaleanchor="x" if col == 1 else "x2", row=1, col=col)
    return fig
