"""Plotly figures of belief geometry, probe fits and training. Functions return figures; they never
run models or show anything."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from belief_lens.errors import BeliefLensError

__all__ = [
    "belief_colors",
    "compare_figure",
    "discovery_figure",
    "layer_grid_figure",
    "patching_figure",
    "project_beliefs",
    "simplex_figure",
    "simplex_projection",
    "training_curve_figure",
]

_TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])


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


def project_beliefs(beliefs, reference=None, n_components: int = 2) -> np.ndarray:
    """2-D coordinates of beliefs: the simplex triangle for 3 states; otherwise the first principal
    components of ``reference`` (default: the beliefs themselves), so that ground truth and probe
    output share one projection."""
    b = _as_points(beliefs)
    if b.shape[1] == 3:
        return simplex_projection(b)
    ref = b if reference is None else _as_points(reference, "reference")
    if ref.shape[1] != b.shape[1]:
        raise BeliefLensError(f"reference has {ref.shape[1]} states, beliefs {b.shape[1]}")
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    out = (b - mean) @ vt[:n_components].T
    if out.shape[1] < n_components:  # fewer free directions than components asked for
        out = np.pad(out, ((0, 0), (0, n_components - out.shape[1])))
    return out


def belief_colors(beliefs) -> list[str]:
    """One CSS colour per belief: RGB = the belief itself for 3 states, else its first 3 PCs."""
    b = _as_points(beliefs)
    if b.shape[1] != 3:
        pcs = project_beliefs(b, n_components=3)
        lo, hi = pcs.min(0), pcs.max(0)
        b = (pcs - lo) / np.where(hi > lo, hi - lo, 1.0)
    rgb = np.clip(np.round(b * 255), 0, 255).astype(int)
    return [f"rgb({r},{g},{b_})" for r, g, b_ in rgb]


def _scatter(xy: np.ndarray, colors, size: float, name: str) -> go.Scattergl:
    return go.Scattergl(
        x=xy[:, 0],
        y=xy[:, 1],
        mode="markers",
        marker={"color": colors, "size": size, "line": {"width": 0}},
        name=name,
        showlegend=False,
    )


def _triangle() -> go.Scatter:
    closed = np.vstack([_TRIANGLE, _TRIANGLE[:1]])
    return go.Scatter(
        x=closed[:, 0], y=closed[:, 1], mode="lines", line={"color": "lightgray"}, showlegend=False
    )


def _square_axes(fig: go.Figure, n_panels: int) -> None:
    for i in range(1, n_panels + 1):
        suffix = "" if i == 1 else str(i)
        fig.update_layout(
            {
                f"xaxis{suffix}": {"visible": False},
                f"yaxis{suffix}": {
                    "visible": False,
                    "scaleanchor": f"x{suffix}",
                    "scaleratio": 1,
                },
            }
        )


def simplex_figure(
    beliefs, colors=None, *, title: str | None = None, marker_size: float = 2.0
) -> go.Figure:
    """Beliefs as points on the simplex (3 states) or their first two principal components."""
    b = _as_points(beliefs)
    fig = go.Figure()
    if b.shape[1] == 3:
        fig.add_trace(_triangle())
    colors = belief_colors(b) if colors is None else colors
    fig.add_trace(_scatter(project_beliefs(b), colors, marker_size, "beliefs"))
    fig.update_layout(title=title, template="plotly_white", width=520, height=480)
    _square_axes(fig, 1)
    return fig


def compare_figure(
    true_beliefs,
    predicted_beliefs,
    *,
    titles: Sequence[str] = ("Ground truth", "Probe output"),
    title: str | None = None,
    marker_size: float = 2.0,
) -> go.Figure:
    """Ground truth and probe output side by side, every point coloured by its true belief."""
    t, p = _as_points(true_beliefs), _as_points(predicted_beliefs, "predicted_beliefs")
    if t.shape != p.shape:
        raise BeliefLensError(f"true beliefs {t.shape} and predictions {p.shape} differ in shape")
    colors = belief_colors(t)
    fig = make_subplots(rows=1, cols=2, subplot_titles=list(titles))
    for col, pts in ((1, t), (2, p)):
        if t.shape[1] == 3:
            fig.add_trace(_triangle(), row=1, col=col)
        fig.add_trace(
            _scatter(project_beliefs(pts, reference=t), colors, marker_size, titles[col - 1]),
            row=1,
            col=col,
        )
    fig.update_layout(title=title, template="plotly_white", width=1000, height=480)
    _square_axes(fig, 2)
    return fig


def layer_grid_figure(
    true_beliefs,
    predictions: Mapping[str, object],
    scores: Mapping[str, float] | None = None,
    *,
    n_cols: int = 4,
    marker_size: float = 1.5,
    title: str | None = None,
) -> go.Figure:
    """One panel per hook: its probe output, coloured by true belief, titled with its MSE."""
    if not predictions:
        raise BeliefLensError("predictions is empty: give at least one hook's probe output")
    t = _as_points(true_beliefs)
    colors = belief_colors(t)
    names = list(predictions)
    n_cols = min(n_cols, len(names))
    n_rows = math.ceil(len(names) / n_cols)
    sub = [f"{n}<br>MSE {scores[n]:.2e}" if scores and n in scores else n for n in names]
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=sub)
    for k, name in enumerate(names):
        row, col = divmod(k, n_cols)
        pts = _as_points(predictions[name], name)
        if t.shape[1] == 3:
            fig.add_trace(_triangle(), row=row + 1, col=col + 1)
        fig.add_trace(
            _scatter(project_beliefs(pts, reference=t), colors, marker_size, name),
            row=row + 1,
            col=col + 1,
        )
    fig.update_annotations(font_size=10)
    fig.update_layout(
        title=title, template="plotly_white", width=260 * n_cols, height=280 * n_rows + 60
    )
    _square_axes(fig, n_rows * n_cols)
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
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="optimal", line_color="gray")
    fig.update_layout(
        title=title,
        xaxis_title="tokens seen",
        yaxis_title="loss / optimal loss",
        template="plotly_white",
        width=700,
        height=420,
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
        fig.add_trace(_triangle(), row=1, col=2)
        xy = pick(coords) @ _TRIANGLE
    else:
        xy = project_beliefs(pick(coords))
    fig.add_trace(_scatter(xy, colors, marker_size, "coordinates"), row=1, col=2)
    fig.update_layout(title=title, template="plotly_white", width=1000, height=480)
    _square_axes(fig, 2)
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
