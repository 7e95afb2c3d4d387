import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from belief_lens.beliefs import enumerate_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.plotting import (
    belief_colors,
    belief_coordinates,
    compare_figure,
    display_points,
    geometry_figure,
    layer_grid_figure,
    marker_size_for,
    probe_scores_figure,
    project_beliefs,
    simplex_figure,
    simplex_projection,
    training_curve_figure,
)
from belief_lens.processes import mess3, rrxor


def test_simplex_projection_vertices_and_centre():
    pts = simplex_projection(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1 / 3] * 3]))
    np.testing.assert_allclose(pts[:3], [[0, 0], [1, 0], [0.5, math.sqrt(3) / 2]])
    np.testing.assert_allclose(pts[3], [0.5, math.sqrt(3) / 6])
    with pytest.raises(BeliefLensError, match="needs 3 states, got 5"):
        simplex_projection(np.ones((2, 5)) / 5)


def test_colors_are_rgb_of_belief():
    assert belief_colors(np.array([[1.0, 0, 0], [0, 0.5, 0.5]])) == [
        "rgb(255,0,0)",
        "rgb(0,128,128)",
    ]
    assert len(belief_colors(np.random.default_rng(0).dirichlet(np.ones(5), 7))) == 7


def test_project_many_states_uses_reference_pcs():
    b = enumerate_sequences(rrxor(), 6).beliefs.reshape(-1, 5)
    xy = project_beliefs(b)
    assert xy.shape == (len(b), 2)
    # Projecting the reference itself and a copy through the same reference agree.
    np.testing.assert_allclose(project_beliefs(b.clone(), reference=b), xy)


def test_figures_have_expected_traces():
    b = enumerate_sequences(mess3(), 4).beliefs
    fig = simplex_figure(b, title="Mess3")
    assert isinstance(fig, go.Figure)
    # 120 distinct beliefs; those closer than the display resolution are drawn once.
    drawn = np.stack([fig.data[-1].x, fig.data[-1].y], 1)
    assert 60 <= len(np.unique(drawn, axis=0)) == len(drawn) <= 120
    assert fig.data[1].text == ("state 0", "state 1", "state 2")  # labelled vertices
    cmp = compare_figure(b, b.clone())
    points = [t for t in cmp.data if t.mode == "markers"]
    assert len(points) == 2 and list(points[0].marker.color) == list(points[1].marker.color)
    grid = layer_grid_figure(b, {"a": b, "b": b * 0.9}, {"a": 1e-4})
    assert "MSE 1.00e-04" in grid.layout.annotations[0].text
    with pytest.raises(BeliefLensError, match="differ in shape"):
        compare_figure(b, b[:1])
    with pytest.raises(BeliefLensError, match="predictions is empty"):
        layer_grid_figure(b, {})


def test_training_curve_is_ratio_to_optimal():
    fig = training_curve_figure(
        [0, 10, 20], [1.6, 1.2, 0.8], 0.8, eval_tokens=[20], eval_loss=[0.88]
    )
    np.testing.assert_allclose(fig.data[0].y, [2.0, 1.5, 1.0])
    assert fig.data[1].y[0] == pytest.approx(1.1)
    with pytest.raises(BeliefLensError, match="tokens has 2 entries but loss has 3"):
        training_curve_figure([0, 1], [1, 2, 3], 0.8)


def test_no_webgl_traces():
    b = enumerate_sequences(rrxor(), 5).beliefs
    figs = [
        geometry_figure(b, {"probe": b}),
        layer_grid_figure(b, {"a": b}),
        simplex_figure(enumerate_sequences(mess3(), 3).beliefs),
        probe_scores_figure(["a", "b"], {"run": [0.5, 0.9]}),
    ]
    for fig in figs:
        assert all(t.type in ("scatter", "scatter3d") for t in fig.data)


def test_rrxor_geometry_is_3d_pca_with_shared_axes():
    b = enumerate_sequences(rrxor(), 6).beliefs.reshape(-1, 5).numpy()
    pred = b + 0.02 * np.random.default_rng(0).standard_normal(b.shape)
    fig = geometry_figure(b, {"probe": pred}, max_points=100_000)
    truth, probe = fig.data
    assert truth.type == probe.type == "scatter3d"
    assert (truth.scene, probe.scene) == ("scene", "scene2")
    for axis in ("xaxis", "yaxis", "zaxis"):
        assert fig.layout.scene[axis].range == fig.layout.scene2[axis].range
        assert fig.layout.scene[axis].title.text == fig.layout.scene2[axis].title.text
    assert fig.layout.scene.xaxis.title.text.startswith("PC1 (")
    # Reference axes: the top three eigenvectors of the true beliefs' covariance (numpy eigh).
    mean = b.mean(0)
    _, vecs = np.linalg.eigh(np.cov((b - mean).T))
    axes = vecs[:, ::-1][:, :3]
    coords = belief_coordinates(b)
    np.testing.assert_allclose(np.abs(coords.axes.T @ axes), np.eye(3), atol=1e-8)
    # Every drawn probe point is a probe output in the truth's axes (up to each axis's sign).
    want = np.abs((pred - mean) @ axes)
    got = np.abs(np.stack([probe.x, probe.y, probe.z], 1).astype(float))
    nearest = np.abs(got[:, None, :] - want[None, :, :]).max(-1).min(1)
    assert nearest.max() < 1e-3


def test_identical_points_share_one_colour_in_both_panels():
    b = enumerate_sequences(rrxor(), 5).beliefs.reshape(-1, 5).numpy()
    fig = geometry_figure(b, {"probe": b.copy()}, max_points=100_000)
    truth, probe = fig.data
    assert list(truth.x) == list(probe.x) and list(truth.marker.color) == list(probe.marker.color)


def test_display_points_deduplicate_and_subsample():
    xy = np.repeat(np.random.default_rng(0).random((500, 2)), 7, axis=0)
    idx = display_points(xy, max_points=10_000)
    assert len(idx) == 500 and len(np.unique(xy[idx], axis=0)) == 500
    assert len(display_points(xy, max_points=50, seed=1)) == 50
    # one point per cell, the first of each, as a row-wise unique of the cells gives it, in 2-D
    # and 3-D, with negative coordinates and a subsample drawn from the same candidates
    for pts in (
        np.random.default_rng(1).normal(size=(3000, 2)),
        np.random.default_rng(2).normal(size=(3000, 3)),
    ):
        cells = np.round(pts / (0.05 * np.ptp(pts, axis=0).max())).astype(np.int64)
        _, first = np.unique(cells, axis=0, return_index=True)
        np.testing.assert_array_equal(display_points(pts, 10**6, resolution=0.05), np.sort(first))
        sub = np.sort(np.random.default_rng(3).choice(first, 100, replace=False))
        np.testing.assert_array_equal(display_points(pts, 100, seed=3, resolution=0.05), sub)
    assert marker_size_for(20) > marker_size_for(500) > marker_size_for(20_000) >= 2
