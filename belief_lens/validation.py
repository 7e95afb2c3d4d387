"""Argument checks, one of each kind, for every module: integers, reals, seeds, flags, options.

Each check raises :class:`~belief_lens.errors.BeliefLensError` naming the argument, what was
expected and what came, before any work is done. Python and numpy numbers are both accepted;
``bool`` is never a number here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, get_args, get_origin

import numpy as np
import torch
from torch import Tensor

from belief_lens.errors import BeliefLensError

__all__ = [
    "MAX_SEED",
    "Positions",
    "check_bool",
    "check_finite_tensor",
    "check_float",
    "check_hook_name",
    "check_int",
    "check_int_list",
    "check_option",
    "check_positions",
    "check_real_tensor",
    "check_seed",
    "resolve_positions",
]

MAX_SEED = 2**63 - 1


def _got(value) -> str:
    text = repr(value)
    return (
        f"{text[:60]}... ({type(value).__name__})"
        if len(text) > 60
        else f"{text} ({type(value).__name__})"
    )


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as a Python int in ``[low, high]``; floats (even 2.0), bools, strings fail."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        if isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point():
            if value.dtype not in (torch.bool,) and not value.is_complex():
                return check_int(name, int(value), low=low, high=high)
        raise BeliefLensError(f"{name} must be an integer, got {_got(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        rng = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise BeliefLensError(f"{name} must be an integer in {rng}, got {value}")
    return value


def check_float(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite Python float in the given interval; NaN, inf, complex, bools fail."""
    if isinstance(value, Tensor) and value.ndim == 0 and value.dtype.is_floating_point:
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise BeliefLensError(f"{name} must be a real number, got {_got(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise BeliefLensError(f"{name} must be a finite real number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        rng = (
            f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
            f"{'inf' if high is None else high}{')' if high_open else ']'}"
        )
        raise BeliefLensError(f"{name} must be in {rng}, got {value}")
    return value


def check_seed(name: str, value) -> int:
    """A seed for ``torch.Generator.manual_seed``: an integer in ``[0, 2**63 - 1]``."""
    return check_int(name, value, low=0, high=MAX_SEED)


def check_bool(name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False`` (numpy bools too); 0, 1 and strings fail."""
    if not isinstance(value, bool | np.bool_):
        raise BeliefLensError(f"{name} must be True or False, got {_got(value)}")
    return bool(value)


def check_option(name: str, value, options: Any) -> Any:
    """``value`` if it is one of ``options``: a ``Literal[...]`` type or an iterable of values.

    >>> check_option("schedule", "cosine", ("cosine", "linear"))
    'cosine'
    """
    allowed = tuple(get_args(options)) if get_origin(options) is not None else tuple(options)
    # Compared by type first: 1 must not pass for True, nor an array compare elementwise.
    if not any(type(value) is type(o) and value == o for o in allowed):
        shown = [repr(o) for o in allowed]
        expected = " or ".join(shown) if len(shown) <= 2 else "one of " + ", ".join(shown)
        raise BeliefLensError(f"{name} must be {expected}, got {_got(value)}")
    return value


def check_real_tensor(name: str, value, *, integer: bool = False) -> Tensor:
    """``value`` as a tensor, refusing strings, object arrays, ragged lists and complex numbers.

    Real floats come back as float64; with ``integer=True`` the values must be integers (bools and
    floats refused) and come back as int64. Complex input is refused when an imaginary part is
    nonzero; otherwise its real part is used.
    """
    if isinstance(value, str | bytes):
        raise BeliefLensError(f"{name} must be numeric, got a string {_got(value)}")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUSV":
        raise BeliefLensError(f"{name} must be a numeric array, got dtype {value.dtype}")
    if not isinstance(value, Tensor):
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as e:
            raise BeliefLensError(
                f"{name} must be a rectangular numeric array, got {_got(value)}: {e}"
            ) from None
        if arr.dtype.kind not in "biufc":
            raise BeliefLensError(
                f"{name} must be a rectangular numeric array, got {_got(value)} "
                f"(numpy reads it as dtype {arr.dtype})"
            )
        value = torch.from_numpy(np.ascontiguousarray(arr))
    if value.is_complex():
        if value.numel() and value.imag.abs().max() > 0:
            raise BeliefLensError(
                f"{name} must be real, got complex values with nonzero imaginary part"
            )
        value = value.real
    if integer:
        if value.is_floating_point() or value.dtype == torch.bool:
            raise BeliefLensError(f"{name} must be integers, got dtype {value.dtype}")
        return value.long()
    if value.dtype == torch.bool:
        raise BeliefLensError(f"{name} must be real numbers, got dtype bool")
    return value.to(torch.float64)


def check_int_list(name: str, value, *, length: int | None = None, low: int = 0) -> list[int]:
    """A sequence of integers ``>= low`` (optionally of a given length)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        raise BeliefLensError(f"{name} must be a sequence of integers, got {_got(value)}")
    out = [check_int(f"{name}[{i}]", v, low=low) for i, v in enumerate(value)]
    if length is not None and len(out) != length:
        raise BeliefLensError(f"{name} must have {length} entries, got {len(out)}: {out}")
    return out


# ------------------------------------------------------------- options, positions, hooks, tensors
#: Positions as users give them: one index, several, or None for every position.
Positions = int | Sequence[int] | None


def check_hook_name(name: str, value) -> str:
    """A full TransformerLens hook name: a non-empty string (whether the model has it is the
    model's business, checked where the model is at hand)."""
    if not isinstance(value, str) or not value:
        raise BeliefLensError(
            f"{name} must be a full TransformerLens hook name such as "
            f"'blocks.3.hook_resid_post', got {value!r}"
        )
    return value


def check_positions(name: str, value) -> tuple[int, ...] | None:
    """Positions as a tuple of ints (an int is one position), or None for all; never empty."""
    if value is None:
        return None
    items = [value] if isinstance(value, numbers.Integral) else value
    if isinstance(items, str | bytes):
        raise BeliefLensError(f"{name} must be an int, a sequence of ints or None, got {value!r}")
    try:
        items = list(items)
    except TypeError:
        raise BeliefLensError(
            f"{name} must be an int, a sequence of ints or None, got {type(value).__name__}"
        ) from None
    if not items:
        raise BeliefLensError(f"{name} is empty; give at least one position, or None for all")
    for p in items:
        if isinstance(p, bool | np.bool_) or not isinstance(p, numbers.Integral):
            raise BeliefLensError(f"{name} must be ints, got {p!r} in {value!r}")
    return tuple(int(p) for p in items)


def resolve_positions(positions: tuple[int, ...] | None, n_pos: int) -> list[int]:
    """Checked ``positions`` as distinct indices into ``n_pos`` positions (negative ones count
    from the end; None is every position)."""
    if positions is None:
        return list(range(n_pos))
    out = []
    for p in positions:
        if not -n_pos <= p < n_pos:
            raise BeliefLensError(f"position {p} is out of range for {n_pos} positions")
        out.append(p % n_pos)
    if len(set(out)) != len(out):
        raise BeliefLensError(f"positions {list(positions)} repeat a position of {n_pos}")
    return out


def check_finite_tensor(name: str, value) -> Tensor:
    """A detached, contiguous float64 CPU copy of ``value``, refusing what
    :func:`check_real_tensor` refuses and NaN or infinite entries (naming the first)."""
    if isinstance(value, Tensor):
        value = value.detach()
    t = check_real_tensor(name, value).to("cpu").clone().contiguous()
    bad = ~torch.isfinite(t)
    if bad.any():
        raise BeliefLensError(
            f"{name} contains {int(bad.sum())} NaN or infinite entries (first at index "
            f"{torch.nonzero(bad)[0].tolist()})"
        )
    return t
