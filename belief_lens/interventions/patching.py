"""Activation patching of the belief subspace, through TransformerLens's own
``patching.generic_activation_patch`` and measured against the HMM.

``subspace_patch_setter`` is a patch setter (swap only the belief-subspace component),
``theory_kl_metric`` and ``recovery_metric`` are metrics (the KL to theory's prediction, and that
normalised to 0 on the corrupted run and 1 on the clean run); ``patch_belief_subspace`` runs the
sweep, and ``patching_report`` runs it beside its control into a ``PatchingResult``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens import tl_compat
from belief_lens.activations import (
    block_entered,
    blocks_match_forward,
    check_tokens,
    eval_mode,
    logits_from_block,
    model_device,
    residual_hooks,
)
from belief_lens.beliefs import belief_states, check_hmm
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.interventions.bases import LayerBases, project_towards
from belief_lens.interventions.checks import check_activation
from belief_lens.interventions.provenance import check_provenance, provenance_of
from belief_lens.metrics import kl_divergence, recovery
from belief_lens.probing.estimator import BasisKind
from belief_lens.threads import recheck
from belief_lens.training.progress import quiet_unwatched_bars
from belief_lens.validation import check_int, check_option, check_seed, resolve_positions

__all__ = [
    "PatchingResult",
    "layer_hooks",
    "patch_belief_subspace",
    "patching_report",
    "recovery_metric",
    "subspace_patch_setter",
    "theory_kl_metric",
]

Reduction = Literal["mean", "none"]


# ----------------------------------------------------------------------------- the sweep
def subspace_patch_setter(
    probe_or_basis: Any, *, kind: BasisKind = "encoding"
) -> Callable[[Tensor, Sequence[int], Tensor], Tensor]:
    """A ``patch_setter`` for ``transformer_lens.patching.generic_activation_patch``.

    At the patched ``[layer, pos]`` it writes ``h + (h_clean - h) @ B @ B.T`` into a copy of the
    corrupted activation: the clean run's belief-subspace component replaces the corrupted run's,
    the rest is untouched. ``probe_or_basis`` is a probe, a ``[d, k]`` orthonormal basis, a
    mapping ``layer -> probe or basis``, or ``LayerBases``.
    """
    bases = probe_or_basis if isinstance(probe_or_basis, LayerBases) else None
    bases = bases or LayerBases.of(probe_or_basis, kind)

    def setter(
        corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor
    ) -> Tensor:
        if len(index) != 2:
            raise BeliefLensError(
                f"subspace_patch_setter patches [layer, pos] indices, got {list(index)}; use "
                "index_axis_names=('layer', 'pos')"
            )
        layer, pos = int(index[0]), int(index[1])
        B = bases[layer]
        check_activation(corrupted_activation, B.shape[0], f"layer {layer}")
        clean = clean_activation[:, [pos]].to(corrupted_activation.device)
        return project_towards(corrupted_activation, clean, B, [pos])

    return setter


def layer_hooks(model: Any, hook: str) -> list[str]:
    """The full name of the per-layer hook ``hook`` (``"resid_post"``) in every layer, as
    ``generic_activation_patch`` resolves it."""
    if not isinstance(hook, str):
        raise BeliefLensError(f"hook must be a per-layer hook name string, got {hook!r}")
    names = [tl_compat.get_act_name(hook, layer) for layer in range(int(model.cfg.n_layers))]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise BeliefLensError(
            f"hook {hook!r} gives hooks {missing} this model lacks; use a per-layer hook such "
            "as 'resid_pre', 'resid_mid' or 'resid_post'"
        )
    problem = tl_compat.residual_write_problem(model, names[0])
    if problem:
        raise BeliefLensError(problem)
    return names


def _check_pair(model: Any, clean: Any, corrupted: Any) -> tuple[Tensor, Tensor]:
    clean, corrupted = check_tokens(model, clean), check_tokens(model, corrupted)
    if clean.shape != corrupted.shape:
        raise BeliefLensError(
            f"clean tokens {tuple(clean.shape)} and corrupted tokens {tuple(corrupted.shape)} "
            "differ in shape"
        )
    return clean, corrupted


def _check_layer_bases(model: Any, names: list[str], bases: LayerBases) -> None:
    missing = bases.missing(len(names))
    if missing:
        raise BeliefLensError(
            f"no probe or basis for layers {missing}; the sweep patches every layer"
        )
    resid = set(residual_hooks(model))
    d_model = int(model.cfg.d_model)
    for layer, name in enumerate(names):
        d = bases[layer].shape[0]
        if name in resid and d != d_model:
            raise BeliefLensError(f"the basis for layer {layer} has d={d}, {name} has {d_model}")


def _clean_cache(model: Any, clean: Tensor, names: list[str]) -> Any:
    wanted = set(names)
    with eval_mode(model):
        _, cache = model.run_with_cache(
            clean.to(model_device(model)), names_filter=lambda name: name in wanted
        )
    return cache


def _patch_grid(
    model: Any,
    corrupted: Tensor,
    cache: Any,
    bases: LayerBases,
    metric: Callable[[Tensor], Tensor],
    hook: str,
    start_after: bool = False,
) -> Tensor:
    """The ``[layer, pos]`` grid of ``metric``, swept by ``generic_activation_patch``, or with
    ``start_after`` by :func:`_patch_grid_from_layer` (the same grid)."""
    if start_after:
        grid = _patch_grid_from_layer(model, corrupted, cache, subspace_patch_setter(bases),
                                      metric, hook)  # fmt: skip
        if grid is not None:
            return grid
    from transformer_lens import patching  # TransformerLens only where it is used

    def measured(logits: Tensor) -> Tensor:
        recheck()  # run_with_hooks calls forward directly, past the thread guard's pre-hook
        return metric(logits)

    with eval_mode(model), quiet_unwatched_bars(patching):
        grid = patching.generic_activation_patch(
            model,
            corrupted.to(model_device(model)),
            cache,
            measured,
            subspace_patch_setter(bases),
            hook,
            index_axis_names=("layer", "pos"),
        )
    return grid.detach().to("cpu", torch.float64)


def _patch_grid_from_layer(
    model: Any, corrupted: Tensor, cache: Any, setter: Callable, metric: Callable, hook: str
) -> Tensor | None:
    """:func:`_patch_grid`'s grid with each patched run started at the block after the patch
    from the corrupted run's cached residual (:func:`logits_from_block`): the blocks before it
    see nothing of the patch, so a run patched after block ``l`` of ``n`` costs
    ``(n - l - 1) / n`` of a forward pass. Hooks whose residual enters a block only
    (:func:`block_entered`); None where starting late does not reproduce the model's own pass
    (:func:`blocks_match_forward`)."""
    names = layer_hooks(model, hook)
    wanted = set(names)
    with eval_mode(model), torch.inference_mode():
        tokens = corrupted.to(model_device(model))
        logits, run = model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
        starts = [block_entered(model, name) for name in names]
        entering = {start: run[name] for start, name in zip(starts, names, strict=True)}
        if not blocks_match_forward(model, logits, entering):
            return None
        grid = torch.empty(len(names), tokens.shape[1], dtype=torch.float64)
        for layer, (name, start) in enumerate(zip(names, starts, strict=True)):
            for pos in range(tokens.shape[1]):
                patched = setter(run[name], (layer, pos), cache[name])
                grid[layer, pos] = float(metric(logits_from_block(model, patched, start)))
    return grid


def patch_belief_subspace(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    probe_or_basis: Any,
    metric: Callable[[Tensor], Tensor],
    hook: str = "resid_post",
    *,
    kind: BasisKind = "encoding",
) -> Float[Tensor, "n_layers pos"]:
    """The ``[layer, pos]`` grid of ``metric`` after patching the clean run's belief subspace into
    the corrupted run, through TransformerLens's own ``generic_activation_patch``.

    ``hook`` is a per-layer hook (``resid_pre``, ``resid_mid``, ``resid_post``), resolved to each
    layer's full name with TransformerLens's ``get_act_name``. ``probe_or_basis`` is a probe, a
    ``[d, k]`` basis, or a mapping ``layer -> probe or basis`` covering every layer.
    """
    clean, corrupted = _check_pair(model, clean_tokens, corrupted_tokens)
    names = layer_hooks(model, hook)
    bases = LayerBases.of(probe_or_basis, kind)
    _check_layer_bases(model, names, bases)
    cache = _clean_cache(model, clean, names)
    return _patch_grid(model, corrupted, cache, bases, metric, hook)


# ----------------------------------------------------------------------------- metrics
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
    reduction = check_option("reduction", reduction, Reduction)  # type: ignore[assignment]
    hmm = check_hmm(hmm)
    tokens = hmm.check_tokens(clean_tokens)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise BeliefLensError(f"clean_tokens must be [batch, pos], got {tuple(tokens.shape)}")
    n, L = tokens.shape
    pos = resolve_positions((check_int("position", position),), L)[0]
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
        q = torch.softmax(logits[:, pos].double(), -1)
        kl = kl_divergence(theory.to(logits.device), q)
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


# ----------------------------------------------------------------------------- result
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (``metrics.json``'s ``patching`` entry): the KLs, both grids, and
        recovery at the metric position per hook."""
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
    probe_or_basis: Any,
    hmm: HMM,
    *,
    hook: str = "resid_post",
    position: int = -1,
    kind: BasisKind = "encoding",
    control_seed: int = 0,
    strict: bool = False,
    allow_other_model: bool = False,
) -> PatchingResult:
    """Patch the belief subspace of every layer and position from the clean run into the corrupted
    run, and a control of the same rank, measured by ``theory_kl_metric`` at ``position``.

    ``probe_or_basis`` is a probe, a basis, or ``{layer: probe}`` (the probe of each layer's
    ``hook``, a per-layer hook such as ``"resid_post"``). Tokens are the HMM's symbols, read by
    the model as tokens. Probes fitted on another model warn (``strict``, ``allow_other_model``
    as in ``intervene``). The sweep is ``generic_activation_patch``'s, except at a residual
    hook, where each patched run starts after the patch (``logits_from_block``, checked against
    the model's own pass): the same grid, without the blocks the patch cannot change.
    """
    clean, corrupted = _check_pair(model, clean_tokens, corrupted_tokens)
    given = probe_or_basis.values() if isinstance(probe_or_basis, Mapping) else [probe_or_basis]
    for probe in given:
        recorded = provenance_of(probe)["model_fingerprint"]
        check_provenance(model, recorded, "a probe patched with", strict=strict,
                         allow_other_model=allow_other_model)  # fmt: skip

    hmm = check_hmm(hmm)
    control_seed = check_seed("control_seed", control_seed)
    names = layer_hooks(model, hook)
    bases = LayerBases.of(probe_or_basis, kind)
    _check_layer_bases(model, names, bases)
    controls = bases.control(control_seed)
    metric = theory_kl_metric(hmm, clean, position)
    L = clean.shape[1]
    pos = resolve_positions((check_int("position", position),), L)[0]
    with eval_mode(model):
        dev = model_device(model)
        kl_clean = float(metric(model(clean.to(dev))))
        kl_corrupted = float(metric(model(corrupted.to(dev))))
    cache = _clean_cache(model, clean, names)
    start_after = all(block_entered(model, name) is not None for name in names)
    return PatchingResult(
        hooks=tuple(names),
        positions=tuple(range(L)),
        metric_position=pos,
        kl=_patch_grid(model, corrupted, cache, bases, metric, hook, start_after),
        kl_control=_patch_grid(model, corrupted, cache, controls, metric, hook, start_after),
        kl_clean=kl_clean,
        kl_corrupted=kl_corrupted,
        rank=bases.rank,
        control_seed=control_seed,
        n_sequences=int(clean.shape[0]),
    )
