"""Layer sweeps: one probe per hook and one on their concatenation, scored held out first."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from belief_lens.beliefs import next_token_distributions
from belief_lens.errors import BeliefLensError
from belief_lens.metrics import mean_se, regression_metrics
from belief_lens.probing.data import CONCAT, ProbeData, prefix_counts, prefix_folds
from belief_lens.probing.estimator import AffineProbe, check_ridge
from belief_lens.probing.moments import Moments, total
from belief_lens.probing.prefixes import PrefixActs, acts_at, acts_dim
from belief_lens.probing.solvers import RowsSVD
from belief_lens.probing.table import ProbeTable, overfit_reason
from belief_lens.threads import recheck

__all__ = [
    "fit_probes",
    "fold_labels",
    "out_of_fold_predictions",
    "predict_concatenation",
    "probe_table",
    "targets_for",
]

Targets = Literal["beliefs", "next_token"]

#: Cross-validation folds by prefix, the default for every probe table.
DEFAULT_FOLDS = 5

#: Row factorisations kept with a ``ProbeData`` for the next table on it, at most this many bytes.
SHARED_FACTOR_BYTES = 1 << 28


def targets_for(data: ProbeData, targets: Targets) -> Float[Tensor, "N L S"]:
    """The target tensor ``[N, L, S]`` named by ``targets``: beliefs or next-token
    distributions."""
    if targets == "beliefs":
        return data.beliefs
    if targets == "next_token":
        return next_token_distributions(data.hmm, data.tokens, beliefs=data.beliefs)
    raise BeliefLensError(f"targets must be 'beliefs' or 'next_token', got {targets!r}")


def fold_labels(data: ProbeData, n_folds: int | None) -> tuple[Tensor, int, list[int]]:
    """Group labels ``[N, L]``, their number, and the held-out groups: the folds of
    ``prefix_folds`` (rows never held out form the last group), or the two sides of the split."""
    if n_folds is None:
        return data.test_mask.long(), 2, [1]
    folds = prefix_folds(data.tokens, n_folds, data.seed)
    return torch.where(folds < 0, n_folds, folds), n_folds + 1, list(range(n_folds))


def _prefix_counts(data: ProbeData, labels: Tensor, held: list[int]) -> dict[str, int]:
    """Distinct training prefixes (the fewest over folds) and held-out prefixes (all folds)."""
    per_fold = [prefix_counts(data.tokens, labels == k) for k in held]
    return {
        "train": min(sum(a for a, _ in c) for c in per_fold),
        "test": sum(b for c in per_fold for _, b in c),
    }


def probe_table(
    data: ProbeData,
    targets: Float[Tensor, "N L S"],
    *,
    ridge: float = 0.0,
    concat: bool = True,
    n_folds: int | None = DEFAULT_FOLDS,
    name: str = "probes",
    target_name: str = "beliefs",
) -> ProbeTable:
    """Fit and score one probe per hook (and the concatenation) on ``targets [N, L, S]``,
    cross-validated over ``n_folds`` folds by prefix (None: the one split of ``data``)."""
    if not isinstance(data, ProbeData):
        raise BeliefLensError(
            f"expected ProbeData (from collect_probe_data), got {type(data).__name__}"
        )
    ridge = check_ridge(ridge)
    hooks = data.hooks
    with_concat = bool(concat) and len(hooks) > 1
    labels, n_groups, held = fold_labels(data, n_folds)
    groups = data.moments(targets, labels, n_groups, concat=with_concat)
    distinct = data.distinct_rows(targets, labels, n_groups) if ridge == 0 else None
    bounds = np.cumsum([0, *(acts_dim(data.acts, h) for h in hooks)]).tolist()
    parts = [(h, slice(lo, hi), h) for h, (lo, hi) in zip(hooks, pairwise(bounds), strict=True)]
    if with_concat:
        parts.append((CONCAT, slice(0, bounds[-1]), None))
    counts = _prefix_counts(data, labels, held)
    n_eff = data.effective_n(torch.where(torch.isin(labels, torch.tensor(held)), 0, -1))
    provenance = {"process": data.hmm.name, "model_fingerprint": data.model_fingerprint}
    grouping = hashlib.sha256(labels.cpu().numpy().tobytes()).hexdigest()[:16]
    memo = data.memo("rows-svd")
    rows, probes, fold_probes = [], {}, {}
    for label, cols, hook in parts:
        shared = (memo, (grouping, cols.start, cols.stop))
        folds = _Folds([m.select(cols) for m in groups], held, distinct, cols, shared)
        features = cols.stop - cols.start
        scores, probes[label], fold_probes[label] = folds.fit(
            hook, ridge, features, counts["train"]
        )
        probes[label].provenance_ = dict(provenance, hooks=hooks if hook is None else [label])
        row = {"hook": label, "features": features}
        row.update(train_prefixes=counts["train"], test_prefixes=counts["test"])
        for key, value in scores.items():
            row[key] = value
            if key == "folds":
                row["n_eff_heldout"] = n_eff
        rows.append(row)
    meta = {
        "name": name,
        "targets": target_name,
        "mode": data.mode,
        "weighted": data.weights is not None,
        "weighting": data.weighting,
        "n_ctx": data.n_ctx,
        "process": data.hmm.name,
        "hooks": hooks,
        "ridge": ridge,
        "folds": len(held) if n_folds is not None else None,
        "test_fraction": data.test_fraction if n_folds is None else None,
        "seed": data.seed,
        "bos": data.bos,
        "model_fingerprint": data.model_fingerprint,
    }
    return ProbeTable(rows=rows, probes=probes, meta=meta, fold_probes=fold_probes)


class _Folds:
    """One row's fits: a probe per held-out group (trained on every other group), scored on
    its own rows and on the held-out group, and the all-rows probe (in-sample, the paper's
    number), scored on everything and on each held-out group (the same rows)."""

    def __init__(
        self,
        groups: list[Moments],
        held: list[int],
        distinct: list[tuple] | None,
        cols: slice,
        shared: tuple[dict, tuple],
    ) -> None:
        self.groups, self.held = groups, held
        self.rows = None if distinct is None else [(X[:, cols], c, Y, w) for X, c, Y, w in distinct]
        self.memo, self.key = shared

    def _pool(self, which: list[int]) -> tuple[Moments, tuple | None]:
        """The groups ``which`` together: summed moments, and their distinct rows
        ``(X, Y, weights)`` with the within-prefix target deviation (None without rows)."""
        moments = total([self.groups[j] for j in which])
        if self.rows is None:
            return moments, None
        parts = [self.rows[j] for j in which]
        X, c, Y = (torch.cat([p[i] for p in parts]) for i in range(3))
        return moments, ((X, Y, c), sum(p[3] for p in parts))

    def _fit(
        self, which: list[int], pooled: tuple[Moments, tuple | None], hook: str | None, ridge: float
    ) -> AffineProbe:
        recheck()  # a fold's fit is a unit of work: the stage's threads are re-decided between them
        moments, rows = pooled
        sub = None if rows is None else rows[0]
        wide = sub is not None and sub[0].shape[0] <= 2 * sub[0].shape[1]
        svd = self._factor(which, sub, moments) if wide and ridge == 0 else None
        return AffineProbe(ridge=ridge).fit_moments(moments, hook=hook, rows=sub, rows_svd=svd)

    def _factor(self, which: list[int], rows: tuple, moments: Moments) -> RowsSVD:
        """The rows' factorisation, shared with every table fitted on the same data, grouping
        and columns (their rows are equal; only the targets differ), within
        ``SHARED_FACTOR_BYTES``. Used where rows are at most twice the columns (the RRXOR
        concatenation: 1,280 columns on about 1,000 prefixes), where a factorisation is costly;
        taller rows are refactored, cheaply, by ``RowFactor``."""
        key = (*self.key, tuple(which))
        mean = moments.to("cpu").mean_x
        cached = self.memo.get(key)
        if cached is not None and torch.equal(cached.mean, mean):
            return cached
        X, _, w = rows
        svd = RowsSVD.of(X, mean, w)
        used = sum(f.nbytes for f in self.memo.values())
        if used + svd.nbytes <= SHARED_FACTOR_BYTES:
            self.memo[key] = svd
        return svd

    @staticmethod
    def _score(probe: AffineProbe, pooled: tuple[Moments, tuple | None]) -> dict[str, Any]:
        moments, rows = pooled
        if float(moments.w) <= 0:
            return _nan_metrics()
        if rows is None:
            return probe.metrics_moments(moments)
        return _row_metrics(probe, rows[0], rows[1], moments)

    def fit(
        self, hook: str | None, ridge: float, features: int, train_prefixes: int
    ) -> tuple[dict[str, Any], AffineProbe, list[AffineProbe]]:
        """The row's scores (with the overfit rule applied), the all-rows probe, and the probe of
        each held-out group."""
        everyone = list(range(len(self.groups)))
        pooled_all = self._pool(everyone)
        whole = self._fit(everyone, pooled_all, hook, ridge)
        train, heldout, insame, probes = [], [], [], []
        for k in self.held:
            others = [j for j in everyone if j != k]
            rest, fold = self._pool(others), self._pool([k])
            probe = self._fit(others, rest, hook, ridge)
            probes.append(probe)
            train.append(self._score(probe, rest))
            heldout.append(self._score(probe, fold))
            insame.append(self._score(whole, fold))
        al = self._score(whole, pooled_all)
        why = overfit_reason(
            features, train_prefixes, [m["mse"] for m in heldout], [m["mse"] for m in insame]
        )
        row = {
            **_mean_se("mse_heldout", [m["mse"] for m in heldout]),
            **_mean_se("r2_heldout", [m["r2"] for m in heldout]),
            "mse_train": _mean([m["mse"] for m in train]),
            "r2_train": _mean([m["r2"] for m in train]),
            "mse_all": al["mse"],
            "r2_all": al["r2"],
            "folds": len(self.held),
            "rank": whole.rank_,
            "overfit": bool(why),
            "overfit_reason": why,
        }
        return row, whole, probes


def _mean(values: list[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).mean())


def _mean_se(key: str, values: list[float]) -> dict[str, float]:
    """``key``: the mean over folds; ``key_se``: its standard error (NaN for one fold)."""
    mean, se = mean_se(values)
    return {key: mean, f"{key}_se": se}


def _row_metrics(
    probe: AffineProbe,
    rows: tuple[Tensor, Tensor, Tensor],
    within: Tensor,
    moments: Moments,
) -> dict[str, Any]:
    """Metrics from the distinct rows (residuals summed exactly, not from moments)."""
    X, Y, c = rows
    ss_res = c @ (probe.predict(X) - Y) ** 2 + within
    ss_tot = moments.about(moments.mean_x, moments.mean_y)[2].diagonal()
    return regression_metrics(ss_res, ss_tot, float(moments.w))


def _nan_metrics() -> dict[str, float]:
    nan = float("nan")
    return {"mse": nan, "r2": nan}


def predict_concatenation(
    probe: AffineProbe, parts: Sequence[Float[Tensor, "... d_h"]]
) -> Float[Tensor, "... S"]:
    """``probe.predict`` on the concatenation of ``parts`` along the last axis, without making
    it: a sum of each part's block of the decoder (the concatenation of every hook of a paper
    dataset is several GB; one part in float64 is a fraction of that)."""
    widths = [p.shape[-1] for p in parts]
    if sum(widths) != probe.n_features_in_:
        raise BeliefLensError(
            f"the parts have {sum(widths)} features together (widths {widths}); the probe reads "
            f"{probe.n_features_in_}"
        )
    B, xm = probe.coef_.T, probe.x_mean_
    out = probe.y_mean_.expand(*parts[0].shape[:-1], -1).clone()
    for part, (lo, hi) in zip(parts, pairwise(np.cumsum([0, *widths]).tolist()), strict=True):
        out += (part.to(torch.float64) - xm[lo:hi]) @ B[lo:hi]
    return out


def out_of_fold_predictions(
    table: ProbeTable, data: ProbeData
) -> tuple[dict[str, Float[Tensor, "N L S"]], Bool[Tensor, "N L"]]:
    """Each row's probe output from the probe that never saw it (the fold's training-rows probe
    of the table's cross-validation, or of its one split), per hook and for the concatenation;
    and the mask of the rows that were held out (the others stay NaN). What a held-out score
    measures, drawn: plot these under a held-out title, not the all-rows fit."""
    if not table.fold_probes:
        raise BeliefLensError("the table holds no fold probes (it was not fitted by fit_probes)")
    labels, _, held = fold_labels(data, table.meta.get("folds"))
    mask = torch.isin(labels, torch.tensor(held))
    S = data.beliefs.shape[-1]
    out = {}
    for label, fold_probes in table.fold_probes.items():
        parts = table.meta["hooks"] if label == CONCAT else [label]
        pred = torch.full((*labels.shape, S), math.nan, dtype=torch.float64)
        fold_of = dict(zip(held, fold_probes, strict=True))
        if isinstance(data.acts, PrefixActs) and _predict_by_prefix(
            pred, data.acts, parts, labels, fold_of
        ):
            out[label] = pred
            continue
        for k, probe in zip(held, fold_probes, strict=True):
            rows = labels == k  # one fold's rows at a time: no [N, L, d] view of any hook
            pred[rows] = predict_concatenation(probe, [acts_at(data.acts, h, rows) for h in parts])
        out[label] = pred
    return out, mask


def _predict_by_prefix(
    pred: Float[Tensor, "N L S"],
    acts: PrefixActs,
    parts: Sequence[str],
    labels: Tensor,
    probes: dict[int, AffineProbe],
) -> bool:
    """Fill ``pred`` with each held-out row's fold probe output, predicting once per distinct
    prefix (every row of a prefix has its activation and, folds being by prefix, its fold) and
    copying the result to the prefix's rows: 88,572 predictions instead of 590,490 for Mess3
    at length 10. False, with nothing written, where a prefix's rows lie in different folds."""
    folds = []
    for t, ids in enumerate(acts.ids):
        fold = torch.empty(int(ids.max()) + 1, dtype=labels.dtype).scatter_(0, ids, labels[:, t])
        if not torch.equal(fold[ids], labels[:, t]):
            return False
        folds.append(fold)
    for t, (ids, fold) in enumerate(zip(acts.ids, folds, strict=True)):
        by_prefix = torch.full((len(fold), pred.shape[-1]), math.nan, dtype=torch.float64)
        for k, probe in probes.items():
            sel = fold == k
            if bool(sel.any()):
                by_prefix[sel] = predict_concatenation(probe, [acts.rows[h][t][sel] for h in parts])
        pred[:, t] = by_prefix[ids]
    return True


def fit_probes(
    data: ProbeData,
    *,
    targets: Targets = "beliefs",
    ridge: float = 0.0,
    concat: bool = True,
    n_folds: int | None = DEFAULT_FOLDS,
) -> ProbeTable:
    """Affine probes from each hook of ``data`` (and their concatenation) to beliefs.

    For each hook, cross-validated by prefix (``prefix_folds(data.tokens, n_folds, data.seed)``:
    a prefix lies in exactly one fold; lengths with too few distinct prefixes stay in every
    training set): held-out MSE and R^2 as the mean over folds with its standard error
    (``mse_heldout``, ``mse_heldout_se``: the figures to trust), the effective number of
    held-out inputs (``n_eff_heldout``), the training error (``mse_train``), and one probe fitted
    on every row (``mse_all``, in-sample, as the paper reports; kept in ``table.probes``).
    ``n_folds=None`` scores the one split of ``collect_probe_data`` instead. ``concat`` adds a
    row for the concatenation of all hooks (two or more). ``targets="next_token"`` fits
    next-token distributions instead of beliefs.

    On the paper's Mess3 checkpoint (in-sample MSE 0.000386)::

        data = collect_probe_data(model, mess3(), 10, ["blocks.3.hook_resid_post"])
        fit_probes(data)["blocks.3.hook_resid_post"]["mse_all"]
    """
    if not isinstance(data, ProbeData):
        raise BeliefLensError(
            f"fit_probes(data): expected ProbeData (from collect_probe_data), got "
            f"{type(data).__name__}"
        )
    name = "probes" if targets == "beliefs" else "next_token"
    return probe_table(
        data, targets_for(data, targets), ridge=ridge, concat=concat, n_folds=n_folds,
        name=name, target_name=targets,
    )  # fmt: skip
