"""Affine probes from residual streams to beliefs, layer sweeps, and the controls reviewers ask for.

``AffineProbe`` is a scikit-learn-shaped estimator solved in closed form in float64 with torch:
weighted means and a (block) Gram matrix are accumulated in chunks, the affine part is recovered
by centring, and the normal equations are solved through a thresholded eigendecomposition, which
gives the minimum-norm solution when activations are rank deficient (LayerNorm outputs are).

The same sufficient statistics (sums of weights, weighted sums, second moments) serve every
probe of a sweep: one pass over the concatenation of all hooks gives each hook's moments as a
diagonal block, train and held-out moments add up to the all-data moments, and train, held-out
and in-sample errors are evaluated from moments without another pass over the activations.

``fit_probes`` and the controls (``shuffle_control``, ``untrained_control``,
``next_token_control``) are thin spellings of one engine: collect activations, targets, weights
and a by-sequence split (``collect_probe_data``), then fit and score per hook (``_probe_table``).
Pass ``data=`` to reuse collected activations and their moments across calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM

__all__ = [
    "AffineProbe",
    "ProbeData",
    "ProbeTable",
    "collect_probe_data",
    "distance_r2",
    "fit_probes",
    "next_token_control",
    "shuffle_control",
    "simplex_basis",
    "untrained_control",
]

Mode = Literal["paper", "weighted", "sampled"]
Targets = Literal["beliefs", "next_token"]
BasisKind = Literal["encoding", "decoding"]

#: Name of the table row (and probe) fitted on the concatenation of all requested hooks.
CONCAT = "concat"
#: Targets whose rows sum to 1 within this tolerance are treated as beliefs (S - 1 free coords).
_SUM_TOL = 1e-6
#: Elements (rows x features) of one float64 chunk during accumulation: 2 MiB, so that a chunk
#: stays in cache between its conversion and its Gram matrix.
_CHUNK_ELEMENTS = 1 << 18


# ----------------------------------------------------------------------------- input checks


def _to_tensor(x: Any, name: str) -> tuple[Tensor, bool]:
    """``x`` as a tensor (no copy where possible), and whether it came as numpy."""
    if isinstance(x, Tensor):
        t, was_numpy = x.detach(), False
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise BeliefLensError(
                f"{name} must be a tensor or array, got {type(x).__name__}"
            ) from err
        if arr.dtype == object:
            raise BeliefLensError(f"{name} must be numeric, got an array of dtype object")
        t, was_numpy = torch.from_numpy(np.ascontiguousarray(arr)), True
    if t.is_complex() or t.dtype == torch.bool:
        raise BeliefLensError(f"{name} must be real floating point, got dtype {t.dtype}")
    if not t.dtype.is_floating_point:
        t = t.to(torch.float64)
    return t, was_numpy


def _check_finite(t: Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = torch.nonzero(~torch.isfinite(t))[0].tolist()
        raise BeliefLensError(f"{name} contains NaN or inf (first at index {bad})")


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps


def _check_pair(
    acts: Any, targets: Any, name: str = "beliefs", *, finite: bool = True
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Validate ``acts [..., d]`` and ``targets [..., S]`` with equal leading dims.

    Returns both flattened to ``[n, d]`` and ``[n, S]``, and the leading shape. With
    ``finite=False`` the caller checks for NaN/inf itself (``fit`` does so on its sums, which is
    cheaper than a pass over the activations).
    """
    X, _ = _to_tensor(acts, "acts")
    Y, _ = _to_tensor(targets, name)
    if X.ndim < 2:
        raise BeliefLensError(
            f"acts must have shape [..., d] with at least one leading dim, got {X.ndim}-D shape "
            f"{tuple(X.shape)}; use acts[None] for a single sample"
        )
    if Y.ndim != X.ndim:
        raise BeliefLensError(
            f"{name} must have shape [..., S] with the same leading dims as acts: acts has shape "
            f"{tuple(X.shape)} ({X.ndim}-D) but {name} has {tuple(Y.shape)} ({Y.ndim}-D)"
        )
    if X.shape[:-1] != Y.shape[:-1]:
        nx, ny = math.prod(X.shape[:-1]), math.prod(Y.shape[:-1])
        if nx != ny:
            raise BeliefLensError(
                f"acts has {nx} rows but {name} has {ny} (shapes {tuple(X.shape)} and "
                f"{tuple(Y.shape)}); they must share leading dims"
            )
        raise BeliefLensError(
            f"acts has leading shape {tuple(X.shape[:-1])} but {name} has "
            f"{tuple(Y.shape[:-1])}; they must match"
        )
    if X.shape[-1] == 0 or Y.shape[-1] == 0:
        raise BeliefLensError(
            f"acts and {name} need at least one feature, got shapes {tuple(X.shape)} and "
            f"{tuple(Y.shape)}"
        )
    if math.prod(X.shape[:-1]) == 0:
        raise BeliefLensError(f"acts has no rows (shape {tuple(X.shape)})")
    if finite:
        _check_finite(X, "acts")
        _check_finite(Y, name)
    return X.reshape(-1, X.shape[-1]), Y.reshape(-1, Y.shape[-1]), tuple(X.shape[:-1])


def _check_weights(sample_weight: Any, lead: tuple[int, ...]) -> Tensor | None:
    """Flat float64 weights ``[n]`` matching ``lead`` (the leading shape of acts), or None."""
    if sample_weight is None:
        return None
    w, _ = _to_tensor(sample_weight, "sample_weight")
    n = math.prod(lead)
    if tuple(w.shape) not in (tuple(lead), (n,)):
        raise BeliefLensError(
            f"sample_weight has shape {tuple(w.shape)} but acts has leading shape {tuple(lead)} "
            f"({n} rows); give one weight per row"
        )
    w = w.reshape(-1).to("cpu", torch.float64)
    _check_finite(w, "sample_weight")
    if bool((w < 0).any()):
        raise BeliefLensError(f"sample_weight must be >= 0, got min {w.min().item():.6g}")
    if not w.sum() > 0:
        raise BeliefLensError("sample_weight sums to 0; at least one row needs positive weight")
    return w


def _sums_to_one(Y: Tensor) -> bool:
    return bool(((Y.sum(-1, dtype=torch.float64) - 1).abs() <= _SUM_TOL).all())


def simplex_basis(n: int) -> Float[Tensor, "n n_minus_1"]:
    """The Helmert basis: an orthonormal ``[n, n-1]`` basis of the sum-zero subspace of R^n.

    Column ``k`` (0-based) is ``(1, ..., 1, -(k+1), 0, ..., 0) / sqrt((k+1)(k+2))`` with ``k+1``
    ones: a fixed, deterministic choice, so free belief coordinates mean the same in every run.

    >>> simplex_basis(3)
    tensor([[ 0.7071,  0.4082],
            [-0.7071,  0.4082],
            [ 0.0000, -0.8165]], dtype=torch.float64)
    """
    if n < 1:
        raise BeliefLensError(f"simplex_basis needs n >= 1, got {n}")
    Q = torch.zeros(n, n - 1, dtype=torch.float64)
    for k in range(n - 1):
        Q[: k + 1, k] = 1.0
        Q[k + 1, k] = -(k + 1.0)
        Q[:, k] /= math.sqrt((k + 1.0) * (k + 2.0))
    return Q


# ----------------------------------------------------------------------------- moments


@dataclass
class _Moments:
    """Weighted sufficient statistics of rows ``z = [x, y]`` (``D`` features, then targets).

    ``w = sum w_i``, ``s = sum w_i (z_i - shift)`` and ``M = sum w_i (z_i - shift)(z_i -
    shift)^T``, about a fixed ``shift`` (near the mean, so nothing cancels). Moments of disjoint
    row sets with the same shift add.

    Rows whose activations are identical (a causal model reading the same prefix) need their
    activation part only once: ``add_x`` takes each distinct activation row with the summed
    weight ``c`` of its duplicates, ``add_xy`` their summed weighted targets, and ``add_y`` all
    target rows.
    """

    w: float
    s: Tensor  # [P]
    M: Tensor  # [P, P]
    shift: Tensor  # [P]
    D: int

    @classmethod
    def zeros(cls, shift: Tensor, D: int) -> _Moments:
        P = len(shift)
        f64 = torch.float64
        return cls(0.0, torch.zeros(P, dtype=f64), torch.zeros(P, P, dtype=f64), shift, D)

    def __add__(self, other: _Moments) -> _Moments:
        return _Moments(self.w + other.w, self.s + other.s, self.M + other.M, self.shift, self.D)

    def add_y(self, Y: Tensor, w: Tensor | None) -> None:
        """Target rows ``Y [m, S]`` (shifted, float64) with weights ``w [m]`` (None: ones)."""
        D = self.D
        if w is None:
            self.w += Y.shape[0]
            self.s[D:] += Y.sum(0)
            self.M[D:, D:] += Y.T @ Y
        else:
            self.w += float(w.sum())
            self.s[D:] += w @ Y
            self.M[D:, D:] += (Y * w[:, None]).T @ Y

    def add_xy(self, X: Tensor, wy: Tensor) -> None:
        """``sum w x y^T`` from activation rows ``X [m, D]`` and their summed ``w * y`` rows."""
        # [S, m] @ [m, D]: several times faster than the skinny [D, m] @ [m, S].
        self.M[self.D :, : self.D] += wy.T @ X

    def add_x(self, X: Tensor, c: Tensor | None, bounds: Sequence[int], xx: str) -> None:
        """Activation rows ``X [m, D]`` (shifted float64, overwritten) with weights ``c``.

        ``xx`` is ``"full"`` (upper block rows between ``bounds``), ``"diag"`` (only the
        diagonal blocks between ``bounds``: the hooks of a concatenation) or ``"none"``.
        """
        D = self.D
        self.s[:D] += X.new_ones(X.shape[0]) @ X if c is None else c @ X
        if xx == "none":
            return
        if c is not None:
            X.mul_(c.sqrt()[:, None])
        for lo, hi in pairwise(bounds):
            right = D if xx == "full" else hi
            self.M[lo:hi, lo:right] += X[:, lo:hi].T @ X[:, lo:right]

    def finish(self) -> _Moments:
        """Make ``M`` symmetric from the parts the ``add_*`` methods computed."""
        D = self.D
        self.M[:D, D:] = self.M[D:, :D].T
        upper = self.M[:D, :D].triu()
        self.M[:D, :D] = upper + upper.triu(1).T
        return self

    def select(self, cols: slice) -> _Moments:
        """The moments of a subset of activation features (a hook inside a concatenation)."""
        idx = torch.cat([torch.arange(cols.start, cols.stop), torch.arange(self.D, len(self.s))])
        D = cols.stop - cols.start
        return _Moments(self.w, self.s[idx], self.M[idx][:, idx], self.shift[idx], D)

    def about(self, cx: Tensor, cy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Second moments ``sum w (a - c_a)(b - c_b)^T`` about centres ``cx, cy``: xx, xy, yy."""
        u = torch.cat([cx, cy]) - self.shift
        Mc = self.M - torch.outer(self.s, u) - torch.outer(u, self.s) + self.w * torch.outer(u, u)
        D = self.D
        return Mc[:D, :D], Mc[:D, D:], Mc[D:, D:]

    def means(self) -> tuple[Tensor, Tensor]:
        mean = self.shift + self.s / self.w
        return mean[: self.D], mean[self.D :]


def _row_chunks(n: int, width: int) -> Iterator[slice]:
    step = max(512, _CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _flat_moments(X: Tensor, Y: Tensor, w: Tensor | None) -> _Moments:
    """Moments of flat ``X [n, D]``, ``Y [n, S]`` in float64, chunk by chunk.

    Each chunk is written once into a float64 buffer ``[x - shift, y - shift, 1]`` (times
    ``sqrt(w)``), whose Gram matrix holds every sum at once: second moments, the weighted sums
    (last row) and the total weight (last entry).
    """
    f64 = torch.float64
    n, D = X.shape
    S = Y.shape[1]
    P = D + S
    first = next(_row_chunks(n, P + 1))
    # Any shift is exact; one near the mean (the first chunk's) keeps the sums from cancelling.
    shift = torch.cat([X[first].mean(0).to("cpu", f64), Y[first].mean(0).to("cpu", f64)])
    shift = torch.where(torch.isfinite(shift), shift, 0.0)
    syrk = _dsyrk()
    G = np.zeros((P + 1, P + 1), order="F")  # upper triangle accumulated
    buffer = torch.empty(first.stop - first.start, P + 1, dtype=f64)
    for rows in _row_chunks(n, P + 1):
        Z = buffer[: rows.stop - rows.start]
        Z[:, :D] = X[rows]
        Z[:, D:P] = Y[rows]
        Z[:, :P] -= shift
        Z[:, P] = 1.0
        if w is not None:
            Z.mul_(w[rows].sqrt()[:, None])
        if syrk is not None:  # BLAS dsyrk: the upper triangle of Z^T Z, half a GEMM's work
            G = syrk(1.0, Z.numpy().T, beta=1.0, c=G, trans=0, lower=0, overwrite_c=1)
        else:
            G += (Z.T @ Z).numpy()
    Gt = torch.from_numpy(np.triu(G))
    Gt = Gt + Gt.triu(1).T
    return _Moments(float(Gt[P, P]), Gt[P, :P].clone(), Gt[:P, :P].clone(), shift, D)


def _dsyrk() -> Any:
    """scipy's BLAS ``dsyrk`` (scipy comes with scikit-learn), or None without scipy."""
    try:
        from scipy.linalg.blas import dsyrk
    except ImportError:
        return None
    return dsyrk


def _psd_solve(A: Tensor, B: Tensor, ridge: float, rel_tol: float) -> tuple[Tensor, int]:
    """Minimum-norm solution of ``(A + ridge I) X = B`` for symmetric PSD ``A``.

    Eigenvalues at or below ``rel_tol`` times the largest are treated as zero (pseudo-inverse),
    so rank-deficient activations give the minimum-norm least-squares coefficients. Returns the
    solution and the numerical rank.
    """
    evals, evecs = torch.linalg.eigh(A)
    evals = evals + ridge
    top = float(evals.max()) if evals.numel() else 0.0
    keep = evals > max(rel_tol * top, 0.0) if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), 0.0)
    return evecs @ (inv[:, None] * (evecs.T @ B)), int(keep.sum())


def _rel_tol(n_features: int, eps: float) -> float:
    """Eigenvalue cut-off relative to the largest: singular values below ``n_features * eps``
    (the input precision) of the largest carry no signal, and the float64 Gram itself is exact
    only to about ``n_features * eps_float64``."""
    return max((n_features * eps) ** 2, n_features * torch.finfo(torch.float64).eps)


def _metrics(ss_res: Tensor, ss_tot: Tensor, w: float) -> dict[str, float]:
    """MSE over all entries, its root, and R^2 averaged uniformly over target dims."""
    S = ss_res.numel()
    if w <= 0:
        nan = float("nan")
        return {"mse": nan, "rmse": nan, "r2": nan}
    ss_res = ss_res.clamp_min(0)
    mse = float(ss_res.sum()) / (w * S)
    # As sklearn's r2_score: a constant target dim scores 1 if predicted exactly, else 0.
    r2 = torch.where(ss_tot > 0, 1 - ss_res / torch.where(ss_tot > 0, ss_tot, 1.0), 0.0)
    r2 = torch.where((ss_tot <= 0) & (ss_res <= 0), 1.0, r2)
    return {"mse": mse, "rmse": math.sqrt(mse), "r2": float(r2.mean())}


# ----------------------------------------------------------------------------- the estimator


class AffineProbe:
    """An affine map from activations to beliefs, ``beliefs ~ acts @ coef_.T + intercept_``.

    Fitted by (optionally weighted, optionally ridge) least squares in closed form, in float64.
    Alongside the decoder it fits the *encoding* map, from the free belief coordinates back to
    activations (Haufe et al. 2014: decoding "filters" read beliefs out, encoding "patterns" say
    where the model writes them; interventions use the encoding directions).

    Parameters
    ----------
    ridge : float
        L2 penalty ``ridge * ||coef||^2`` on the centred problem, as sklearn ``Ridge(alpha=...)``
        (not scaled by the number of rows). The same penalty regularises the encoding fit.
    fit_intercept : bool
        Centre activations and targets (weighted) and recover ``intercept_`` from the means.
        With ``False`` both maps pass through the origin (``x_mean_`` and ``y_mean_`` are zero).

    Attributes
    ----------
    coef_ : Tensor, float64, shape ``[S, d]``
        Decoding directions: ``predict(x) = x @ coef_.T + intercept_``.
    intercept_ : Tensor, float64, shape ``[S]``
        ``y_mean_ - x_mean_ @ coef_.T``.
    x_mean_, y_mean_ : Tensor, float64, shapes ``[d]`` and ``[S]``
        Weighted means of the training activations and targets.
    n_features_in_ : int
        ``d``.
    n_targets_ : int
        ``S``.
    n_free_ : int
        Free target coordinates: ``S - 1`` when every target row sums to 1 (beliefs, next-token
        distributions), else ``S``.
    simplex_basis_ : Tensor, float64, shape ``[S, n_free_]``
        Orthonormal basis ``Q`` of the free coordinates: the Helmert basis of the sum-zero
        subspace (``simplex_basis``) for beliefs, the identity otherwise. Free coordinates are
        ``z = (beliefs - y_mean_) @ Q``.
    encoding_ : Tensor, float64, shape ``[n_free_, d]``
        Encoding directions: ``acts ~ x_mean_ + z @ encoding_`` (weighted, ridge least squares).
    rank_ : int
        Numerical rank of the centred activation second-moment matrix (plus ridge).
    hook_name_ : str or None
        The hook the activations came from, if given to ``fit``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> acts = torch.randn(1000, 8, generator=g, dtype=torch.float64)
    >>> W = torch.randn(8, 3, generator=g, dtype=torch.float64)
    >>> beliefs = torch.softmax(acts @ W, -1)
    >>> probe = AffineProbe().fit(acts, beliefs, hook_name="blocks.0.hook_resid_post")
    >>> probe
    AffineProbe(ridge=0.0, fit_intercept=True)
    >>> probe.coef_.shape, probe.n_free_, probe.belief_basis().shape
    (torch.Size([3, 8]), 2, torch.Size([8, 2]))
    >>> sorted(probe.score(acts, beliefs))
    ['mse', 'r2', 'rmse']
    >>> delta = torch.tensor([0.1, -0.1, 0.0], dtype=torch.float64)
    >>> shifted = probe.predict(acts[:1] + delta @ probe.decoding_map())
    >>> torch.allclose(shifted - probe.predict(acts[:1]), delta)
    True
    """

    def __init__(self, *, ridge: float = 0.0, fit_intercept: bool = True) -> None:
        self.ridge = ridge
        self.fit_intercept = fit_intercept

    # -- sklearn plumbing
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyperparameters, as sklearn's ``BaseEstimator.get_params``."""
        return {"ridge": self.ridge, "fit_intercept": self.fit_intercept}

    def set_params(self, **params: Any) -> AffineProbe:
        """Set hyperparameters by name; unknown names raise, listing the valid ones."""
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise BeliefLensError(
                    f"AffineProbe has no parameter {key!r}; valid parameters: {sorted(valid)}"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        return f"AffineProbe(ridge={self.ridge!r}, fit_intercept={self.fit_intercept!r})"

    def _check_hyperparameters(self) -> None:
        ridge = self.ridge
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
            raise BeliefLensError(f"ridge must be a finite number >= 0, got {ridge!r}")
        if not math.isfinite(ridge):
            raise BeliefLensError(f"ridge must be a finite number >= 0, got {ridge!r}")
        if not isinstance(self.fit_intercept, bool):
            raise BeliefLensError(
                f"fit_intercept must be True or False, got {self.fit_intercept!r}"
            )

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise BeliefLensError("AffineProbe is not fitted yet; call fit() first")

    # -- fitting
    def fit(
        self,
        acts: Float[Tensor, "... d"] | np.ndarray,
        beliefs: Float[Tensor, "... S"] | np.ndarray,
        sample_weight: Float[Tensor, "..."] | np.ndarray | None = None,
        *,
        hook_name: str | None = None,
    ) -> AffineProbe:
        """Fit decoder and encoder on ``acts [..., d]`` and ``beliefs [..., S]``; returns self.

        Leading dims are flattened; ``sample_weight`` has the leading shape (or ``[n]``).
        """
        self._check_hyperparameters()
        X, Y, lead = _check_pair(acts, beliefs, finite=False)
        w = _check_weights(sample_weight, lead)
        mom = _flat_moments(X, Y, w)
        if not (bool(torch.isfinite(mom.s).all()) and bool(torch.isfinite(mom.M).all())):
            _check_finite(X, "acts")
            _check_finite(Y, "beliefs")
            raise BeliefLensError("acts or beliefs are too large: their squares overflow float64")
        self._fit_moments(
            mom,
            sums_to_one=_sums_to_one(Y),
            eps=_eps(X.dtype),
            eps_y=_eps(Y.dtype),
            hook_name=hook_name,
        )
        return self

    def _fit_moments(
        self, mom: _Moments, *, sums_to_one: bool, eps: float, eps_y: float, hook_name: str | None
    ) -> AffineProbe:
        """Fit from sufficient statistics (the engine behind ``fit`` and ``fit_probes``)."""
        self._check_hyperparameters()
        if not mom.w > 0:
            raise BeliefLensError("cannot fit a probe on zero total weight")
        D, S = mom.D, len(mom.s) - mom.D
        f64 = torch.float64
        if self.fit_intercept:
            x_mean, y_mean = mom.means()
        else:
            x_mean, y_mean = torch.zeros(D, dtype=f64), torch.zeros(S, dtype=f64)
        Mxx, Mxy, Myy = mom.about(x_mean, y_mean)
        B, rank = _psd_solve(Mxx, Mxy, float(self.ridge), _rel_tol(D, eps))  # [D, S]
        Q = simplex_basis(S) if sums_to_one else torch.eye(S, dtype=f64)
        Mzz, Mzx = Q.T @ Myy @ Q, Q.T @ Mxy.T  # [k, k], [k, D]
        E, _ = _psd_solve(Mzz, Mzx, float(self.ridge), _rel_tol(Q.shape[1], eps_y))
        self.coef_ = B.T.contiguous()
        self.intercept_ = y_mean - x_mean @ B
        self.x_mean_ = x_mean
        self.y_mean_ = y_mean
        self.n_features_in_ = D
        self.n_targets_ = S
        self.n_free_ = Q.shape[1]
        self.simplex_basis_ = Q
        self.encoding_ = E.contiguous()
        self.rank_ = rank
        self.hook_name_ = hook_name
        return self

    # -- using the fit
    def _check_features(self, d: int) -> None:
        if d != self.n_features_in_:
            raise BeliefLensError(
                f"acts have d={d} features but this probe was fit on d={self.n_features_in_}"
                + (f" (hook {self.hook_name_})" if self.hook_name_ else "")
            )

    def predict(self, acts: Float[Tensor, "... d"] | np.ndarray) -> Float[Tensor, "... S"]:
        """Decoded beliefs ``[..., S]`` in float64: a tensor on the input's device, or numpy."""
        self._check_fitted()
        X, was_numpy = _to_tensor(acts, "acts")
        if X.ndim < 1:
            raise BeliefLensError(f"acts must have shape [..., d], got a scalar of shape {X.shape}")
        self._check_features(X.shape[-1])
        lead = X.shape[:-1]
        flat = X.reshape(-1, X.shape[-1])
        dev = flat.device
        B = self.coef_.T.to(dev)
        xm, ym = self.x_mean_.to(dev), self.y_mean_.to(dev)
        out = torch.empty(flat.shape[0], self.n_targets_, dtype=torch.float64, device=dev)
        for rows in _row_chunks(flat.shape[0], flat.shape[1]):
            out[rows] = (flat[rows].to(torch.float64) - xm) @ B + ym
        if not bool(torch.isfinite(out).all()):  # cheaper than checking the input first
            _check_finite(X, "acts")
            raise BeliefLensError("acts are too large: the prediction overflows float64")
        out = out.reshape(*lead, self.n_targets_)
        return out.cpu().numpy() if was_numpy else out

    def score(
        self,
        acts: Float[Tensor, "... d"] | np.ndarray,
        beliefs: Float[Tensor, "... S"] | np.ndarray,
        sample_weight: Float[Tensor, "..."] | np.ndarray | None = None,
    ) -> dict[str, float]:
        """Errors of the fitted probe on ``(acts, beliefs)``.

        Returns ``{"mse", "rmse", "r2"}``: ``mse`` is the mean squared error over all entries
        (rows and target dims, rows weighted by ``sample_weight``), as in the paper; ``r2`` is
        the weighted coefficient of determination averaged uniformly over target dims, as
        sklearn's ``r2_score(multioutput="uniform_average")``.
        """
        self._check_fitted()
        X, Y, lead = _check_pair(acts, beliefs)
        self._check_features(X.shape[1])
        if Y.shape[1] != self.n_targets_:
            raise BeliefLensError(
                f"beliefs have S={Y.shape[1]} targets but this probe was fit on S={self.n_targets_}"
            )
        w = _check_weights(sample_weight, lead)
        pred = self.predict(X).cpu()
        Y = Y.to("cpu", torch.float64)
        if w is None:
            w_sum = float(Y.shape[0])
            y_bar = Y.mean(0)
            ss_res = ((Y - pred) ** 2).sum(0)
            ss_tot = ((Y - y_bar) ** 2).sum(0)
        else:
            w_sum = float(w.sum())
            y_bar = (w @ Y) / w_sum
            ss_res = w @ (Y - pred) ** 2
            ss_tot = w @ (Y - y_bar) ** 2
        return _metrics(ss_res, ss_tot, w_sum)

    def _score_moments(self, mom: _Moments) -> dict[str, float]:
        """``score`` evaluated from a row set's sufficient statistics, with no pass over rows."""
        if not mom.w > 0:
            return _metrics(torch.zeros(self.n_targets_), torch.zeros(self.n_targets_), 0.0)
        B = self.coef_.T
        Mxx, Mxy, Myy = mom.about(self.x_mean_, self.y_mean_)
        ss_res = Myy.diagonal() - 2 * (B * Mxy).sum(0) + (B * (Mxx @ B)).sum(0)
        _, own_y = mom.means()
        ss_tot = mom.about(self.x_mean_, own_y)[2].diagonal()
        return _metrics(ss_res, ss_tot, mom.w)

    # -- belief directions
    def encoding_map(self) -> Float[Tensor, "S d"]:
        """``Q @ encoding_``: a belief change ``delta [..., S]`` moves activations by
        ``delta @ encoding_map()`` (only its sum-zero part matters for beliefs)."""
        self._check_fitted()
        return self.simplex_basis_ @ self.encoding_

    def _decoding_free(self) -> Float[Tensor, "k d"]:
        return torch.linalg.pinv(self.simplex_basis_.T @ self.coef_).T

    def decoding_map(self) -> Float[Tensor, "S d"]:
        """``Q @ pinv(Q.T @ coef_).T``: the minimum-norm activation change, in the probe's row
        space, that moves the decoded belief by ``delta``:
        ``predict(x + delta @ decoding_map()) == predict(x) + delta`` for sum-zero ``delta``."""
        self._check_fitted()
        return self.simplex_basis_ @ self._decoding_free()

    def belief_basis(self, kind: BasisKind = "encoding") -> Float[Tensor, "d n_free"]:
        """An orthonormal ``[d, n_free_]`` basis of the encoding (default) or decoding directions.

        Columns are right singular vectors of the map ordered by singular value, each signed so
        that its largest-magnitude entry is positive.
        """
        self._check_fitted()
        if kind == "encoding":
            M = self.encoding_
        elif kind == "decoding":
            M = self._decoding_free()
        else:
            raise BeliefLensError(f"kind must be 'encoding' or 'decoding', got {kind!r}")
        if M.shape[0] == 0:
            return M.new_zeros(self.n_features_in_, 0)
        _, _, Vh = torch.linalg.svd(M, full_matrices=False)
        V = Vh.T  # [d, k]
        idx = V.abs().argmax(0)
        signs = torch.sign(V[idx, torch.arange(V.shape[1])])
        return V * torch.where(signs == 0, 1.0, signs)


# ----------------------------------------------------------------------------- the table


@dataclass
class ProbeTable:
    """Probe results, one row per hook plus the concatenation of all hooks (``"concat"``).

    Attributes
    ----------
    rows : list of dict
        ``hook, d, n_train, n_test`` (sequences), ``mse_train, r2_train`` (fit on the training
        sequences, scored on them), ``mse_test, r2_test`` (same fit, held-out sequences; NaN
        with no held-out data), ``mse_all, r2_all`` (fit on every sequence, scored in-sample:
        the paper's number). R^2 is the uniform average over target dims.
    probes : dict of str to AffineProbe
        The all-data probe of each row, keyed by hook. ``probes["concat"]`` reads the
        concatenation of ``meta["hooks"]`` in order, and has ``hook_name_`` None.
    meta : dict
        What was fitted: ``name`` (``"probes"`` or the control), ``targets``, ``mode``,
        ``weighted``, ``n_ctx``, ``process``, ``hooks``, ``ridge``, ``test_fraction``, ``seed``.
    """

    rows: list[dict[str, Any]]
    probes: dict[str, AffineProbe] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def hooks(self) -> list[str]:
        return [row["hook"] for row in self.rows]

    def columns(self) -> dict[str, list]:
        """The table as ``{column: values}`` (pandas-free; ``pandas.DataFrame(t.columns())``)."""
        keys = list(self.rows[0]) if self.rows else []
        return {k: [row.get(k) for row in self.rows] for k in keys}

    def __getitem__(self, hook: str) -> dict[str, Any]:
        for row in self.rows:
            if row["hook"] == hook:
                return row
        raise BeliefLensError(f"no row for hook {hook!r}; rows: {self.hooks}")

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table with floats to ``digits`` significant digits."""
        cols = self.columns()
        if not cols:
            return "(empty probe table)"

        def fmt(v: Any) -> str:
            return f"{v:.{digits}g}" if isinstance(v, float) else str(v)

        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(row.get(k)) for k in cols) + " |" for row in self.rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        title = ", ".join(
            f"{k}={self.meta[k]}" for k in ("name", "targets", "mode") if k in self.meta
        )
        return (title + "\n" if title else "") + self.to_markdown()


# ----------------------------------------------------------------------------- data collection


@dataclass
class ProbeData:
    """Activations, targets, weights and the by-sequence split that probes are fitted on.

    Build it with ``collect_probe_data``; pass it as ``data=`` to ``fit_probes`` and the controls
    to reuse the forward pass and the activation moments (cached here, so treat it as read-only).

    Attributes
    ----------
    tokens : Tensor, int64, shape ``[N, L]``
        Process tokens (without BOS).
    beliefs : Tensor, float64, shape ``[N, L, S]``
        ``beliefs[:, t]``: the belief after tokens ``0..t``, aligned with activation position t.
    acts : dict of str to Tensor, float32, shape ``[N, L, d]``
        Residual streams by hook, in the requested order (BOS position dropped).
    weights : Tensor, float64, shape ``[N]``, or None
        Per-sequence weights (sequence probabilities in ``"weighted"`` mode), or None.
    test_mask : Tensor, bool, shape ``[N]``
        True for held-out sequences.
    bos : bool
        Whether the model read a BOS token first (its position is not in ``acts``).
    dedupe : bool
        Whether activations at equal prefixes are equal (a causal model), so that each distinct
        prefix is processed once. Exact; False for bidirectional attention.
    """

    tokens: Int[Tensor, "N L"]
    beliefs: Float[Tensor, "N L S"]
    acts: dict[str, Float[Tensor, "N L d"]]
    weights: Float[Tensor, " N"] | None
    test_mask: Bool[Tensor, " N"]
    hmm: HMM
    n_ctx: int
    mode: str
    seed: int
    test_fraction: float
    bos: bool = False
    dedupe: bool = True
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def hooks(self) -> list[str]:
        return list(self.acts)

    def _shift_x(self) -> Tensor:
        if "shift_x" not in self._cache:
            means = [a.reshape(-1, a.shape[-1]).mean(0) for a in self.acts.values()]
            self._cache["shift_x"] = torch.cat(means).to("cpu", torch.float64)
        return self._cache["shift_x"]

    def _prefixes(self) -> list[tuple[Tensor, Tensor]]:
        """Per position ``t``: ``(ids, reps)`` where ``ids [N]`` numbers the distinct prefixes
        ``tokens[:, :t+1]`` and ``reps`` holds one sequence index per distinct prefix.

        A causal model's activation at ``t`` depends only on that prefix, so each distinct
        prefix's activation enters the moments once, weighted by its number of sequences
        (6.7x fewer rows for all Mess3 sequences of length 10). Non-causal models (and
        ``dedupe=False``) get one id per sequence.
        """
        if "prefixes" not in self._cache:
            N, L = self.tokens.shape
            out = []
            ids = torch.zeros(N, dtype=torch.long)
            V = int(self.tokens.max()) + 1
            for t in range(L):
                if self.dedupe:
                    _, ids = torch.unique(ids * V + self.tokens[:, t], return_inverse=True)
                else:
                    ids = torch.arange(N)
                n_u = int(ids.max()) + 1
                reps = torch.empty(n_u, dtype=torch.long).scatter_(0, ids, torch.arange(N))
                out.append((ids, reps))
            self._cache["prefixes"] = out
        return self._cache["prefixes"]

    def _moments(self, targets: Tensor, full: bool) -> dict[str, _Moments]:
        """Moments of ``[all hooks concatenated, targets]`` for the train and test sequences.

        The activation block (the expensive part) is computed once and cached: the full Gram of
        the concatenation when ``full`` (needed for a concat probe), else its diagonal blocks.
        """
        f64 = torch.float64
        hooks = self.hooks
        bounds = np.cumsum([0, *(self.acts[h].shape[-1] for h in hooks)]).tolist()
        D, S = bounds[-1], targets.shape[-1]
        shift_x = self._shift_x()
        shift_y = targets.reshape(-1, S).mean(0).to(f64)
        cached = self._cache.get("xx")
        reuse = cached is not None and (cached[0] or not full)
        xx = "none" if reuse else ("full" if full else "diag")
        test = self.test_mask
        out = {}
        for group, in_group in (("train", ~test), ("test", test)):
            mom = _Moments.zeros(torch.cat([shift_x, shift_y]), D)
            seqs = torch.nonzero(in_group).flatten()
            w_seq = None if self.weights is None else self.weights[seqs].to(f64)
            for t, (ids, reps) in enumerate(self._prefixes()):
                Y = targets[seqs, t].to(f64) - shift_y  # [n, S]
                mom.add_y(Y, w_seq)
                wy = Y if w_seq is None else Y * w_seq[:, None]
                ones = torch.ones(len(seqs), dtype=f64)
                count = torch.zeros(len(reps), dtype=f64).index_add_(
                    0, ids[seqs], ones if w_seq is None else w_seq
                )
                wy_sum = torch.zeros(len(reps), S, dtype=f64).index_add_(0, ids[seqs], wy)
                present = torch.nonzero(count > 0).flatten()
                for rows in _row_chunks(len(present), D):
                    u = present[rows]
                    X = torch.empty(len(u), D, dtype=f64)
                    for h, (lo, hi) in zip(hooks, pairwise(bounds), strict=True):
                        X[:, lo:hi] = self.acts[h][reps[u], t]
                    X -= shift_x
                    mom.add_xy(X, wy_sum[u])
                    mom.add_x(X, count[u], bounds, xx)
            if reuse:
                mom.M[:D, :D] = cached[1][group]
            out[group] = mom.finish()
        if not reuse:
            self._cache["xx"] = (full, {g: m.M[:D, :D].clone() for g, m in out.items()})
        return out


def _resolve_hooks(model: Any, hooks: Any) -> list[str]:
    from belief_lens.activations import residual_hooks, resolve_hook

    if hooks is None:
        return residual_hooks(model)
    if isinstance(hooks, (str, tuple)):
        hooks = [hooks]
    names = list(dict.fromkeys(resolve_hook(model, h) for h in hooks))
    if not names:
        raise BeliefLensError("hooks is empty; give at least one hook name or None for all")
    if CONCAT in names:
        raise BeliefLensError(f"{CONCAT!r} is reserved for the concatenation row")
    return names


def _is_causal(model: Any) -> bool:
    return getattr(getattr(model, "cfg", None), "attention_dir", "causal") == "causal"


def _model_acts(
    model: Any, tokens: Tensor, hooks: list[str], bos_id: int | None, batch_size: int
) -> dict[str, Tensor]:
    """Residual streams at the process tokens' positions (a BOS position is dropped)."""
    from belief_lens.activations import residual_stream

    if bos_id is not None:
        bos_col = torch.full((tokens.shape[0], 1), bos_id, dtype=tokens.dtype)
        tokens = torch.cat([bos_col, tokens], 1)
    acts = residual_stream(model, tokens, hooks, batch_size=batch_size)
    if bos_id is not None:
        acts = {h: a[:, 1:].contiguous() for h, a in acts.items()}
    return acts


def collect_probe_data(
    model: Any,
    hmm: HMM,
    n_ctx: int,
    hooks: Any = None,
    *,
    mode: Mode = "paper",
    test_fraction: float = 0.2,
    seed: int = 0,
    n_sequences: int | None = None,
    bos: bool = False,
    tokens: Tensor | None = None,
    batch_size: int = 4096,
) -> ProbeData:
    """Run the model and the belief filter once: activations, beliefs, weights and the split.

    Parameters
    ----------
    model : a TransformerLens model (``HookedTransformer`` or ``TransformerBridge``), eval mode.
    hmm : the process generating the data.
    n_ctx : positions the model reads: ``n_ctx`` process tokens, or BOS and ``n_ctx - 1``.
    hooks : hook names or ``(name, layer)`` shorthands; None means every residual-stream hook.
    mode : ``"paper"``: every length-``n_ctx`` sequence of nonzero probability, all positions,
        unweighted. ``"weighted"``: the same sequences weighted by their probability.
        ``"sampled"``: ``n_sequences`` sampled sequences (default 20,000), unweighted.
    test_fraction : fraction of *sequences* held out (a ``seed``-ed permutation); 0 for none.
    n_sequences : only for ``mode="sampled"``.
    bos : prepend a BOS token of id ``hmm.n_symbols`` (as ``belief_lens.training`` does); the
        paper's setup has none. The BOS position is left out of the probe data.
    tokens : ``[N, length]`` process sequences to use instead (``length`` is ``n_ctx``, or
        ``n_ctx - 1`` with BOS); unweighted unless ``mode="weighted"`` (then weighted by
        their probability).
    """
    from belief_lens.beliefs import belief_states, enumerate_sequences, log_probs, sample_sequences

    if mode not in ("paper", "weighted", "sampled"):
        raise BeliefLensError(f"mode must be 'paper', 'weighted' or 'sampled', got {mode!r}")
    if not 0 <= test_fraction < 1:
        raise BeliefLensError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if n_sequences is not None and (mode != "sampled" or tokens is not None):
        raise BeliefLensError(
            f"n_sequences only applies to mode='sampled' without tokens, got mode={mode!r}"
        )
    if not isinstance(bos, bool):
        raise BeliefLensError(f"bos must be True or False, got {bos!r}")
    length = int(n_ctx) - (1 if bos else 0)
    if length < 1:
        raise BeliefLensError(f"n_ctx={n_ctx} leaves no process token (bos={bos})")
    names = _resolve_hooks(model, hooks)
    weights = None
    if tokens is not None:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != length:
            raise BeliefLensError(
                f"tokens must have shape [N, {length}] (n_ctx={n_ctx}, bos={bos}), "
                f"got {tuple(tokens.shape)}"
            )
        tokens = hmm.check_tokens(tokens).long()
        beliefs = belief_states(hmm, tokens)
        if mode == "weighted":
            weights = log_probs(hmm, tokens)[:, -1].exp()
    elif mode == "sampled":
        n = 20_000 if n_sequences is None else int(n_sequences)
        if n < 2:
            raise BeliefLensError(f"n_sequences must be >= 2, got {n}")
        tokens = sample_sequences(hmm, n, length, seed)
        beliefs = belief_states(hmm, tokens)
    else:
        seqs = enumerate_sequences(hmm, length)
        tokens, beliefs = seqs.tokens, seqs.beliefs
        weights = seqs.probs if mode == "weighted" else None
    N = tokens.shape[0]
    n_test = int(round(N * test_fraction))
    if N - n_test < 1:
        raise BeliefLensError(f"test_fraction={test_fraction} leaves no training sequence of {N}")
    gen = torch.Generator().manual_seed(seed)
    test_mask = torch.zeros(N, dtype=torch.bool)
    test_mask[torch.randperm(N, generator=gen)[:n_test]] = True
    acts = _model_acts(model, tokens, names, hmm.n_symbols if bos else None, batch_size)
    return ProbeData(
        tokens=tokens,
        beliefs=beliefs,
        acts=acts,
        weights=weights,
        test_mask=test_mask,
        hmm=hmm,
        n_ctx=n_ctx,
        mode=mode,
        seed=seed,
        test_fraction=test_fraction,
        bos=bos,
        dedupe=_is_causal(model),
    )


# ----------------------------------------------------------------------------- the engine


def _probe_table(
    data: ProbeData, targets: Tensor, *, ridge: float, concat: bool, name: str, target_name: str
) -> ProbeTable:
    """Fit and score one probe per hook (and the concatenation) from cached moments."""
    hooks = data.hooks
    with_concat = concat and len(hooks) > 1
    groups = data._moments(targets, full=with_concat)
    everything = groups["train"] + groups["test"]
    sums_to_one = _sums_to_one(targets.reshape(-1, targets.shape[-1]))
    eps_x = max(_eps(a.dtype) for a in data.acts.values())
    eps_y = _eps(targets.dtype)
    widths = [data.acts[h].shape[-1] for h in hooks]
    bounds = np.cumsum([0, *widths]).tolist()
    parts = [(h, slice(lo, hi), h) for h, (lo, hi) in zip(hooks, pairwise(bounds), strict=True)]
    if with_concat:
        parts.append((CONCAT, slice(0, bounds[-1]), None))
    n_test = int(data.test_mask.sum())
    rows, probes = [], {}
    for label, cols, hook_name in parts:

        def fit(mom: _Moments, hook_name: str | None = hook_name) -> AffineProbe:
            return AffineProbe(ridge=ridge)._fit_moments(
                mom, sums_to_one=sums_to_one, eps=eps_x, eps_y=eps_y, hook_name=hook_name
            )

        train, test, whole = (m.select(cols) for m in (groups["train"], groups["test"], everything))
        split_probe = fit(train)
        all_probe = fit(whole)
        tr, te, al = (
            split_probe._score_moments(train),
            split_probe._score_moments(test),
            all_probe._score_moments(whole),
        )
        rows.append(
            {
                "hook": label,
                "d": cols.stop - cols.start,
                "n_train": len(data.tokens) - n_test,
                "n_test": n_test,
                "mse_train": tr["mse"],
                "r2_train": tr["r2"],
                "mse_test": te["mse"],
                "r2_test": te["r2"],
                "mse_all": al["mse"],
                "r2_all": al["r2"],
            }
        )
        probes[label] = all_probe
    meta = {
        "name": name,
        "targets": target_name,
        "mode": data.mode,
        "weighted": data.weights is not None,
        "n_ctx": data.n_ctx,
        "process": data.hmm.name,
        "hooks": hooks,
        "ridge": ridge,
        "test_fraction": data.test_fraction,
        "seed": data.seed,
        "bos": data.bos,
    }
    return ProbeTable(rows=rows, probes=probes, meta=meta)


def _targets(data: ProbeData, targets: Targets) -> Tensor:
    if targets == "beliefs":
        return data.beliefs
    if targets == "next_token":
        from belief_lens.beliefs import next_token_distributions

        return next_token_distributions(data.hmm, data.tokens, beliefs=data.beliefs)
    raise BeliefLensError(f"targets must be 'beliefs' or 'next_token', got {targets!r}")


_COLLECT_DEFAULTS = {
    "hooks": None,
    "mode": "paper",
    "test_fraction": 0.2,
    "n_sequences": None,
    "bos": False,
    "tokens": None,
    "batch_size": 4096,
}


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    return not isinstance(value, (Tensor, np.ndarray)) and value == default


def _get_data(
    model: Any,
    hmm: HMM | None,
    n_ctx: int | None,
    data: ProbeData | None,
    seed: int,
    targets: str = "beliefs",
    **collect: Any,
) -> ProbeData:
    """Collect, or check that the collection options don't contradict the ``data`` given."""
    if targets not in ("beliefs", "next_token"):
        raise BeliefLensError(f"targets must be 'beliefs' or 'next_token', got {targets!r}")
    if data is None:
        if model is None or hmm is None or n_ctx is None:
            raise BeliefLensError("give model, hmm and n_ctx, or data=collect_probe_data(...)")
        return collect_probe_data(model, hmm, n_ctx, seed=seed, **collect)
    clash = [k for k, v in collect.items() if not _is_default(v, _COLLECT_DEFAULTS[k])]
    if clash:
        raise BeliefLensError(
            f"{clash} given together with data=; the data fixes them (pass them to "
            "collect_probe_data instead)"
        )
    if hmm is not None and (hmm.T.shape != data.hmm.T.shape or not torch.equal(hmm.T, data.hmm.T)):
        raise BeliefLensError(f"hmm {hmm.name} is not the process data was collected from")
    if n_ctx is not None and n_ctx != data.n_ctx:
        raise BeliefLensError(f"n_ctx={n_ctx} but data was collected with n_ctx={data.n_ctx}")
    return data


def fit_probes(
    model: Any,
    hmm: HMM | None = None,
    n_ctx: int | None = None,
    hooks: Any = None,
    *,
    mode: Mode = "paper",
    test_fraction: float = 0.2,
    seed: int = 0,
    ridge: float = 0.0,
    concat: bool = True,
    n_sequences: int | None = None,
    bos: bool = False,
    targets: Targets = "beliefs",
    tokens: Tensor | None = None,
    batch_size: int = 4096,
    data: ProbeData | None = None,
) -> ProbeTable:
    """Affine probes from each residual-stream hook (and their concatenation) to beliefs.

    Collects data as ``collect_probe_data`` (see it for ``mode``, ``test_fraction``, ``seed``,
    ``n_sequences``, ``bos``, ``tokens``), or reuses ``data`` (then give only ``model``, which
    may be None, and optionally the matching ``hmm``/``n_ctx``). For each hook it fits one
    probe on the training sequences (``mse_train``, ``mse_test``) and one on every sequence
    (``mse_all``, in-sample, as the paper reports; kept in ``table.probes``). ``concat`` adds a
    row for the concatenation of all hooks (when there are two or more). ``targets="next_token"``
    fits next-token distributions instead of beliefs.

    On the paper's Mess3 checkpoint (MSE 0.000386 in-sample, 0.000388 held-out)::

        table = fit_probes(model, mess3(), 10, ["blocks.3.hook_resid_post"])
        table["blocks.3.hook_resid_post"]["mse_all"]

    To run several controls, collect once and pass ``data=``::

        data = collect_probe_data(model, mess3(), 10)
        tables = [f(model, data=data) for f in (fit_probes, shuffle_control, untrained_control)]
    """
    data = _get_data(
        model, hmm, n_ctx, data, seed, targets, hooks=hooks, mode=mode, test_fraction=test_fraction,
        n_sequences=n_sequences, bos=bos, tokens=tokens, batch_size=batch_size,
    )  # fmt: skip
    name = "probes" if targets == "beliefs" else "next_token"
    return _probe_table(
        data, _targets(data, targets), ridge=ridge, concat=concat, name=name, target_name=targets
    )


def shuffle_control(
    model: Any,
    hmm: HMM | None = None,
    n_ctx: int | None = None,
    hooks: Any = None,
    *,
    mode: Mode = "paper",
    test_fraction: float = 0.2,
    seed: int = 0,
    ridge: float = 0.0,
    concat: bool = True,
    n_sequences: int | None = None,
    bos: bool = False,
    tokens: Tensor | None = None,
    batch_size: int = 4096,
    data: ProbeData | None = None,
) -> ProbeTable:
    """``fit_probes`` with beliefs permuted across sequences *and* positions (``seed``-ed).

    No affine map can do better than predicting the mean, so MSE approaches the belief variance
    (about 0.111 for the paper's Mess3). With ``data``, ``seed`` seeds only the shuffle.
    """
    data = _get_data(
        model, hmm, n_ctx, data, seed, hooks=hooks, mode=mode, test_fraction=test_fraction,
        n_sequences=n_sequences, bos=bos, tokens=tokens, batch_size=batch_size,
    )  # fmt: skip
    S = data.beliefs.shape[-1]
    flat = data.beliefs.reshape(-1, S)
    gen = torch.Generator().manual_seed(seed + 1)
    shuffled = flat[torch.randperm(flat.shape[0], generator=gen)].reshape(data.beliefs.shape)
    return _probe_table(
        data, shuffled, ridge=ridge, concat=concat, name="shuffle", target_name="beliefs"
    )


def next_token_control(
    model: Any,
    hmm: HMM | None = None,
    n_ctx: int | None = None,
    hooks: Any = None,
    *,
    mode: Mode = "paper",
    test_fraction: float = 0.2,
    seed: int = 0,
    ridge: float = 0.0,
    concat: bool = True,
    n_sequences: int | None = None,
    bos: bool = False,
    tokens: Tensor | None = None,
    batch_size: int = 4096,
    data: ProbeData | None = None,
) -> ProbeTable:
    """``fit_probes`` with next-token distributions ``P(x_{t+1} | x_0..x_t)`` as targets.

    Where the belief geometry is more than the next-token geometry (RRXOR), beliefs hold
    structure these targets lack; compare the two tables and ``distance_r2``.
    """
    return fit_probes(
        model, hmm, n_ctx, hooks, mode=mode, test_fraction=test_fraction, seed=seed,
        ridge=ridge, concat=concat, n_sequences=n_sequences, bos=bos, targets="next_token",
        tokens=tokens, batch_size=batch_size, data=data,
    )  # fmt: skip


def untrained_control(
    model: Any,
    hmm: HMM | None = None,
    n_ctx: int | None = None,
    hooks: Any = None,
    *,
    mode: Mode = "paper",
    test_fraction: float = 0.2,
    seed: int = 0,
    ridge: float = 0.0,
    concat: bool = True,
    n_sequences: int | None = None,
    bos: bool = False,
    tokens: Tensor | None = None,
    batch_size: int = 4096,
    data: ProbeData | None = None,
) -> ProbeTable:
    """``fit_probes`` on a randomly initialised model of ``model``'s architecture.

    The architecture is read from ``model.cfg`` (``ModelConfig.from_model``) and built with
    ``belief_lens.models.toy_transformer(config, seed=seed)``. Same sequences, beliefs and split.
    """
    from belief_lens.models import ModelConfig, toy_transformer

    data = _get_data(
        model, hmm, n_ctx, data, seed, hooks=hooks, mode=mode, test_fraction=test_fraction,
        n_sequences=n_sequences, bos=bos, tokens=tokens, batch_size=batch_size,
    )  # fmt: skip
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise BeliefLensError(
            f"untrained_control needs a model with a cfg, got {type(model).__name__}"
        )
    fresh = toy_transformer(ModelConfig.from_model(model), seed=seed).eval()
    bos_id = data.hmm.n_symbols if data.bos else None
    acts = _model_acts(fresh, data.tokens, data.hooks, bos_id, batch_size)
    fresh_data = ProbeData(
        tokens=data.tokens,
        beliefs=data.beliefs,
        acts=acts,
        weights=data.weights,
        test_mask=data.test_mask,
        hmm=data.hmm,
        n_ctx=data.n_ctx,
        mode=data.mode,
        seed=data.seed,
        test_fraction=data.test_fraction,
        bos=data.bos,
        dedupe=_is_causal(fresh),
    )
    return _probe_table(
        fresh_data, data.beliefs, ridge=ridge, concat=concat, name="untrained",
        target_name="beliefs",
    )  # fmt: skip


def distance_r2(
    pred_beliefs: Float[Tensor, "... S"] | np.ndarray,
    true_beliefs: Float[Tensor, "... S"] | np.ndarray,
    true_next_token: Float[Tensor, "... V"] | np.ndarray,
    *,
    n_pairs: int = 100_000,
    seed: int = 0,
) -> dict[str, float]:
    """Does the probe output keep the belief geometry, or only the next-token geometry?

    Draws ``n_pairs`` random pairs of points (``seed``-ed, without self-pairs) and compares the
    Euclidean distance between the two probe outputs with the distance between the two true
    beliefs and between the two true next-token distributions. Each score is the R^2 of a
    least-squares line between the distances (the squared Pearson correlation), so it is
    scale-free and the two are comparable. Returns ``{"r2_beliefs", "r2_next_token",
    "n_pairs"}``.
    """
    P, _ = _to_tensor(pred_beliefs, "pred_beliefs")
    B, _ = _to_tensor(true_beliefs, "true_beliefs")
    T, _ = _to_tensor(true_next_token, "true_next_token")
    if P.shape != B.shape:
        raise BeliefLensError(
            f"pred_beliefs has shape {tuple(P.shape)} but true_beliefs has {tuple(B.shape)}"
        )
    if P.ndim < 2 or T.shape[:-1] != P.shape[:-1]:
        raise BeliefLensError(
            f"need [..., S] beliefs and [..., V] next-token distributions with equal leading "
            f"dims, got {tuple(P.shape)} and {tuple(T.shape)}"
        )
    P, B, T = (t.reshape(-1, t.shape[-1]).to("cpu", torch.float64) for t in (P, B, T))
    for t, name in ((P, "pred_beliefs"), (B, "true_beliefs"), (T, "true_next_token")):
        _check_finite(t, name)
    n = P.shape[0]
    if n < 2 or n_pairs < 2:
        raise BeliefLensError(f"need at least 2 points and 2 pairs, got {n} points, {n_pairs}")
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (n_pairs,), generator=gen)
    j = (i + torch.randint(1, n, (n_pairs,), generator=gen)) % n  # never j == i

    def dist(A: Tensor) -> Tensor:
        return (A[i] - A[j]).norm(dim=-1)

    def r2(a: Tensor, b: Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        denom = float((a @ a) * (b @ b))
        return float((a @ b) ** 2 / denom) if denom > 0 else float("nan")

    dp = dist(P)
    return {"r2_beliefs": r2(dp, dist(B)), "r2_next_token": r2(dp, dist(T)), "n_pairs": n_pairs}
