"""Plotly figures of belief geometry, probe fits and training. Functions take results and return
figures; they never run models or show anything.

- :mod:`~belief_lens.plotting.coordinates`: where beliefs are drawn (the simplex, or the true
  beliefs' principal axes), their colours, and which points a figure draws;
- :mod:`~belief_lens.plotting.traces`: the template, marker traces and the labelled triangle;
- :mod:`~belief_lens.plotting.geometry`: ground truth beside probe outputs, the simplex, one
  panel per hook, a simplex found without labels;
- :mod:`~belief_lens.plotting.attention`: attention against distance, OV vectors on the simplex,
  excess loss by head count;
- :mod:`~belief_lens.plotting.curves`: probe scores per hook, training curves, patching
  recovery, effective dimension over training.

Figures use SVG traces (``Scatter``) and, for 3D, ``Scatter3d``; never ``Scattergl``, whose
software fallback is deprecated in headless Chromium. Points shown are deduplicated and, above a
budget, subsampled with a seed: a figure shows the geometry, the numbers come from all points.
"""

from belief_lens.plotting.attention import (
    attention_distance_figure,
    head_count_figure,
    ov_simplex_figure,
)
from belief_lens.plotting.coordinates import (
    BeliefCoordinates,
    belief_colors,
    belief_coordinates,
    display_points,
    marker_size_for,
    project_beliefs,
    simplex_projection,
)
from belief_lens.plotting.curves import (
    factored_dims_figure,
    patching_figure,
    position_error_figure,
    probe_scores_figure,
    training_curve_figure,
)
from belief_lens.plotting.geometry import (
    compare_figure,
    discovery_figure,
    geometry_figure,
    layer_grid_figure,
    simplex_figure,
)

__all__ = [
    "attention_distance_figure",
    "head_count_figure",
    "ov_simplex_figure",
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
    "position_error_figure",
    "probe_scores_figure",
    "project_beliefs",
    "simplex_figure",
    "simplex_projection",
    "training_curve_figure",
]
