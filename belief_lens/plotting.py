"""Plotly figures of belief geometry, probe fits and training. Functions take results and return
figures; they never run models or show anything.

Figures use SVG traces (``Scatter``) and, for 3D, ``Scatter3d``; never ``Scattergl``, whose
software fallback is deprecated in headless Chromium. Points shown are deduplicated and, above a
budget, subsampled with a seed: a figure shows the geometry, the numbers come from all points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from belief_lens.errors import BeliefLensError

__all__ = [
    "BeliefCoordinates",
    "belief_colors",
    "belief_coordinates",
    "compare_figure",
    "discovery_figure",
    "display_points",
    "factored_dims_figure",
    "geometry_figure",
    "layer_grid_figure",
    "marker_size_for",
    "patching_figure",
    "probe_scores_figure",
    "project_beliefs",
    "simplex_figure",
    "simplex_projection",
    "training_curve_figure",
]

_TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
_FONT = {"size": 14}
# plotly_white's layout without its per-trace-type defaults: smaller pages, no WebGL entries.
_TEMPLATE = go.layout.Template(layout=pio.templates["plotly_white"].layout)


def _as_points(beliefs, what: str = "beliefs") -> np.ndarray:
    """Flatten ``[..., S]`` tensors or arrays to a float64 ``[n, S]`` numpy array."""
    arr = np.asarray(beliefs.detach().cpu() if hasattr(beliefs, "detach") else beliefs, dtype=float)
    if arr.ndim < 1 or arr.shape[-1] < 2:
        raise BeliefLensError(f"{what} must have shape [..., n_states >= 2], got {arr.shape}")
    return arr.reshape(-1, arr.shape[-1])


def simplex_projection(beliefs) -> np.ndarray:
    """Map 3-state beliefs to 2-D points of the equilateral triangle (vertices = pure states)."""
    b = _as_points(beliefs)
    if b.shape[1] != 3:
        raise BeliefLensError(f"simplex_projection needs 3 states, got {b.shape[1]}")
    return b @ _TRIANGLE


@dataclass(frozen=True)
class BeliefCoordinates:
    """How beliefs are drawn: the simplex triangle (3 states) or the principal axes of the true
    beliefs (4 or more), so that ground truth and every probe share one set of coordinates.

    ``mean`` ``[S]`` and ``axes`` ``[S, k]`` map a belief ``b`` to ``(b - mean) @ axes``;
    ``explained`` is each axis's fraction of the true beliefs' variance (NaN for the simplex).
    """

    mean: np.ndarray
    axes: np.ndarray
    explained: tuple[float, ...]
    kind: str  # "simplex" | "pca"

    @property
    def dim(self) -> int:
        return self.axes.shape[1]

    def __call__(self, beliefs) -> np.ndarray:
        b = _as_points(beliefs)
        if b.shape[1] != self.mean.shape[0]:
            raise BeliefLensError(
                f"these coordinates are for {self.mean.shape[0]} states, got {b.shape[1]}"
            )
        return (b - self.mean) @ self.axes

    def labels(self) -> list[str]:
        if self.kind == "simplex":
            return ["", ""]
        return [f"PC{i + 1} ({e:.0%})" for i, e in enumerate(self.explained)]


def belief_coordinates(true_beliefs, n_components: int | None = None) -> BeliefCoordinates:
    """The drawing coordinates fixed by the true beliefs: the triangle for 3 states, otherwise the
    top ``n_components`` (default 3) principal axes of the true beliefs."""
    t = _as_points(true_beliefs)
    if t.shape[1] == 3 and n_components in (None, 2):
        return BeliefCoordinates(np.zeros(3), _TRIANGLE.copy(), (math.nan, math.nan), "simplex")
    k = 3 if n_components is None else int(n_components)
    mean = t.mean(0)
    _, s, vt = np.linalg.svd(t - mean, full_matrices=False)
    axes = vt[:k].T
    var = s**2
    total = var.sum() if var.sum() > 0 else 1.0
    explained = tuple(float(v / total) for v in var[:k])
    if axes.shape[1] < k:  # fewer free directions than components asked for
        axes = np.pad(axes, ((0, 0), (0, k - axes.shape[1])))
        explained += (0.0,) * (k - len(explained))
    return BeliefCoordinates(mean, axes, explained, "pca")


def project_beliefs(beliefs, reference=None, n_components: int = 2) -> np.ndarray:
    """2-D coordinates of beliefs: the simplex triangle for 3 states; otherwise the first principal
    components of ``reference`` (default: the beliefs themselves), so that ground truth and probe
    output share one projection."""
    b = _as_points(beliefs)
    if b.shape[1] == 3 and n_components == 2:
        return simplex_projection(b)
    ref = b if reference is None else _as_points(reference, "reference")
    if ref.shape[1] != b.shape[1]:
        raise BeliefLensError(f"reference has {ref.shape[1]} states, beliefs {b.shape[1]}")
    return belief_coordinates(ref, n_components)(b)


def belief_colors(beliefs, reference=None) -> list[str]:
    """One CSS colour per belief: RGB = the belief itself for 3 states; otherwise its first three
    principal coordinates of ``reference`` (default: the beliefs), rescaled to [0, 1]."""
    b = _as_points(beliefs)
    if b.shape[1] != 3:
        ref = b if reference is None else _as_points(reference, "reference")
        coords = belief_coordinates(ref, 3)
        pcs, ref_pcs = coords(b), coords(ref)
        lo, hi = ref_pcs.min(0), ref_pcs.max(0)
        b = (pcs - lo) / np.where(hi > lo, hi - lo, 1.0)
    rgb = np.clip(np.round(b * 255), 0, 255).astype(int)
    return [f"rgb({r},{g},{b_})" for r, g, b_ in rgb]


def display_points(xy: np.ndarray, max_points: int, seed: int = 0, resolution: float = 2e-3):
    """Indices of the points to draw: one per cell of side ``resolution`` (relative to the data's
    extent), then a seeded subsample of at most ``max_points``, in ascending order."""
    pts = np.asarray(xy, dtype=float)
    if len(pts) == 0:
        return np.zeros(0, dtype=int)
    span = np.ptp(pts, axis=0).max()
    cells = np.round(pts / (resolution * (span if span > 0 else 1.0))).astype(np.int64)
    _, first = np.unique(cells, axis=0, return_index=True)
    if len(first) > max_points:
        first = np.random.default_rng(seed).choice(first, max_points, replace=False)
    return np.sort(first)


def marker_size_for(n_points: int) -> float:
    """Marker diameter in px for ``n_points`` distinct points: 10 for a handful, 2 for ~10,000."""
    return float(np.clip(16.0 * max(n_points, 1) ** -0.23, 2.0, 10.0))


def _scatter(xy: np.ndarray, colors, size: float, name: str, **kw) -> go.Scatter:
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


def _scatter3d(xyz: np.ndarray, colors, size: float, name: str, scene: str) -> go.Scatter3d:
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


def _triangle(state_labels: Sequence[str]) -> list[go.Scatter]:
    closed = np.vstack([_TRIANGLE, _TRIANGLE[:1]])
    edge = go.Scatter(
        x=closed[:, 0],
        y=closed[:, 1],
        mode="lines",
        line={"color": "#999", "width": 1},
        showlegend=False,
        hoverinfo="skip",
    )
    centre = _TRIANGLE.mean(0)
    out = centre + (_TRIANGLE - centre) * 1.13
    text = go.Scatter(
        x=out[:, 0],
        y=out[:, 1],
        mode="text",
        text=list(state_labels),
        textfont=_FONT,
        showlegend=False,
        hoverinfo="skip",
    )
    return [edge, text]


def _state_labels(n: int, state_labels: Sequence[str] | None) -> list[str]:
    if state_labels is None:
        return [f"state {i}" for i in range(n)]
    if len(state_labels) != n:
        raise BeliefLensError(f"state_labels has {len(state_labels)} names for {n} states")
    return [str(s) for s in state_labels]


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
    t = _as_points(true_beliefs)
    preds = {k: _as_points(v, f"predictions[{k!r}]") for k, v in predictions.items()}
    for k, p in preds.items():
        if p.shape != t.shape:
            raise BeliefLensError(
                f"true beliefs {t.shape} and predictions[{k!r}] {p.shape} differ in shape"
            )
    coords = belief_coordinates(t)
    colors = np.asarray(belief_colors(t))
    panels = [("Ground truth", t)] + [((titles or {}).get(k, k), p) for k, p in preds.items()]
    xy = [coords(p) for _, p in panels]
    shown = [display_points(c, max_points, seed) for c in xy]
    sizes = [marker_size_for(len(i)) for i in shown]
    n = len(panels)
    lo = np.min([c[i].min(0) for c, i in zip(xy, shown, strict=True)], axis=0)
    hi = np.max([c[i].max(0) for c, i in zip(xy, shown, strict=True)], axis=0)
    pad = 0.06 * (hi - lo).max()
    if coords.kind == "simplex":
        labels = _state_labels(3, state_labels)
        fig = make_subplots(rows=1, cols=n, subplot_titles=[p[0] for p in panels])
        for col, (c, idx) in enumerate(zip(xy, shown, strict=True), start=1):
            for tr in _triangle(labels):
                fig.add_trace(tr, row=1, col=col)
            fig.add_trace(
                _scatter(c[idx], colors[idx].tolist(), sizes[col - 1], panels[col - 1][0]), 1, col
            )
        lo, hi = np.minimum(lo, [-0.12, -0.1]), np.maximum(hi, [1.12, 0.98])
        for col in range(1, n + 1):
            fig.update_xaxes(range=[lo[0] - pad, hi[0] + pad], visible=False, row=1, col=col)
            fig.update_yaxes(
                range=[lo[1] - pad, hi[1] + pad],
                visible=False,
                scaleanchor=f"x{'' if col == 1 else col}",
                row=1,
                col=col,
            )
    else:
        specs = [[{"type": "scene"}] * n]
        fig = make_subplots(rows=1, cols=n, specs=specs, subplot_titles=[p[0] for p in panels])
        names = coords.labels()
        for col, (c, idx) in enumerate(zip(xy, shown, strict=True), start=1):
            scene = "scene" if col == 1 else f"scene{col}"
            fig.add_trace(
                _scatter3d(c[idx], colors[idx].tolist(), sizes[col - 1], panels[col - 1][0], scene)
            )
        axes = {
            f"{a}axis": {"range": [lo[i] - pad, hi[i] + pad], "title": {"text": names[i]}}
            for i, a in enumerate("xyz")
        }
        camera = {"eye": {"x": 1.75, "y": 1.75, "z": 1.25}}
        for col in range(1, n + 1):
            scene = "scene" if col == 1 else f"scene{col}"
            fig.update_layout({scene: {**axes, "aspectmode": "cube", "camera": camera}})
    fig.update_annotations(font=_FONT)
    fig.update_layout(
        title=title,
        template=_TEMPLATE,
        width=min(1150, 400 * n + 50),
        height=460,
        margin={"l": 10, "r": 40, "t": 70 if title else 45, "b": 10},
        font={"size": 13},
        modebar={"orientation": "v"},
    )
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
    t, p = _as_points(true_beliefs), _as_points(predicted_beliefs, "predicted_beliefs")
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
    b = _as_points(beliefs)
    coords = belief_coordinates(b, 2)
    xy = coords(b)
    idx = display_points(xy, max_points)
    colors = np.asarray(belief_colors(b) if colors is None else list(colors))
    size = marker_size_for(len(idx)) if marker_size is None else marker_size
    fig = go.Figure()
    if b.shape[1] == 3:
        fig.add_traces(_triangle(_state_labels(3, None)))
    fig.add_trace(_scatter(xy[idx], colors[idx].tolist(), size, "beliefs"))
    fig.update_layout(title=title, template=_TEMPLATE, width=520, height=480)
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
    t = _as_points(true_beliefs)
    coords = belief_coordinates(t, 2)
    colors = np.asarray(belief_colors(t))
    names = list(predictions)
    n_cols = min(n_cols, len(names))
    n_rows = math.ceil(len(names) / n_cols)
    sub = [f"{n}<br>{score_name} {scores[n]:.2e}" if scores and n in scores else n for n in names]
    fig = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=sub, vertical_spacing=0.3 / max(n_rows, 1)
    )
    for k, name in enumerate(names):
        row, col = divmod(k, n_cols)
        xy = coords(_as_points(predictions[name], name))
        idx = display_points(xy, max_points)
        if coords.kind == "simplex":
            fig.add_trace(_triangle(["", "", ""])[0], row=row + 1, col=col + 1)
        fig.add_trace(
            _scatter(xy[idx], colors[idx].tolist(), marker_size_for(len(idx)) * 0.8, name),
            row=row + 1,
            col=col + 1,
        )
    fig.update_annotations(font_size=12)
    fig.update_layout(
        title=title,
        template=_TEMPLATE,
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
        template=_TEMPLATE,
        width=900,
        height=380,
        yaxis_title=y_title,
        margin={"l": 60, "r": 10, "t": 40 if title else 20, "b": 120},
        legend={"orientation": "h", "y": 1.08},
    )
    fig.update_xaxes(tickangle=-35)
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
        template=_TEMPLATE,
        width=800,
        height=400,
        legend={"orientation": "h", "y": 1.1},
    )
    fig.update_yaxes(type="log")
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
        colour_by = _as_points(beliefs)[:, perm]
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
    fig.add_trace(_scatter(pts, colors, marker_size, "activations"), row=1, col=1)
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
        for trace in _triangle([f"vertex {k}" for k in range(3)]):
            fig.add_trace(trace, row=1, col=2)
        xy = pick(coords) @ _TRIANGLE
    else:
        xy = project_beliefs(pick(coords))
    fig.add_trace(_scatter(xy, colors, marker_size, "coordinates"), row=1, col=2)
    fig.update_layout(title=title, template=_TEMPLATE, width=1000, height=480)
    for col in (1, 2):
        fig.update_xaxes(visible=False, row=1, col=col)
        fig.update_yaxes(visible=False, scaleanchor="x" if col == 1 else "x2", row=1, col=col)
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


# ----------------------------------------------------------------------------- factored geometry


def factored_dims_figure(over_training: Any, *, title: str | None = None) -> go.Figure:
    """Effective dimension (PCs for 95% and 99% of the variance) over training, with the
    factored and joint hypotheses' predicted dimensions drawn as lines.

    Takes a :class:`belief_lens.factored.GeometryOverTraining`.
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
