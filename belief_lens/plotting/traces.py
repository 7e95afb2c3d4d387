"""The plotly pieces every figure is built from: the page template, marker traces (SVG
``Scatter`` and ``Scatter3d``; never ``Scattergl``, whose software fallback is deprecated in
headless Chromium) and the labelled simplex triangle."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from belief_lens.errors import BeliefLensError
from belief_lens.plotting.coordinates import TRIANGLE

__all__ = [
    "FONT",
    "TEMPLATE",
    "scatter3d_trace",
    "scatter_trace",
    "triangle_traces",
    "vertex_labels",
]

FONT = {"size": 14}
#: plotly_white's layout without its per-trace-type defaults: smaller pages, no WebGL entries.
TEMPLATE = go.layout.Template(layout=pio.templates["plotly_white"].layout)


def scatter_trace(xy: np.ndarray, colors, size: float, name: str, **kw) -> go.Scatter:
    """Points ``[n, 2]`` as SVG markers, one colour each, without hover or legend."""
    return go.Scatter(
        x=xy[:, 0].astype(np.float32),
        y=xy[:, 1].astype(np.float32),
        mode="markers",
        marker={"color": colors, "size": size, "line": {"width": 0}},
        name=name,
        showlegend=False,
        hoverinfo="skip",
        **kw,
    )


def scatter3d_trace(xyz: np.ndarray, colors, size: float, name: str, scene: str) -> go.Scatter3d:
    """Points ``[n, 3]`` as markers in ``scene``, one colour each, without hover or legend."""
    return go.Scatter3d(
        x=xyz[:, 0].astype(np.float32),
        y=xyz[:, 1].astype(np.float32),
        z=xyz[:, 2].astype(np.float32),
        mode="markers",
        marker={"color": colors, "size": size, "line": {"width": 0}},
        name=name,
        showlegend=False,
        hoverinfo="skip",
        scene=scene,
    )


def triangle_traces(labels: Sequence[str]) -> list[go.Scatter]:
    """The simplex's edges and its vertex labels, just outside the vertices."""
    closed = np.vstack([TRIANGLE, TRIANGLE[:1]])
    edge = go.Scatter(
        x=closed[:, 0],
        y=closed[:, 1],
        mode="lines",
        line={"color": "#999", "width": 1},
        showlegend=False,
        hoverinfo="skip",
    )
    centre = TRIANGLE.mean(0)
    out = centre + (TRIANGLE - centre) * 1.13
    text = go.Scatter(
        x=out[:, 0],
        y=out[:, 1],
        mode="text",
        text=list(labels),
        textfont=FONT,
        showlegend=False,
        hoverinfo="skip",
    )
    return [edge, text]


def vertex_labels(n: int, labels: Sequence[str] | None) -> list[str]:
    """The simplex's vertex labels: ``labels`` checked against ``n`` states, or ``state i``."""
    if labels is None:
        return [f"state {i}" for i in range(n)]
    if len(labels) != n:
        raise BeliefLensError(f"state_labels has {len(labels)} names for {n} states")
    return [str(s) for s in labels]
