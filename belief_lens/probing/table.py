"""The probe table: rows of held-out and in-sample scores, the one overfit rule and the one
best-hook choice that every fitter, the report and the command line use."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from belief_lens.errors import BeliefLensError
from belief_lens.probing.data import CONCAT
from belief_lens.probing.estimator import AffineProbe
from belief_lens.storage import jsonable

__all__ = [
    "OVERFIT_FEATURE_RATIO",
    "OVERFIT_GAP_FRACTION",
    "OVERFIT_GAP_SE",
    "ProbeTable",
    "best_hook",
    "heldout",
    "is_overfit",
    "markdown_table",
    "overfit_reason",
    "tied_hooks",
]

#: A row is flagged when its features are at least this fraction of its distinct training
#: prefixes (it can fit the training inputs instead of a geometry) ...
OVERFIT_FEATURE_RATIO = 0.1
#: ... or when its held-out error exceeds the in-sample error on the same rows by more than
#: this many standard errors of the gap (over folds) ...
OVERFIT_GAP_SE = 3.0
#: ... and by more than this fraction of the in-sample error (a gap that matters).
OVERFIT_GAP_FRACTION = 0.25


@dataclass
class ProbeTable:
    """Probe results, one row per hook plus the concatenation of all hooks (``"concat"``).

    Attributes
    ----------
    rows : list of dict
        ``hook``, ``features``, ``train_prefixes`` and ``test_prefixes`` (distinct
        (position, prefix) inputs on each side of ``split_prefixes``), ``mse_heldout, r2_heldout``
        (fit on the training rows, scored on the held-out rows: the figures to trust; NaN without
        held-out data), ``mse_train, r2_train`` (same fit, training rows), ``mse_all, r2_all``
        (fit on every row, scored in-sample: the paper's number), and ``overfit`` (features at
        least ``OVERFIT_FEATURE_RATIO`` of the training prefixes, or held-out MSE above
        ``OVERFIT_MSE_RATIO`` times training MSE). R^2 is the uniform average over targets.
    probes : dict of str to AffineProbe
        The all-data probe of each row, keyed by hook. ``probes["concat"]`` reads the
        concatenation of ``meta["hooks"]`` in order, and has ``hook_`` None.
    meta : dict
        What was fitted: ``name``, ``targets``, ``mode``, ``weighted``, ``n_ctx``, ``process``,
        ``hooks``, ``ridge``, ``folds`` (None: one split of ``test_fraction``), ``seed``,
        ``bos``, ``model_fingerprint``.
    fold_probes : dict of str to list of AffineProbe
        Per row, the probe of each fold fitted without that fold's rows (one for a single
        split): what ``out_of_fold_predictions`` draws.
    """

    rows: list[dict[str, Any]]
    probes: dict[str, AffineProbe] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    fold_probes: dict[str, list[AffineProbe]] = field(default_factory=dict)

    @property
    def hooks(self) -> list[str]:
        return [row["hook"] for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"rows", "summary", "meta"}`` (``pandas.DataFrame(t.rows)`` for a frame)."""
        out = {"rows": self.rows, "meta": self.meta}
        if any(r["hook"] != CONCAT for r in self.rows):
            out["summary"] = self.summary()
        return jsonable(out)

    def __getitem__(self, hook: str) -> dict[str, Any]:
        for row in self.rows:
            if row["hook"] == hook:
                return row
        raise BeliefLensError(f"no row for hook {hook!r}; rows: {self.hooks}")

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    @property
    def best_hook(self) -> str:
        """The single hook with the lowest held-out MSE (in-sample MSE without held-out data)."""
        return best_hook(self.rows)[0]

    @property
    def concat_gain(self) -> float:
        """Best hook's held-out MSE over the concatenation's (> 1: concat does better held out;
        NaN without a concat row or held-out data)."""
        if CONCAT not in self.hooks:
            return float("nan")
        best, cat = self[self.best_hook]["mse_heldout"], self[CONCAT]["mse_heldout"]
        return best / cat if cat > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """The headline: best hook with its held-out MSE and R^2 (± s.e. over folds), the hooks
        tied with it, the concat gain, and the flagged rows with their reasons."""
        best = self[self.best_hook]
        return {
            "best_hook": best["hook"],
            "tied_hooks": tied_hooks(self.rows),
            "best_mse_heldout": best["mse_heldout"],
            "best_mse_heldout_se": best.get("mse_heldout_se", math.nan),
            "best_r2_heldout": best["r2_heldout"],
            "best_r2_heldout_se": best.get("r2_heldout_se", math.nan),
            "folds": best.get("folds"),
            "n_eff_heldout": best.get("n_eff_heldout"),
            "concat_gain_heldout": self.concat_gain,
            "overfit_rows": {
                r["hook"]: r.get("overfit_reason", "") for r in self.rows if r["overfit"]
            },
        }

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table, floats to ``digits`` significant digits; flagged rows marked."""
        return markdown_table(self.rows, digits)

    def __str__(self) -> str:
        title = ", ".join(
            f"{k}={self.meta[k]}" for k in ("name", "targets", "mode") if k in self.meta
        )
        lines = [title] if title else []
        if any(r["hook"] != CONCAT for r in self.rows):
            s = self.summary()
            ties = s["tied_hooks"][1:]
            lines.append(
                f"best hook (held out, {s['folds']} folds): {s['best_hook']}, MSE "
                f"{s['best_mse_heldout']:.4g} ± {s['best_mse_heldout_se']:.2g}, "
                f"R^2 {s['best_r2_heldout']:.4g} ± {s['best_r2_heldout_se']:.2g}"
                + (f"; tied within 1 s.e.: {', '.join(ties)}" if ties else "")
                + f"; concat gain held out {s['concat_gain_heldout']:.3g}x"
            )
            lines += [f"OVERFIT {hook}: {why}" for hook, why in s["overfit_rows"].items()]
        return "\n".join([*lines, self.to_markdown()])


def markdown_table(rows: Sequence[Mapping[str, Any]], digits: int = 4) -> str:
    """Probe rows as a markdown table, floats to ``digits`` significant digits, the overfit flag
    as ``OVERFIT``."""
    if not rows:
        return "(empty probe table)"
    keys = list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "OVERFIT" if v else ""
        return f"{v:.{digits}g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def overfit_reason(
    features: int,
    train_prefixes: int,
    heldout: Sequence[float] = (),
    insample: Sequence[float] = (),
) -> str:
    """Why a probe row may overfit, in words; empty when nothing supports it.

    Two reasons count: features at least ``OVERFIT_FEATURE_RATIO`` of the distinct training
    prefixes (the probe can fit the inputs rather than a geometry); or, over two or more folds,
    held-out MSEs ``heldout`` above the in-sample MSEs ``insample`` of the all-rows probe on the
    same rows by more than ``OVERFIT_GAP_SE`` standard errors of the gap and by more than
    ``OVERFIT_GAP_FRACTION`` of the in-sample error. A single split has no spread, so only the
    first reason can apply to it.
    """
    reasons = []
    if features >= OVERFIT_FEATURE_RATIO * train_prefixes:
        reasons.append(f"{features:,} features on {train_prefixes:,} training prefixes")
    h = torch.as_tensor(list(heldout), dtype=torch.float64)
    i = torch.as_tensor(list(insample), dtype=torch.float64)
    finite = bool(torch.isfinite(h).all() & torch.isfinite(i).all())
    if len(h) >= 2 and len(h) == len(i) and finite:
        gap = h - i
        mean, se = float(gap.mean()), float(gap.std() / math.sqrt(len(gap)))
        base = float(i.mean())
        if mean > OVERFIT_GAP_SE * se and mean > OVERFIT_GAP_FRACTION * base:
            reasons.append(
                f"held-out MSE {float(h.mean()):.3g} against {base:.3g} in-sample on the same "
                f"rows (gap {mean:.2g} ± {se:.2g} over {len(h)} folds)"
            )
    return "; ".join(reasons)


def is_overfit(
    features: int,
    train_prefixes: int,
    heldout: Sequence[float] = (),
    insample: Sequence[float] = (),
) -> bool:
    """Whether ``overfit_reason`` finds a reason."""
    return bool(overfit_reason(features, train_prefixes, heldout, insample))


def heldout(row: Mapping[str, Any], metric: Literal["mse", "r2"]) -> float:
    """A probe row's held-out ``mse`` or ``r2``; NaN when the row has no held-out data."""
    v = row.get(f"{metric}_heldout")
    return float(v) if isinstance(v, (int, float)) else math.nan


def best_hook(rows: Sequence[Mapping[str, Any]]) -> tuple[str, Literal["held-out", "in-sample"]]:
    """The hook (never the concatenation, never a flagged row while an unflagged one exists)
    with the lowest held-out MSE (the cross-validated mean), or the lowest in-sample MSE when
    some row has none held out; and which of the two it was ranked by."""
    hooks = [r for r in rows if r["hook"] != CONCAT]
    if not hooks:
        raise BeliefLensError("the probe table has no per-hook rows")
    hooks = [r for r in hooks if not r.get("overfit")] or hooks
    if all(math.isfinite(heldout(r, "mse")) for r in hooks):
        return min(hooks, key=lambda r: heldout(r, "mse"))["hook"], "held-out"
    return min(hooks, key=lambda r: float(r["mse_all"]))["hook"], "in-sample"


def tied_hooks(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The best hook and every unflagged hook whose held-out MSE lies within one standard
    error (``mse_heldout_se``) of the best's: hooks the data cannot tell apart, best first."""
    best, ranked_by = best_hook(rows)
    if ranked_by != "held-out":
        return [best]
    by_hook = {r["hook"]: r for r in rows}
    top = heldout(by_hook[best], "mse")
    se = float(by_hook[best].get("mse_heldout_se", 0.0))
    se = se if math.isfinite(se) else 0.0
    ties = [
        r
        for r in rows
        if r["hook"] not in (CONCAT, best)
        and not r.get("overfit")
        and heldout(r, "mse") <= top + se
    ]
    return [best, *(r["hook"] for r in sorted(ties, key=lambda r: heldout(r, "mse")))]
