"""Causal interventions along belief directions, as values, each checked against theory.

Probing shows the belief geometry is present; interventions show the model uses it. Each
intervention is a frozen dataclass holding its hook name, positions, an orthonormal basis
``B [d_model, k]`` of the belief subspace and its parameters, validated once at construction:

- ``Steer`` adds ``scale * (target - current) @ coordinates @ B.T``: a belief change moves the
  activation along the probe's encoding map (where the model writes beliefs; the default) or its
  decoding map's minimum-norm inverse (kept as the comparison);
- ``SubspacePatch`` swaps the subspace component for a source run's, ``h + (h_src - h) @ B @ B.T``;
- ``Ablate`` projects the subspace out, or replaces its component with the mean's.

``intervene(model, tokens, intervention)`` applies any of them through the model's own
``hooks()`` context manager and returns logits. Every intervention has ``.control(seed)``: the
same intervention on a seeded random subspace of the same rank, orthogonal to ``B`` (so the same
norm): an effect is evidence only beside its control. Interventions save and load as safetensors
with their fields as JSON in the header.

For TransformerLens's own ``patching.generic_activation_patch``, ``subspace_patch_setter`` is a
patch setter and ``theory_kl_metric``/``recovery_metric`` are metrics measured against the HMM;
``patching_report`` runs the whole sweep, with its control, into a ``PatchingResult``.

Everything takes any model exposing the TransformerLens hook API (``HookedTransformer`` or
``TransformerBridge``), runs it in eval mode without gradients, and leaves no hook behind even
when a run raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens import tl_compat
from belief_lens.activations import (
    check_tokens,
    eval_mode,
    model_device,
    residual_hooks,
    resolve_hook,
)
from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.metrics import free_coordinates, kl_divergence, recovery
from belief_lens.probing.estimator import BasisKind
from belief_lens.storage import atomic_write

__all__ = [
    "Ablate",
    "InterventionReport",
    "PatchingResult",
    "Steer",
    "SubspacePatch",
    "ablate_belief_subspace",
    "belief_basis",
    "control_basis",
    "intervene",
    "intervention_report",
    "load_intervention",
    "patch_belief_subspace",
    "patching_report",
    "recovery_metric",
    "steer_to_belief",
    "subspace_patch_setter",
    "theory_kl_metric",
]

Directions = Literal["encoding", "decoding", "control"]
AblateMode = Literal["zero", "mean"]
Current = Literal["probe", "true"]
Reduction = Literal["mean", "none"]
Positions = int | Sequence[int] | None

#: How far a target or current belief may stray from the probability simplex (float32 rounding).
SIMPLEX_ATOL = 1e-5
_ORTHONORMAL_ATOL = 1e-6
_HEADER_KEY = "belief_lens.intervention"
_FORMAT = 1


# ------------------------------------------------------------------------------------- checks
def _check_option(value: Any, options: Any, name: str) -> str:
    """``value`` if it is one of the ``Literal`` ``options``, else a BeliefLensError naming them."""
    valid = get_args(options)
    if not isinstance(value, str) or value not in valid:
        raise BeliefLensError(
            f"{name} must be one of {', '.join(repr(v) for v in valid)}; got {value!r}"
        )
    return value


def _as_float64(x: Any, name: str = "tensor") -> Tensor:
    """A detached float64 CPU copy of ``x``, refusing non-numeric, complex, NaN and inf input."""
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x) if not isinstance(x, np.ndarray) else x)
        except (TypeError, ValueError, RuntimeError):
            raise BeliefLensError(
                f"{name} must be a tensor or array of numbers, got {type(x).__name__}"
            ) from None
    if t.is_complex() or t.dtype == torch.bool or not (t.is_floating_point() or _is_int(t)):
        raise BeliefLensError(f"{name} must be real numbers, got dtype {t.dtype}")
    t = t.to("cpu", torch.float64).clone().contiguous()
    bad = ~torch.isfinite(t)
    if bad.any():
        raise BeliefLensError(
            f"{name} contains {int(bad.sum())} NaN or infinite entries (first at index "
            f"{torch.nonzero(bad)[0].tolist()})"
        )
    return t


def _is_int(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_simplex(t: Tensor, name: str) -> None:
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


def _check_basis(basis: Any, name: str = "basis") -> Tensor:
    basis = _as_float64(basis, name)
    if basis.ndim != 2 or not 1 <= basis.shape[1] <= basis.shape[0]:
        raise BeliefLensError(
            f"{name} must be [d_model, k] with 1 <= k <= d_model, got {tuple(basis.shape)}"
        )
    gram = basis.T @ basis
    err = float((gram - torch.eye(basis.shape[1], dtype=torch.float64)).abs().max())
    if err > _ORTHONORMAL_ATOL:
        raise BeliefLensError(
            f"{name} columns must be orthonormal (B.T @ B = I; off by {err:.2e}); "
            "orthonormalise with torch.linalg.qr"
        )
    return basis


def _check_hook_name(hook: Any) -> str:
    if not isinstance(hook, str) or not hook:
        raise BeliefLensError(
            f"hook must be a full TransformerLens hook name such as 'blocks.3.hook_resid_post', "
            f"got {hook!r}"
        )
    return hook


def _check_positions(positions: Any) -> tuple[int, ...] | None:
    if positions is None:
        return None
    items = [positions] if isinstance(positions, (int, np.integer)) else positions
    try:
        items = list(items)
    except TypeError:
        raise BeliefLensError(
            f"positions must be an int, a sequence of ints or None, got {type(positions).__name__}"
        ) from None
    if not items:
        raise BeliefLensError("positions is empty; give at least one position, or None for all")
    for p in items:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise BeliefLensError(f"positions must be ints, got {p!r} in {positions!r}")
    return tuple(int(p) for p in items)


def _resolve_positions(positions: tuple[int, ...] | None, n_pos: int) -> list[int]:
    """Positions as indices into ``n_pos`` positions (negative count from the end)."""
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


def _check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)):
        raise BeliefLensError(f"scale must be a finite number, got {scale!r}")
    if not math.isfinite(float(scale)):
        raise BeliefLensError(f"scale must be a finite number, got {scale!r}")
    return float(scale)


def _check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise BeliefLensError(f"{name} must be an int in [0, 2**63), got {seed!r}")
    return int(seed)


def _work_dtype(device: torch.device) -> torch.dtype:
    """Interventions are computed in float64, except where the device has none (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _check_activation(activation: Tensor, d: int, hook: str) -> tuple[int, int]:
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


# ------------------------------------------------------------------------------------- bases
def belief_basis(probe: Any, kind: BasisKind = "encoding") -> Float[Tensor, "d k"]:
    """Orthonormal basis ``[d_model, k]`` of the belief subspace (``k = S - 1`` on the simplex)."""
    kind = _check_option(kind, BasisKind, "kind")  # type: ignore[assignment]
    if not hasattr(probe, "belief_basis"):
        raise BeliefLensError(f"expected a fitted probe with belief_basis(), got {type(probe)}")
    return _check_basis(probe.belief_basis(kind), f"the probe's {kind} basis")


def control_basis(basis: Float[Tensor, "d k"], seed: int = 0) -> Float[Tensor, "d k"]:
    """A random orthonormal basis of the same rank, orthogonal to ``basis`` (seeded)."""
    basis = _check_basis(basis)
    seed = _check_seed(seed)
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


def _basis_from(probe_or_basis: Any, kind: BasisKind, name: str = "basis") -> Tensor:
    if hasattr(probe_or_basis, "belief_basis"):
        return belief_basis(probe_or_basis, kind)
    if isinstance(probe_or_basis, (Tensor, np.ndarray, list, tuple)):
        return _check_basis(probe_or_basis, name)
    raise BeliefLensError(
        f"{name} must be a fitted probe, a [d_model, k] orthonormal basis, or a mapping "
        f"layer -> probe or basis; got {type(probe_or_basis).__name__}"
    )


def _bases(probe_or_basis: Any, kind: BasisKind) -> Tensor | dict[int, Tensor]:
    """One basis, or ``{layer: basis}`` from a mapping of layers to probes or bases."""
    kind = _check_option(kind, BasisKind, "kind")  # type: ignore[assignment]
    if not isinstance(probe_or_basis, Mapping):
        return _basis_from(probe_or_basis, kind)
    if not probe_or_basis:
        raise BeliefLensError("the mapping layer -> probe is empty")
    out = {}
    for layer, value in probe_or_basis.items():
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
            raise BeliefLensError(f"mapping keys must be layer indices >= 0, got {layer!r}")
        out[int(layer)] = _basis_from(value, kind, f"the basis for layer {layer}")
    return out


def _readout(probe: Any, d: int) -> tuple[Tensor, Tensor]:
    """The probe's affine decoder as ``(W [d, S], b [S])``, ``predict(x) = x @ W + b``."""
    zero = torch.zeros(1, d, dtype=torch.float64)
    bias = _as_float64(probe.predict(zero), "the probe's prediction")[0]
    weight = _as_float64(probe.predict(torch.eye(d, dtype=torch.float64)), "the probe") - bias
    return weight, bias


# ------------------------------------------------------------------------------------- values
class _Intervention:
    """What ``Steer``, ``SubspacePatch`` and ``Ablate`` share: control, save, load, checks."""

    hook: str
    basis: Tensor
    positions: tuple[int, ...] | None
    control_seed: int | None

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        """A TransformerLens hook function ``fn(activation, hook)``, so that
        ``model.run_with_hooks(tokens, fwd_hooks=[(iv.hook, iv)])`` applies it with no wrapping.

        The hook point's name is not compared with ``self.hook``: TransformerLens 4's bridge
        names its hook points canonically (``blocks.3.hook_out`` for ``hook_resid_post``).
        ``intervene`` adds what a bare hook cannot: the exact hook, a firing count of one, eval
        mode and a source run's activations.
        """
        return self.apply(activation)

    @property
    def rank(self) -> int:
        """``k``, the dimension of the subspace acted on."""
        return int(self.basis.shape[1])

    @property
    def d_model(self) -> int:
        """The activation width the intervention expects at its hook."""
        return int(self.basis.shape[0])

    def _check_common(self) -> None:
        object.__setattr__(self, "hook", _check_hook_name(self.hook))
        object.__setattr__(self, "basis", _check_basis(self.basis))
        object.__setattr__(self, "positions", _check_positions(self.positions))
        if self.control_seed is not None:
            object.__setattr__(self, "control_seed", _check_seed(self.control_seed, "control_seed"))

    def control(self, seed: int = 0) -> Any:
        """The same intervention on a seeded random subspace of the same rank orthogonal to the
        belief subspace (``control_basis``), so of the same norm."""
        if self.control_seed is not None:
            raise BeliefLensError(
                f"this is already a control (seed {self.control_seed}); take the control of the "
                "belief-subspace intervention"
            )
        return replace(self, basis=control_basis(self.basis, seed), control_seed=seed)  # type: ignore[type-var]

    def _check_run(self, batch: int, n_pos: int) -> list[int]:
        """Check against a run of ``batch`` sequences of ``n_pos`` positions; the positions."""
        return _resolve_positions(self.positions, n_pos)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the intervention as one safetensors file (its fields as JSON in the header),
        atomically; an existing file is kept unless ``overwrite=True``."""
        from safetensors.torch import save_file

        from belief_lens import __version__

        path = Path(path)
        if path.exists() and not overwrite:
            raise BeliefLensError(f"{str(path)!r} exists; pass overwrite=True to replace it")
        tensors, values = {}, {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                tensors[f.name] = value.contiguous()
            elif value is not None:
                values[f.name] = list(value) if isinstance(value, tuple) else value
        header = {
            "type": type(self).__name__,
            "format": _FORMAT,
            "fields": values,
            "belief_lens_version": __version__,
        }
        meta = {_HEADER_KEY: json.dumps(header), "format": "pt"}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> Any:
        """Read an intervention written by ``save``; it must be of this class."""
        out = load_intervention(path)
        if not isinstance(out, cls):
            raise BeliefLensError(
                f"{str(path)!r} holds a {type(out).__name__}, not a {cls.__name__}"
            )
        return out


def _per_position(t: Tensor, batch: int, n: int, name: str) -> Tensor:
    """``[S]``, ``[batch, S]`` or ``[batch, n, S]`` as ``[batch, n, S]``."""
    if t.ndim == 1:
        return t[None, None].expand(batch, n, -1)
    if t.shape[0] != batch:
        raise BeliefLensError(
            f"{name} {tuple(t.shape)} has {t.shape[0]} rows but the run has batch {batch}"
        )
    if t.ndim == 2:
        return t[:, None].expand(-1, n, -1)
    if t.shape[1] != n:
        raise BeliefLensError(f"{name} {tuple(t.shape)} has {t.shape[1]} positions, not {n}")
    return t


@dataclass(frozen=True, eq=False)
class Steer(_Intervention):
    """Steer the belief at ``hook`` to ``target``: add ``scale * (target - current) @ M`` at
    ``positions``, where ``M = coordinates @ basis.T`` maps a belief change to an activation change.

    Build it from a probe with ``Steer.from_probe``. ``current`` is the belief read from the
    activation by the affine ``readout`` (``h @ readout_weight + readout_bias``, the probe's
    decoder), or given as ``current`` (e.g. the true belief); exactly one of the two.

    Attributes
    ----------
    hook : str
        Full TransformerLens hook name (``"blocks.3.hook_resid_post"``).
    basis : Tensor, float64, ``[d, k]``
        Orthonormal basis of the belief subspace the steering moves in.
    coordinates : Tensor, float64, ``[S, k]``
        The map from belief changes to coordinates in ``basis``.
    target : Tensor, float64, ``[S]``, ``[batch, S]`` or ``[batch, n_positions, S]``
        The belief to steer to: one for all, one per sequence, or one per sequence and position.
    positions : tuple of int or None
        Positions steered (negative count from the end); None for all.
    scale : float
        Multiplies the change; 1 moves the read-out belief to the target.
    readout_weight, readout_bias : Tensor or None, ``[d, S]`` and ``[S]``
    current : Tensor or None, shaped as ``target``
    control_seed : int or None
        Set on a control (``.control(seed)``): ``basis`` is then the control subspace.
    """

    hook: str
    basis: Float[Tensor, "d k"]
    coordinates: Float[Tensor, "S k"]
    target: Float[Tensor, "*batch S"]
    positions: tuple[int, ...] | None = None
    scale: float = 1.0
    readout_weight: Float[Tensor, "d S"] | None = None
    readout_bias: Float[Tensor, " S"] | None = None
    current: Float[Tensor, "*batch S"] | None = None
    control_seed: int | None = None

    def __post_init__(self) -> None:
        self._check_common()
        d, k = self.basis.shape
        coords = _as_float64(self.coordinates, "coordinates")
        if coords.ndim != 2 or coords.shape[1] != k or coords.shape[0] < 1:
            raise BeliefLensError(
                f"coordinates must be [S, k] with k={k} (the basis rank), got {tuple(coords.shape)}"
            )
        S = coords.shape[0]
        object.__setattr__(self, "coordinates", coords)
        object.__setattr__(self, "target", self._check_beliefs(self.target, "target", S))
        object.__setattr__(self, "scale", _check_scale(self.scale))
        has_readout = self.readout_weight is not None or self.readout_bias is not None
        if (self.current is None) == (not has_readout):
            raise BeliefLensError(
                "give exactly one way to know the current belief: readout_weight and "
                "readout_bias (the probe's decoder) or current (e.g. the true belief)"
            )
        if self.current is not None:
            object.__setattr__(self, "current", self._check_beliefs(self.current, "current", S))
        else:
            w = _as_float64(self.readout_weight, "readout_weight")
            b = _as_float64(self.readout_bias, "readout_bias")
            if w.shape != (d, S) or b.shape != (S,):
                raise BeliefLensError(
                    f"readout_weight and readout_bias must be [d, S]=({d}, {S}) and [S]=({S},), "
                    f"got {tuple(w.shape)} and {tuple(b.shape)}"
                )
            object.__setattr__(self, "readout_weight", w)
            object.__setattr__(self, "readout_bias", b)

    def _check_beliefs(self, x: Any, name: str, S: int) -> Tensor:
        t = _as_float64(x, name)
        if t.ndim not in (1, 2, 3) or t.shape[-1] != S:
            raise BeliefLensError(
                f"{name} must be [S], [batch, S] or [batch, n_positions, S] with S={S} (the "
                f"probe's states), got {tuple(t.shape)}"
            )
        if t.ndim == 3 and self.positions is not None and t.shape[1] != len(self.positions):
            raise BeliefLensError(
                f"{name} {tuple(t.shape)} gives {t.shape[1]} positions but positions="
                f"{list(self.positions)} has {len(self.positions)}"
            )
        _check_simplex(t, name)
        return t

    @classmethod
    def from_probe(
        cls,
        probe: Any,
        hook: str,
        target: Float[Tensor, "*batch S"],
        *,
        positions: Positions = None,
        scale: float = 1.0,
        directions: BasisKind = "encoding",
        current: Float[Tensor, "*batch S"] | None = None,
    ) -> Steer:
        """Steering along ``probe``'s encoding directions (default) or the minimum-norm change in
        its decoding row space (``directions="decoding"``). Without ``current``, the current
        belief is the probe's read-out."""
        kind = _check_option(directions, BasisKind, "directions")
        basis = belief_basis(probe, kind)  # type: ignore[arg-type]
        weight, bias = _readout(probe, basis.shape[0])
        if kind == "encoding":
            full = _as_float64(probe.encoding_map(), "the probe's encoding map")
        else:
            # The minimum-norm x with x @ weight = delta, on the free coordinates only (the
            # sum-zero ones for beliefs): a plain pinv would invert the read-out's null sum.
            Q = free_coordinates(weight.shape[1], basis.shape[1])
            full = Q @ torch.linalg.pinv(weight @ Q)  # [S, d]
        coords = full @ basis
        if (coords @ basis.T - full).abs().max() > 1e-6 * max(1.0, float(full.abs().max())):
            raise BeliefLensError(f"the probe's {kind} map does not lie in its {kind} basis")
        with_readout = current is None
        return cls(
            hook=hook,
            basis=basis,
            coordinates=coords,
            target=target,
            positions=positions,  # type: ignore[arg-type]
            scale=scale,
            readout_weight=weight if with_readout else None,
            readout_bias=bias if with_readout else None,
            current=current,
        )

    def _check_run(self, batch: int, n_pos: int) -> list[int]:
        pos = _resolve_positions(self.positions, n_pos)
        for name in ("target", "current"):
            t = getattr(self, name)
            if t is not None:
                _per_position(t, batch, len(pos), name)
        return pos

    def apply(self, activation: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos d"]:
        """The steered activation, a new tensor: what the hook writes at ``hook``."""
        batch, n_pos = _check_activation(activation, self.d_model, self.hook)
        pos = self._check_run(batch, n_pos)
        dev = activation.device
        wd = _work_dtype(dev)
        h = activation[:, pos].to(wd)
        target = _per_position(self.target, batch, len(pos), "target").to(dev, wd)
        if self.current is not None:
            current = _per_position(self.current, batch, len(pos), "current").to(dev, wd)
        else:
            current = h @ self.readout_weight.to(dev, wd) + self.readout_bias.to(dev, wd)  # type: ignore[union-attr]
        move = self.coordinates.to(dev, wd) @ self.basis.T.to(dev, wd)  # [S, d]
        out = activation.clone()
        out[:, pos] += (self.scale * (target - current) @ move).to(activation.dtype)
        return out


@dataclass(frozen=True, eq=False)
class SubspacePatch(_Intervention):
    """Patch the belief subspace at ``hook`` from a source run: ``h + (h_src - h) @ B @ B.T`` at
    ``positions``; the rest of the activation keeps the base run's values.

    ``source`` is the source run as tokens ``[batch, pos]`` (run through the model by
    ``intervene``, same shape as the base tokens) or as its activations at ``hook``
    ``[batch, pos, d]``.
    """

    hook: str
    basis: Float[Tensor, "d k"]
    source: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d"]
    positions: tuple[int, ...] | None = None
    control_seed: int | None = None

    def __post_init__(self) -> None:
        self._check_common()
        src = self.source
        if not isinstance(src, Tensor):
            try:
                src = torch.as_tensor(np.asarray(src))
            except (TypeError, ValueError, RuntimeError):
                raise BeliefLensError(
                    f"source must be tokens or activations, got {type(self.source).__name__}"
                ) from None
        if _is_int(src):
            src = src.detach().to("cpu", torch.long).clone()
            if src.ndim == 1:
                src = src[None]
            if src.ndim != 2 or src.numel() == 0 or int(src.min()) < 0:
                raise BeliefLensError(
                    f"source tokens must be non-negative integers [batch, pos], got shape "
                    f"{tuple(src.shape)}" + (f", min {int(src.min())}" if src.numel() else "")
                )
        else:
            src = _as_float64(src, "source activations")
            if src.ndim != 3 or src.shape[-1] != self.d_model:
                raise BeliefLensError(
                    f"source activations must be [batch, pos, d] with d={self.d_model} (the "
                    f"basis rows), got {tuple(src.shape)}"
                )
        object.__setattr__(self, "source", src)

    @property
    def source_is_tokens(self) -> bool:
        """Whether ``source`` holds tokens (else activations at ``hook``)."""
        return _is_int(self.source)

    def _check_run(self, batch: int, n_pos: int) -> list[int]:
        pos = _resolve_positions(self.positions, n_pos)
        if tuple(self.source.shape[:2]) != (batch, n_pos):
            what = "tokens" if self.source_is_tokens else "activations"
            raise BeliefLensError(
                f"source {what} {tuple(self.source.shape)} do not match the base run "
                f"[batch, pos]=({batch}, {n_pos})"
            )
        return pos

    def apply(
        self,
        activation: Float[Tensor, "batch pos d"],
        source_activation: Float[Tensor, "batch pos d"] | None = None,
    ) -> Float[Tensor, "batch pos d"]:
        """The patched activation, a new tensor; ``source_activation`` is needed (only) when
        ``source`` holds tokens."""
        batch, n_pos = _check_activation(activation, self.d_model, self.hook)
        pos = self._check_run(batch, n_pos)
        if source_activation is None:
            if self.source_is_tokens:
                raise BeliefLensError(
                    "source holds tokens: pass their activations at the hook, or use intervene()"
                )
            source_activation = self.source
        elif tuple(source_activation.shape) != tuple(activation.shape):
            raise BeliefLensError(
                f"source activations {tuple(source_activation.shape)} differ from the base's "
                f"{tuple(activation.shape)}"
            )
        return _project_towards(activation, source_activation[:, pos], self.basis, pos)


def _project_towards(
    activation: Tensor, reference: Tensor, basis: Tensor, pos: list[int]
) -> Tensor:
    """``h + (ref - h) @ B @ B.T`` at ``pos`` in a copy; ``reference`` is ``[batch, |pos|, d]``."""
    dev = activation.device
    wd = _work_dtype(dev)
    B = basis.to(dev, wd)
    h = activation[:, pos].to(wd)
    ref = reference.to(dev, wd)
    out = activation.clone()
    out[:, pos] = (h + ((ref - h) @ B) @ B.T).to(activation.dtype)
    return out


@dataclass(frozen=True, eq=False)
class Ablate(_Intervention):
    """Ablate the belief subspace at ``hook``: project it out (``mode="zero"``) or replace its
    component with the mean's (``mode="mean"``): ``h + (m - h) @ B @ B.T`` at ``positions``.

    ``mean`` ``[d]`` is the reference activation for ``"mean"``; without it, the mean over the
    run's batch and the ablated positions.
    """

    hook: str
    basis: Float[Tensor, "d k"]
    mode: AblateMode = "zero"
    mean: Float[Tensor, " d"] | None = None
    positions: tuple[int, ...] | None = None
    control_seed: int | None = None

    def __post_init__(self) -> None:
        self._check_common()
        _check_option(self.mode, AblateMode, "mode")
        if self.mean is not None:
            if self.mode != "mean":
                raise BeliefLensError("mean is used only with mode='mean'")
            mean = _as_float64(self.mean, "mean")
            if mean.shape != (self.d_model,):
                raise BeliefLensError(
                    f"mean must be [d]=({self.d_model},) (the basis rows), got {tuple(mean.shape)}"
                )
            object.__setattr__(self, "mean", mean)

    def apply(self, activation: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos d"]:
        """The ablated activation, a new tensor."""
        batch, n_pos = _check_activation(activation, self.d_model, self.hook)
        pos = self._check_run(batch, n_pos)
        h = activation[:, pos]
        if self.mode == "zero":
            ref = torch.zeros_like(h)
        elif self.mean is not None:
            ref = self.mean.to(h.device)[None, None].expand(h.shape)
        else:
            ref = h.to(_work_dtype(h.device)).mean(dim=(0, 1), keepdim=True).expand(h.shape)
        return _project_towards(activation, ref, self.basis, pos)


_TYPES: dict[str, type] = {"Steer": Steer, "SubspacePatch": SubspacePatch, "Ablate": Ablate}


def load_intervention(path: str | Path) -> Steer | SubspacePatch | Ablate:
    """Read a ``Steer``, ``SubspacePatch`` or ``Ablate`` written by its ``save``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise BeliefLensError(f"intervention file {str(path)!r} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BeliefLensError(f"{str(path)!r} is not a readable safetensors file: {err}") from None
    try:
        header = json.loads(meta[_HEADER_KEY])
        cls = _TYPES[header["type"]]
        values = dict(header["fields"])
        fmt = header["format"]
    except (KeyError, TypeError, ValueError):
        raise BeliefLensError(
            f"{str(path)!r} has no belief_lens intervention header; write it with .save()"
        ) from None
    if fmt != _FORMAT:
        raise BeliefLensError(f"{str(path)!r} has format {fmt!r}; this version reads {_FORMAT}")
    names = {f.name for f in fields(cls)}
    unknown = (set(values) | set(tensors)) - names
    if unknown:
        raise BeliefLensError(
            f"{str(path)!r} has fields {sorted(unknown)} unknown to {cls.__name__}"
        )
    try:
        return cls(**values, **tensors)
    except TypeError as err:
        raise BeliefLensError(f"{str(path)!r} does not describe a {cls.__name__}: {err}") from None


# ------------------------------------------------------------------------------------- running
def _exact_hook(model: Any, hook: str) -> str:
    if hook not in model.hook_dict:
        raise BeliefLensError(
            f"unknown hook {hook!r}: give a full hook name of this model, e.g. one of its "
            f"residual-stream hooks {residual_hooks(model)}"
        )
    return hook


def _check_against(model: Any, tokens: Tensor, intervention: Any) -> None:
    """Everything about ``intervention`` that can be checked before a forward pass."""
    if not isinstance(intervention, (Steer, SubspacePatch, Ablate)):
        raise BeliefLensError(
            f"intervention must be a Steer, SubspacePatch or Ablate, got "
            f"{type(intervention).__name__}"
        )
    _exact_hook(model, intervention.hook)
    if intervention.hook in residual_hooks(model):
        d_model = int(model.cfg.d_model)
        if intervention.d_model != d_model:
            raise BeliefLensError(
                f"the basis has d={intervention.d_model} rows but {intervention.hook} has "
                f"d_model={d_model}"
            )
    intervention._check_run(int(tokens.shape[0]), int(tokens.shape[1]))
    if isinstance(intervention, SubspacePatch) and intervention.source_is_tokens:
        check_tokens(model, intervention.source)


def _run_hooked(
    model: Any, tokens: Tensor, hook: str, fn: Callable[[Tensor], Tensor | None]
) -> tuple[Tensor, Tensor | None]:
    """Run ``model`` on ``tokens`` in eval mode with ``fn`` at ``hook`` through ``model.hooks()``;
    the hook must fire exactly once. Returns the logits and the activation the hook saw."""
    seen: list[Tensor] = []

    def hook_fn(activation: Tensor, hook: Any = None) -> Tensor | None:
        seen.append(activation)
        return fn(activation)

    with eval_mode(model), model.hooks(fwd_hooks=[(hook, hook_fn)]):
        logits = model(tokens.to(model_device(model)))
    if len(seen) != 1:
        raise BeliefLensError(f"hook {hook!r} fired {len(seen)} times in one forward, expected 1")
    return logits, seen[0]


def _intervene(model: Any, tokens: Tensor, intervention: Any) -> Tensor:
    """``intervene`` on checked input."""
    if isinstance(intervention, SubspacePatch) and intervention.source_is_tokens:
        _, source = _run_hooked(model, intervention.source, intervention.hook, lambda a: None)
        return _run_hooked(
            model, tokens, intervention.hook, lambda a: intervention.apply(a, source)
        )[0]
    return _run_hooked(model, tokens, intervention.hook, intervention.apply)[0]


def intervene(
    model: Any, tokens: Int[Tensor, "batch pos"], intervention: Steer | SubspacePatch | Ablate
) -> Float[Tensor, "batch pos d_vocab"]:
    """Run ``model`` on ``tokens`` with ``intervention`` applied at its hook; return the logits.

    Tokens, the hook name (exact), positions, batch and (for residual hooks) the width are checked
    before any forward pass. The hook runs through the model's own ``hooks()`` context manager,
    which removes it on any exception, and must fire exactly once.
    """
    tokens = check_tokens(model, tokens)
    _check_against(model, tokens, intervention)
    return _intervene(model, tokens, intervention)


# ------------------------------------------------------------------------------------- shortcuts
def steer_to_belief(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    probe: Any,
    hook: str,
    target_beliefs: Tensor,
    positions: Positions = None,
    scale: float = 1.0,
    directions: Directions = "encoding",
    current_beliefs: Tensor | None = None,
    *,
    control_seed: int = 0,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Run ``model`` with the belief at ``hook`` steered to ``target_beliefs``; return logits.

    ``intervene(model, tokens, Steer.from_probe(...))``, with ``directions="control"`` for the
    encoding steer's ``.control(control_seed)``.
    """
    kind = _check_option(directions, Directions, "directions")
    tokens = check_tokens(model, tokens)
    steer = Steer.from_probe(
        probe,
        resolve_hook(model, hook),
        target_beliefs,
        positions=positions,
        scale=scale,
        directions="encoding" if kind == "control" else kind,  # type: ignore[arg-type]
        current=current_beliefs,
    )
    if kind == "control":
        steer = steer.control(control_seed)
    _check_against(model, tokens, steer)
    return _intervene(model, tokens, steer)


def ablate_belief_subspace(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    basis: Any,
    hook: str,
    mode: AblateMode = "zero",
    *,
    mean_activation: Tensor | None = None,
    positions: Positions = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Run with the belief subspace at ``hook`` ablated: ``intervene(model, tokens, Ablate(...))``.
    ``basis`` is a ``[d, k]`` orthonormal basis or a probe (its encoding basis)."""
    tokens = check_tokens(model, tokens)
    ablate = Ablate(
        hook=resolve_hook(model, hook),
        basis=_basis_from(basis, "encoding"),
        mode=mode,
        mean=mean_activation,
        positions=positions,  # type: ignore[arg-type]
    )
    _check_against(model, tokens, ablate)
    return _intervene(model, tokens, ablate)


# ------------------------------------------------------------------------------------- patching
def subspace_patch_setter(
    probe_or_basis: Any, *, kind: BasisKind = "encoding"
) -> Callable[[Tensor, Sequence[int], Tensor], Tensor]:
    """A ``patch_setter`` for ``transformer_lens.patching.generic_activation_patch``.

    At the patched ``[layer, pos]`` it writes ``h + (h_clean - h) @ B @ B.T`` into a copy of the
    corrupted activation: the clean run's belief-subspace component replaces the corrupted run's,
    the rest is untouched. ``probe_or_basis`` is a probe, a ``[d, k]`` orthonormal basis, or a
    mapping ``layer -> probe or basis``.
    """
    bases = _bases(probe_or_basis, kind)

    def setter(
        corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
    ) -> Tensor:
        if len(index) != 2:
            raise BeliefLensError(
                f"subspace_patch_setter patches [layer, pos] indices, got {list(index)}; use "
                "index_axis_names=('layer', 'pos')"
            )
        layer, pos = int(index[0]), int(index[1])
        if isinstance(bases, dict):
            if layer not in bases:
                raise BeliefLensError(f"no basis for layer {layer}; have layers {sorted(bases)}")
            B = bases[layer]
        else:
            B = bases
        _check_activation(corrupted_activation, B.shape[0], f"layer {layer}")
        clean = clean_activation[:, [pos]].to(corrupted_activation.device)
        return _project_towards(corrupted_activation, clean, B, [pos])

    return setter


def _layer_hooks(model: Any, activation_name: str) -> list[str]:
    """The hook name of ``activation_name`` in every layer, as generic_activation_patch uses."""
    if not isinstance(activation_name, str):
        raise BeliefLensError(f"activation_name must be a string, got {activation_name!r}")
    names = [
        tl_compat.get_act_name(activation_name, layer) for layer in range(int(model.cfg.n_layers))
    ]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise BeliefLensError(
            f"activation_name {activation_name!r} gives hooks {missing} this model lacks; use a "
            "per-layer activation such as 'resid_pre', 'resid_mid' or 'resid_post'"
        )
    return names


def _check_pair(model: Any, clean: Any, corrupted: Any) -> tuple[Tensor, Tensor]:
    clean, corrupted = check_tokens(model, clean), check_tokens(model, corrupted)
    if clean.shape != corrupted.shape:
        raise BeliefLensError(
            f"clean tokens {tuple(clean.shape)} and corrupted tokens {tuple(corrupted.shape)} "
            "differ in shape"
        )
    return clean, corrupted


def _check_layer_bases(model: Any, names: list[str], bases: Tensor | dict[int, Tensor]) -> None:
    per_layer = bases if isinstance(bases, dict) else dict.fromkeys(range(len(names)), bases)
    missing = sorted(set(range(len(names))) - set(per_layer))
    if missing:
        raise BeliefLensError(
            f"no probe or basis for layers {missing}; the sweep patches every layer"
        )
    resid = set(residual_hooks(model))
    d_model = int(model.cfg.d_model)
    for layer, name in enumerate(names):
        d = per_layer[layer].shape[0]
        if name in resid and d != d_model:
            raise BeliefLensError(f"the basis for layer {layer} has d={d}, {name} has {d_model}")


def _patch_grid(
    model: Any,
    corrupted: Tensor,
    cache: Any,
    bases: Tensor | dict[int, Tensor],
    metric: Callable[[Tensor], Tensor],
    activation_name: str,
) -> Tensor:
    from transformer_lens import patching

    with eval_mode(model):
        grid = patching.generic_activation_patch(
            model,
            corrupted.to(model_device(model)),
            cache,
            metric,
            subspace_patch_setter(bases),
            activation_name,
            index_axis_names=("layer", "pos"),
        )
    return grid.detach().to("cpu", torch.float64)


def _clean_cache(model: Any, clean: Tensor, names: list[str]) -> Any:
    wanted = set(names)
    with eval_mode(model):
        _, cache = model.run_with_cache(
            clean.to(model_device(model)), names_filter=lambda name: name in wanted
        )
    return cache


def patch_belief_subspace(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    probe_or_basis: Any,
    metric: Callable[[Tensor], Tensor],
    activation_name: str = "resid_post",
    *,
    kind: BasisKind = "encoding",
) -> Float[Tensor, "n_layers pos"]:
    """The ``[layer, pos]`` grid of ``metric`` after patching the clean run's belief subspace into
    the corrupted run, through TransformerLens's own ``generic_activation_patch``.

    ``activation_name`` is a per-layer activation (``resid_pre``, ``resid_mid``, ``resid_post``),
    resolved to exact hook names with TransformerLens's ``get_act_name``. ``probe_or_basis`` is a
    probe, a ``[d, k]`` basis, or a mapping ``layer -> probe or basis`` covering every layer.
    """
    clean, corrupted = _check_pair(model, clean_tokens, corrupted_tokens)
    names = _layer_hooks(model, activation_name)
    bases = _bases(probe_or_basis, kind)
    _check_layer_bases(model, names, bases)
    cache = _clean_cache(model, clean, names)
    return _patch_grid(model, corrupted, cache, bases, metric, activation_name)


def theory_kl_metric(
    hmm: HMM,
    clean_tokens: Int[Tensor, "batch pos"],
    position: int = -1,
    *,
    reduction: Reduction = "mean",
) -> Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor]:
    """A patching metric: ``KL(P(. | clean belief) || model)`` at ``position``, in nats.

    ``P(. | clean belief)`` is the HMM's next-token distribution from the exact belief after the
    clean run's tokens ``0..position``. The metric maps logits ``[batch, pos, V]`` to the mean KL
    (``reduction="mean"``, a scalar) or one per sequence (``"none"``, for TransformerLens's
    ``reduce="mean"``/``"none"``). Lower is closer to theory.
    """
    reduction = _check_option(reduction, Reduction, "reduction")  # type: ignore[assignment]
    tokens = hmm.check_tokens(clean_tokens)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise BeliefLensError(f"clean_tokens must be [batch, pos], got {tuple(tokens.shape)}")
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
        raise BeliefLensError(f"position must be an int, got {position!r}")
    n, L = tokens.shape
    pos = _resolve_positions((int(position),), L)[0]
    theory = hmm.next_token_probs(belief_states(hmm, tokens)[:, pos])  # [n, V]

    def metric(logits: Tensor) -> Tensor:
        if logits.ndim != 3 or logits.shape[0] != n or logits.shape[1] != L:
            raise BeliefLensError(
                f"logits {tuple(logits.shape)} do not match the clean tokens "
                f"[batch, pos]=({n}, {L})"
            )
        if logits.shape[-1] != hmm.n_symbols:
            raise BeliefLensError(
                f"logits have {logits.shape[-1]} tokens but {hmm.name} emits {hmm.n_symbols}"
            )
        log_q = torch.log_softmax(logits[:, pos].double(), -1)
        p = theory.to(logits.device)
        kl = (torch.special.xlogy(p, p) - p * log_q).sum(-1)
        return kl.mean() if reduction == "mean" else kl

    return metric


def recovery_metric(
    metric: Callable[[Tensor], Tensor],
    clean_logits: Float[Tensor, "batch pos d_vocab"],
    corrupted_logits: Float[Tensor, "batch pos d_vocab"],
) -> Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor]:
    """``metric`` normalised to 0 on the corrupted run and 1 on the clean run:
    ``(metric(logits) - metric(corrupted)) / (metric(clean) - metric(corrupted))``.

    ``metric`` must return a scalar; the two runs must differ under it.
    """
    values = []
    for name, logits in (("clean", clean_logits), ("corrupted", corrupted_logits)):
        v = torch.as_tensor(metric(logits)).detach()
        if v.numel() != 1:
            raise BeliefLensError(
                f"recovery needs a scalar metric; it gave shape {tuple(v.shape)} on the {name} run"
            )
        values.append(float(v))
    clean, corrupted = values
    gap = clean - corrupted
    if not math.isfinite(gap) or abs(gap) <= 1e-12 * max(1.0, abs(clean)):
        raise BeliefLensError(
            f"the clean and corrupted runs give the metric {clean!r} and {corrupted!r}: no gap "
            "to recover"
        )

    def recovered(logits: Tensor) -> Tensor:
        return recovery(torch.as_tensor(metric(logits)), clean, corrupted)

    return recovered


@dataclass(frozen=True, eq=False)
class PatchingResult:
    """Activation patching of the belief subspace against theory, beside its control.

    ``kl[layer, pos]`` is ``KL(P(. | clean belief) || model)`` at ``metric_position`` after
    patching the clean run's belief subspace into the corrupted run at ``hooks[layer]`` and
    ``positions[pos]``; ``kl_control`` the same for a seeded control subspace of the same rank,
    orthogonal to the belief subspace. ``kl_corrupted`` (before patching) and ``kl_clean`` (the
    clean run) set ``recovery``: 0 is the corrupted run, 1 the clean run.
    """

    hooks: tuple[str, ...]
    positions: tuple[int, ...]
    metric_position: int
    kl: Float[Tensor, "n_layers pos"]
    kl_control: Float[Tensor, "n_layers pos"]
    kl_clean: float
    kl_corrupted: float
    rank: int
    control_seed: int
    n_sequences: int

    def __post_init__(self) -> None:
        shape = (len(self.hooks), len(self.positions))
        for name in ("kl", "kl_control"):
            t = torch.as_tensor(getattr(self, name), dtype=torch.float64)
            if tuple(t.shape) != shape:
                raise BeliefLensError(
                    f"{name} must be [hooks, positions]={shape}, got {tuple(t.shape)}"
                )
            object.__setattr__(self, name, t)
        if self.metric_position not in self.positions:
            raise BeliefLensError(f"metric_position {self.metric_position} is not in positions")

    def _recovery(self, kl: Tensor) -> Tensor:
        if not self.kl_corrupted - self.kl_clean > 0:
            return torch.full_like(kl, math.nan)
        return recovery(kl, self.kl_clean, self.kl_corrupted)

    @property
    def recovery(self) -> Float[Tensor, "n_layers pos"]:
        """Fraction of the corrupted-to-clean KL gap closed by patching the belief subspace."""
        return self._recovery(self.kl)

    @property
    def control_recovery(self) -> Float[Tensor, "n_layers pos"]:
        """The same for the control subspace."""
        return self._recovery(self.kl_control)

    def recovered_at(self, position: int | None = None, control: bool = False) -> dict[str, float]:
        """``{hook: fraction recovered}`` when patching at ``position`` (default: the metric's)."""
        pos = self.metric_position if position is None else position
        if pos not in self.positions:
            raise BeliefLensError(f"position {pos} is not among {list(self.positions)}")
        col = self.positions.index(pos)
        grid = self.control_recovery if control else self.recovery
        return {hook: float(grid[i, col]) for i, hook in enumerate(self.hooks)}

    def summary(self) -> dict[str, Any]:
        """Plain values for ``metrics.json``: the KLs, both grids, and recovery at the metric
        position per hook."""
        return {
            "hooks": list(self.hooks),
            "positions": list(self.positions),
            "metric_position": self.metric_position,
            "rank": self.rank,
            "control_seed": self.control_seed,
            "n_sequences": self.n_sequences,
            "kl_clean": self.kl_clean,
            "kl_corrupted": self.kl_corrupted,
            "recovered": self.recovered_at(),
            "control_recovered": self.recovered_at(control=True),
            "recovery": self.recovery.tolist(),
            "control_recovery": self.control_recovery.tolist(),
        }

    def to_markdown(self, digits: int = 3) -> str:
        """Per hook: KL and fraction recovered when patching at the metric position, for the
        belief subspace and the control, and the largest recovery at any other position."""
        at = self.positions.index(self.metric_position)
        others = [i for i in range(len(self.positions)) if i != at]
        rec, ctrl = self.recovery, self.control_recovery
        head = (
            f"Patching the rank-{self.rank} belief subspace (control seed {self.control_seed}); "
            f"KL(theory || model) at position {self.metric_position}: corrupted "
            f"{self.kl_corrupted:.{digits + 1}g}, clean {self.kl_clean:.{digits + 1}g}; "
            f"{self.n_sequences} sequences.\n\n"
        )
        cols = ["hook", "KL patched", "recovered", "KL control", "control recovered",
                "max recovered elsewhere"]  # fmt: skip
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for i, hook in enumerate(self.hooks):
            elsewhere = float(rec[i, others].abs().max()) if others else math.nan
            cells = [self.kl[i, at], rec[i, at], self.kl_control[i, at], ctrl[i, at], elsewhere]
            lines.append(
                f"| {hook} | " + " | ".join(f"{float(c):.{digits}f}" for c in cells) + " |"
            )
        return head + "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def patching_report(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    hmm: HMM,
    probe_or_basis: Any,
    *,
    activation_name: str = "resid_post",
    position: int = -1,
    kind: BasisKind = "encoding",
    control_seed: int = 0,
) -> PatchingResult:
    """Patch the belief subspace of every layer and position from the clean run into the corrupted
    run, and a control of the same rank, measured by ``theory_kl_metric`` at ``position``.

    ``probe_or_basis`` is a probe, a basis, or ``{layer: probe}`` (the probe of each layer's
    ``activation_name`` hook). Tokens are the HMM's symbols, read by the model as tokens.
    """
    clean, corrupted = _check_pair(model, clean_tokens, corrupted_tokens)
    control_seed = _check_seed(control_seed, "control_seed")
    names = _layer_hooks(model, activation_name)
    bases = _bases(probe_or_basis, kind)
    _check_layer_bases(model, names, bases)
    if isinstance(bases, dict):
        controls: Tensor | dict[int, Tensor] = {
            k: control_basis(b, control_seed) for k, b in bases.items()
        }
        rank = int(next(iter(bases.values())).shape[1])
    else:
        controls = control_basis(bases, control_seed)
        rank = int(bases.shape[1])
    metric = theory_kl_metric(hmm, clean, position)
    L = clean.shape[1]
    pos = _resolve_positions((position,), L)[0]
    with eval_mode(model):
        dev = model_device(model)
        kl_clean = float(metric(model(clean.to(dev))))
        kl_corrupted = float(metric(model(corrupted.to(dev))))
    cache = _clean_cache(model, clean, names)
    return PatchingResult(
        hooks=tuple(names),
        positions=tuple(range(L)),
        metric_position=pos,
        kl=_patch_grid(model, corrupted, cache, bases, metric, activation_name),
        kl_control=_patch_grid(model, corrupted, cache, controls, metric, activation_name),
        kl_clean=kl_clean,
        kl_corrupted=kl_corrupted,
        rank=rank,
        control_seed=control_seed,
        n_sequences=int(clean.shape[0]),
    )


# ------------------------------------------------------------------------------------- report
@dataclass(frozen=True)
class InterventionReport:
    """One steering experiment against theory.

    Per-example tensors are ``[n]`` (KLs, nats) or ``[n, V]`` (distributions). ``kl_after`` and
    ``probs_after`` map each direction kind (``"encoding"``, ``"decoding"``, ``"control"``) to
    its result. ``summary()`` gives means, standard deviations and the fold reduction.
    """

    hook: str
    position: int
    tokens: Tensor
    target_tokens: Tensor
    target_beliefs: Tensor
    theory_probs: Tensor
    probs_before: Tensor
    kl_before: Tensor
    probs_after: dict[str, Tensor]
    kl_after: dict[str, Tensor]
    theory_probs_before: Tensor | None = None

    def fold_reduction(self, kind: str = "encoding") -> float:
        """Mean KL before divided by mean KL after: how far steering moved the model to theory."""
        if kind not in self.kl_after:
            raise BeliefLensError(
                f"no {kind!r} steering in this report; have {list(self.kl_after)}"
            )
        return float(self.kl_before.mean() / self.kl_after[kind].mean())

    def summary(self) -> dict[str, float]:
        out = {
            "kl_before_mean": float(self.kl_before.mean()),
            "kl_before_std": float(self.kl_before.std()),
        }
        for kind, kl in self.kl_after.items():
            out[f"kl_after_{kind}_mean"] = float(kl.mean())
            out[f"kl_after_{kind}_std"] = float(kl.std())
            out[f"fold_{kind}"] = self.fold_reduction(kind)
        return out


def _next_token_probs(logits: Tensor, position: int, token_map: Any | None, length: int) -> Tensor:
    """The model's next-symbol distribution after symbol ``position``, ``[batch, V]``."""
    if token_map is None:
        return torch.softmax(logits[:, position].double(), -1).cpu()
    probs, _ = token_map.predictions(logits, length)
    return probs[:, position].double().cpu()


def intervention_report(
    model: Any,
    tokens: Int[Tensor, "n L"] | None,
    hmm: HMM,
    probe: Any,
    hook: str,
    *,
    target_tokens: Int[Tensor, "n L"] | None = None,
    position: int = -1,
    n_sequences: int = 512,
    directions: Sequence[Directions] = ("encoding", "decoding", "control"),
    current: Current = "probe",
    scale: float = 1.0,
    seed: int = 0,
    token_map: Any | None = None,
) -> InterventionReport:
    """Steer each sequence's belief at ``hook`` and ``position`` to another sequence's belief and
    compare the model's next-token distribution with ``P(. | target belief)`` from ``hmm``.

    ``tokens`` are HMM symbol sequences (None: ``n_sequences`` sampled with ``seed``). Without
    ``target_tokens``, targets come from a seeded pairing of the sequences in which each partner
    has a different token at ``position`` (so beliefs differ). ``current="probe"`` steers from the
    probe's decoded belief, ``"true"`` from the exact one. ``"control"`` is the encoding steer's
    ``.control(seed)``. With ``token_map``, the model reads the symbols through the map, its
    prediction is the map-restricted distribution, and steering acts at the position that
    predicts the next symbol (the last separator after it, if any), so fit ``probe`` there
    (``fit_position_probes(..., read_at="prediction")``).
    """
    current = _check_option(current, Current, "current")  # type: ignore[assignment]
    if isinstance(directions, str) or not directions:
        raise BeliefLensError(
            f"directions must be a non-empty sequence of kinds, got {directions!r}"
        )
    kinds = [_check_option(k, Directions, "directions") for k in directions]
    seed = _check_seed(seed)
    if isinstance(position, bool) or not isinstance(position, (int, np.integer)):
        raise BeliefLensError(f"position must be an int, got {position!r}")
    name = resolve_hook(model, hook)
    if tokens is None:
        length = int(model.cfg.n_ctx)
        if token_map is not None:
            length = token_map.max_symbols(length)
        tokens = sample_sequences(hmm, n_sequences, length, seed=seed)
    tokens = hmm.check_tokens(tokens)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise BeliefLensError(f"tokens must be [n, L] HMM symbols, got shape {tuple(tokens.shape)}")
    n, L = tokens.shape
    pos = _resolve_positions((int(position),), L)[0]
    if target_tokens is None:
        target_tokens = tokens[_pair_different(tokens[:, pos], seed)]
    target_tokens = hmm.check_tokens(target_tokens)
    if target_tokens.shape != tokens.shape:
        raise BeliefLensError(
            f"target_tokens {tuple(target_tokens.shape)} must match tokens {tuple(tokens.shape)}"
        )
    model_tokens = check_tokens(model, tokens if token_map is None else token_map.encode(tokens))
    # Steer where the next symbol is predicted: with separators that is the last separator
    # after the symbol, not the symbol itself (a last-layer change there never reaches it).
    model_pos = pos if token_map is None else int(token_map.prediction_positions(L)[pos])
    beliefs = belief_states(hmm, tokens)[:, pos]
    targets = belief_states(hmm, target_tokens)[:, pos]
    steers: dict[str, Steer] = {}
    for kind in kinds:
        base = Steer.from_probe(
            probe, name, targets, positions=model_pos, scale=scale,
            directions="encoding" if kind == "control" else kind,  # type: ignore[arg-type]
            current=beliefs if current == "true" else None,
        )  # fmt: skip
        steers[kind] = base.control(seed) if kind == "control" else base
        _check_against(model, model_tokens, steers[kind])
    theory = hmm.next_token_probs(targets)
    with eval_mode(model):
        clean = model(model_tokens.to(model_device(model)))
    before = _next_token_probs(clean, pos, token_map, L)
    probs_after, kl_after = {}, {}
    for kind, steer in steers.items():
        after = _next_token_probs(_intervene(model, model_tokens, steer), pos, token_map, L)
        probs_after[kind] = after
        kl_after[kind] = kl_divergence(theory, after)
    return InterventionReport(
        hook=name,
        position=pos,
        tokens=tokens,
        target_tokens=target_tokens,
        target_beliefs=targets,
        theory_probs=theory,
        probs_before=before,
        kl_before=kl_divergence(theory, before),
        probs_after=probs_after,
        kl_after=kl_after,
        theory_probs_before=hmm.next_token_probs(beliefs),
    )


def _pair_different(last: Tensor, seed: int) -> Tensor:
    """A seeded partner index for every sequence whose token ``last`` differs from its own."""
    gen = torch.Generator().manual_seed(seed)
    n = len(last)
    partner = torch.randperm(n, generator=gen)
    for _ in range(16):
        same = last[partner] == last
        if not same.any():
            return partner
        partner[same] = torch.randint(0, n, (int(same.sum()),), generator=gen)
    same = last[partner] == last
    if same.all():
        raise BeliefLensError("every sequence has the same token at the steered position")
    # A few stragglers: give each a partner from those with a different token.
    for i in torch.nonzero(same).flatten().tolist():
        options = torch.nonzero(last != last[i]).flatten()
        partner[i] = options[torch.randint(0, len(options), (1,), generator=gen)]
    return partner
