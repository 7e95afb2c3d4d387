"""Interventions as values: ``Steer``, ``SubspacePatch`` and ``Ablate``, their shared base, and
saving and loading them.

Each is a frozen dataclass holding its hook name, positions, an orthonormal basis ``B [d_model,
k]`` of the belief subspace and its parameters, validated once at construction, and each is a
TransformerLens hook function ``(activation, hook) -> activation`` with a ``.hook`` attribute:

- ``Steer`` adds ``scale * (target - current) @ coordinates @ B.T``: a belief change moves the
  activation along the probe's encoding map (where the model writes beliefs; the default) or its
  decoding map's minimum-norm inverse (kept as the comparison);
- ``SubspacePatch`` swaps the subspace component for a source run's, ``h + (h_src - h) @ B @ B.T``;
- ``Ablate`` projects the subspace out, or replaces its component with the mean's.

``.control(seed)`` is the same intervention on a seeded random subspace of the same rank,
orthogonal to ``B`` (so the same norm). Interventions save and load as safetensors with their
fields as JSON in the header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.interventions.bases import (
    belief_basis,
    control_basis,
    project_towards,
    readout,
    work_dtype,
)
from belief_lens.interventions.checks import check_activation, check_basis, check_simplex
from belief_lens.metrics import free_coordinates
from belief_lens.probing.estimator import BasisKind
from belief_lens.storage import load_tensors, read_metadata, refuse_existing, save_tensors
from belief_lens.validation import (
    Positions,
    check_finite_tensor,
    check_float,
    check_hook_name,
    check_option,
    check_positions,
    check_seed,
    resolve_positions,
)
from belief_lens.version import __version__

__all__ = ["Ablate", "AblateMode", "Intervention", "Steer", "SubspacePatch", "load_intervention"]

AblateMode = Literal["zero", "mean"]
_HEADER_KEY = "belief_lens.intervention"
_FORMAT = 1


def _is_int(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


class Intervention:
    """What ``Steer``, ``SubspacePatch`` and ``Ablate`` share: the hook-function call, rank and
    width, control, save and load, and the check against a run."""

    hook: str
    basis: Tensor
    positions: tuple[int, ...] | None
    control_seed: int | None
    model_fingerprint: str | None
    process: str | None

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        """A TransformerLens hook function ``fn(activation, hook)``, so that
        ``model.run_with_hooks(tokens, fwd_hooks=[(iv.hook, iv)])`` applies it with no wrapping.

        The hook point's name is not compared with ``self.hook``: TransformerLens 4's bridge
        names its hook points canonically (``blocks.3.hook_out`` for ``hook_resid_post``).
        ``intervene`` adds what a bare hook cannot: the exact hook, a firing count of one, eval
        mode and a source run's activations.
        """
        return self.apply(activation)

    def apply(self, activation: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos d"]:
        """The intervened activation, a new tensor: what the hook writes at ``hook``."""
        raise NotImplementedError

    @property
    def rank(self) -> int:
        """``k``, the dimension of the subspace acted on."""
        return int(self.basis.shape[1])

    @property
    def d_model(self) -> int:
        """The activation width the intervention expects at its hook."""
        return int(self.basis.shape[0])

    def _check_common(self) -> None:
        object.__setattr__(self, "hook", check_hook_name("hook", self.hook))
        object.__setattr__(self, "basis", check_basis("basis", self.basis))
        object.__setattr__(self, "positions", check_positions("positions", self.positions))
        if self.control_seed is not None:
            object.__setattr__(self, "control_seed", check_seed("control_seed", self.control_seed))
        for name in ("model_fingerprint", "process"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise BeliefLensError(f"{name} must be a string or None, got {value!r}")

    @property
    def provenance(self) -> str:
        """Where the intervention comes from, in words ("unknown" for one saved without it)."""
        if self.model_fingerprint is None:
            return "unknown"
        process = f", process {self.process}" if self.process else ""
        return f"model {self.model_fingerprint}, hook {self.hook}{process}"

    def control(self, seed: int = 0) -> Any:
        """The same intervention on a seeded random subspace of the same rank orthogonal to the
        belief subspace (``control_basis``), so of the same norm."""
        if self.control_seed is not None:
            raise BeliefLensError(
                f"this is already a control (seed {self.control_seed}); take the control of the "
                "belief-subspace intervention"
            )
        return replace(self, basis=control_basis(self.basis, seed), control_seed=seed)  # type: ignore[type-var]

    def check_run(self, batch: int, n_pos: int) -> list[int]:
        """Check against a run of ``batch`` sequences of ``n_pos`` positions; the positions."""
        return resolve_positions(self.positions, n_pos)

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the intervention as one safetensors file (its fields as JSON in the header),
        atomically; an existing file is kept unless ``overwrite=True``."""
        path = refuse_existing(path, overwrite)
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
        return save_tensors(path, tensors, meta, overwrite=overwrite)

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
class Steer(Intervention):
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
    model_fingerprint, process : str or None
        The model the probe was fitted on and its process (``from_probe`` copies them): using
        the steer on another model warns (see ``intervene``). None: unknown.
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
    model_fingerprint: str | None = None
    process: str | None = None

    def __post_init__(self) -> None:
        self._check_common()
        d, k = self.basis.shape
        coords = check_finite_tensor("coordinates", self.coordinates)
        if coords.ndim != 2 or coords.shape[1] != k or coords.shape[0] < 1:
            raise BeliefLensError(
                f"coordinates must be [S, k] with k={k} (the basis rank), got {tuple(coords.shape)}"
            )
        S = coords.shape[0]
        object.__setattr__(self, "coordinates", coords)
        object.__setattr__(self, "target", self._check_beliefs(self.target, "target", S))
        object.__setattr__(self, "scale", check_float("scale", self.scale))
        has_readout = self.readout_weight is not None or self.readout_bias is not None
        if (self.current is None) == (not has_readout):
            raise BeliefLensError(
                "give exactly one way to know the current belief: readout_weight and "
                "readout_bias (the probe's decoder) or current (e.g. the true belief)"
            )
        if self.current is not None:
            object.__setattr__(self, "current", self._check_beliefs(self.current, "current", S))
        else:
            w = check_finite_tensor("readout_weight", self.readout_weight)
            b = check_finite_tensor("readout_bias", self.readout_bias)
            if w.shape != (d, S) or b.shape != (S,):
                raise BeliefLensError(
                    f"readout_weight and readout_bias must be [d, S]=({d}, {S}) and [S]=({S},), "
                    f"got {tuple(w.shape)} and {tuple(b.shape)}"
                )
            object.__setattr__(self, "readout_weight", w)
            object.__setattr__(self, "readout_bias", b)

    def _check_beliefs(self, x: Any, name: str, S: int) -> Tensor:
        t = check_finite_tensor(name, x)
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
        check_simplex(name, t)
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
        kind = check_option("directions", directions, BasisKind)
        basis = belief_basis(probe, kind)  # type: ignore[arg-type]
        weight, bias = readout(probe, basis.shape[0])
        if kind == "encoding":
            full = check_finite_tensor("the probe's encoding map", probe.encoding_map())
        else:
            # The minimum-norm x with x @ weight = delta, on the free coordinates only (the
            # sum-zero ones for beliefs): a plain pinv would invert the read-out's null sum.
            Q = free_coordinates(weight.shape[1], basis.shape[1])
            full = Q @ torch.linalg.pinv(weight @ Q)  # [S, d]
        coords = full @ basis
        if (coords @ basis.T - full).abs().max() > 1e-6 * max(1.0, float(full.abs().max())):
            raise BeliefLensError(f"the probe's {kind} map does not lie in its {kind} basis")
        with_readout = current is None
        recorded = getattr(probe, "provenance_", None) or {}
        return cls(
            model_fingerprint=recorded.get("model_fingerprint"),
            process=recorded.get("process"),
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

    def check_run(self, batch: int, n_pos: int) -> list[int]:
        pos = resolve_positions(self.positions, n_pos)
        for name in ("target", "current"):
            t = getattr(self, name)
            if t is not None:
                _per_position(t, batch, len(pos), name)
        return pos

    def apply(self, activation: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos d"]:
        """The steered activation, a new tensor: what the hook writes at ``hook``."""
        batch, n_pos = check_activation(activation, self.d_model, self.hook)
        pos = self.check_run(batch, n_pos)
        dev = activation.device
        wd = work_dtype(dev)
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
class SubspacePatch(Intervention):
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
    model_fingerprint: str | None = None
    process: str | None = None

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
            src = check_finite_tensor("source activations", src)
            if src.ndim != 3 or src.shape[-1] != self.d_model:
                raise BeliefLensError(
                    f"source activations must be [batch, pos, d] with d={self.d_model} (the "
                    f"basis rows), got {tuple(src.shape)}"
                )
        object.__setattr__(self, "source", src)

    @classmethod
    def from_probe(
        cls, probe: Any, hook: str, source: Any, *, positions: Positions = None
    ) -> SubspacePatch:
        """Patch along ``probe``'s encoding basis, recording the probe's model and process."""
        recorded = getattr(probe, "provenance_", None) or {}
        return cls(hook=hook, basis=belief_basis(probe, "encoding"), source=source,
                   positions=positions,  # type: ignore[arg-type]
                   model_fingerprint=recorded.get("model_fingerprint"),
                   process=recorded.get("process"))  # fmt: skip

    @property
    def source_is_tokens(self) -> bool:
        """Whether ``source`` holds tokens (else activations at ``hook``)."""
        return _is_int(self.source)

    def check_run(self, batch: int, n_pos: int) -> list[int]:
        pos = resolve_positions(self.positions, n_pos)
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
        batch, n_pos = check_activation(activation, self.d_model, self.hook)
        pos = self.check_run(batch, n_pos)
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
        return project_towards(activation, source_activation[:, pos], self.basis, pos)


@dataclass(frozen=True, eq=False)
class Ablate(Intervention):
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
    model_fingerprint: str | None = None
    process: str | None = None

    def __post_init__(self) -> None:
        self._check_common()
        check_option("mode", self.mode, AblateMode)
        if self.mean is not None:
            if self.mode != "mean":
                raise BeliefLensError("mean is used only with mode='mean'")
            mean = check_finite_tensor("mean", self.mean)
            if mean.shape != (self.d_model,):
                raise BeliefLensError(
                    f"mean must be [d]=({self.d_model},) (the basis rows), got {tuple(mean.shape)}"
                )
            object.__setattr__(self, "mean", mean)

    @classmethod
    def from_probe(
        cls, probe: Any, hook: str, mode: AblateMode = "zero", *, positions: Positions = None
    ) -> Ablate:
        """Ablate ``probe``'s encoding subspace, recording the probe's model and process."""
        recorded = getattr(probe, "provenance_", None) or {}
        return cls(hook=hook, basis=belief_basis(probe, "encoding"), mode=mode,
                   positions=positions,  # type: ignore[arg-type]
                   model_fingerprint=recorded.get("model_fingerprint"),
                   process=recorded.get("process"))  # fmt: skip

    def apply(self, activation: Float[Tensor, "batch pos d"]) -> Float[Tensor, "batch pos d"]:
        """The ablated activation, a new tensor."""
        batch, n_pos = check_activation(activation, self.d_model, self.hook)
        pos = self.check_run(batch, n_pos)
        h = activation[:, pos]
        if self.mode == "zero":
            ref = torch.zeros_like(h)
        elif self.mean is not None:
            ref = self.mean.to(h.device)[None, None].expand(h.shape)
        else:
            ref = h.to(work_dtype(h.device)).mean(dim=(0, 1), keepdim=True).expand(h.shape)
        return project_towards(activation, ref, self.basis, pos)


_TYPES: dict[str, type] = {"Steer": Steer, "SubspacePatch": SubspacePatch, "Ablate": Ablate}


def load_intervention(path: str | Path) -> Steer | SubspacePatch | Ablate:
    """Read a ``Steer``, ``SubspacePatch`` or ``Ablate`` written by its ``save``."""
    path = Path(path)
    if not path.is_file():
        raise BeliefLensError(f"intervention file {str(path)!r} not found")
    try:
        meta, shapes = read_metadata(path)
    except BeliefLensError as err:
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
    unknown = (set(values) | set(shapes)) - names if isinstance(values, dict) else {"fields"}
    if unknown:
        raise BeliefLensError(
            f"{str(path)!r} has fields {sorted(unknown)} unknown to {cls.__name__}"
        )
    tensors = load_tensors(path, meta)
    try:
        return cls(**values, **tensors)
    except (TypeError, ValueError, RuntimeError) as err:
        raise BeliefLensError(f"{str(path)!r} does not describe a {cls.__name__}: {err}") from None
