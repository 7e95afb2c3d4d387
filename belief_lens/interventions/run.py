"""Running a model with an intervention: ``intervene`` and its two shortcuts, ``steer_to_belief``
and ``ablate_belief_subspace``.

Every intervention runs through the model's own ``hooks()`` context manager, in eval mode without
gradients, so no hook is left behind even when a run raises, and the hook must fire exactly once.
Everything that can be checked (tokens, the exact hook, positions, batch, width) is checked before
any forward pass. Any model exposing the TransformerLens hook API works (``HookedTransformer`` or
``TransformerBridge``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens import tl_compat
from belief_lens.activations import (
    block_entered,
    blocks_match_forward,
    check_finite_activations,
    check_tokens,
    eval_mode,
    logits_from_block,
    model_device,
    residual_hooks,
    resolve_hook,
)
from belief_lens.errors import BeliefLensError
from belief_lens.interventions.bases import as_basis
from belief_lens.interventions.provenance import check_provenance, provenance_of
from belief_lens.interventions.values import Ablate, AblateMode, Steer, SubspacePatch
from belief_lens.validation import Positions, check_option

__all__ = [
    "Directions",
    "ablate_belief_subspace",
    "check_intervention",
    "intervene",
    "run_intervention",
    "run_interventions",
    "steer_along",
    "steer_to_belief",
    "steerable_hooks",
]

#: Steering directions: the probe's encoding map, its decoding map's minimum-norm inverse, or the
#: encoding steer's norm-matched control.
Directions = Literal["encoding", "decoding", "control"]


def steerable_hooks(model: Any) -> list[str]:
    """The residual hooks where a write changes the residual stream the next layers read: every
    residual hook but the final norm's (the unembedding reads it directly: steering there
    bypasses the model) and TransformerLens 4's ``hook_resid_mid`` aliases (the MLP's input)."""
    return [
        h
        for h in residual_hooks(model)
        if not h.startswith("ln_final") and tl_compat.residual_write_problem(model, h) is None
    ]


def check_intervention(
    model: Any,
    tokens: Tensor,
    intervention: Any,
    *,
    strict: bool = False,
    allow_other_model: bool = False,
) -> None:
    """Everything about ``intervention`` on ``model`` and checked ``tokens`` that can be checked
    before a forward pass: its type, its exact hook, its width at a residual hook, its positions
    and batch, a source run's tokens, and its provenance (made from another model: a
    ``ProvenanceWarning`` with both fingerprints, an error under ``strict``, nothing under
    ``allow_other_model``)."""
    if not isinstance(intervention, (Steer, SubspacePatch, Ablate)):
        raise BeliefLensError(
            f"intervention must be a Steer, SubspacePatch or Ablate, got "
            f"{type(intervention).__name__}"
        )
    if intervention.hook not in model.hook_dict:
        raise BeliefLensError(
            f"unknown hook {intervention.hook!r}: give a full hook name of this model, e.g. one "
            f"of its residual-stream hooks {residual_hooks(model)}"
        )
    problem = tl_compat.residual_write_problem(model, intervention.hook)
    if problem:
        raise BeliefLensError(problem)
    if intervention.hook in residual_hooks(model):
        d_model = int(model.cfg.d_model)
        if intervention.d_model != d_model:
            raise BeliefLensError(
                f"the basis has d={intervention.d_model} rows but {intervention.hook} has "
                f"d_model={d_model}"
            )
    intervention.check_run(int(tokens.shape[0]), int(tokens.shape[1]))
    if isinstance(intervention, SubspacePatch) and intervention.source_is_tokens:
        check_tokens(model, intervention.source)
    check_provenance(
        model,
        intervention.model_fingerprint,
        f"this {type(intervention).__name__} at {intervention.hook}",
        strict=strict,
        allow_other_model=allow_other_model,
    )


def _run_hooked(
    model: Any, tokens: Tensor, hook: str, fn: Callable[[Tensor], Tensor | None]
) -> tuple[Tensor, Tensor]:
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
    check_finite_activations(f"activations at {hook}", seen[0])
    check_finite_activations("the model's logits", logits)
    return logits, seen[0]


def run_intervention(
    model: Any, tokens: Tensor, intervention: Steer | SubspacePatch | Ablate
) -> Float[Tensor, "batch pos d_vocab"]:
    """``intervene`` on input already checked (``check_tokens``, ``check_intervention``)."""
    if isinstance(intervention, SubspacePatch) and intervention.source_is_tokens:
        _, source = _run_hooked(model, intervention.source, intervention.hook, lambda a: None)
        return _run_hooked(
            model, tokens, intervention.hook, lambda a: intervention.apply(a, source)
        )[0]
    return _run_hooked(model, tokens, intervention.hook, intervention.apply)[0]


def run_interventions(
    model: Any, tokens: Tensor, interventions: Mapping[str, Steer | SubspacePatch | Ablate]
) -> tuple[Float[Tensor, "batch pos d_vocab"], dict[str, Float[Tensor, "batch pos d_vocab"]]]:
    """The unintervened logits and each intervention's, on input already checked. Where all act
    at one hook whose residual enters a block (``activations.block_entered``), the model runs
    once with that hook cached and each intervention runs from the block after it
    (``activations.logits_from_block``, checked against the unintervened pass): the blocks
    before see nothing of it. Otherwise each is a ``run_intervention``."""
    hooks = {i.hook for i in interventions.values()}
    hook = hooks.pop() if len(hooks) == 1 else None
    start = None if hook is None else block_entered(model, hook)
    if any(getattr(i, "source_is_tokens", False) for i in interventions.values()):
        start = None  # the source needs a run of its own
    with eval_mode(model), torch.no_grad():
        dev_tokens = tokens.to(model_device(model))
        if start is None:
            logits = model(dev_tokens)
        else:
            logits, cache = model.run_with_cache(dev_tokens, names_filter=lambda n: n == hook)
            resid = cache[hook]
            check_finite_activations(f"activations at {hook}", resid)
            if blocks_match_forward(model, logits, {start: resid}):
                return logits, {
                    k: _from_block(model, i, resid, start) for k, i in interventions.items()
                }
        return logits, {k: run_intervention(model, tokens, i) for k, i in interventions.items()}


def _from_block(
    model: Any, intervention: Steer | SubspacePatch | Ablate, resid: Tensor, start: int
) -> Tensor:
    """``intervention`` applied to a copy of the cached ``resid``, run from block ``start``."""
    x = resid.clone()
    changed = intervention.apply(x)
    logits = logits_from_block(model, x if changed is None else changed, start)
    check_finite_activations("the model's logits", logits)
    return logits


def intervene(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    intervention: Steer | SubspacePatch | Ablate,
    *,
    strict: bool = False,
    allow_other_model: bool = False,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Run ``model`` on ``tokens`` with ``intervention`` applied at its hook; return the logits.

    Tokens, the hook name (exact), positions, batch and (for residual hooks) the width are checked
    before any forward pass. The hook runs through the model's own ``hooks()`` context manager,
    which removes it on any exception, and must fire exactly once. An intervention made from
    another model (its ``model_fingerprint``) warns, raises under ``strict=True``, and is run
    silently under ``allow_other_model=True``.
    """
    tokens = check_tokens(model, tokens)
    check_intervention(
        model, tokens, intervention, strict=strict, allow_other_model=allow_other_model
    )
    return run_intervention(model, tokens, intervention)


def steer_along(
    probe: Any,
    hook: str,
    target: Tensor,
    directions: Directions = "encoding",
    *,
    positions: Positions = None,
    scale: float = 1.0,
    current: Tensor | None = None,
    control_seed: int = 0,
) -> Steer:
    """``Steer.from_probe`` along ``directions``, where ``"control"`` is the encoding steer's
    ``.control(control_seed)``."""
    kind = check_option("directions", directions, Directions)
    steer = Steer.from_probe(
        probe,
        hook,
        target,
        positions=positions,
        scale=scale,
        directions="encoding" if kind == "control" else kind,  # type: ignore[arg-type]
        current=current,
    )
    return steer.control(control_seed) if kind == "control" else steer


def steer_to_belief(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    probe: Any,
    hook: str,
    target: Tensor,
    *,
    positions: Positions = None,
    scale: float = 1.0,
    directions: Directions = "encoding",
    current: Tensor | None = None,
    control_seed: int = 0,
    strict: bool = False,
    allow_other_model: bool = False,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Run ``model`` with the belief at ``hook`` steered to ``target``; return logits.

    ``intervene(model, tokens, Steer.from_probe(probe, hook, target, ...))``; without ``current``
    (e.g. the true belief) the current belief is the probe's read-out. ``directions="control"``
    steers along the encoding steer's ``.control(control_seed)``. A probe fitted on another
    model warns (``strict``, ``allow_other_model`` as in ``intervene``).
    """
    tokens = check_tokens(model, tokens)
    steer = steer_along(
        probe,
        resolve_hook(model, hook),
        target,
        directions,
        positions=positions,
        scale=scale,
        current=current,
        control_seed=control_seed,
    )
    check_intervention(model, tokens, steer, strict=strict, allow_other_model=allow_other_model)
    return run_intervention(model, tokens, steer)


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
        basis=as_basis(basis, "encoding"),
        mode=mode,
        mean=mean_activation,
        positions=positions,  # type: ignore[arg-type]
        **(provenance_of(basis) if hasattr(basis, "belief_basis") else {}),
    )
    check_intervention(model, tokens, ablate)
    return run_intervention(model, tokens, ablate)
