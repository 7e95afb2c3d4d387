"""Causal interventions along belief directions, each checked against what theory predicts.

Probing shows the belief geometry is present; interventions show the model uses it. Steering adds
``(target - current) @ P`` at one hook, where ``P`` maps belief changes to activation changes:
the probe's encoding map by default (where the model writes beliefs), or its decoding map's
minimum-norm inverse (kept as the comparison). Patching swaps the belief-subspace component of an
activation between runs; ablation removes it. Every intervention has a seeded control of the same
rank and norm, orthogonal to the belief subspace: an effect is evidence only beside its control.

All functions take any model exposing the TransformerLens hook API (``HookedTransformer`` or
``TransformerBridge``), run it in eval mode, and remove their hooks even when a run raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.activations import check_tokens, eval_mode, resolve_hook
from belief_lens.beliefs import belief_states
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM

__all__ = [
    "InterventionReport",
    "ablate_belief_subspace",
    "belief_basis",
    "control_basis",
    "intervention_report",
    "kl_divergence",
    "patch_belief_subspace",
    "steer_to_belief",
    "steering_hook",
    "subspace_patch_setter",
]

Directions = Literal["encoding", "decoding", "control"]
Positions = int | Sequence[int] | None


# ------------------------------------------------------------------------------------- bases
def belief_basis(
    probe: Any, kind: Literal["encoding", "decoding"] = "encoding"
) -> Float[Tensor, "d k"]:
    """Orthonormal basis ``[d_model, k]`` of the belief subspace (``k = S - 1`` on the simplex)."""
    return _as_float64(probe.belief_basis(kind))


def control_basis(basis: Float[Tensor, "d k"], seed: int = 0) -> Float[Tensor, "d k"]:
    """A random orthonormal basis of the same rank, orthogonal to ``basis`` (seeded)."""
    basis = _check_basis(basis)
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


def _as_float64(x: Any) -> Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def _check_basis(basis: Any) -> Tensor:
    basis = _as_float64(basis)
    if basis.ndim != 2 or basis.shape[1] > basis.shape[0]:
        raise BeliefLensError(
            f"a basis must be [d_model, k] with k <= d_model, got {tuple(basis.shape)}"
        )
    gram = basis.T @ basis
    if not torch.allclose(gram, torch.eye(basis.shape[1], dtype=torch.float64), atol=1e-6):
        raise BeliefLensError(
            "basis columns must be orthonormal (B.T @ B = I); orthonormalise with QR"
        )
    return basis


def _basis_from(probe_or_basis: Any, kind: str = "encoding") -> Tensor:
    if hasattr(probe_or_basis, "belief_basis"):
        return belief_basis(probe_or_basis, kind)  # type: ignore[arg-type]
    return _check_basis(probe_or_basis)


def kl_divergence(p: Float[Tensor, "... V"], q: Float[Tensor, "... V"]) -> Float[Tensor, "..."]:
    """``KL(p || q)`` in nats along the last axis, with ``0 log 0 = 0``."""
    p, q = p.double(), q.double()
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


# ------------------------------------------------------------------------------------- hooks
def _positions(positions: Positions, n_pos: int) -> list[int]:
    if positions is None:
        return list(range(n_pos))
    pos = [positions] if isinstance(positions, int) else list(positions)
    out = []
    for p in pos:
        if not -n_pos <= p < n_pos:
            raise BeliefLensError(f"position {p} is out of range for {n_pos} positions")
        out.append(p % n_pos)
    return out


def _direction_map(probe: Any, directions: Directions, control_seed: int) -> Tensor:
    """``[S, d]``: a belief change ``delta`` becomes the activation change ``delta @ map``."""
    if directions == "encoding":
        return _as_float64(probe.encoding_map())
    if directions == "decoding":
        return _as_float64(probe.decoding_map())
    if directions == "control":
        # The encoding change, moved coordinate for coordinate onto a control basis: same norm.
        enc = _as_float64(probe.encoding_map())
        basis = belief_basis(probe, "encoding")
        return enc @ basis @ control_basis(basis, control_seed).T
    raise BeliefLensError(
        f"directions must be 'encoding', 'decoding' or 'control', got {directions!r}"
    )


def steering_hook(
    probe: Any,
    target_beliefs: Float[Tensor, "batch S"] | Float[Tensor, "batch n_positions S"],
    positions: Positions = None,
    scale: float = 1.0,
    directions: Directions = "encoding",
    current_beliefs: Tensor | None = None,
    *,
    control_seed: int = 0,
) -> Callable[[Tensor, Any], Tensor]:
    """A hook ``fn(activation, hook)`` adding ``scale * (target - current) @ P`` at ``positions``.

    ``current`` is the probe's decoded belief unless ``current_beliefs`` (e.g. the true belief) is
    given. Targets are ``[batch, S]`` (one per sequence, for every position) or
    ``[batch, n_positions, S]``. Use it in ``model.run_with_hooks`` or ``model.hooks()``. The hook
    counts its calls in ``fn.calls``.
    """
    P = _direction_map(probe, directions, control_seed)
    target = _as_float64(target_beliefs)
    if target.shape[-1] != P.shape[0]:
        raise BeliefLensError(
            f"target_beliefs end in {target.shape[-1]} states but the probe has {P.shape[0]}"
        )
    current = None if current_beliefs is None else _as_float64(current_beliefs)

    def hook_fn(activation: Tensor, hook: Any = None) -> Tensor:
        hook_fn.calls += 1  # type: ignore[attr-defined]
        batch, n_pos, d = activation.shape
        pos = _positions(positions, n_pos)
        if P.shape[1] != d:
            raise BeliefLensError(f"the probe was fitted on d={P.shape[1]}, this hook has d={d}")
        tgt = target if target.ndim == 3 else target[:, None, :].expand(-1, len(pos), -1)
        if tgt.shape[:2] != (batch, len(pos)):
            raise BeliefLensError(
                f"target_beliefs {tuple(target.shape)} do not fit batch {batch} and "
                f"{len(pos)} positions"
            )
        acts = activation[:, pos].detach().to("cpu", torch.float64)
        if current is None:
            cur = _as_float64(probe.predict(acts))
        else:
            cur = current if current.ndim == 3 else current[:, None, :].expand_as(tgt)
        delta = scale * (tgt - cur) @ P
        out = activation.clone()
        out[:, pos] += delta.to(activation.dtype).to(activation.device)
        return out

    hook_fn.calls = 0  # type: ignore[attr-defined]
    return hook_fn


def _run_with_hook(model: Any, tokens: Tensor, hook_name: str, fn: Callable) -> Tensor:
    """Run ``model`` on ``tokens`` in eval mode with one hook that must fire exactly once."""
    calls = {"n": 0}

    def counted(activation: Tensor, hook: Any) -> Tensor:
        calls["n"] += 1
        return fn(activation, hook)

    with eval_mode(model):
        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, counted)])
    if calls["n"] != 1:
        raise BeliefLensError(
            f"hook {hook_name!r} fired {calls['n']} times in one forward, expected 1"
        )
    return logits


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
    """Run ``model`` with the belief at ``hook`` steered to ``target_beliefs``; return logits."""
    tokens = check_tokens(model, tokens)
    name = resolve_hook(model, hook)
    fn = steering_hook(
        probe,
        target_beliefs,
        positions,
        scale,
        directions,
        current_beliefs,
        control_seed=control_seed,
    )
    return _run_with_hook(model, tokens, name, fn)


# ------------------------------------------------------------------------------------- patching
def subspace_patch_setter(basis: Float[Tensor, "d k"] | Mapping[int, Tensor]) -> Callable:
    """A ``patch_setter`` for ``transformer_lens.patching.generic_activation_patch``.

    At the patched ``[layer, pos]`` it writes ``h + (h_src - h) @ B @ B.T``: the source run's
    belief-subspace component replaces the corrupted run's, the rest is untouched. ``basis`` is one
    ``[d, k]`` basis or a mapping ``layer -> basis``.
    """
    bases = {k: _check_basis(v) for k, v in basis.items()} if isinstance(basis, Mapping) else None
    single = None if bases is not None else _check_basis(basis)

    def setter(corrupted: Tensor, index: Sequence[int], clean: Tensor) -> Tensor:
        layer, pos = int(index[0]), int(index[1])
        B = single if bases is None else bases.get(layer)
        if B is None:
            raise BeliefLensError(f"no basis for layer {layer}; have {sorted(bases or {})}")
        B = B.to(corrupted.device, corrupted.dtype)
        h, h_src = corrupted[:, pos], clean[:, pos].to(corrupted.device, corrupted.dtype)
        corrupted[:, pos] = h + (h_src - h) @ B @ B.T
        return corrupted

    return setter


def patch_belief_subspace(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    probe_or_basis: Any,
    metric: Callable[[Tensor], Tensor],
    activation_name: str = "resid_post",
    *,
    kind: Literal["encoding", "decoding"] = "encoding",
) -> Float[Tensor, "n_layers pos"]:
    """The ``[layer, pos]`` grid of ``metric`` after patching the clean run's belief subspace into
    the corrupted run, through TransformerLens's own ``generic_activation_patch``.

    ``activation_name`` is a per-layer activation (``resid_pre``, ``resid_mid``, ``resid_post``).
    ``probe_or_basis`` is a probe, a ``[d, k]`` basis, or a mapping ``layer -> basis``.
    """
    from transformer_lens import patching

    clean_tokens = check_tokens(model, clean_tokens)
    corrupted_tokens = check_tokens(model, corrupted_tokens)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise BeliefLensError(
            f"clean tokens {tuple(clean_tokens.shape)} and corrupted tokens "
            f"{tuple(corrupted_tokens.shape)} differ in shape"
        )
    if isinstance(probe_or_basis, Mapping):
        basis: Any = {k: _basis_from(v, kind) for k, v in probe_or_basis.items()}
    else:
        basis = _basis_from(probe_or_basis, kind)
    with eval_mode(model):
        _, cache = model.run_with_cache(
            clean_tokens, names_filter=lambda n: n.endswith(f"hook_{activation_name}")
        )
        return patching.generic_activation_patch(
            model,
            corrupted_tokens,
            cache,
            metric,
            subspace_patch_setter(basis),
            activation_name,
            index_axis_names=("layer", "pos"),
        )


def ablate_belief_subspace(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    basis: Any,
    hook: str,
    mode: Literal["zero", "mean"] = "zero",
    *,
    mean_activation: Tensor | None = None,
    positions: Positions = None,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Run with the belief subspace at ``hook`` projected out (``"zero"``) or replaced by its mean
    component (``"mean"``; the mean over the batch and positions unless ``mean_activation`` is
    given). ``basis`` is a ``[d, k]`` orthonormal basis or a probe."""
    if mode not in ("zero", "mean"):
        raise BeliefLensError(f"mode must be 'zero' or 'mean', got {mode!r}")
    B = _basis_from(basis)
    tokens = check_tokens(model, tokens)
    name = resolve_hook(model, hook)

    def fn(activation: Tensor, hook: Any = None) -> Tensor:
        pos = _positions(positions, activation.shape[1])
        Bd = B.to(activation.device, activation.dtype)
        h = activation[:, pos]
        if mode == "zero":
            ref = torch.zeros_like(h)
        elif mean_activation is not None:
            ref = (
                torch.as_tensor(mean_activation)
                .to(activation.device, activation.dtype)
                .expand_as(h)
            )
        else:
            ref = h.mean(dim=(0, 1), keepdim=True).expand_as(h)
        out = activation.clone()
        out[:, pos] = h + (ref - h) @ Bd @ Bd.T
        return out

    return _run_with_hook(model, tokens, name, fn)


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
    probs_after: dict[str, Tensor] = field(default_factory=dict)
    kl_after: dict[str, Tensor] = field(default_factory=dict)
    theory_probs_before: Tensor | None = None

    def fold_reduction(self, kind: str = "encoding") -> float:
        """Mean KL before divided by mean KL after: how far steering moved the model to theory."""
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
        return torch.softmax(logits[:, position].double(), -1)
    probs, _ = token_map.predictions(logits, length)
    return probs[:, position].double()


def intervention_report(
    model: Any,
    hmm: HMM,
    probe: Any,
    hook: str,
    tokens: Int[Tensor, "n L"] | None = None,
    *,
    target_tokens: Int[Tensor, "n L"] | None = None,
    position: int = -1,
    n_sequences: int = 512,
    directions: Sequence[str] = ("encoding", "decoding", "control"),
    current: Literal["probe", "true"] = "probe",
    scale: float = 1.0,
    seed: int = 0,
    token_map: Any | None = None,
) -> InterventionReport:
    """Steer each sequence's belief at ``hook`` and ``position`` to another sequence's belief and
    compare the model's next-token distribution with ``P(. | target belief)`` from ``hmm``.

    Without ``target_tokens``, targets come from a seeded pairing of the sequences in which each
    partner has a different token at ``position`` (so beliefs differ). ``current="probe"`` steers
    from the probe's decoded belief, ``"true"`` from the exact one. With ``token_map``, tokens are
    HMM symbols, the model reads them through the map, and its prediction is the map-restricted
    distribution, and steering acts at the position that predicts the next symbol (the last
    separator after it, if any), so fit ``probe`` there (``fit_position_probes(...,
    read_at="prediction")``).
    """
    n_ctx = int(model.cfg.n_ctx)
    if tokens is None:
        from belief_lens.beliefs import sample_sequences

        length = n_ctx if token_map is None else token_map.max_symbols(n_ctx)
        tokens = sample_sequences(hmm, n_sequences, length, seed=seed)
    tokens = hmm.check_tokens(tokens)
    n, L = tokens.shape
    pos = _positions(position, L)[0]
    if target_tokens is None:
        target_tokens = tokens[_pair_different(tokens[:, pos], seed)]
    target_tokens = hmm.check_tokens(target_tokens)
    if target_tokens.shape != tokens.shape:
        raise BeliefLensError(
            f"target_tokens {tuple(target_tokens.shape)} must match tokens {tuple(tokens.shape)}"
        )
    beliefs = belief_states(hmm, tokens)[:, pos]
    targets = belief_states(hmm, target_tokens)[:, pos]
    theory = hmm.next_token_probs(targets)
    model_tokens = tokens if token_map is None else token_map.encode(tokens)
    # Steer where the next symbol is predicted: with separators that is the last separator
    # after the symbol, not the symbol itself (a last-layer change there never reaches it).
    model_pos = pos if token_map is None else int(token_map.prediction_positions(L)[pos])
    with eval_mode(model):
        clean = model(check_tokens(model, model_tokens))
    before = _next_token_probs(clean, pos, token_map, L)
    report = InterventionReport(
        hook=resolve_hook(model, hook),
        position=pos,
        tokens=tokens,
        target_tokens=target_tokens,
        target_beliefs=targets,
        theory_probs=theory,
        probs_before=before,
        kl_before=kl_divergence(theory, before),
        theory_probs_before=hmm.next_token_probs(beliefs),
    )
    cur = beliefs if current == "true" else None
    for kind in directions:
        logits = steer_to_belief(
            model, model_tokens, probe, hook, targets, positions=model_pos, scale=scale,
            directions=kind, current_beliefs=cur, control_seed=seed,  # type: ignore[arg-type]
        )  # fmt: skip
        after = _next_token_probs(logits, pos, token_map, L)
        report.probs_after[kind] = after
        report.kl_after[kind] = kl_divergence(theory, after)
    return report


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
