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

from belief_lens.activations import eval_mode, model_device, residual_stream, resolve_hook
from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.interventions import Steer, intervene
from belief_lens.interventions.steering import pair_different
from belief_lens.metrics import (
    kl_divergence,
    mean_se,
    principal_angles_deg,
    principal_cosines,
    r2_score,
)
from belief_lens.probes import AffineProbe, prefix_folds, split_prefixes
from belief_lens.processes import mixture
from belief_lens.validation import check_finite_tensor

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
    t = check_finite_tensor(name, x)
    if t.ndim < 2:
        raise BeliefLensError(f"{name} must be [n, ..., dim], got shape {tuple(t.shape)}")
    return t


def _held_out(
    X: Tensor, tokens: Any, test_fraction: float, seed: int, n_folds: int | None
) -> Tensor:
    """Fold labels over ``X``'s leading dims (``prefix_folds``; -1: always trained on), or with
    ``n_folds=None`` one split (1 = held out, 0 = train): by prefix of ``tokens`` (no prefix on
    both sides), or by whole sequence (the first axis) when no tokens are given."""
    lead = X.shape[:-1]
    if tokens is None:
        ids = torch.arange(lead[0])[:, None]
        labels = (
            split_prefixes(ids, test_fraction, seed).long()
            if n_folds is None
            else prefix_folds(ids, n_folds, seed)
        )
        return labels.reshape(-1, *([1] * (len(lead) - 1))).expand(lead)
    tokens = torch.as_tensor(tokens)
    if tuple(tokens.shape) != tuple(lead):
        raise BeliefLensError(
            f"tokens {tuple(tokens.shape)} must match the activations' leading shape {tuple(lead)}"
        )
    if n_folds is None:
        return split_prefixes(tokens, test_fraction, seed).long()
    return prefix_folds(tokens, n_folds, seed)


def _fit(X: Tensor, Y: Tensor, ridge: float) -> AffineProbe:
    return AffineProbe(ridge=ridge).fit(X, Y)


# ----------------------------------------------------------------------------- probe transfer
@dataclass(frozen=True)
class ProbeTransfer:
    """Belief probes fitted on one vocabulary, scored held out on both.

    Attributes:
        r2_a_to_b: probe fitted on A's training sequences, R^2 on B's held-out sequences.
        r2_b_to_a: the reverse.
        r2_a_within: A's probe on A's held-out sequences (the ceiling for ``r2_b_to_a``).
        r2_b_within: B's probe on B's held-out sequences.
        r2_a_to_b_centred, r2_b_to_a_centred: the same transfers with the target vocabulary's
            activations shifted to the source's mean (each mean taken on its training rows), so
            a shared subspace at a different offset still reads; a low value here means the
            directions differ, not just the offset.
        probe_a, probe_b: the fitted probes (their encoding maps drive steering transfer): fitted
            on every row when cross-validated, on the training rows of one split otherwise.
        se: the standard error over folds of each R^2 above, by name (empty for one split).
        folds: the number of prefix folds (None for one split).
    """

    r2_a_to_b: float
    r2_b_to_a: float
    r2_a_within: float
    r2_b_within: float
    r2_a_to_b_centred: float
    r2_b_to_a_centred: float
    probe_a: AffineProbe = field(repr=False, compare=False)
    probe_b: AffineProbe = field(repr=False, compare=False)
    se: dict[str, float] = field(default_factory=dict)
    folds: int | None = None


def probe_transfer(
    acts_a: Float[Tensor, "n_a ... d"],
    beliefs_a: Float[Tensor, "n_a ... S"],
    acts_b: Float[Tensor, "n_b ... d"],
    beliefs_b: Float[Tensor, "n_b ... S"],
    *,
    tokens_a: Int[Tensor, "n_a ..."] | None = None,
    tokens_b: Int[Tensor, "n_b ..."] | None = None,
    test_fraction: float = 0.25,
    ridge: float = 0.0,
    seed: int = 0,
    n_folds: int | None = 5,
) -> ProbeTransfer:
    """Fit an affine belief probe on A's training rows and score it on B's held-out rows, and
    the reverse: over ``n_folds`` folds (mean, with the standard errors in ``se``), or one split
    (``n_folds=None``, ``test_fraction`` held out). With ``tokens`` the folds are by prefix (no
    prefix on both sides); without, whole sequences (the first axis) are held out."""
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
    labels_a = _held_out(Xa, tokens_a, test_fraction, seed, n_folds)
    labels_b = _held_out(Xb, tokens_b, test_fraction, seed + 1, n_folds)
    held = [1] if n_folds is None else range(n_folds)
    runs = []
    for k in held:
        te_a, te_b = labels_a == k, labels_b == k
        if bool(te_a.any()) and bool(te_b.any()):
            runs.append(_transfer_scores(Xa, Ya, Xb, Yb, te_a, te_b, ridge))
    if not runs or (n_folds is not None and len(runs) < 2):
        raise BeliefLensError(
            f"too few distinct sequences or prefixes to hold any out ({n_folds or 1} folds gave "
            f"{len(runs)} with held-out rows on both sides)"
        )
    if n_folds is None:
        (scores, pa, pb), se = runs[0], {}
    else:
        pa = _fit(Xa.reshape(-1, Xa.shape[-1]), Ya.reshape(-1, Ya.shape[-1]), ridge)
        pb = _fit(Xb.reshape(-1, Xb.shape[-1]), Yb.reshape(-1, Yb.shape[-1]), ridge)
        stats = {k: mean_se([r[0][k] for r in runs]) for k in runs[0][0]}
        scores, se = {k: v[0] for k, v in stats.items()}, {k: v[1] for k, v in stats.items()}
    return ProbeTransfer(
        **scores, probe_a=pa, probe_b=pb, se=se, folds=None if n_folds is None else len(runs)
    )


def _transfer_scores(
    Xa: Tensor, Ya: Tensor, Xb: Tensor, Yb: Tensor, te_a: Tensor, te_b: Tensor, ridge: float
) -> tuple[dict[str, float], AffineProbe, AffineProbe]:
    """One fold: each side's probe on its training rows, scored on both held-out sets."""
    pa = _fit(Xa[~te_a], Ya[~te_a], ridge)
    pb = _fit(Xb[~te_b], Yb[~te_b], ridge)
    mean_a, mean_b = Xa[~te_a].mean(0), Xb[~te_b].mean(0)
    scores = {
        "r2_a_to_b": pa.score(Xb[te_b], Yb[te_b]),
        "r2_b_to_a": pb.score(Xa[te_a], Ya[te_a]),
        "r2_a_within": pa.score(Xa[te_a], Ya[te_a]),
        "r2_b_within": pb.score(Xb[te_b], Yb[te_b]),
        "r2_a_to_b_centred": pa.score(Xb[te_b] - mean_b + mean_a, Yb[te_b]),
        "r2_b_to_a_centred": pb.score(Xa[te_a] - mean_a + mean_b, Ya[te_a]),
    }
    return scores, pa, pb


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
    a, b = _rows(basis_a, "basis_a"), _rows(basis_b, "basis_b")
    cos = principal_cosines(a, b)
    return SubspaceAngles(cos, principal_angles_deg(a, b), float(cos.max()))


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
    encoding directions (``(target - true) @ probe_a.encoding_map()``, a ``Steer`` from
    ``probe_a``), and compare the model's next-token distribution with theory, against the
    steer's norm-matched control (``Steer.control(seed)``) and B's own directions."""
    n = min(n_sequences, data_b.tokens.shape[0])
    if n < 2:
        raise BeliefLensError(f"steering needs >= 2 sequences, got {n}")
    tokens = data_b.tokens[:n]
    current = data_b.beliefs[:n, position].double()
    target_index = pair_different(current, seed, atol=1e-9)
    target = current[target_index]
    theory = torch.zeros(n, int(model.cfg.d_vocab), dtype=torch.float64)
    theory[:, list(data_b.vocab_map)] = component.next_token_probs(target)

    def kl(intervention: Any | None) -> float:
        if intervention is None:
            with eval_mode(model):
                logits = model(tokens.to(model_device(model)))
        else:
            logits = intervene(model, tokens, intervention)
        q = torch.softmax(logits[:, position].double().cpu(), -1)
        return float(kl_divergence(theory, q).mean())

    def steer(probe: AffineProbe) -> Steer:
        return Steer.from_probe(
            probe, data_b.hook, target, positions=position, directions="encoding", current=current
        )

    along_a = steer(probe_a)
    return SteerTransfer(
        kl_before=kl(None),
        kl_transfer=kl(along_a),
        kl_control=kl(along_a.control(seed)),
        kl_own=kl(steer(probe_b)),
        n_sequences=n,
        target_index=target_index,
    )


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
    tokens: Int[Tensor, "n ..."] | None = None,
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
    te = _held_out(X, tokens, test_fraction, seed, None).bool()
    comp = torch.stack([b.sum(-1) for b in Y.split(sizes, -1)], -1)
    joint = _fit(X[~te], Y[~te], ridge).predict(X[te])
    comp_pred = _fit(X[~te], comp[~te], ridge).predict(X[te])
    Yte = Y[te]
    # Within-component belief of the component each row truly came from (its largest block).
    which = comp[te].argmax(-1)
    starts = torch.tensor([0, *sizes]).cumsum(0)
    within_true, within_pred = [], []
    for k, s in enumerate(sizes):
        rows = which == k
        if rows.any():
            sl = slice(int(starts[k]), int(starts[k]) + s)
            t, p = Yte[rows, sl], joint[rows, sl]
            within_true.append(t / t.sum(-1, keepdim=True))
            within_pred.append(p / p.sum(-1, keepdim=True))
    r2_within = sum(r2_score(t, p) * len(t) for p, t in zip(within_pred, within_true, strict=True))
    return MixtureProbe(
        r2_joint=r2_score(Yte, joint.cpu()),
        r2_component=r2_score(comp[te], comp_pred.cpu()),
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

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready numbers (the demo's ``metrics.json`` keys among them)."""
        t, s, m = self.transfer, self.steering, self.mixture
        return {
            "hook": self.hook,
            "transfer_r2_a_to_b": t.r2_a_to_b,
            "transfer_r2_b_to_a": t.r2_b_to_a,
            "transfer_r2_a_to_b_centred": t.r2_a_to_b_centred,
            "transfer_r2_b_to_a_centred": t.r2_b_to_a_centred,
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
    transfer = probe_transfer(
        a.acts, a.beliefs, b.acts, b.beliefs, tokens_a=a.tokens, tokens_b=b.tokens, seed=seed
    )
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
        tokens=tokens,
        seed=seed,
    )
    return SharedStructure(a.hook, transfer, angles, steering, mixture_probe)
