"""Where beliefs are drawn: the simplex triangle for three states, otherwise the principal axes
of the true beliefs, shared by ground truth and every probe; their colours; and which points a
figure draws (deduplicated, then subsampled with a seed: a figure shows the geometry, the numbers
come from all points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from belief_lens.errors import BeliefLensError

__all__ = [
    "TRIANGLE",
    "BeliefCoordinates",
    "as_points",
    "belief_colors",
    "belief_coordinates",
    "display_points",
    "marker_size_for",
    "project_beliefs",
    "simplex_projection",
]

#: The simplex's vertices in the plane: an equilateral triangle with unit sides.
TRIANGLE = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])


def as_points(beliefs, what: str = "beliefs") -> np.ndarray:
    """Flatten ``[..., S]`` tensors or arrays to a float64 ``[n, S]`` numpy array."""
    arr = np.asarray(beliefs.detach().cpu() if hasattr(beliefs, "detach") else beliefs, dtype=float)
    if arr.ndim < 1 or arr.shape[-1] < 2:
        raise BeliefLensError(f"{what} must have shape [..., n_states >= 2], got {arr.shape}")
    return arr.reshape(-1, arr.shape[-1])


def simplex_projection(beliefs) -> np.ndarray:
    """Map 3-state beliefs to 2-D points of the equilateral triangle (vertices = pure states)."""
    b = as_points(beliefs)
    if b.shape[1] != 3:
        raise BeliefLensError(f"simplex_projection needs 3 states, got {b.shape[1]}")
    return b @ TRIANGLE


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
        b = as_points(beliefs)
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
    t = as_points(true_beliefs)
    if t.shape[1] == 3 and n_components in (None, 2):
        return BeliefCoordinates(np.zeros(3), TRIANGLE.copy(), (math.nan, math.nan), "simplex")
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
    b = as_points(beliefs)
    if b.shape[1] == 3 and n_components == 2:
        return simplex_projection(b)
    ref = b if reference is None else as_points(reference, "reference")
    if ref.shape[1] != b.shape[1]:
        raise BeliefLensError(f"reference has {ref.shape[1]} states, beliefs {b.shape[1]}")
    return belief_coordinates(ref, n_components)(b)


def belief_colors(beliefs, reference=None) -> list[str]:
    """One CSS colour per belief: RGB = the belief itself for 3 states; otherwise its first three
    principal coordinates of ``reference`` (default: the beliefs), rescaled to [0, 1]."""
    b = as_points(beliefs)
    if b.shape[1] != 3:
        ref = b if reference is None else as_points(reference, "reference")
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
    cells -= cells.min(0)
    # one integer per cell, in the rows' lexicographic order (a 1-D unique is many times faster)
    keys = np.ravel_multi_index(cells.T, tuple(cells.max(0) + 1))
    _, first = np.unique(keys, return_index=True)
    if len(first) > max_points:
        first = np.random.default_rng(seed).choice(first, max_points, replace=False)
    return np.sort(first)


def marker_size_for(n_points: int) -> float:
    """Marker diameter in px for ``n_points`` distinct points: 10 for a handful, 2 for ~10,000."""
    return float(np.clip(16.0 * max(n_points, 1) ** -0.23, 2.0, 10.0))
