"""Finding a belief simplex in activations without belief labels.

Beliefs over ``k`` hidden states live in a ``(k - 1)``-simplex, and a model that represents them
linearly writes an affine image of that simplex into its residual stream. ``discover_simplex``
looks for that image with no labels: principal components down to ``k - 1`` dimensions, then the
simplex whose vertices best bound the points. Each point's barycentric coordinates in the found
simplex are its label-free belief estimate; ``Discovery.score`` compares them with true beliefs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.metrics import regression_metrics

__all__ = ["Discovery", "DiscoveryScore", "choose_n_vertices", "discover_simplex"]


@dataclass(frozen=True)
class DiscoveryScore:
    """Barycentric coordinates against true beliefs, after the best vertex permutation.

    Attributes:
        r2: coefficient of determination averaged uniformly over belief coordinates.
        mse: mean squared error over all entries.
        permutation: ``permutation[j]`` is the belief state matched to vertex ``j``.
    """

    r2: float
    mse: float
    permutation: tuple[int, ...]


@dataclass(frozen=True)
class Discovery:
    """A simplex found in activations, and each point's barycentric coordinates in it.

    Attributes:
        coords: ``[..., k]`` barycentric coordinates of the input points (rows sum to 1; points
            outside the simplex have negative entries).
        vertices: ``[k, d]`` the simplex vertices in activation space.
        mean: ``[d]`` the activations' mean.
        components: ``[k - 1, d]`` orthonormal principal directions the simplex lives in.
        explained_variance_ratio: variance fraction of each leading principal component (as many
            as were considered when choosing ``k``).
        n_vertices: ``k``.
        chosen_by: ``"given"`` or ``"eigengap"`` (how ``k`` was set).
        outside: the tolerated fraction of points outside each facet the fit was run with.
    """

    coords: Float[Tensor, "... k"]
    vertices: Float[Tensor, "k d"]
    mean: Float[Tensor, " d"]
    components: Float[Tensor, "r d"]
    explained_variance_ratio: Float[Tensor, " m"]
    n_vertices: int
    chosen_by: str
    outside: float

    def transform(self, acts: Any) -> Float[Tensor, "... k"]:
        """Barycentric coordinates of new activations ``[..., d]`` in the found simplex."""
        X, lead = _as_rows(acts, "acts")
        if X.shape[1] != self.mean.shape[0]:
            raise BeliefLensError(
                f"acts have d={X.shape[1]} features but the simplex was found in "
                f"d={self.mean.shape[0]}"
            )
        Z = (X - self.mean) @ self.components.T
        V = (self.vertices - self.mean) @ self.components.T
        return _barycentric(Z, V).reshape(*lead, self.n_vertices)

    def score(self, beliefs: Any) -> DiscoveryScore:
        """R^2 and MSE of ``coords`` against true ``beliefs [..., k]``, with vertices matched to
        belief states by the permutation that maximises R^2 (an assignment problem, solved
        exactly); nothing is refitted."""
        Y, _ = _as_rows(beliefs, "beliefs")
        C = self.coords.reshape(-1, self.n_vertices)
        if Y.shape != C.shape:
            raise BeliefLensError(
                f"beliefs have shape {tuple(Y.shape)} (flattened) but the discovery holds "
                f"{tuple(C.shape)} coordinates; give one belief per point with "
                f"{self.n_vertices} states"
            )
        ss_tot = ((Y - Y.mean(0)) ** 2).sum(0)  # [S]
        # ss_res[j, i]: vertex j's coordinate against belief state i
        ss_res = ((C[:, :, None] - Y[:, None, :]) ** 2).sum(0)
        safe = torch.where(ss_tot > 0, ss_tot, torch.ones_like(ss_tot))
        cost = (ss_res / safe).numpy()
        rows, cols = linear_sum_assignment(cost)
        perm = tuple(int(c) for c in cols[np.argsort(rows)])
        res = ss_res[torch.arange(self.n_vertices), torch.tensor(perm)]
        m = regression_metrics(res, ss_tot[list(perm)], Y.shape[0])
        return DiscoveryScore(r2=m["r2"], mse=m["mse"], permutation=perm)


def _as_rows(x: Any, name: str) -> tuple[Tensor, tuple[int, ...]]:
    t = torch.as_tensor(x.detach().cpu() if isinstance(x, Tensor) else np.asarray(x))
    if t.is_complex() or not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
        raise BeliefLensError(f"{name} must be real numbers, got dtype {t.dtype}")
    if t.ndim < 2:
        raise BeliefLensError(
            f"{name} must have shape [..., d] with >= 2 dims, got {tuple(t.shape)}"
        )
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise BeliefLensError(f"{name} contain NaN or infinite values")
    return t.reshape(-1, t.shape[-1]), tuple(t.shape[:-1])


def _barycentric(Z: Tensor, V: Tensor) -> Tensor:
    """Coordinates ``c`` with ``c @ V = z`` and ``c.sum() = 1`` for each row ``z`` of ``Z``."""
    M = torch.cat([V, V.new_ones(V.shape[0], 1)], 1)  # [k, k]
    A = torch.cat([Z, Z.new_ones(Z.shape[0], 1)], 1)
    return torch.linalg.solve(M.T, A.T).T


def choose_n_vertices(explained_variance_ratio: Any) -> int:
    """``k`` from the largest eigengap: the ``r`` maximising ``ev[r-1] / ev[r]``, plus one.

    A ``(k - 1)``-simplex written affinely into activations adds ``k - 1`` strong directions;
    after them the spectrum drops to the level of whatever else the layer holds.
    """
    ev = torch.as_tensor(explained_variance_ratio, dtype=torch.float64)
    if ev.ndim != 1 or len(ev) < 2:
        raise BeliefLensError(f"need >= 2 explained-variance ratios, got shape {tuple(ev.shape)}")
    ratios = ev[:-1] / ev[1:].clamp_min(torch.finfo(torch.float64).tiny)
    return int(torch.argmax(ratios)) + 2


def _spa(Z: Tensor, k: int) -> Tensor:
    """Successive projection algorithm on the lifted points ``[z, 1]``: the vertex indices."""
    R = torch.cat([Z, Z.new_ones(Z.shape[0], 1)], 1).clone()
    idx = []
    for _ in range(k):
        j = int((R * R).sum(1).argmax())
        idx.append(j)
        u = R[j] / R[j].norm()
        R -= torch.outer(R @ u, u)
    return Z[idx]


def _refine(Z: Tensor, V0: Tensor, weight: float, max_iter: int) -> Tensor:
    """Minimise ``log vol(V) + weight * mean(sum(relu(-coords)))`` from ``V0`` (SISAL's
    objective, Bioucas-Dias 2009): the smallest simplex that a few points may leave."""
    A = torch.cat([Z, Z.new_ones(Z.shape[0], 1)], 1)
    V = V0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [V], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_change=1e-12
    )
    ones = V0.new_ones(V0.shape[0], 1)

    def closure() -> Tensor:
        opt.zero_grad()
        M = torch.cat([V, ones], 1)
        C = torch.linalg.solve(M.T, A.T).T
        loss = torch.linalg.slogdet(M)[1] + weight * torch.relu(-C).sum(1).mean()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return V.detach()


def discover_simplex(
    acts: Float[Tensor, "... d"] | np.ndarray,
    n_vertices: int | None = None,
    *,
    outside: float = 0.04,
    max_vertices: int = 10,
    fit_points: int = 20_000,
    seed: int = 0,
) -> Discovery:
    """Find a ``(k - 1)``-simplex in activations ``[..., d]`` without labels.

    Method, and why:

    1. **Dimension.** Principal components to ``k - 1`` dimensions. Unless ``n_vertices`` is
       given, ``k`` comes from the largest gap in the explained-variance spectrum
       (:func:`choose_n_vertices`, over at most ``max_vertices``), the elbow a linearly written
       simplex leaves.
    2. **Start.** The successive projection algorithm (Gillis & Vavasis 2014) on the points lifted
       to ``[z, 1]`` picks ``k`` extreme points; it is deterministic, needs no tuning, and
       provably finds the vertices when points reach them. But one outlier becomes a vertex.
    3. **Refine.** A minimum-volume simplex with a hinge penalty on negative barycentric
       coordinates (SISAL's objective), from the SPA start. Enclosing every point (exact MVES)
       lets noise and outliers set the vertices; the penalty instead lets a fraction ``outside``
       of points lie beyond each facet (at the optimum that fraction equals ``(k - 1) /
       weight``), so the facets follow the bulk of the data. Archetypal analysis was not chosen:
       its vertices are convex combinations of data, so a cloud that does not reach its
       corners gives a shrunken simplex.

    Both steps are invariant to affine changes of the reduced coordinates, so no whitening is
    needed. The refinement runs on ``fit_points`` rows sampled with ``seed``; coordinates are
    computed for every row. Raise ``outside`` for noisy clouds with much mass near their faces
    (Mess3's beliefs crowd the edges); lower it for clouds that thin out toward their faces.
    """
    X, lead = _as_rows(acts, "acts")
    n, d = X.shape
    if n_vertices is not None and (
        isinstance(n_vertices, bool) or not isinstance(n_vertices, int) or n_vertices < 2
    ):
        raise BeliefLensError(f"n_vertices must be an integer >= 2 or None, got {n_vertices!r}")
    if isinstance(max_vertices, bool) or not isinstance(max_vertices, int) or max_vertices < 3:
        raise BeliefLensError(f"max_vertices must be an integer >= 3, got {max_vertices!r}")
    if not (isinstance(outside, (int, float)) and 0 < outside < 0.5):
        raise BeliefLensError(f"outside must be a fraction in (0, 0.5), got {outside!r}")
    if isinstance(fit_points, bool) or not isinstance(fit_points, int) or fit_points < 1:
        raise BeliefLensError(f"fit_points must be a positive integer, got {fit_points!r}")
    k_max = n_vertices if n_vertices is not None else max_vertices
    if k_max - 1 > min(n - 1, d):
        raise BeliefLensError(
            f"a simplex with {k_max} vertices needs more than {k_max - 1} points and features; "
            f"acts have {n} points of d={d}"
        )
    mean = X.mean(0)
    Xc = X - mean
    eigval, eigvec = torch.linalg.eigh(Xc.T @ Xc)  # d x d: cheap for any n
    order = torch.argsort(eigval, descending=True)
    eigval, eigvec = eigval[order].clamp_min(0), eigvec[:, order]
    total = float(eigval.sum())
    if total <= 0:
        raise BeliefLensError("acts have zero variance: every point is the same")
    ev = eigval[: max(k_max, 3)] / total
    k = n_vertices if n_vertices is not None else choose_n_vertices(ev[:max_vertices])
    comps = eigvec[:, : k - 1].T.contiguous()  # [k-1, d]
    signs = torch.sign(comps[torch.arange(k - 1), comps.abs().argmax(1)])
    comps = comps * torch.where(signs == 0, 1.0, signs)[:, None]
    Z = Xc @ comps.T
    gen = torch.Generator().manual_seed(seed)
    fit = Z if n <= fit_points else Z[torch.randperm(n, generator=gen)[:fit_points]]
    V = _refine(fit, _spa(fit, k), weight=(k - 1) / outside, max_iter=500)
    coords = _barycentric(Z, V)
    return Discovery(
        coords=coords.reshape(*lead, k),
        vertices=mean + V @ comps,
        mean=mean,
        components=comps,
        explained_variance_ratio=ev[:max_vertices],
        n_vertices=k,
        chosen_by="given" if n_vertices is not None else "eigengap",
        outside=float(outside),
    )
