"""A steering experiment against theory: steer each sequence's belief to another sequence's, and
compare the model's next-token distribution with the HMM's for the target belief, along the
encoding directions, the decoding directions and a norm-matched control.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from belief_lens.activations import check_tokens, resolve_hook
from belief_lens.beliefs import belief_states, check_hmm, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.interventions.provenance import check_provenance, provenance_of
from belief_lens.interventions.run import (
    Directions,
    check_intervention,
    run_interventions,
    steer_along,
)
from belief_lens.metrics import kl_divergence
from belief_lens.validation import (
    check_int,
    check_option,
    check_seed,
    resolve_positions,
)

__all__ = ["Current", "InterventionReport", "intervention_report", "pair_different"]

#: Where steering starts from: the probe's decoded belief, or the exact one.
Current = Literal["probe", "true"]


@dataclass(frozen=True)
class InterventionReport:
    """One steering experiment against theory.

    Per-example tensors are ``[n]`` (KLs, nats) or ``[n, V]`` (distributions). ``kl_after`` and
    ``probs_after`` map each direction kind (``"encoding"``, ``"decoding"``, ``"control"``) to
    its result. ``to_dict()`` gives means, standard deviations and the fold reduction.
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

    def to_dict(self) -> dict[str, float]:
        """JSON-ready summary: mean and standard deviation of the KL before and after each kind
        of steering, and each kind's fold reduction."""
        out = {
            "kl_before_mean": float(self.kl_before.mean()),
            "kl_before_std": float(self.kl_before.std()),
        }
        for kind, kl in self.kl_after.items():
            out[f"kl_after_{kind}_mean"] = float(kl.mean())
            out[f"kl_after_{kind}_std"] = float(kl.std())
            out[f"fold_{kind}"] = self.fold_reduction(kind)
            out[f"fold_{kind}_se"] = self.fold_se(kind)
        return out

    def fold_se(self, kind: str = "encoding") -> float:
        """The standard error of :meth:`fold_reduction` over the steered sequences (the delta
        method for a ratio of paired means: ``sd(before - fold * after) / (sqrt(n) * mean
        after)``)."""
        fold = self.fold_reduction(kind)
        before, after = self.kl_before.double(), self.kl_after[kind].double()
        n = before.numel()
        if n < 2:
            return float("nan")
        return float((before - fold * after).std() / (n**0.5 * after.mean()))


def pair_different(keys: Tensor, seed: int, *, atol: float = 0.0) -> Tensor:
    """A seeded partner index for every row of ``keys`` (``[n]`` or ``[n, ...]``) whose key
    differs from its own (by more than ``atol`` in some entry)."""
    keys = keys.reshape(len(keys), -1)
    gen = torch.Generator().manual_seed(seed)
    n = len(keys)

    def same_as(partner: Tensor) -> Tensor:
        return (keys[partner] - keys).abs().amax(-1) <= atol

    partner = torch.randperm(n, generator=gen)
    for _ in range(16):
        same = same_as(partner)
        if not same.any():
            return partner
        partner[same] = torch.randint(0, n, (int(same.sum()),), generator=gen)
    same = same_as(partner)
    # A few stragglers: give each a partner from those with a different key.
    for i in torch.nonzero(same).flatten().tolist():
        options = torch.nonzero((keys - keys[i]).abs().amax(-1) > atol).flatten()
        if len(options) == 0:
            raise BeliefLensError(
                "every sequence has the same token (or belief) at the steered position"
            )
        partner[i] = options[torch.randint(0, len(options), (1,), generator=gen)]
    return partner


def _next_token_probs(logits: Tensor, position: int, token_map: Any | None, length: int) -> Tensor:
    """The model's next-symbol distribution after symbol ``position``, ``[batch, V]``."""
    if token_map is None:
        return torch.softmax(logits[:, position].double(), -1).cpu()
    probs, _ = token_map.predictions(logits, length)
    return probs[:, position].double().cpu()


def _symbols(
    model: Any, hmm: HMM, tokens: Any, n_sequences: int, seed: int, token_map: Any | None
) -> Tensor:
    """The HMM symbol sequences ``[n, L]`` to steer: ``tokens``, or ``n_sequences`` sampled."""
    if tokens is None:
        length = int(model.cfg.n_ctx)
        if token_map is not None:
            length = token_map.max_symbols(length)
        tokens = sample_sequences(hmm, n_sequences, length, seed=seed)
    tokens = hmm.check_tokens(tokens)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise BeliefLensError(f"tokens must be [n, L] HMM symbols, got shape {tuple(tokens.shape)}")
    return tokens


def _target_symbols(hmm: HMM, tokens: Tensor, target_tokens: Any, pos: int, seed: int) -> Tensor:
    """The sequences whose belief at ``pos`` each sequence is steered to: ``target_tokens``, or
    a seeded pairing with a different symbol at ``pos``."""
    if target_tokens is None:
        target_tokens = tokens[pair_different(tokens[:, pos], seed)]
    target_tokens = hmm.check_tokens(target_tokens)
    if target_tokens.shape != tokens.shape:
        raise BeliefLensError(
            f"target_tokens {tuple(target_tokens.shape)} must match tokens {tuple(tokens.shape)}"
        )
    return target_tokens


def _model_input(model: Any, tokens: Tensor, pos: int, token_map: Any | None) -> tuple[Tensor, int]:
    """The tokens the model reads, and where it predicts the symbol after ``pos``: with
    separators that is the last separator after the symbol, not the symbol itself (a last-layer
    change there never reaches it)."""
    if token_map is None:
        return check_tokens(model, tokens), pos
    where = token_map.prediction_positions(tokens.shape[1])
    return check_tokens(model, token_map.encode(tokens)), int(where[pos])


def _check_directions(directions: Any) -> list[str]:
    if isinstance(directions, str) or not directions:
        raise BeliefLensError(
            f"directions must be a non-empty sequence of kinds, got {directions!r}"
        )
    return [check_option("directions", k, Directions) for k in directions]


def intervention_report(
    model: Any,
    tokens: Int[Tensor, "n L"] | None,
    probe: Any,
    hook: str,
    hmm: HMM,
    *,
    target_tokens: Int[Tensor, "n L"] | None = None,
    position: int = -1,
    directions: Sequence[Directions] = ("encoding", "decoding", "control"),
    current: Current = "probe",
    scale: float = 1.0,
    token_map: Any | None = None,
    n_sequences: int = 512,
    seed: int = 0,
    strict: bool = False,
    allow_other_model: bool = False,
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
    (``fit_position_probes(..., read_at="prediction")``). A probe fitted on another model
    warns with both fingerprints, raises under ``strict=True``, and is used silently under
    ``allow_other_model=True``.
    """
    hmm = check_hmm(hmm)
    current = check_option("current", current, Current)  # type: ignore[assignment]
    kinds = _check_directions(directions)
    seed = check_seed("seed", seed)
    position = check_int("position", position)
    name = resolve_hook(model, hook)
    recorded = provenance_of(probe)["model_fingerprint"]
    what = f"the probe for {name}"
    check_provenance(model, recorded, what, strict=strict, allow_other_model=allow_other_model)
    tokens = _symbols(model, hmm, tokens, n_sequences, seed, token_map)
    L = tokens.shape[1]
    pos = resolve_positions((position,), L)[0]
    target_tokens = _target_symbols(hmm, tokens, target_tokens, pos, seed)
    model_tokens, model_pos = _model_input(model, tokens, pos, token_map)
    beliefs = belief_states(hmm, tokens)[:, pos]
    targets = belief_states(hmm, target_tokens)[:, pos]
    start = beliefs if current == "true" else None
    opts = {"positions": model_pos, "scale": scale, "current": start, "control_seed": seed}
    steers = {kind: steer_along(probe, name, targets, kind, **opts) for kind in kinds}
    for steer in steers.values():
        check_intervention(model, model_tokens, steer, allow_other_model=True)  # checked above
    theory = hmm.next_token_probs(targets)
    logits, steered = run_interventions(model, model_tokens, steers)
    before = _next_token_probs(logits, pos, token_map, L)
    probs_after = {kind: _next_token_probs(x, pos, token_map, L) for kind, x in steered.items()}
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
        kl_after={kind: kl_divergence(theory, p) for kind, p in probs_after.items()},
        theory_probs_before=hmm.next_token_probs(beliefs),
    )
