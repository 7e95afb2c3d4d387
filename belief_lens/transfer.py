"""One hidden structure under two vocabularies: does a model share its belief geometry?

A model trained on a non-ergodic mixture that runs Mess3 either on tokens 0-2 (vocabulary A) or
on tokens 3-5 (vocabulary B) sees the same hidden structure twice. If it represents the belief
the same way under both, a probe fitted on A reads B, the two belief subspaces coincide (principal
angles near zero), and steering B's activations along A's encoding directions moves B's
predictions as theory says. If it learned two separate representations, all three fail. The
tools here measure each, on activations (so they can be checked on planted data) and on models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.probes import AffineProbe
from belief_lens.processes import mixture

__all__ = [
    "MixtureProbe",
    "ProbeTransfer",
    "SharedStructure",
    "SteerTransfer",
    "SubspaceAngles",
    "VocabData",
    "collect_vocab",
    "mixture_belief_probe",
    "probe_transfer",
    "shared_structure",
    "steering_transfer",
    "subspace_angles",
]


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class VocabData:
    """Sequences of one component under one vocabulary, with activations and beliefs.

    Attributes:
        tokens: ``[n, pos]`` shared-vocabulary token ids fed to the model.
        acts: ``[n, pos, d]`` activations at ``hook``.
        beliefs: ``[n, pos, S]`` the component's belief after each prefix.
        vocab_map: the component's token ``x`` is shared id ``vocab_map[x]``.
        hook: the hook the activations were read at.
    """

    tokens: Int[Tensor, "n pos"]
    acts: Float[Tensor, "n pos d"]
    beliefs: Float[Tensor, "n pos S"]
    vocab_map: tuple[int, ...]
    hook: str


def collect_vocab(
    model: Any,
    component: HMM,
    vocab_map: Sequence[int],
    hook: str,
    *,
    n_sequences: int = 2048,
    seed: int = 0,
) -> VocabData:
    """Sample ``component`` sequences, write them in the vocabulary ``vocab_map``, and read the
    model's activations at ``hook`` with the component's (true) beliefs."""
    from belief_lens.activations import residual_stream, resolve_hook

    vmap = tuple(int(v) for v in vocab_map)
    if len(vmap) != component.n_symbols:
        raise BeliefLensError(
            f"vocab_map must give one id per component token ({component.n_symbols}), "
            f"got {len(vmap)}"
        )
    name = resolve_hook(model, hook)
    raw = sample_sequences(component, n_sequences, int(model.cfg.n_ctx), seed=seed)
    tokens = torch.tensor(vmap)[raw]
    acts = residual_stream(model, tokens, name)[name]
    return VocabData(tokens, acts, belief_states(component, raw), vmap, name)


def _rows(x: Any, name: str) -> Tensor:
    t = torch.as_tensor(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=torch.float64)
    if t.ndim < 2:
        raise BeliefLensError(f"{name} must be [n, ..., dim], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise BeliefLensError(f"{name} contain NaN or infinite values")
    return t


def _split(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Sequence indices for training and held-out testing (split by sequence, never by token)."""
    if not 0 < test_fraction < 1:
        raise BeliefLensError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = max(1, round(n * test_fraction))
    if n_test >= n:
        raise BeliefLensError(f"{n} sequences are too few to hold out {test_fraction:.0%}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


def _r2(pred: Tensor, Y: Tensor) -> float:
    """R^2 averaged uniformly over target dims (sklearn's ``r2_score`` convention)."""
    pred, Y = pred.reshape(-1, Y.shape[-1]).double(), Y.reshape(-1, Y.shape[-1]).double()
    ss_res = ((Y - pred) ** 2).sum(0)
    ss_tot = ((Y - Y.mean(0)) ** 2).sum(0)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / torch.where(ss_tot > 0, ss_tot, 1.0), 0.0)
    return float(r2.mean())


def _fit(acts: Tensor, beliefs: Tensor, ridge: float) -> AffineProbe:
    d, S = acts.shape[-1], beliefs.shape[-1]
    return AffineProbe(ridge=ridge).fit(acts.reshape(-1, d), beliefs.reshape(-1, S))


# ----------------------------------------------------------------------------- probe transfer
@dataclass(frozen=True)
class ProbeTransfer:
    """Belief probes fitted on one vocabulary, scored held out on both.

    Attributes:
        r2_a_to_b: probe fitted on A's training sequences, R^2 on B's held-out sequences.
        r2_b_to_a: the reverse.
        r2_a_within: A's probe on A's held-out sequences (the ceiling for ``r2_b_to_a``).
        r2_b_within: B's probe on B's held-out sequences.
        probe_a, probe_b: the fitted probes (their encoding maps drive steering transfer).
    """

    r2_a_to_b: float
    r2_b_to_a: float
    r2_a_within: float
    r2_b_within: float
    probe_a: AffineProbe = field(repr=False, compare=False)
    probe_b: AffineProbe = field(repr=False, compare=False)


def probe_transfer(
    acts_a: Float[Tensor, "n_a ... d"],
    beliefs_a: Float[Tensor, "n_a ... S"],
    acts_b: Float[Tensor, "n_b ... d"],
    beliefs_b: Float[Tensor, "n_b ... S"],
    *,
    test_fraction: float = 0.25,
    ridge: float = 0.0,
    seed: int = 0,
) -> ProbeTransfer:
    """Fit an affine belief probe on A's training sequences and score it on B's held-out ones,
    and the reverse. The first axis indexes sequences; the split is by sequence."""
    Xa, Ya = _rows(acts_a, "acts_a"), _rows(beliefs_a, "beliefs_a")
    Xb, Yb = _rows(acts_b, "acts_b"), _rows(beliefs_b, "beliefs_b")
    for X, Y, v in ((Xa, Ya, "a"), (Xb, Yb, "b")):
        if X.shape[:-1] != Y.shape[:-1]:
            raise BeliefLensError(
                f"acts_{v} {tuple(X.shape)} and beliefs_{v} {tuple(Y.shape)} differ before "
                "the last axis"
            )
    if Xa.shape[-1] != Xb.shape[-1] or Ya.shape[-1] != Yb.shape[-1]:
        raise BeliefLensError(
            f"A and B must share d and S: acts {Xa.shape[-1]} vs {Xb.shape[-1]}, "
            f"beliefs {Ya.shape[-1]} vs {Yb.shape[-1]}"
        )
    tr_a, te_a = _split(Xa.shape[0], test_fraction, seed)
    tr_b, te_b = _split(Xb.shape[0], test_fraction, seed + 1)
    pa = _fit(Xa[tr_a], Ya[tr_a], ridge)
    pb = _fit(Xb[tr_b], Yb[tr_b], ridge)
    d = Xa.shape[-1]

    def score(p: AffineProbe, X: Tensor, Y: Tensor) -> float:
        return _r2(p.predict(X.reshape(-1, d)).cpu(), Y)

    return ProbeTransfer(
        r2_a_to_b=score(pa, Xb[te_b], Yb[te_b]),
        r2_b_to_a=score(pb, Xa[te_a], Ya[te_a]),
        r2_a_within=score(pa, Xa[te_a], Ya[te_a]),
        r2_b_within=score(pb, Xb[te_b], Yb[te_b]),
        probe_a=pa,
        probe_b=pb,
    )


# ----------------------------------------------------------------------------- angles
@dataclass(frozen=True)
class SubspaceAngles:
    """Principal angles between two subspaces, smallest first.

    Attributes:
        cosines: ``[k]`` cosines of the principal angles (the singular values of ``Qa.T @ Qb``).
        degrees: ``[k]`` the angles in degrees.
        max_cosine: the largest cosine: 1 when the subspaces share a direction, 0 when orthogonal.
    """

    cosines: Float[Tensor, " k"]
    degrees: Float[Tensor, " k"]
    max_cosine: float


def subspace_angles(
    basis_a: Float[Tensor, "d ka"], basis_b: Float[Tensor, "d kb"]
) -> SubspaceAngles:
    """Principal angles between the column spaces of ``basis_a`` and ``basis_b`` (any bases;
    they are orthonormalised first)."""
    A, B = _rows(basis_a, "basis_a"), _rows(basis_b, "basis_b")
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise BeliefLensError(
            f"bases must be [d, k] with the same d, got {tuple(A.shape)} and {tuple(B.shape)}"
        )
    Qa, Qb = torch.linalg.qr(A)[0], torch.linalg.qr(B)[0]
    cos = torch.linalg.svdvals(Qa.T @ Qb).clamp(0.0, 1.0)
    return SubspaceAngles(cos, torch.rad2deg(torch.arccos(cos)), float(cos.max()))


# ----------------------------------------------------------------------------- steering
@dataclass(frozen=True)
class SteerTransfer:
    """Steering B sequences with A's encoding directions, against theory.

    KLs are ``KL(theory target || model)`` in nats at the steered position, averaged over
    sequences; the theory target is the component's next-token distribution at the target belief,
    written in B's vocabulary.

    Attributes:
        kl_before: unsteered.
        kl_transfer: steered along A's encoding directions.
        kl_control: steered by a change of the same norm in a random subspace orthogonal to A's.
        kl_own: steered along B's own encoding directions (the within-vocabulary reference).
        n_sequences: how many sequences were steered (the first ``n_sequences`` of B's).
        target_index: ``[n_sequences]`` whose belief each sequence was steered to.
    """

    kl_before: float
    kl_transfer: float
    kl_control: float
    kl_own: float
    n_sequences: int
    target_index: Int[Tensor, " n"] = field(repr=False, compare=False)

    @property
    def transfer_fold(self) -> float:
        """``kl_before / kl_transfer``: how many times A's directions cut B's error."""
        return self.kl_before / self.kl_transfer

    @property
    def control_fold(self) -> float:
        return self.kl_before / self.kl_control

    @property
    def own_fold(self) -> float:
        return self.kl_before / self.kl_own


def _pair_different(beliefs: Tensor, seed: int) -> Tensor:
    """A target index for each row: a random other row, re-drawn where beliefs coincide."""
    n = beliefs.shape[0]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)
    for _ in range(10):
        same = (beliefs[idx] - beliefs).abs().amax(-1) < 1e-9
        if not same.any():
            break
        idx[same] = torch.randint(n, (int(same.sum()),), generator=gen)
    return idx


def steering_transfer(
    model: Any,
    data_b: VocabData,
    component: HMM,
    probe_a: AffineProbe,
    probe_b: AffineProbe,
    *,
    position: int = -1,
    n_sequences: int = 512,
    seed: int = 0,
) -> SteerTransfer:
    """Steer B sequences' belief at ``position`` to another B sequence's belief along A's
    encoding directions (``(target - true) @ probe_a.encoding_map()``), and compare the model's
    next-token distribution with theory, against a norm-matched control and B's own directions."""
    from belief_lens.interventions import kl_divergence, steer_to_belief

    n = min(n_sequences, data_b.tokens.shape[0])
    if n < 2:
        raise BeliefLensError(f"steering needs >= 2 sequences, got {n}")
    tokens = data_b.tokens[:n]
    current = data_b.beliefs[:n, position].double()
    target_index = _pair_different(current, seed)
    target = current[target_index]
    theory = torch.zeros(n, int(model.cfg.d_vocab), dtype=torch.float64)
    theory[:, list(data_b.vocab_map)] = component.next_token_probs(target)

    def kl(probe: AffineProbe | None, directions: str = "encoding") -> float:
        if probe is None:
            from belief_lens.activations import eval_mode

            with eval_mode(model):
                logits = model(tokens.to(_device(model)))
        else:
            logits = steer_to_belief(
                model,
                tokens,
                probe,
                data_b.hook,
                target,
                positions=position,
                directions=directions,
                current_beliefs=current,
                control_seed=seed,
            )
        q = torch.softmax(logits[:, position].double().cpu(), -1)
        return float(kl_divergence(theory, q).mean())

    return SteerTransfer(
        kl_before=kl(None),
        kl_transfer=kl(probe_a),
        kl_control=kl(probe_a, "control"),
        kl_own=kl(probe_b),
        n_sequences=n,
        target_index=target_index,
    )


def _device(model: Any) -> torch.device:
    from belief_lens.activations import model_device

    return model_device(model)


# ----------------------------------------------------------------------------- mixture belief
@dataclass(frozen=True)
class MixtureProbe:
    """Probes for the mixture's own belief, held out by sequence.

    Attributes:
        r2_joint: the full belief over the union's states (which component and the belief within).
        r2_component: the component posterior alone (the belief's mass per component).
        r2_within: the within-component belief, decoded from the joint probe's output (each
            component's block renormalised) and compared with the true within-component belief.

    The joint belief is the component indicator times the belief within, so an affine probe
    reads it fully only where the two components' beliefs sit in different directions; a fully
    shared representation with a separate component flag gives a high ``r2_component`` but
    not ``r2_joint`` (nor ``r2_within``, which is decoded from the joint probe).
    """

    r2_joint: float
    r2_component: float
    r2_within: float


def mixture_belief_probe(
    acts: Float[Tensor, "n ... d"],
    beliefs: Float[Tensor, "n ... S"],
    block_sizes: Sequence[int],
    *,
    test_fraction: float = 0.25,
    ridge: float = 0.0,
    seed: int = 0,
) -> MixtureProbe:
    """Probe the mixture's belief ``[..., S]`` (states of the components concatenated, sizes
    ``block_sizes``) from ``acts``, held out by sequence."""
    X, Y = _rows(acts, "acts"), _rows(beliefs, "beliefs")
    if X.shape[:-1] != Y.shape[:-1]:
        raise BeliefLensError(f"acts {tuple(X.shape)} and beliefs {tuple(Y.shape)} differ")
    sizes = [int(s) for s in block_sizes]
    if sum(sizes) != Y.shape[-1] or min(sizes) < 1:
        raise BeliefLensError(f"block_sizes {sizes} must sum to the {Y.shape[-1]} belief states")
    tr, te = _split(X.shape[0], test_fraction, seed)
    d = X.shape[-1]
    comp = torch.stack([b.sum(-1) for b in Y.split(sizes, -1)], -1)
    joint = _fit(X[tr], Y[tr], ridge).predict(X[te].reshape(-1, d)).cpu().double()
    comp_pred = _fit(X[tr], comp[tr], ridge).predict(X[te].reshape(-1, d)).cpu()
    Yte = Y[te].reshape(-1, Y.shape[-1])
    # Within-component belief of the component each row truly came from (its largest block).
    which = comp[te].reshape(-1, len(sizes)).argmax(-1)
    starts = torch.tensor([0, *sizes]).cumsum(0)
    within_true, within_pred = [], []
    for k, s in enumerate(sizes):
        rows = which == k
        if rows.any():
            sl = slice(int(starts[k]), int(starts[k]) + s)
            t, p = Yte[rows, sl], joint[rows, sl]
            within_true.append(t / t.sum(-1, keepdim=True))
            within_pred.append(p / p.sum(-1, keepdim=True))
    r2_within = sum(_r2(p, t) * len(t) for p, t in zip(within_pred, within_true, strict=True))
    return MixtureProbe(
        r2_joint=_r2(joint, Yte),
        r2_component=_r2(comp_pred, comp[te]),
        r2_within=r2_within / sum(len(t) for t in within_true),
    )


# ----------------------------------------------------------------------------- all together
@dataclass(frozen=True)
class SharedStructure:
    """Everything ``shared_structure`` measured on one model at one hook."""

    hook: str
    transfer: ProbeTransfer
    angles: SubspaceAngles
    steering: SteerTransfer
    mixture: MixtureProbe

    def metrics(self) -> dict[str, Any]:
        """Flat JSON-ready numbers (the demo's ``metrics.json`` keys among them)."""
        t, s, m = self.transfer, self.steering, self.mixture
        return {
            "hook": self.hook,
            "transfer_r2_a_to_b": t.r2_a_to_b,
            "transfer_r2_b_to_a": t.r2_b_to_a,
            "within_r2_a": t.r2_a_within,
            "within_r2_b": t.r2_b_within,
            "max_cosine_a_b": self.angles.max_cosine,
            "principal_angles_deg": [float(a) for a in self.angles.degrees],
            "steer_kl_before": s.kl_before,
            "steer_kl_transfer": s.kl_transfer,
            "steer_kl_control": s.kl_control,
            "steer_kl_own": s.kl_own,
            "steer_transfer_fold": s.transfer_fold,
            "steer_control_fold": s.control_fold,
            "steer_own_fold": s.own_fold,
            "mixture_r2_joint": m.r2_joint,
            "mixture_r2_component": m.r2_component,
            "mixture_r2_within": m.r2_within,
        }


def shared_structure(
    model: Any,
    component: HMM,
    vocab_maps: Sequence[Sequence[int]],
    hook: str,
    *,
    n_sequences: int = 2048,
    steer_sequences: int = 512,
    seed: int = 0,
) -> SharedStructure:
    """Run every measurement on ``model``, trained on ``component`` under the two vocabularies
    ``vocab_maps = [map_a, map_b]`` (the mixture picks one per sequence)."""
    if len(vocab_maps) != 2:
        raise BeliefLensError(f"vocab_maps must be [map_a, map_b], got {len(vocab_maps)} maps")
    a = collect_vocab(model, component, vocab_maps[0], hook, n_sequences=n_sequences, seed=seed)
    b = collect_vocab(model, component, vocab_maps[1], hook, n_sequences=n_sequences, seed=seed + 1)
    transfer = probe_transfer(a.acts, a.beliefs, b.acts, b.beliefs, seed=seed)
    angles = subspace_angles(
        transfer.probe_a.belief_basis("encoding"), transfer.probe_b.belief_basis("encoding")
    )
    steering = steering_transfer(
        model, b, component, transfer.probe_a, transfer.probe_b,
        n_sequences=steer_sequences, seed=seed,
    )  # fmt: skip
    mix = mixture([component, component], vocab_maps=[list(m) for m in vocab_maps])
    tokens = torch.cat([a.tokens, b.tokens])
    mixture_probe = mixture_belief_probe(
        torch.cat([a.acts, b.acts]),
        belief_states(mix, tokens),
        [component.n_states] * 2,
        seed=seed,
    )
    return SharedStructure(a.hook, transfer, angles, steering, mixture_probe)
