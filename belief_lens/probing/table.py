"""The probe table: rows of held-out and in-sample scores, the one overfit rule and the one
best-hook choice that every fitter, the report and the command line use."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from belief_lens.errors import BeliefLensError
from belief_lens.probing.data import CONCAT
from belief_lens.probing.estimator import AffineProbe
from belief_lens.storage import jsonable

__all__ = [
    "OVERFIT_FEATURE_RATIO",
    "OVERFIT_MSE_RATIO",
    "ProbeTable",
    "best_hook",
    "heldout",
    "is_overfit",
    "markdown_table",
]

#: A row is flagged when its features are at least this fraction of its distinct training
#: prefixes (it can fit the training inputs instead of a geometry) ...
OVERFIT_FEATURE_RATIO = 0.1
#: ... or when its held-out MSE exceeds this multiple of its training MSE.
OVERFIT_MSE_RATIO = 2.0


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
        ``hooks``, ``ridge``, ``test_fraction``, ``seed``, ``bos``, ``model_fingerprint``.
    """

    rows: list[dict[str, Any]]
    probes: dict[str, AffineProbe] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

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
        """The headline: best hook with its held-out MSE and R^2, the concat gain, flagged rows."""
        best = self[self.best_hook]
        return {
            "best_hook": best["hook"],
            "best_mse_heldout": best["mse_heldout"],
            "best_r2_heldout": best["r2_heldout"],
            "concat_gain_heldout": self.concat_gain,
            "overfit_rows": [r["hook"] for r in self.rows if r["overfit"]],
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
            lines.append(
                f"best hook (held out): {s['best_hook']}, MSE {s['best_mse_heldout']:.4g}, "
                f"R^2 {s['best_r2_heldout']:.4g}; "
                f"concat gain held out {s['concat_gain_heldout']:.3g}x"
                + (f"; overfitting: {', '.join(s['overfit_rows'])}" if s["overfit_rows"] else "")
            )
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


def is_overfit(features: int, train_prefixes: int, mse_heldout: float, mse_train: float) -> bool:
    """The overfit rule: features at least ``OVERFIT_FEATURE_RATIO`` of the distinct training
    prefixes (the probe can fit the inputs rather than a geometry), or held-out MSE above
    ``OVERFIT_MSE_RATIO`` times the training MSE."""
    return bool(
        features >= OVERFIT_FEATURE_RATIO * train_prefixes
        or mse_heldout > OVERFIT_MSE_RATIO * mse_train
    )


def heldout(row: Mapping[str, Any], metric: Literal["mse", "r2"]) -> float:
    """A probe row's held-out ``mse`` or ``r2``; NaN when the row has no held-out data."""
    v = row.get(f"{metric}_heldout")
    return float(v) if isinstance(v, (int, float)) else math.nan


def best_hook(rows: Sequence[Mapping[str, Any]]) -> tuple[str, Literal["held-out", "in-sample"]]:
    """The hook (never the concatenation) with the lowest held-out MSE, or the lowest in-sample
    MSE when some row has none held out; and which of the two it was ranked by."""
    hooks = [r for r in rows if r["hook"] != CONCAT]
    if not hooks:
        raise BeliefLensError("the probe table has no per-hook rows")
    if all(math.isfinite(heldout(r, "mse")) for r in hooks):
        return min(hooks, key=lambda r: heldout(r, "mse"))["hook"], "held-out"
    return min(hooks, key=lambda r: float(r["mse_all"]))["hook"], "in-sample"
