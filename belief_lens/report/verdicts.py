"""Verdicts graded against their controls: an effect, its control, their ratio and their
uncertainty, and a grade in words ("clear", "partial", "none", "reversed"), never a bare yes/no.

Every verdict line of the report (patching, steering, transfer, factored) is written by
:func:`grade` or :func:`plain`, so each states the numbers it rests on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Grade", "Graded", "grade", "plain"]

Grade = Literal["clear", "partial", "none", "reversed"]


def plain(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` significant figures, with rounding noise (below 1e-12 in size) printed
    as 0: a quantity that is exactly zero in theory is never shown as 3.83e-18."""
    if not math.isfinite(x):
        return str(x)
    if abs(x) < 1e-12:
        return "0"
    return f"{x:.{digits}g}"


def _pm(value: float, se: float | None) -> str:
    return plain(value) + (f" ± {plain(se, 2)}" if se is not None and math.isfinite(se) else "")


@dataclass(frozen=True)
class Graded:
    """An effect beside its control. ``higher`` says which way is better (a fold or a fraction
    recovered: higher). ``grade`` is "clear" when the effect reaches ``strong`` and is at least
    ``min_ratio`` times the control beyond both uncertainties, "partial" when it exceeds the
    control beyond them (by 2 combined s.e., or at all where no s.e. is known) and goes at least
    a tenth of the way from ``neutral`` to ``strong`` beyond both ``neutral`` and the control,
    but not clearly,
    "reversed" when it goes the wrong way (below ``neutral``), else "none"."""

    what: str
    effect: float
    control: float
    effect_se: float | None
    control_se: float | None
    ratio: float
    grade: Grade
    unit: str = ""

    def sentence(self) -> str:
        """The verdict in words with every number it rests on."""
        se = "" if self.effect_se is not None else " (no uncertainty available)"
        words = {
            "clear": "a clear effect",
            "partial": "a partial effect, above its control but short of a clear one",
            "none": "no effect beyond its control",
            "reversed": "the opposite of the intended effect",
        }[self.grade]
        return (
            f"{self.what}: {_pm(self.effect, self.effect_se)}{self.unit} against "
            f"{_pm(self.control, self.control_se)}{self.unit} for the control "
            f"(ratio {plain(self.ratio)}){se}: {words}."
        )

    def to_dict(self) -> dict[str, Any]:
        """The verdict's numbers and grade, JSON-ready."""
        return {k: v for k, v in self.__dict__.items() if k != "unit"}


def grade(
    what: str,
    effect: float,
    control: float,
    *,
    effect_se: float | None = None,
    control_se: float | None = None,
    strong: float,
    min_ratio: float,
    neutral: float = 0.0,
    unit: str = "",
) -> Graded:
    """Grade ``effect`` against ``control`` (see :class:`Graded`); ``neutral`` is the value of no
    effect at all (0 for a fraction recovered, 1 for a fold)."""
    ratio = effect / control if control != 0 else math.inf if effect > 0 else math.nan
    spread = math.hypot(effect_se or 0.0, control_se or 0.0)
    above = effect - control > 2 * spread
    if effect < neutral - 2 * (effect_se or 0.0):
        g: Grade = "reversed"
    elif above and effect >= strong and (ratio >= min_ratio or control <= neutral):
        g = "clear"
    elif above and min(effect - neutral, effect - control) >= 0.1 * (strong - neutral):
        g = "partial"
    else:
        g = "none"
    return Graded(what, effect, control, effect_se, control_se, ratio, g, unit)
