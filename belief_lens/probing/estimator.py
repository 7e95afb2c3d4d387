"""``AffineProbe``: a scikit-learn regressor from activations to beliefs, solved exactly.

The fit solves the centred normal equations of ``Moments`` (float64 sufficient statistics) on
standardised columns by an eigendecomposition (or the rows themselves by an SVD where they fit),
so the rank cut-off is set by float64 precision, not by column scales or the input dtype; the
solution is the minimum-norm one ``numpy.linalg.lstsq`` gives."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.metrics import regression_metrics, sum_zero_basis
from belief_lens.probing.moments import Moments, row_chunks
from belief_lens.probing.probe_file import PROBE_FORMAT, PROBE_TENSORS, check_probe_metadata
from belief_lens.probing.solvers import RowFactor, RowsSVD, solve_normal, solve_rows
from belief_lens.storage import load_tensors, read_metadata, refuse_existing, save_tensors
from belief_lens.tl_compat import tl_version_string
from belief_lens.version import __version__

__all__ = [
    "AffineProbe",
    "ProbeNotFittedError",
    "check_ridge",
]

BasisKind = Literal["encoding", "decoding"]
Solver = Literal["auto", "qr", "moments", "svd"]

#: Fitters that hold the distinct rows themselves (``fit_probes``) solve on them up to this many
#: activation entries, and from the moments above it.
SVD_MAX_ELEMENTS = 1 << 22

#: Targets whose rows sum to 1 within this tolerance are treated as beliefs (S - 1 free coords).
SUM_TOL = 1e-6
#: Tensors and version of the file format written by ``AffineProbe.save``.
_SAVED = PROBE_TENSORS
_FORMAT = PROBE_FORMAT


def check_ridge(ridge: Any) -> float:
    """``ridge`` as a float, or a BeliefLensError unless it is a finite number >= 0."""
    ok = not isinstance(ridge, bool) and isinstance(ridge, (int, float))
    if not ok or not math.isfinite(ridge) or ridge < 0:
        raise BeliefLensError(f"ridge must be a finite number >= 0, got {ridge!r}")
    return float(ridge)


def _to_tensor(x: Any, name: str) -> tuple[Tensor, bool]:
    """``x`` as a floating tensor (no copy where possible), and whether it came as a tensor."""
    if isinstance(x, Tensor):
        t = x.detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise BeliefLensError(f"{name} must be real floating point, got dtype {t.dtype}")
        return (t if t.dtype.is_floating_point else t.to(torch.float64)), True
    arr = np.asarray(x)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise BeliefLensError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, order="C")
    return torch.from_numpy(arr), False


def _check_finite(t: Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = torch.nonzero(~torch.isfinite(t))[0].tolist()
        raise BeliefLensError(f"{name} contains NaN or inf (first at index {bad})")


class ProbeNotFittedError(BeliefLensError, NotFittedError):
    """A probe used before ``fit``: both a BeliefLensError and scikit-learn's NotFittedError."""


def _check_fitted(probe: AffineProbe) -> None:
    try:
        check_is_fitted(probe)
    except NotFittedError as err:
        raise ProbeNotFittedError(
            f"{err} (AffineProbe is not fitted yet; call fit() first)"
        ) from None


class AffineProbe(RegressorMixin, BaseEstimator):
    """An affine map from activations to beliefs, ``beliefs ~ acts @ coef_.T + intercept_``.

    A scikit-learn regressor (multi-output): it clones, pipelines and cross-validates. Fitted by
    (optionally weighted, optionally ridge) least squares in closed form, in float64, equal to
    ``numpy.linalg.lstsq``'s minimum-norm solution. Alongside the decoder it fits the *encoding*
    map, from the free belief coordinates back to activations (Haufe et al. 2014: decoding
    "filters" read beliefs out, encoding "patterns" say where the model writes them;
    interventions use the encoding directions).

    ``fit``, ``predict`` and ``metrics`` take numpy or torch, with any leading dims for torch
    (``[..., d]``); ``predict`` answers in the caller's type (and device). ``score`` is R^2, a
    float, as every scikit-learn regressor's; ``metrics`` gives MSE, RMSE and R^2, also per target.

    Parameters
    ----------
    ridge : float
        L2 penalty ``ridge * ||coef||^2`` on the centred problem, as sklearn ``Ridge(alpha=...)``
        (not scaled by the number of rows). The same penalty regularises the encoding fit.
    fit_intercept : bool
        Centre activations and targets (weighted) and recover ``intercept_`` from the means.

    Attributes
    ----------
    coef_ : Tensor, float64, shape ``[S, d]``
        Decoding directions: ``predict(x) = x @ coef_.T + intercept_``.
    intercept_ : Tensor, float64, shape ``[S]``
    x_mean_, y_mean_ : Tensor, float64, shapes ``[d]`` and ``[S]``
        Weighted means of the training activations and targets (zero without intercept).
    n_features_in_, n_targets_ : int
    n_free_ : int
        ``S - 1`` when every target row sums to 1 (beliefs, next-token distributions), else ``S``.
    simplex_basis_ : Tensor, float64, shape ``[S, n_free_]``
        Orthonormal basis ``Q`` of the free coordinates ``z = (beliefs - y_mean_) @ Q``.
    encoding_ : Tensor, float64, shape ``[n_free_, d]``
        Encoding directions: ``acts ~ x_mean_ + z @ encoding_``.
    rank_ : int
        Numerical rank of the centred activation second moments (plus ridge).
    hook_ : str or None
        The hook the activations came from, if given to ``fit``.
    provenance_ : dict
        What ``save`` records besides the hook: process, model fingerprint (set by
        ``fit_probes``; empty after a plain ``fit``).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> acts = torch.randn(1000, 8, generator=g, dtype=torch.float64)
    >>> W = torch.randn(8, 3, generator=g, dtype=torch.float64)
    >>> beliefs = torch.softmax(acts @ W, -1)
    >>> probe = AffineProbe().fit(acts, beliefs, hook="blocks.0.hook_resid_post")
    >>> probe
    AffineProbe()
    >>> probe.coef_.shape, probe.n_free_, probe.belief_basis().shape
    (torch.Size([3, 8]), 2, torch.Size([8, 2]))
    >>> isinstance(probe.score(acts, beliefs), float), sorted(probe.metrics(acts, beliefs))[:3]
    (True, ['mse', 'mse_per_target', 'r2'])
    >>> delta = torch.tensor([0.1, -0.1, 0.0], dtype=torch.float64)
    >>> shifted = probe.predict(acts[:1] + delta @ probe.decoding_map())
    >>> torch.allclose(shifted - probe.predict(acts[:1]), delta)
    True
    """

    def __init__(
        self, *, ridge: float = 0.0, fit_intercept: bool = True, solver: Solver = "auto"
    ) -> None:
        self.ridge = ridge
        self.fit_intercept = fit_intercept
        self.solver = solver

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _check_hyperparameters(self) -> None:
        check_ridge(self.ridge)
        if self.solver not in ("auto", "qr", "moments", "svd"):
            raise BeliefLensError(
                f"solver must be 'auto', 'qr', 'moments' or 'svd', got {self.solver!r}"
            )
        if not isinstance(self.fit_intercept, bool):
            raise BeliefLensError(
                f"fit_intercept must be True or False, got {self.fit_intercept!r}"
            )

    # -- input handling
    def _rows(
        self, X: Any, y: Any = None, sample_weight: Any = None, *, reset: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None, bool, tuple[int, ...]]:
        """Validate ``X [..., d]`` (and ``y [..., S]``, weights): flat rows, whether X was a
        tensor, and X's leading shape. Arrays go through scikit-learn's ``validate_data``."""
        is_tensor = isinstance(X, Tensor)
        lead_nd: tuple[int, ...] | None = None
        if isinstance(X, np.ndarray) and X.ndim > 2:  # [..., d] arrays: validate as rows
            lead_nd = X.shape[:-1]
            if isinstance(y, np.ndarray) and y.ndim >= len(lead_nd):
                y = y.reshape(math.prod(y.shape[: len(lead_nd)]), *y.shape[len(lead_nd) :])
            if isinstance(sample_weight, np.ndarray) and sample_weight.ndim > 1:
                sample_weight = sample_weight.reshape(-1)
            X = X.reshape(-1, X.shape[-1])
        if not is_tensor:
            try:
                if y is not None or reset:
                    X, y = validate_data(
                        self, X, y, reset=reset, multi_output=True, y_numeric=True, dtype="numeric"
                    )
                else:
                    X = validate_data(self, X, reset=False, dtype="numeric")
            except ValueError as err:
                raise BeliefLensError(str(err)) from None
        Xt, _ = _to_tensor(X, "acts")
        if is_tensor and Xt.ndim == 1 and not reset:
            Xt = Xt[None]
            lead: tuple[int, ...] = ()
        else:
            lead = tuple(Xt.shape[:-1])
        if lead_nd is not None:
            Xt, lead = Xt.reshape(*lead_nd, Xt.shape[-1]), tuple(lead_nd)
        if Xt.ndim < 2:
            raise BeliefLensError(
                f"acts must have shape [..., d] with at least one leading dim, got "
                f"{tuple(Xt.shape)}; use acts[None] for a single sample"
            )
        n = math.prod(lead)
        if is_tensor and not reset and Xt.shape[-1] != self.n_features_in_:
            raise BeliefLensError(
                f"acts have d={Xt.shape[-1]} features but this probe was fit on "
                f"d={self.n_features_in_}" + (f" (hook {self.hook_})" if self.hook_ else "")
            )
        if n == 0 or Xt.shape[-1] == 0:
            raise BeliefLensError(f"acts has no rows or no features (shape {tuple(Xt.shape)})")
        Yt = None
        if y is not None:
            Yt, _ = _to_tensor(y, "beliefs")
            if lead_nd is not None:
                Yt = Yt.reshape(*lead_nd, *Yt.shape[1:])
            self._last_single = Yt.ndim == len(lead) and tuple(Yt.shape) == lead
            if self._last_single:
                Yt = Yt[..., None]
            if Yt.ndim != len(lead) + 1 or tuple(Yt.shape[:-1]) != lead:
                raise BeliefLensError(
                    f"beliefs must have shape [..., S] with the leading dims of acts: acts has "
                    f"shape {tuple(Xt.shape)} but beliefs has {tuple(Yt.shape)}"
                )
            if Yt.shape[-1] == 0:
                raise BeliefLensError(f"beliefs has no targets (shape {tuple(Yt.shape)})")
            Yt = Yt.reshape(n, Yt.shape[-1])
        w = None
        if sample_weight is not None:
            w, _ = _to_tensor(sample_weight, "sample_weight")
            if tuple(w.shape) not in (lead, (n,)):
                raise BeliefLensError(
                    f"sample_weight has shape {tuple(w.shape)} but acts has leading shape {lead} "
                    f"({n} rows); give one weight per row"
                )
            w = w.reshape(n).to(torch.float64)
            _check_finite(w, "sample_weight")
            if bool((w < 0).any()):
                raise BeliefLensError(f"sample_weight must be >= 0, got min {float(w.min()):.6g}")
            if not float(w.sum()) > 0:
                raise BeliefLensError(
                    "sample_weight sums to zero; at least one row needs a positive weight"
                )
        return Xt.reshape(n, Xt.shape[-1]), Yt, w, is_tensor, lead

    # -- fitting
    def fit(
        self,
        X: Float[Tensor, "... d"] | np.ndarray,
        y: Float[Tensor, "... S"] | np.ndarray,
        sample_weight: Float[Tensor, "..."] | np.ndarray | None = None,
        *,
        hook: str | None = None,
    ) -> AffineProbe:
        """Fit decoder and encoder on ``X [..., d]`` (activations) and ``y [..., S]`` (beliefs;
        ``[...]`` for one target); returns self. Accumulates on ``X``'s device.

        ``solver="auto"`` (or ``"qr"``) reduces the rows to their triangular factor, batch by
        batch (``RowFactor``), and solves from it: ``numpy.linalg.lstsq``'s minimum-norm
        solution at any number of rows, in memory bounded by the batch. ``"moments"`` solves the
        normal equations (faster, but they square the condition number); ``"svd"`` takes the SVD
        of all rows at once. Fitted arrays are numpy after a fit on numpy, tensors otherwise."""
        self._check_hyperparameters()
        if y is None:
            raise BeliefLensError(
                "AffineProbe requires y to be passed, but the target y is None; give beliefs"
            )
        Xt, Yt, w, is_tensor, _ = self._rows(X, y, sample_weight, reset=True)
        Yt, wt = Yt.to(Xt.device), None if w is None else w.to(Xt.device)
        if self.solver in ("auto", "qr"):
            factor = RowFactor.of(Xt, Yt, wt)
            _check_sums(factor.moments(), Xt, Yt)
            self.fit_factor(factor, hook=hook)
        else:
            moments = Moments.of(Xt, Yt, wt)
            _check_sums(moments, Xt, Yt)
            rows = (Xt, Yt, w) if self.solver == "svd" else None
            self.fit_moments(moments, hook=hook, rows=rows)
        self._single_output = self._last_single
        if not is_tensor:  # scikit-learn users read coef_ and intercept_ as numpy arrays
            for k in _SAVED:
                setattr(self, k, getattr(self, k).numpy())
        return self

    def fit_factor(self, factor: RowFactor, *, hook: str | None = None) -> AffineProbe:
        """Fit from the rows' triangular factor (streamed or all-reduced ``RowFactor``): the
        decoder solved from it exactly, the rest from its moments; returns self."""
        if not isinstance(factor, RowFactor):
            raise BeliefLensError(f"fit_factor needs a RowFactor, got {type(factor).__name__}")
        self._check_hyperparameters()
        moments = factor.moments()
        if not float(moments.w) > 0:
            raise BeliefLensError("cannot fit a probe on zero total weight")
        decoder = factor.solve(float(self.ridge), intercept=self.fit_intercept)
        return self._fit(moments, hook, decoder)

    def fit_moments(
        self,
        moments: Moments,
        *,
        hook: str | None = None,
        rows: tuple[Tensor, Tensor, Tensor | None] | None = None,
        rows_svd: RowsSVD | None = None,
    ) -> AffineProbe:
        """Fit from sufficient statistics (the engine behind ``fit_probes``, position and
        distributed probes); returns self. Results are float64 on the CPU.

        ``rows = (X [m, d], Y [m, S], weights [m] or None)``, rows whose moments are
        ``moments`` (up to rows with equal ``X`` merged into one with their summed weight and
        weighted-mean target), makes the decoder a solve on them (``numpy.linalg.lstsq``
        exactly, where the normal equations lose directions below float64 precision).
        ``rows_svd``, ``RowsSVD.of`` those rows' ``X`` about ``moments.mean_x`` (made once and
        kept by a caller that fits several targets on the same rows), replaces the factorisation
        (without a ridge, with an intercept)."""
        self._check_hyperparameters()
        if not float(moments.w) > 0:
            raise BeliefLensError("cannot fit a probe on zero total weight")
        decoder = None
        if rows is not None:
            X, Y, w = rows
            if rows_svd is not None:
                if float(self.ridge) > 0 or not self.fit_intercept:
                    raise BeliefLensError(
                        "rows_svd factors centred rows without a ridge; this probe has "
                        f"ridge={self.ridge}, fit_intercept={self.fit_intercept}"
                    )
                decoder = rows_svd.solve(Y, moments.to("cpu").mean_y)
            elif self.solver == "svd":
                decoder = self._svd_rows(moments.to("cpu"), X, Y, w)
            else:
                factor = RowFactor.of(X, Y.to(X.device), None if w is None else w.to(X.device))
                decoder = factor.solve(float(self.ridge), intercept=self.fit_intercept)
        return self._fit(moments, hook, decoder)

    def _fit(self, moments: Moments, hook: str | None, decoder: tuple[Tensor, int] | None):
        mom = moments.to("cpu")
        D, S = mom.n_features, mom.n_targets
        f64 = torch.float64
        if self.fit_intercept:
            x_mean, y_mean = mom.mean_x, mom.mean_y
        else:
            x_mean, y_mean = torch.zeros(D, dtype=f64), torch.zeros(S, dtype=f64)
        Mxx, Mxy, Myy = mom.about(x_mean, y_mean)
        B, rank = decoder if decoder is not None else solve_normal(Mxx, Mxy, float(self.ridge))
        self.coef_ = B.T.contiguous()
        self.intercept_ = y_mean - x_mean @ B
        self.rank_ = rank
        Q = sum_zero_basis(S) if _sums_to_one(mom) else torch.eye(S, dtype=f64)
        Mzz, Mzx = Q.T @ Myy @ Q, Q.T @ Mxy.T  # [k, k], [k, D]
        E, _ = solve_normal(Mzz, Mzx, float(self.ridge))
        self.x_mean_ = x_mean
        self.y_mean_ = y_mean
        self.n_features_in_ = D
        self.n_targets_ = S
        self.n_free_ = Q.shape[1]
        self.simplex_basis_ = Q
        self.encoding_ = E.contiguous()
        self.hook_ = hook
        self.provenance_ = {}
        self._single_output = False
        return self

    def _svd_rows(self, mom: Moments, X: Tensor, Y: Tensor, w: Tensor | None) -> tuple:
        """The decoder by an SVD of all the centred rows at once (``solver="svd"``)."""
        f64 = torch.float64
        X, Y = X.to("cpu", f64), Y.to("cpu", f64)
        xm = mom.mean_x if self.fit_intercept else torch.zeros(X.shape[1], dtype=f64)
        ym = mom.mean_y if self.fit_intercept else torch.zeros(Y.shape[1], dtype=f64)
        A, B = X - xm, Y - ym
        if w is not None:
            root = w.to("cpu", f64).sqrt()[:, None]
            A, B = A * root, B * root
        if float(self.ridge) > 0:
            A = torch.cat([A, torch.eye(A.shape[1], dtype=f64) * float(self.ridge) ** 0.5])
            B = torch.cat([B, B.new_zeros(A.shape[1], B.shape[1])])
        return solve_rows(A, B)

    def _param(self, name: str) -> Tensor:
        """A fitted array as a float64 tensor (numpy after a fit on numpy)."""
        return torch.as_tensor(getattr(self, name))

    # -- using the fit
    def predict(
        self, X: Float[Tensor, "... d"] | np.ndarray
    ) -> Float[Tensor, "... S"] | np.ndarray:
        """Decoded beliefs ``[..., S]`` in float64: a tensor on the input's device for a tensor,
        else a numpy array (``[n]`` when fitted on one 1-D target)."""
        _check_fitted(self)
        Xt, _, _, is_tensor, lead = self._rows(X, reset=False)
        dev = Xt.device
        B = self._param("coef_").T.to(dev)
        xm, ym = self._param("x_mean_").to(dev), self._param("y_mean_").to(dev)
        out = torch.empty(Xt.shape[0], self.n_targets_, dtype=torch.float64, device=dev)
        for rows in row_chunks(Xt.shape[0], Xt.shape[1]):
            out[rows] = (Xt[rows].to(torch.float64) - xm) @ B + ym
        if not bool(torch.isfinite(out).all()):  # cheaper than checking the input first
            _check_finite(Xt, "acts")
            raise BeliefLensError("acts are too large: the prediction overflows float64")
        out = out.reshape(*lead, self.n_targets_)
        if self._single_output:
            out = out[..., 0]
        return out if is_tensor else out.cpu().numpy()

    def metrics(
        self,
        X: Float[Tensor, "... d"] | np.ndarray,
        y: Float[Tensor, "... S"] | np.ndarray,
        sample_weight: Float[Tensor, "..."] | np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Errors on ``(X, y)``: ``mse`` (mean over rows and targets, rows weighted, as in the
        paper), ``rmse``, ``r2`` (uniform average over targets, as ``score``), and
        ``mse_per_target``, ``r2_per_target``."""
        _check_fitted(self)
        Xt, Yt, w, _, _ = self._rows(X, y, sample_weight, reset=False)
        if Yt.shape[1] != self.n_targets_:
            raise BeliefLensError(
                f"beliefs have S={Yt.shape[1]} targets but this probe was fit on "
                f"S={self.n_targets_}"
            )
        pred = self.predict(Xt)
        pred = pred.reshape(Yt.shape).cpu()
        Y = Yt.to("cpu", torch.float64)
        _check_finite(Y, "beliefs")
        if w is None:
            w_sum = float(Y.shape[0])
            ss_res = ((Y - pred) ** 2).sum(0)
            ss_tot = ((Y - Y.mean(0)) ** 2).sum(0)
        else:
            w = w.cpu()
            w_sum = float(w.sum())
            ss_res = w @ (Y - pred) ** 2
            ss_tot = w @ (Y - (w @ Y) / w_sum) ** 2
        return regression_metrics(ss_res, ss_tot, w_sum)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """R^2 on ``(X, y)``, averaged uniformly over targets (scikit-learn's ``score``)."""
        return float(self.metrics(X, y, sample_weight)["r2"])

    def metrics_moments(self, moments: Moments) -> dict[str, Any]:
        """``metrics`` from a row set's sufficient statistics, with no pass over rows."""
        _check_fitted(self)
        mom = moments.to("cpu")
        if not float(mom.w) > 0:
            zero = torch.zeros(self.n_targets_, dtype=torch.float64)
            return regression_metrics(zero, zero, 0.0)
        B, xm = self._param("coef_").T, self._param("x_mean_")
        Mxx, Mxy, Myy = mom.about(xm, self._param("y_mean_"))
        ss_res = Myy.diagonal() - 2 * (B * Mxy).sum(0) + (B * (Mxx @ B)).sum(0)
        ss_tot = mom.about(xm, mom.mean_y)[2].diagonal()
        return regression_metrics(ss_res, ss_tot, float(mom.w))

    # -- belief directions
    def encoding_map(self) -> Float[Tensor, "S d"]:
        """``Q @ encoding_``: a belief change ``delta [..., S]`` moves activations by
        ``delta @ encoding_map()`` (only its sum-zero part matters for beliefs)."""
        _check_fitted(self)
        return self._param("simplex_basis_") @ self._param("encoding_")

    def _decoding_free(self) -> Float[Tensor, "k d"]:
        return torch.linalg.pinv(self._param("simplex_basis_").T @ self._param("coef_")).T

    def decoding_map(self) -> Float[Tensor, "S d"]:
        """``Q @ pinv(Q.T @ coef_).T``: the minimum-norm activation change, in the probe's row
        space, that moves the decoded belief by ``delta``:
        ``predict(x + delta @ decoding_map()) == predict(x) + delta`` for sum-zero ``delta``."""
        _check_fitted(self)
        return self._param("simplex_basis_") @ self._decoding_free()

    def belief_basis(self, kind: BasisKind = "encoding") -> Float[Tensor, "d n_free"]:
        """An orthonormal ``[d, n_free_]`` basis of the encoding (default) or decoding directions.

        Columns are right singular vectors of the map ordered by singular value, each signed so
        that its largest-magnitude entry is positive.
        """
        _check_fitted(self)
        if kind == "encoding":
            M = self._param("encoding_")
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

    # -- persistence
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the fitted probe to ``path`` (safetensors, atomically), with JSON metadata:
        hook, feature count, hyperparameters, process, model fingerprint, versions, and the
        tensors' sha256. An existing file is kept unless ``overwrite=True``."""
        _check_fitted(self)
        refuse_existing(path, overwrite)
        tensors = {k: self._param(k) for k in _SAVED}
        meta = {
            "format": _FORMAT,
            "hook": self.hook_,
            "n_features": self.n_features_in_,
            "n_targets": self.n_targets_,
            "rank": self.rank_,
            "single_output": self._single_output,
            "params": self.get_params(),
            "provenance": self.provenance_,
            "belief_lens_version": __version__,
            "transformer_lens_version": tl_version_string(),
        }
        return save_tensors(path, tensors, {"belief_lens": json.dumps(meta)}, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> AffineProbe:
        """Read a probe written by ``save``: the metadata and shapes are checked before any
        tensor is read, and the tensors against their sha256; damage raises BeliefLensError."""
        try:
            header, shapes = read_metadata(path)
        except BeliefLensError as err:
            raise BeliefLensError(f"cannot read a probe from {path}: {err}") from None
        meta = check_probe_metadata(path, header.get("belief_lens"), shapes)
        tensors = load_tensors(path, header)
        probe = cls(**meta["params"])
        probe._check_hyperparameters()
        for k in _SAVED:
            setattr(probe, k, tensors[k].to(torch.float64))
        probe.n_features_in_ = meta["n_features"]
        probe.n_targets_ = meta["n_targets"]
        probe.n_free_ = probe.simplex_basis_.shape[1]
        probe.rank_ = meta["rank"]
        probe.hook_ = meta["hook"] if "hook" in meta else meta.get("hook_name")  # older files
        probe.provenance_ = dict(meta.get("provenance") or {})
        probe.provenance_["belief_lens_version"] = meta.get("belief_lens_version")
        probe.provenance_["transformer_lens_version"] = meta.get("transformer_lens_version")
        probe._single_output = bool(meta.get("single_output", False))
        return probe


def _check_sums(moments: Moments, X: Tensor, Y: Tensor) -> None:
    """A BeliefLensError naming the culprit when the rows' sums are not finite."""
    if not moments.is_finite():
        _check_finite(X, "acts")
        _check_finite(Y, "beliefs")
        raise BeliefLensError("acts or beliefs are too large: their squares overflow float64")


def _sums_to_one(mom: Moments) -> bool:
    """Whether every target row summed to 1 (within ``SUM_TOL``), read from the moments."""
    S = mom.n_targets
    if S < 2:
        return False
    mean_total = float(mom.mean_y.sum())
    _, _, Myy = mom.about(mom.mean_x, mom.mean_y)
    spread = float(Myy.sum()) / float(mom.w)  # weighted variance of the row sums
    return abs(mean_total - 1) <= SUM_TOL and spread <= SUM_TOL**2
