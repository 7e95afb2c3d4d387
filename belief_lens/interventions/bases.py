"""The subspaces interventions act in: a probe's belief basis, its norm-matched control, one basis
per layer, the probe's read-out, and the one projection every intervention makes.

A belief basis is an orthonormal ``B [d_model, k]`` (``k = S - 1`` for beliefs, which sum to 1)
spanning the probe's encoding directions (where the model writes beliefs; the default) or its
decoding directions. Its control is a seeded random subspace of the same rank orthogonal to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.interventions.checks import check_basis
from belief_lens.probing.estimator import BasisKind
from belief_lens.validation import check_finite_tensor, check_option, check_seed

__all__ = [
    "LayerBases",
    "as_basis",
    "belief_basis",
    "control_basis",
    "project_towards",
    "readout",
    "work_dtype",
]


def belief_basis(probe: Any, kind: BasisKind = "encoding") -> Float[Tensor, "d k"]:
    """Orthonormal basis ``[d_model, k]`` of the belief subspace (``k = S - 1`` on the simplex)."""
    kind = check_option("kind", kind, BasisKind)  # type: ignore[assignment]
    if not hasattr(probe, "belief_basis"):
        raise BeliefLensError(f"expected a fitted probe with belief_basis(), got {type(probe)}")
    return check_basis(f"the probe's {kind} basis", probe.belief_basis(kind))


def control_basis(basis: Float[Tensor, "d k"], seed: int = 0) -> Float[Tensor, "d k"]:
    """A random orthonormal basis of the same rank, orthogonal to ``basis`` (seeded)."""
    basis = check_basis("basis", basis)
    seed = check_seed("seed", seed)
    d, k = basis.shape
    if 2 * k > d:
        raise BeliefLensError(
            f"no room for a rank-{k} control orthogonal to a rank-{k} basis in d={d}"
        )
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(d, k, generator=gen, dtype=torch.float64)
    for _ in range(2):  # project twice: one pass leaves O(eps * |g|) along the basis
        g = g - basis @ (basis.T @ g)
    q, _ = torch.linalg.qr(g)
    return q


def as_basis(probe_or_basis: Any, kind: BasisKind = "encoding", name: str = "basis") -> Tensor:
    """The ``kind`` belief basis of a fitted probe, or a given ``[d_model, k]`` basis, checked."""
    if hasattr(probe_or_basis, "belief_basis"):
        return belief_basis(probe_or_basis, kind)
    if isinstance(probe_or_basis, (Tensor, np.ndarray, list, tuple)):
        return check_basis(name, probe_or_basis)
    raise BeliefLensError(
        f"{name} must be a fitted probe, a [d_model, k] orthonormal basis, or a mapping "
        f"layer -> probe or basis; got {type(probe_or_basis).__name__}"
    )


@dataclass(frozen=True, eq=False)
class LayerBases:
    """A belief basis for each layer: one ``shared`` by every layer, or one per layer index.

    Build with ``LayerBases.of(probe_or_basis, kind)`` from a probe, a basis, or a mapping
    ``layer -> probe or basis``; ``bases[layer]`` is the layer's basis.
    """

    shared: Tensor | None = None
    per_layer: dict[int, Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, probe_or_basis: Any, kind: BasisKind = "encoding") -> LayerBases:
        """One basis for all layers, or ``{layer: basis}`` from a mapping of layers to probes
        or bases."""
        kind = check_option("kind", kind, BasisKind)  # type: ignore[assignment]
        if not isinstance(probe_or_basis, Mapping):
            return cls(shared=as_basis(probe_or_basis, kind))
        if not probe_or_basis:
            raise BeliefLensError("the mapping layer -> probe is empty")
        out = {}
        for layer, value in probe_or_basis.items():
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
                raise BeliefLensError(f"mapping keys must be layer indices >= 0, got {layer!r}")
            out[int(layer)] = as_basis(value, kind, f"the basis for layer {layer}")
        return cls(per_layer=out)

    def __getitem__(self, layer: int) -> Tensor:
        if self.shared is not None:
            return self.shared
        if layer not in self.per_layer:
            raise BeliefLensError(
                f"no basis for layer {layer}; have layers {sorted(self.per_layer)}"
            )
        return self.per_layer[layer]

    def missing(self, n_layers: int) -> list[int]:
        """The layers below ``n_layers`` without a basis."""
        if self.shared is not None:
            return []
        return sorted(set(range(n_layers)) - set(self.per_layer))

    @property
    def rank(self) -> int:
        """The rank of the (first) basis."""
        first = self.shared if self.shared is not None else next(iter(self.per_layer.values()))
        return int(first.shape[1])

    def control(self, seed: int) -> LayerBases:
        """Each layer's ``control_basis(basis, seed)``."""
        if self.shared is not None:
            return LayerBases(shared=control_basis(self.shared, seed))
        return LayerBases(per_layer={k: control_basis(b, seed) for k, b in self.per_layer.items()})


def readout(probe: Any, d: int) -> tuple[Tensor, Tensor]:
    """The probe's affine decoder as ``(W [d, S], b [S])``, ``predict(x) = x @ W + b``."""
    zero = torch.zeros(1, d, dtype=torch.float64)
    bias = check_finite_tensor("the probe's prediction", probe.predict(zero))[0]
    weight = check_finite_tensor("the probe", probe.predict(torch.eye(d, dtype=torch.float64)))
    return weight - bias, bias


def work_dtype(device: torch.device) -> torch.dtype:
    """Interventions are computed in float64, except where the device has none (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def project_towards(
    activation: Float[Tensor, "batch pos d"],
    reference: Float[Tensor, "batch n d"],
    basis: Float[Tensor, "d k"],
    pos: list[int],
) -> Float[Tensor, "batch pos d"]:
    """``h + (ref - h) @ B @ B.T`` at positions ``pos`` in a copy of ``activation``: the
    subspace component of ``h`` replaced by the reference's, the rest kept."""
    dev = activation.device
    wd = work_dtype(dev)
    B = basis.to(dev, wd)
    h = activation[:, pos].to(wd)
    ref = reference.to(dev, wd)
    out = activation.clone()
    out[:, pos] = (h + ((ref - h) @ B) @ B.T).to(activation.dtype)
    return out
