"""Checks that only interventions need: orthonormal bases, beliefs on the simplex, activations
that fit a basis.

The general ones (options, seeds, positions, hook names, finite tensors) live in
``belief_lens.validation``. Each raises ``BeliefLensError`` naming what was expected and what came.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.validation import check_finite_tensor

__all__ = ["ORTHONORMAL_ATOL", "SIMPLEX_ATOL", "check_activation", "check_basis", "check_simplex"]

#: How far a target or current belief may stray from the probability simplex (float32 rounding).
SIMPLEX_ATOL = 1e-5
#: How far ``B.T @ B`` may stray from the identity for ``B`` to count as orthonormal.
ORTHONORMAL_ATOL = 1e-6


def check_basis(name: str, basis: Any) -> Tensor:
    """``basis`` as a float64 ``[d_model, k]`` tensor with orthonormal columns, ``1 <= k <= d``."""
    basis = check_finite_tensor(name, basis)
    if basis.ndim != 2 or not 1 <= basis.shape[1] <= basis.shape[0]:
        raise BeliefLensError(
            f"{name} must be [d_model, k] with 1 <= k <= d_model, got {tuple(basis.shape)}"
        )
    gram = basis.T @ basis
    err = float((gram - torch.eye(basis.shape[1], dtype=torch.float64)).abs().max())
    if err > ORTHONORMAL_ATOL:
        raise BeliefLensError(
            f"{name} columns must be orthonormal (B.T @ B = I; off by {err:.2e}); "
            "orthonormalise with torch.linalg.qr"
        )
    return basis


def check_simplex(name: str, t: Tensor) -> None:
    """Raise unless every row of ``t [..., S]`` is a distribution, within ``SIMPLEX_ATOL``."""
    rows = t.reshape(-1, t.shape[-1])
    off = (rows < -SIMPLEX_ATOL).any(-1) | ((rows.sum(-1) - 1).abs() > SIMPLEX_ATOL)
    if off.any():
        i = int(torch.nonzero(off)[0])
        raise BeliefLensError(
            f"{name} must lie on the probability simplex (entries >= 0 summing to 1, within "
            f"{SIMPLEX_ATOL}); row {i} is {rows[i].tolist()} (sum {float(rows[i].sum()):.6g}). "
            "A probe's read-out can stray off it: clip at 0 and renormalise"
        )


def check_activation(activation: Tensor, d: int, hook: str) -> tuple[int, int]:
    """``(batch, pos)`` of a ``[batch, pos, d]`` activation at ``hook``, whose width must be the
    basis's ``d``."""
    if activation.ndim != 3:
        raise BeliefLensError(
            f"hook {hook!r} gives activations of shape {tuple(activation.shape)}; interventions "
            "need [batch, pos, d_model] (a residual-stream-like hook)"
        )
    if activation.shape[-1] != d:
        raise BeliefLensError(
            f"the basis has d={d} rows but hook {hook!r} has d={activation.shape[-1]}"
        )
    return int(activation.shape[0]), int(activation.shape[1])
