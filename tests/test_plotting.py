import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from belief_lens.beliefs import enumerate_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.plotting import (
    belief_colors,
    compare_figure,
    layer_grid_figure,
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
    assert len(fig.data[-1].x) == b.shape[0] * b.shape[1]
    cmp = compare_figure(b, b + 0.01)
    assert len(cmp.data) == 4 and cmp.data[1].marker.color == cmp.data[3].marker.color
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
