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
from belief_lens.probing.estimator import AffineProbe

__all__ = [
    "FOUND_R2",
    "Discovery",
    "DiscoveryScore",
    "DiscoveryVerdict",
    "choose_n_vertices",
    "discover_simplex",
    "judge_discovery",
    "noise_floor",
]


#: Eigenvalues below this fraction of the largest are noise whatever the data's precision.
RELATIVE_FLOOR = 1e-6
#: ``found`` needs the matched barycentric coordinates to reach this R^2 against the beliefs.
FOUND_R2 = 0.9


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
class DiscoveryVerdict:
    """Whether a found simplex is the belief simplex, against its baselines.

    Attributes:
        found: the criterion below holds.
        criterion: the rule, in words, with its thresholds.
        reason: why ``found`` is what it is, with the numbers.
        n_vertices: the found simplex's vertex count ``k``; n_states: the process's ``S``.
        r2, mse: the simplex's barycentric coordinates against the true beliefs, vertices matched
            and nothing refitted (None when ``k != S``: the coordinates cannot be beliefs).
        r2_pcs: the best affine map from the same ``k - 1`` principal components to the beliefs,
            fitted with the labels (a ceiling for any simplex in that subspace).
        r2_random: the best affine map from ``k - 1`` random directions (chance; mean over
            ``n_random`` draws, with ``r2_random_se`` its standard error).
        explained_variance: the fraction of the activations' variance in the simplex's subspace.
    """

    found: bool
    criterion: str
    reason: str
    n_vertices: int
    n_states: int
    r2: float | None
    mse: float | None
    r2_pcs: float
    r2_random: float
    r2_random_se: float
    explained_variance: float

    def to_dict(self) -> dict[str, Any]:
        """The verdict as JSON-ready values."""
        return dict(self.__dict__)

    def summary(self) -> str:
        """The verdict in words, with the score and its baselines."""
        head = "simplex found" if self.found else "no simplex found"
        score = f"R^2 {self.r2:.3f} against the true beliefs, " if self.r2 is not None else ""
        return (
            f"{head}: {self.n_vertices} vertices for {self.n_states} states; {score}baselines: "
            f"the same {self.n_vertices - 1} principal components with a fitted affine map "
            f"{self.r2_pcs:.3f}, {self.n_vertices - 1} random directions {self.r2_random:.3f} "
            f"± {self.r2_random_se:.3f}; explained variance {self.explained_variance:.1%}. "
            f"{self.reason}"
        )


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
        chosen_by: ``"given"`` or ``"eigengap"`` (how ``k`` was set: the spectrum's count above
            its noise floor, else its largest gap above it).
        outside: the tolerated fraction of points outside each facet the fit was run with.
        noise_floor: eigenvalues below this fraction of the largest were taken as noise.
    """

    coords: Float[Tensor, "... k"]
    vertices: Float[Tensor, "k d"]
    mean: Float[Tensor, " d"]
    components: Float[Tensor, "r d"]
    explained_variance_ratio: Float[Tensor, " m"]
    n_vertices: int
    chosen_by: str
    outside: float
    noise_floor: float = RELATIVE_FLOOR

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


def _precision(x: Any) -> torch.dtype:
    """The floating dtype whose rounding bounds ``x``'s precision (float64 for integers)."""
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype if dtype.is_floating_point else torch.float64
    try:
        return (
            {2: torch.float16, 4: torch.float32}.get(np.dtype(dtype).itemsize, torch.float64)
            if np.dtype(dtype).kind == "f"
            else torch.float64
        )
    except TypeError:
        return torch.float64


def _barycentric(Z: Tensor, V: Tensor) -> Tensor:
    """Coordinates ``c`` with ``c @ V = z`` and ``c.sum() = 1`` for each row ``z`` of ``Z``."""
    M = torch.cat([V, V.new_ones(V.shape[0], 1)], 1)  # [k, k]
    A = torch.cat([Z, Z.new_ones(Z.shape[0], 1)], 1)
    return torch.linalg.solve(M.T, A.T).T


def choose_n_vertices(explained_variance_ratio: Any, floor: float = RELATIVE_FLOOR) -> int:
    """``k`` from the spectrum: the number of eigenvalues above a noise floor, plus one, where the
    spectrum falls under it; else the largest eigengap (``r`` maximising ``ev[r-1] / ev[r]``),
    plus one.

    A ``(k - 1)``-simplex written affinely into activations adds ``k - 1`` strong directions;
    after them the spectrum drops to the level of whatever else the layer holds, or, for an
    exactly planted simplex, to rounding noise. Gaps below ``floor * ev[0]`` are between noise
    and noise (or a clamped zero) and are never chosen.
    """
    ev = torch.as_tensor(np.asarray(explained_variance_ratio, dtype=np.float64))
    if ev.ndim != 1 or len(ev) < 2:
        raise BeliefLensError(f"need >= 2 explained-variance ratios, got shape {tuple(ev.shape)}")
    if not bool(torch.isfinite(ev).all()) or bool((ev < 0).any()):
        raise BeliefLensError(
            f"explained-variance ratios must be finite and >= 0, got {ev.tolist()}"
        )
    if bool((ev[1:] > ev[:-1]).any()):
        raise BeliefLensError(
            f"explained-variance ratios must be non-increasing, got {ev.tolist()}"
        )
    if float(ev[0]) <= 0:
        raise BeliefLensError("explained-variance ratios are all zero: the points do not vary")
    signal = int((ev > floor * ev[0]).sum())
    if signal < len(ev):
        return max(signal, 1) + 1
    ratios = ev[:-1] / ev[1:]
    return int(torch.argmax(ratios)) + 2


def noise_floor(X: Tensor, dtype: torch.dtype, top_eigenvalue: float) -> float:
    """The fraction of the top eigenvalue below which an eigenvalue of ``Xc.T @ Xc`` is noise:
    rounding the ``[n, d]`` points to ``dtype`` (their precision) and the float64 eigensolver's
    own error, with a margin of 100, and never below :data:`RELATIVE_FLOOR`."""
    eps_in = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    n, d = X.shape
    rounding = n * (eps_in * float(X.abs().max())) ** 2
    solver = d * torch.finfo(torch.float64).eps * top_eigenvalue
    return max(RELATIVE_FLOOR, 100 * (rounding + solver) / max(top_eigenvalue, 1e-300))


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


def _check_discover_args(n_vertices: Any, max_vertices: Any, outside: Any, fit_points: Any) -> None:
    """Refuse bad ``discover_simplex`` options before any work."""
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
       given, ``k`` comes from the explained-variance spectrum (:func:`choose_n_vertices`, over
       at most ``max_vertices``): the count of eigenvalues above a noise floor set by the data's
       precision (:func:`noise_floor`) where the spectrum falls under it, else its largest gap,
       the elbow a linearly written simplex leaves.
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
    in_dtype = _precision(acts)
    X, lead = _as_rows(acts, "acts")
    n, d = X.shape
    _check_discover_args(n_vertices, max_vertices, outside, fit_points)
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
    floor = noise_floor(X, in_dtype, float(eigval[0]))
    k = n_vertices if n_vertices is not None else choose_n_vertices(ev[:max_vertices], floor)
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
        noise_floor=floor,
        chosen_by="given" if n_vertices is not None else "eigengap",
        outside=float(outside),
    )


def _affine_r2(Z: Tensor, Y: Tensor) -> float:
    """R^2 of the best affine map from ``Z`` to ``Y`` (fitted in-sample with the labels)."""
    return float(AffineProbe().fit(Z, Y).score(Z, Y))


def judge_discovery(
    found: Discovery,
    acts: Float[Tensor, "... d"] | np.ndarray,
    beliefs: Float[Tensor, "... S"] | np.ndarray,
    *,
    n_random: int = 5,
    seed: int = 0,
    threshold: float = FOUND_R2,
) -> DiscoveryVerdict:
    """Grade ``found`` (from ``discover_simplex(acts)``) against the true ``beliefs``, beside two
    baselines: the same ``k - 1`` principal components with a fitted affine map (a ceiling) and
    ``k - 1`` random directions (chance, ``n_random`` seeded draws).

    The criterion: the simplex has one vertex per state (``k == S``) and its barycentric
    coordinates, matched to states with nothing refitted, reach R^2 >= ``threshold`` and beat
    the random directions' R^2 (which is given the labels: where the activations are nearly
    ``k - 1``-dimensional any directions see them, and it is high).
    """
    X, _ = _as_rows(acts, "acts")
    Y, _ = _as_rows(beliefs, "beliefs")
    if X.shape[0] != Y.shape[0]:
        raise BeliefLensError(
            f"acts have {X.shape[0]} points but beliefs {Y.shape[0]}; give one belief per point"
        )
    k, S = found.n_vertices, Y.shape[1]
    Xc = X - found.mean
    r2_pcs = _affine_r2(Xc @ found.components.T, Y)
    gen = torch.Generator().manual_seed(seed)
    rand = []
    for _ in range(n_random):
        Q = torch.linalg.qr(torch.randn(X.shape[1], k - 1, generator=gen, dtype=torch.float64))[0]
        rand.append(_affine_r2(Xc @ Q, Y))
    r_mean = float(np.mean(rand))
    r_se = float(np.std(rand, ddof=1) / np.sqrt(n_random)) if n_random > 1 else 0.0
    criterion = (
        f"one vertex per state, and the matched barycentric coordinates reach R^2 >= "
        f"{threshold} and beat {k - 1} random directions with a fitted affine map"
    )
    explained = float(found.explained_variance_ratio[: k - 1].sum())
    common = dict(criterion=criterion, n_vertices=k, n_states=S, r2_pcs=r2_pcs,
                  r2_random=r_mean, r2_random_se=r_se, explained_variance=explained)  # fmt: skip
    if k != S:
        reason = (
            f"The spectrum picks {k} vertices, but the process has {S} states: the simplex "
            "found is not its belief simplex."
        )
        return DiscoveryVerdict(found=False, reason=reason, r2=None, mse=None, **common)
    score = found.score(Y)
    ok = score.r2 >= threshold and score.r2 > r_mean
    reason = (
        f"R^2 {score.r2:.3f} {'reaches' if score.r2 >= threshold else 'is below'} {threshold}"
        f" and is {score.r2 - r_mean:+.3f} from chance."
    )
    return DiscoveryVerdict(found=ok, reason=reason, r2=score.r2, mse=score.mse, **common)
