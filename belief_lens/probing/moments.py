"""Sufficient statistics of a weighted least-squares problem, the engine every probe fitter uses.

An affine probe needs only the total weight and the weighted first and second moments of the rows
``z = [x, y]``. Those add over any partition of the rows (batches, sequences, context windows,
processes of a ``torch.distributed`` job), so activations can be reduced where they are made and
thrown away. ``Moments`` holds them in float64 on the activations' device; nothing in
accumulation waits for the host.

The products are summed in float64 too. Float32 partial sums (float64 totals) were measured and
rejected: on ``bench/scale.py``'s model they cut the harvest from about 1.6x to 1.4x the hooked
forward pass, but their noise (about float32's unit roundoff of the centred sums) hides the
directions the float64 rank cut-off keeps. A rank-17 embedding window came out rank 138 and
held-out MSE moved up to 68x; with a cut-off at float32's level it still moved up to 35%.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.threads import single_thread_below

__all__ = [
    "Moments",
    "SegmentedMoments",
    "check_rows",
    "check_shift",
    "lapack_threads",
    "recentre",
    "row_chunks",
    "total",
]

#: Elements (rows x features) of one float64 chunk during accumulation (8 MiB): few enough
#: chunks that thread start-up is paid rarely, small enough to stay out of the way.
CHUNK_ELEMENTS = 1 << 20

GramBlocks = Literal["full", "diag", "none"]


#: Dense factorisations up to this size run on one CPU thread: on a small, shared machine
#: LAPACK's threads spin against each other (eigh of 1280 x 1280 took 82 s with 2 threads and
#: 3.8 s with 1 on a loaded 2-core machine), and at this size one thread is fast anyway.
#: Accumulation of up to ``THIN_GRAM_MAX`` columns runs on one thread for the same reason (a fit
#: on 590,490 x 64 took 7.5 s with 2 threads and 1.2 s with 1 on that machine).
SINGLE_THREAD_MAX = 2048
THIN_GRAM_MAX = 256


def lapack_threads(
    n: int, device: torch.device, limit: int = SINGLE_THREAD_MAX
) -> contextlib.AbstractContextManager[None]:
    """Run dense linear algebra of size ``n`` on one thread when it is on the CPU and small."""
    return single_thread_below(n, device, limit)


def row_chunks(n: int, width: int) -> Iterator[slice]:
    """Consecutive row slices of ``n`` rows, each about ``CHUNK_ELEMENTS / width`` rows."""
    step = max(512, CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def recentre(
    w: Float[Tensor, " *K"], s: Float[Tensor, "*K P"], M: Float[Tensor, "*K P P"], u: Tensor
) -> tuple[Float[Tensor, "*K P"], Float[Tensor, "*K P P"]]:
    """Sums about ``shift`` moved exactly to ``shift + u``: ``s - w u`` and
    ``M - s u^T - u s^T + w u u^T`` (leading dims ``K`` are independent sets). The one home of
    the formula ``Moments``, its centred blocks and the distributed sum use."""
    s_moved = s - w[..., None] * u
    M_moved = (
        M
        - s[..., :, None] * u[..., None, :]
        - u[..., :, None] * s[..., None, :]
        + w[..., None, None] * u[..., :, None] * u[..., None, :]
    )
    return s_moved, M_moved


@dataclass
class Moments:
    """Weighted sums of rows ``z = [x, y]`` (``n_features`` features, then targets) about ``shift``.

    ``w = sum_i w_i``, ``s = sum_i w_i (z_i - shift)`` and
    ``M = sum_i w_i (z_i - shift)(z_i - shift)^T``, all float64 on one device. ``M`` holds
    ``x^T x``, ``x^T y`` and ``y^T y`` as its blocks. The shift is any fixed point (one near the
    mean keeps the sums from cancelling); moments about different shifts still add, since
    ``recentred`` moves them exactly.

    Across processes: build every rank's moments about the same shift (``zeros(..., shift=)``)
    or call ``all_reduce``, which agrees on one first; ``tensors()`` and ``with_tensors()`` give
    the flat list of tensors to reduce with any other collective.

    >>> import torch
    >>> X, Y = torch.randn(100, 4, dtype=torch.float64), torch.rand(100, 2, dtype=torch.float64)
    >>> both = Moments.of(X[:60], Y[:60]) + Moments.of(X[60:], Y[60:])
    >>> torch.allclose(both.mean_x, X.mean(0)) and float(both.w) == 100.0
    True
    """

    w: Float[Tensor, ""]
    s: Float[Tensor, " P"]
    M: Float[Tensor, "P P"]
    shift: Float[Tensor, " P"]
    n_features: int

    # -- construction
    @classmethod
    def zeros(
        cls,
        n_features: int,
        n_targets: int,
        *,
        shift: Tensor | None = None,
        device: str | torch.device | None = None,
    ) -> Moments:
        """Empty moments of ``n_features`` features and ``n_targets`` targets about ``shift``
        (``[n_features + n_targets]``; default zero) on ``device`` (default: the shift's)."""
        P = n_features + n_targets
        shift = check_shift(shift, P, device)
        dev = shift.device
        f64 = torch.float64
        return cls(
            torch.zeros((), dtype=f64, device=dev),
            torch.zeros(P, dtype=f64, device=dev),
            torch.zeros(P, P, dtype=f64, device=dev),
            shift,
            int(n_features),
        )

    @classmethod
    def of(
        cls,
        X: Float[Tensor, "n d"],
        Y: Float[Tensor, "n S"],
        sample_weight: Float[Tensor, " n"] | None = None,
        *,
        shift: Tensor | None = None,
    ) -> Moments:
        """The moments of rows ``X [n, d]``, ``Y [n, S]`` on ``X``'s device (shift: the first
        chunk's mean, unless given)."""
        if shift is None:
            first = next(row_chunks(X.shape[0], X.shape[1] + Y.shape[1] + 1))
            shift = torch.cat(
                [X[first].to(torch.float64).mean(0), Y[first].to(X.device, torch.float64).mean(0)]
            )
            shift = torch.where(torch.isfinite(shift), shift, 0.0)
        mom = cls.zeros(X.shape[1], Y.shape[1], shift=shift, device=X.device)
        mom.update(X, Y, sample_weight)
        return mom

    def update(
        self,
        X: Float[Tensor, "n d"],
        Y: Float[Tensor, "n S"],
        sample_weight: Float[Tensor, " n"] | None = None,
    ) -> Moments:
        """Add rows ``X [n, d]``, ``Y [n, S]`` (any float dtype, any device: moved to the
        moments' device) with optional weights ``[n]``, in place; returns self.

        Each chunk is written once into a float64 buffer ``[x - shift, y - shift, 1]`` (rows
        times ``sqrt(w)``), whose Gram matrix holds every sum at once. One torch matmul per
        chunk: no host synchronisation and no second thread pool.
        """
        D, P = self.n_features, len(self.s)
        check_rows(X, Y, D, P - D, "these moments")
        dev = self.M.device
        n = X.shape[0]
        if n == 0:
            return self
        G = torch.zeros(P + 1, P + 1, dtype=torch.float64, device=dev)
        step = next(row_chunks(n, P + 1))
        buffer = torch.empty(step.stop - step.start, P + 1, dtype=torch.float64, device=dev)
        with lapack_threads(P + 1, dev, THIN_GRAM_MAX):
            for rows in row_chunks(n, P + 1):
                self._add_chunk(G, buffer, X, Y, sample_weight, rows)
        self.w += G[P, P]
        self.s += G[P, :P]
        self.M += G[:P, :P]
        return self

    def _add_chunk(  # one chunk of ``update``: [x - shift, y - shift, 1] * sqrt(w), then Z^T Z
        self, G: Tensor, buffer: Tensor, X: Tensor, Y: Tensor, w: Tensor | None, rows: slice
    ) -> None:
        D, P = self.n_features, len(self.s)
        dev = self.M.device
        Z = buffer[: rows.stop - rows.start]
        Z[:, :D] = X[rows]
        Z[:, D:P] = Y[rows]
        Z[:, :P] -= self.shift
        Z[:, P] = 1.0
        if w is not None:
            Z.mul_(w[rows].to(dev, torch.float64).sqrt()[:, None])
        G.addmm_(Z.T, Z)

    # -- the parts of a deduplicated pass (``belief_lens.probing.data``)
    def add_targets(self, Y: Float[Tensor, "m S"], w: Float[Tensor, " m"] | None) -> None:
        """Target rows ``Y`` (already shifted, float64) with weights ``w`` (None: ones): their
        weight, sums and ``y^T y``. Pair with ``add_cross`` and ``add_features``, then
        ``symmetrise``."""
        D = self.n_features
        if w is None:
            self.w += Y.shape[0]
            self.s[D:] += Y.sum(0)
            self.M[D:, D:] += Y.T @ Y
        else:
            self.w += w.sum()
            self.s[D:] += w @ Y
            self.M[D:, D:] += (Y * w[:, None]).T @ Y

    def add_cross(self, X: Float[Tensor, "m d"], wy: Float[Tensor, "m S"]) -> None:
        """``sum w y x^T`` from distinct activation rows ``X`` (shifted) and their summed
        weighted targets ``wy``."""
        self.M[self.n_features :, : self.n_features] += wy.T @ X

    def add_features(
        self,
        X: Float[Tensor, "m d"],
        count: Float[Tensor, " m"] | None,
        blocks: Sequence[int],
        gram: GramBlocks,
    ) -> None:
        """Distinct activation rows ``X`` (shifted float64; overwritten) with their summed
        weights ``count``: their sums, and ``x^T x`` on the upper block rows between ``blocks``
        (``"full"``), only its diagonal blocks (``"diag"``), or not at all (``"none"``)."""
        D = self.n_features
        self.s[:D] += X.sum(0) if count is None else count @ X
        if gram == "none":
            return
        if count is not None:
            X.mul_(count.sqrt()[:, None])
        for lo, hi in pairwise(blocks):
            right = D if gram == "full" else hi
            self.M[lo:hi, lo:right] += X[:, lo:hi].T @ X[:, lo:right]

    def symmetrise(self) -> Moments:
        """Fill ``M`` from the upper ``x^T x`` blocks and the lower ``y x^T`` block that
        ``add_features`` and ``add_cross`` write; returns self."""
        D = self.n_features
        self.M[:D, D:] = self.M[D:, :D].T
        upper = self.M[:D, :D].triu()
        self.M[:D, :D] = upper + upper.triu(1).T
        return self

    # -- algebra
    def recentred(self, shift: Tensor) -> Moments:
        """The same moments about another ``shift`` (exact)."""
        shift = shift.to(self.M.device, torch.float64)
        s, M = recentre(self.w, self.s, self.M, shift - self.shift)
        return Moments(self.w.clone(), s, M, shift, self.n_features)

    def __add__(self, other: Moments) -> Moments:
        if not isinstance(other, Moments):
            return NotImplemented
        if other.n_features != self.n_features or other.s.shape != self.s.shape:
            raise BeliefLensError(
                f"cannot add moments of {other.n_features} features and "
                f"{len(other.s) - other.n_features} targets to {self.n_features} and "
                f"{self.n_targets}"
            )
        if other.shift is not self.shift and not torch.equal(other.shift, self.shift):
            other = other.recentred(self.shift)
        return Moments(
            self.w + other.w, self.s + other.s, self.M + other.M, self.shift, self.n_features
        )

    def tensors(self) -> list[Tensor]:
        """``[w, s, M]``: the tensors a sum over processes reduces (the shift must agree)."""
        return [self.w, self.s, self.M]

    def with_tensors(self, tensors: Sequence[Tensor]) -> Moments:
        """These moments with ``[w, s, M]`` replaced (after an ``all_reduce`` of ``tensors()``)."""
        w, s, M = tensors
        return Moments(w, s, M, self.shift, self.n_features)

    def all_reduce(self, group: Any = None) -> Moments:
        """Sum these moments over the processes of ``group`` (``torch.distributed``), in place.

        Ranks first agree on one shift (the mean of theirs) and recentre to it, so each rank may
        have chosen its own. Every rank ends with the same moments. Returns self.
        """
        import torch.distributed as dist

        world = dist.get_world_size(group)
        shift = self.shift.clone()
        dist.all_reduce(shift, group=group)
        shift /= world
        moved = self.recentred(shift)
        for t in moved.tensors():
            dist.all_reduce(t, group=group)
        self.w, self.s, self.M, self.shift = moved.w, moved.s, moved.M, moved.shift
        return self

    def to(self, device: str | torch.device) -> Moments:
        """A copy on ``device``."""
        return Moments(
            self.w.to(device),
            self.s.to(device),
            self.M.to(device),
            self.shift.to(device),
            self.n_features,
        )

    def select(self, features: slice) -> Moments:
        """The moments of a subset of feature columns (one hook inside a concatenation)."""
        D = self.n_features
        dev = self.s.device
        idx = torch.cat(
            [torch.arange(D, device=dev)[features], torch.arange(D, len(self.s), device=dev)]
        )
        n = len(idx) - self.n_targets
        return Moments(self.w, self.s[idx], self.M[idx][:, idx], self.shift[idx], n)

    # -- reading
    @property
    def n_targets(self) -> int:
        return len(self.s) - self.n_features

    @property
    def mean_x(self) -> Float[Tensor, " d"]:
        """Weighted mean of the features."""
        return (self.shift + self.s / self.w)[: self.n_features]

    @property
    def mean_y(self) -> Float[Tensor, " S"]:
        """Weighted mean of the targets."""
        return (self.shift + self.s / self.w)[self.n_features :]

    def about(self, cx: Tensor, cy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Second moments ``sum w (a - c_a)(b - c_b)^T`` about centres ``cx, cy``: xx, xy, yy."""
        u = torch.cat([cx, cy]).to(self.M.device, torch.float64) - self.shift
        _, Mc = recentre(self.w, self.s, self.M, u)
        D = self.n_features
        return Mc[:D, :D], Mc[:D, D:], Mc[D:, D:]

    def is_finite(self) -> bool:
        """Whether every sum is finite (one host synchronisation)."""
        return bool(torch.isfinite(self.M).all() & torch.isfinite(self.s).all())


def check_shift(
    shift: Tensor | None, P: int, device: str | torch.device | None
) -> Float[Tensor, " P"]:
    """A shift of ``P = n_features + n_targets`` entries as float64 on ``device`` (zero when
    None), or a BeliefLensError naming the shape that came."""
    if shift is None:
        return torch.zeros(P, dtype=torch.float64, device=device)
    shift = torch.as_tensor(shift).to(device=device, dtype=torch.float64)
    if tuple(shift.shape) != (P,):
        raise BeliefLensError(
            f"shift must have shape [{P}] (n_features + n_targets), got {tuple(shift.shape)}"
        )
    return shift


def check_rows(X: Tensor, Y: Tensor, n_features: int, n_targets: int, what: str) -> None:
    """A BeliefLensError unless ``X [n, n_features]`` and ``Y [n, n_targets]`` are rows that
    ``what`` (a set of sufficient statistics) can take."""
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise BeliefLensError(
            f"update needs X [n, d] and Y [n, S] with equal n, got {tuple(X.shape)} and "
            f"{tuple(Y.shape)}"
        )
    if X.shape[1] != n_features or Y.shape[1] != n_targets:
        raise BeliefLensError(
            f"{what} hold {n_features} features and {n_targets} targets, got X with "
            f"{X.shape[1]} and Y with {Y.shape[1]}"
        )


def total(moments: Sequence[Moments]) -> Moments:
    """The sum of one or more ``Moments`` of disjoint rows (about the first one's shift)."""
    if not moments:
        raise BeliefLensError("total() needs at least one Moments")
    out = moments[0]
    for m in moments[1:]:
        out = out + m
    return out


class SegmentedMoments:
    """``Moments`` of consecutive row segments, accumulated together: the engine batched over
    context windows and the sides of a split.

    Segment ``j`` is side ``j % sides`` of window ``j // sides``. Each batch arrives as rows
    ordered by segment with host-side ``bounds`` (``len = n_segments + 1``), so every row lands in
    exactly one Gram matrix ``[x - shift, y - shift, 1]`` by slicing, never by a boolean mask
    (which waits for the device on CUDA). The sides of a window share one shift (the mean of the
    window's rows in the first batch), so their moments add.
    """

    def __init__(
        self,
        n_windows: int,
        sides: int,
        n_features: int,
        n_targets: int,
        device: str | torch.device | None = None,
    ) -> None:
        self.n_windows, self.sides, self.n_features = int(n_windows), int(sides), int(n_features)
        P = n_features + n_targets
        self.gram = torch.zeros(n_windows, sides, P + 1, P + 1, dtype=torch.float64, device=device)
        self.shift: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.gram.device

    def add(self, X: Float[Tensor, "m d"], Y: Float[Tensor, "m S"], bounds: Sequence[int]) -> None:
        """Rows ``X``, ``Y`` (any float dtype; on the engine's device) ordered by segment, with
        segment ``j`` at rows ``bounds[j]:bounds[j + 1]``."""
        P = self.gram.shape[-1] - 1
        D = self.n_features
        if len(bounds) != self.n_windows * self.sides + 1:
            raise BeliefLensError(
                f"bounds must have n_windows * sides + 1 = {self.n_windows * self.sides + 1} "
                f"entries, got {len(bounds)}"
            )
        Z = torch.empty(X.shape[0], P + 1, dtype=torch.float64, device=self.device)
        Z[:, :D] = X
        Z[:, D:P] = Y
        per_window = [
            (bounds[k * self.sides], bounds[(k + 1) * self.sides]) for k in range(self.n_windows)
        ]
        if self.shift is None:
            self.shift = torch.stack([Z[lo:hi, :P].mean(0) for lo, hi in per_window])
            self.shift = torch.where(torch.isfinite(self.shift), self.shift, 0.0)
        for k, (lo, hi) in enumerate(per_window):
            Z[lo:hi, :P] -= self.shift[k]
        Z[:, P] = 1.0
        G = self.gram.view(-1, P + 1, P + 1)
        with lapack_threads(P + 1, self.device, THIN_GRAM_MAX):
            for j, (start, stop) in enumerate(pairwise(bounds)):
                if stop > start:
                    G[j].addmm_(Z[start:stop].T, Z[start:stop])

    def moments(self) -> list[list[Moments]]:
        """``[window][side]`` ``Moments`` (views of the Gram matrices; zero before any rows)."""
        P = self.gram.shape[-1] - 1
        shift = self.shift
        if shift is None:
            shift = torch.zeros(self.n_windows, P, dtype=torch.float64, device=self.device)
        return [
            [Moments(G[P, P], G[P, :P], G[:P, :P], shift[k], self.n_features) for G in self.gram[k]]
            for k in range(self.n_windows)
        ]
