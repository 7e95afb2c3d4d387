"""Exact least-squares solvers for probes, and ``RowFactor``: the triangular factor of the rows,
accumulated batch by batch (tall-skinny QR) so no solve ever squares the condition number.

``solve_rows`` is the minimum-norm solution ``numpy.linalg.lstsq`` gives; ``RowFactor`` reduces
any number of rows, streamed or spread over the processes of a ``torch.distributed`` job, to the
small factor that solve needs; ``solve_normal`` solves from second moments (Gram matrices), for
the fitters that only have those.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.probing.moments import (
    THIN_GRAM_MAX,
    Moments,
    check_rows,
    check_shift,
    lapack_threads,
    row_chunks,
)

__all__ = ["RANK_TOL_FACTOR", "RowFactor", "RowsSVD", "solve_normal", "solve_rows"]

_EPS64 = float(np.finfo(np.float64).eps)
#: Eigenvalues of the standardised Gram matrix below ``RANK_TOL_FACTOR * d * eps64`` times the
#: largest are numerical zero: the float64 sums themselves are exact only to about that.
RANK_TOL_FACTOR = 10.0


def solve_normal(
    A: Float[Tensor, "d d"], B: Float[Tensor, "d S"], ridge: float = 0.0
) -> tuple[Float[Tensor, "d S"], int]:
    """Minimum-norm solution of ``(A + ridge I) X = B`` for a symmetric PSD ``A``, and its rank.

    Columns are standardised by ``sqrt(diag(A) + ridge)`` before the eigendecomposition, so the
    cut-off (``RANK_TOL_FACTOR * d * eps64`` of the largest eigenvalue) is scale-invariant;
    directions it drops are projected out in the original coordinates (the minimum-norm
    solution). Zero-variance columns get coefficient 0.
    """
    d = A.shape[0]
    A = A + ridge * torch.eye(d, dtype=A.dtype, device=A.device)
    diag = A.diagonal().clamp_min(0)
    live = diag > 0
    X = torch.zeros(d, B.shape[1], dtype=A.dtype, device=A.device)
    if not bool(live.any()):
        return X, 0
    idx = torch.nonzero(live).flatten()
    scale = diag[idx].sqrt()
    As = A[idx][:, idx] / torch.outer(scale, scale)
    Bs = B[idx] / scale[:, None]
    with lapack_threads(len(idx), As.device):
        evals, evecs = torch.linalg.eigh(As)
        top = float(evals[-1])
        keep = evals > RANK_TOL_FACTOR * len(idx) * _EPS64 * top
        V = evecs[:, keep]
        Xs = V @ ((V.T @ Bs) / evals[keep][:, None])
        sol = Xs / scale[:, None]
        dropped = evecs[:, ~keep]
        if dropped.shape[1]:  # project the null directions out in original coordinates
            K, _ = torch.linalg.qr(dropped / scale[:, None])
            sol = sol - K @ (K.T @ sol)
    X[idx] = sol
    return X, int(keep.sum())


def solve_rows(
    A: Float[Tensor, "n d"], B: Float[Tensor, "n S"], n_rows: int | None = None
) -> tuple[Tensor, int]:
    """Minimum-norm least-squares ``X`` of ``A X ~ B`` by an SVD of column-standardised ``A``
    (cut-off: ``eps64 * max(n, d)`` of the largest singular value, as ``numpy.linalg.lstsq``),
    and its rank. The solution is projected onto ``A``'s row space in the original coordinates,
    which makes it the minimum-norm one there. ``n_rows`` replaces ``n`` in the cut-off when
    ``A`` is a factor of that many rows (``RowFactor``)."""
    d = A.shape[1]
    X = torch.zeros(d, B.shape[1], dtype=A.dtype)
    norms = A.norm(dim=0)
    live = norms > 0
    if not bool(live.any()):
        return X, 0
    idx = torch.nonzero(live).flatten()
    scale = norms[idx]
    As = A[:, idx] / scale
    cut = _EPS64 * max(n_rows or 0, *As.shape)
    with lapack_threads(max(As.shape), As.device):
        sol = _full_rank_triangular(As, B, cut)
        if sol is not None:
            X[idx] = sol / scale[:, None]
            return X, len(idx)
        rows = As.any(1) | B.any(1)  # zero rows add nothing: a factor of fewer rows than columns
        if not bool(rows.all()):
            As, B = As[rows], B[rows]
        U, sv, V = _svd(As, cut)
        sol = _svd_solution(U, sv, V, scale, _row_space(V, scale), B)
    X[idx] = sol
    return X, V.shape[1]


def _svd(As: Tensor, cut: float) -> tuple[Tensor, Tensor, Tensor]:
    """The thin SVD of ``As`` without the singular values at or below ``cut`` of the largest:
    ``U [m, k]``, ``sv [k]``, ``V [d, k]``."""
    U, sv, Vh = torch.linalg.svd(As, full_matrices=False)
    k = int((sv > cut * sv[0]).sum())
    return U[:, :k], sv[:k], Vh[:k].T


def _row_space(V: Tensor, scale: Tensor) -> Tensor | None:
    """An orthonormal basis of the rows' span in the original (unstandardised) coordinates,
    where the minimum-norm solution lies; None at full rank (no projection needed)."""
    if V.shape[1] == V.shape[0]:
        return None
    return torch.linalg.qr(V * scale[:, None])[0]


def _svd_solution(
    U: Tensor, sv: Tensor, V: Tensor, scale: Tensor, basis: Tensor | None, B: Tensor
) -> Tensor:
    sol = (V @ ((U.T @ B) / sv[:, None])) / scale[:, None]
    return sol if basis is None else basis @ (basis.T @ sol)


@dataclass(frozen=True)
class RowsSVD:
    """The minimum-norm least-squares inverse of centred, weighted rows ``(x - mean) sqrt(w)``,
    from their column-standardised truncated SVD: ``solve_rows`` on these rows for any targets
    is one product. The probe tables of one dataset (the model's, the shuffled and the
    next-token control) share their rows and differ only in targets, so one factorisation
    serves them all; it keeps one ``[d, m]`` matrix.

    >>> X, Y = torch.randn(50, 80, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    >>> f = RowsSVD.of(X, X.mean(0))
    >>> coef, rank = f.solve(Y, Y.mean(0))
    >>> ref = torch.linalg.lstsq(X - X.mean(0), Y - Y.mean(0), driver="gelsd").solution
    >>> torch.allclose(coef, ref), rank
    (True, 49)
    """

    mean: Float[Tensor, " d"]
    root_w: Float[Tensor, " m"] | None
    live: Tensor
    inverse: Float[Tensor, "live m"]
    rank: int

    @classmethod
    def of(
        cls,
        X: Float[Tensor, "m d"],
        mean: Float[Tensor, " d"],
        sample_weight: Float[Tensor, " m"] | None = None,
    ) -> RowsSVD:
        """Factor the rows ``X`` about ``mean`` with weights ``sample_weight`` (float64, CPU)."""
        f64 = torch.float64
        mean = mean.to("cpu", f64)
        A = X.to("cpu", f64) - mean
        root = None if sample_weight is None else sample_weight.to("cpu", f64).sqrt()
        if root is not None:
            A = A * root[:, None]
        norms = A.norm(dim=0)
        live = torch.nonzero(norms > 0).flatten()
        if len(live) == 0:
            return cls(mean, root, live, A.new_zeros(0, A.shape[0]), 0)
        scale = norms[live]
        As = A[:, live] / scale
        with lapack_threads(max(As.shape), As.device):
            U, sv, V = _svd(As, _EPS64 * max(As.shape))
            inverse = (V / sv) @ U.T / scale[:, None]  # [live, m]
            basis = _row_space(V, scale)
            if basis is not None:
                inverse = basis @ (basis.T @ inverse)
        return cls(mean, root, live, inverse, V.shape[1])

    @property
    def nbytes(self) -> int:
        return self.inverse.numel() * self.inverse.element_size()

    def solve(self, Y: Float[Tensor, "m S"], y_mean: Float[Tensor, " S"]) -> tuple[Tensor, int]:
        """``solve_rows`` of the factored rows against ``Y`` about ``y_mean``: the minimum-norm
        coefficients ``[d, S]`` and the rank."""
        B = Y.to("cpu", torch.float64) - y_mean.to("cpu", torch.float64)
        if self.root_w is not None:
            B = B * self.root_w[:, None]
        X = B.new_zeros(len(self.mean), B.shape[1])
        X[self.live] = self.inverse @ B
        return X, self.rank


def _full_rank_triangular(A: Tensor, B: Tensor, cut: float) -> Tensor | None:
    """``solve_rows``'s answer by back substitution where ``A`` is upper trapezoidal (a
    ``RowFactor``'s block) and provably of full rank under its cut-off: ``sigma_max / sigma_min
    <= d * kappa_1``, with the 1-norm condition number ``kappa_1`` computed exactly from the
    inverse, below ``1 / cut``, so the SVD would keep every singular value; there its solution
    is this one. ``O(d^3 / 3)`` against the SVD's several ``d^3``; None otherwise."""
    d = A.shape[1]
    T = A[:d]
    if A.shape[0] < d or bool(A[d:].any()) or not torch.equal(T, T.triu()):
        return None
    if not bool(T.diagonal().abs().min() > 0):
        return None
    inv = torch.linalg.solve_triangular(T, torch.eye(d, dtype=T.dtype, device=T.device), upper=True)
    kappa_1 = float(T.abs().sum(0).max() * inv.abs().sum(0).max())
    if not d * kappa_1 * cut < 1:
        return None
    return torch.linalg.solve_triangular(T, B[:d], upper=True)


def _first_chunk_mean(X: Tensor, Y: Tensor) -> Float[Tensor, " P"]:
    first = next(row_chunks(X.shape[0], X.shape[1] + Y.shape[1] + 1))
    f64 = torch.float64
    shift = torch.cat([X[first].to(f64).mean(0), Y[first].to(X.device, f64).mean(0)])
    return torch.where(torch.isfinite(shift), shift, 0.0)


@dataclass
class RowFactor:
    """The upper-triangular ``R`` of the rows ``[1, x - shift, y - shift] * sqrt(w)``.

    ``Z = Q R`` with orthonormal ``Q``, so ``R`` answers every least-squares question about the
    rows: its block after the first row and column is the factor of the weighted, centred
    ``[x, y]`` (the first column is the intercept), and ``R^T R`` is their Gram matrix. Rows
    arrive in batches (``update``: a QR of ``[R; batch]``), factors of disjoint rows merge by a
    QR of the stacked factors (``+``, ``all_reduce``), and the probe's decoder is solved from
    ``R`` by an SVD (``solve``), so the condition number is never squared as in the normal
    equations. Float64, ``(1 + P)^2`` numbers for ``P`` features and targets, on the rows'
    device.

    >>> X, Y = torch.randn(1000, 4, dtype=torch.float64), torch.randn(1000, 2, dtype=torch.float64)
    >>> both = RowFactor.of(X[:600], Y[:600]) + RowFactor.of(X[600:], Y[600:])
    >>> coef, rank = both.solve()
    >>> Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    >>> torch.allclose(coef, torch.linalg.lstsq(Xc, Yc).solution), rank
    (True, 4)
    """

    R: Float[Tensor, "Q Q"]
    shift: Float[Tensor, " P"]
    n_features: int
    n_rows: int = 0

    @classmethod
    def zeros(
        cls,
        n_features: int,
        n_targets: int,
        *,
        shift: Tensor | None = None,
        device: str | torch.device | None = None,
    ) -> RowFactor:
        """The factor of no rows, about ``shift`` (``[n_features + n_targets]``; default 0)."""
        P = int(n_features) + int(n_targets)
        shift = check_shift(shift, P, device)
        R = torch.zeros(P + 1, P + 1, dtype=torch.float64, device=shift.device)
        return cls(R, shift, int(n_features))

    @classmethod
    def of(
        cls,
        X: Float[Tensor, "n d"],
        Y: Float[Tensor, "n S"],
        sample_weight: Float[Tensor, " n"] | None = None,
        *,
        shift: Tensor | None = None,
    ) -> RowFactor:
        """The factor of rows ``X``, ``Y`` (weights optional) on ``X``'s device, about the first
        chunk's mean unless ``shift`` is given."""
        if shift is None:
            shift = _first_chunk_mean(X, Y)
        out = cls.zeros(X.shape[1], Y.shape[1], shift=shift, device=X.device)
        return out.update(X, Y, sample_weight)

    @property
    def n_targets(self) -> int:
        return len(self.shift) - self.n_features

    def update(
        self,
        X: Float[Tensor, "n d"],
        Y: Float[Tensor, "n S"],
        sample_weight: Float[Tensor, " n"] | None = None,
    ) -> RowFactor:
        """Add rows (any float dtype and device; weights ``>= 0``) in place; returns self."""
        D, P = self.n_features, len(self.shift)
        check_rows(X, Y, D, P - D, "this factor's rows")
        dev = self.R.device
        empty = self.n_rows == 0
        self.n_rows += X.shape[0]
        with lapack_threads(P + 1, dev, THIN_GRAM_MAX):
            for rows in _batches(X.shape[0], P + 1):
                m = rows.stop - rows.start
                alone = empty  # nothing to stack under yet
                empty = False
                Z = torch.empty(m + (0 if alone else P + 1), P + 1, dtype=torch.float64, device=dev)
                if not alone:
                    Z[: P + 1] = self.R
                body = Z[Z.shape[0] - m :]
                body[:, 0] = 1.0
                body[:, 1 : D + 1] = X[rows]
                body[:, D + 1 :] = Y[rows]
                body[:, 1:] -= self.shift
                if sample_weight is not None:
                    body.mul_(sample_weight[rows].to(dev, torch.float64).sqrt()[:, None])
                R = torch.linalg.qr(Z, mode="r")[1]
                if R.shape[0] < P + 1:  # fewer rows than columns: exact zero rows below them
                    R = torch.cat([R, R.new_zeros(P + 1 - R.shape[0], P + 1)])
                self.R = R[: P + 1]
        return self

    def recentred(self, shift: Tensor) -> RowFactor:
        """The same rows about another ``shift`` (exact: only the first row of ``R`` moves)."""
        shift = shift.to(self.R.device, torch.float64)
        R = self.R.clone()
        R[0, 1:] -= R[0, 0] * (shift - self.shift)
        return RowFactor(R, shift, self.n_features, self.n_rows)

    def __add__(self, other: RowFactor) -> RowFactor:
        if not isinstance(other, RowFactor):
            return NotImplemented
        if other.n_features != self.n_features or other.shift.shape != self.shift.shape:
            raise BeliefLensError(
                f"cannot merge a factor of {other.n_features} features and {other.n_targets} "
                f"targets into one of {self.n_features} and {self.n_targets}"
            )
        if not torch.equal(other.shift, self.shift):
            other = other.recentred(self.shift)
        merged = _stack_qr([self.R, other.R])
        return RowFactor(merged, self.shift, self.n_features, self.n_rows + other.n_rows)

    def all_reduce(self, group: Any = None) -> RowFactor:
        """Merge the factors of every process of ``group`` (``torch.distributed``) in place:
        ranks agree on one shift, gather their factors and take the QR of the stack in rank
        order, so every rank ends with the same bits. Returns self."""
        import torch.distributed as dist

        world = dist.get_world_size(group)
        shared = torch.cat([self.shift, self.shift.new_tensor([self.n_rows])])
        dist.all_reduce(shared, group=group)
        moved = self.recentred(shared[:-1] / world)
        parts = [torch.empty_like(moved.R) for _ in range(world)]
        dist.all_gather(parts, moved.R.contiguous(), group=group)
        self.R, self.shift, self.n_rows = _stack_qr(parts), moved.shift, int(shared[-1])
        return self

    def moments(self) -> Moments:
        """The rows' ``Moments`` (``R^T R``: weight, sums and second moments about the shift)."""
        G = self.R.T @ self.R
        return Moments(G[0, 0], G[0, 1:].clone(), G[1:, 1:].clone(), self.shift, self.n_features)

    def centred(self) -> Float[Tensor, "P P"]:
        """The factor of the weighted, centred ``[x, y]``: ``R`` without the intercept."""
        return self.R[1:, 1:]

    def solve(
        self, ridge: float = 0.0, *, intercept: bool = True
    ) -> tuple[Float[Tensor, "d S"], int]:
        """The minimum-norm coefficients ``[d, S]`` of the least-squares problem ``x -> y``,
        centred (with an intercept) unless ``intercept=False``, with a ``ridge`` penalty
        ``ridge * ||coef||^2`` solved as extra rows; and the rank."""
        D = self.n_features
        if intercept:
            Rc = self.centred()
        else:  # about the origin: the whole factor, the intercept column dropped
            Rc = self.recentred(torch.zeros_like(self.shift)).R[:, 1:]
        A, B = Rc[:, :D], Rc[:, D:]
        if ridge > 0:
            eye = torch.eye(D, dtype=A.dtype, device=A.device) * ridge**0.5
            A = torch.cat([A, eye])
            B = torch.cat([B, B.new_zeros(D, B.shape[1])])
        return solve_rows(A.cpu(), B.cpu(), self.n_rows)


def _batches(n: int, width: int) -> Iterator[slice]:
    """Row batches for the factor's QR updates: ``row_chunks``, but at least four times the
    factor's height, so re-factoring ``R`` with each batch costs at most a quarter more."""
    step = max(next(row_chunks(1 << 62, width)).stop, 4 * width)
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _stack_qr(factors: list[Tensor]) -> Tensor:
    with lapack_threads(factors[0].shape[0], factors[0].device):
        return torch.linalg.qr(torch.cat(factors), mode="r")[1]
