"""The controls a reviewer asks for, each a probe table on the same ``ProbeData``.

Compare them with ``fit_probes`` by held-out R^2 (the fraction of target variance explained),
not only MSE: next-token distributions have less variance than beliefs, so their MSE is smaller
whatever the model does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.models import ModelConfig, toy_transformer
from belief_lens.probing.data import ProbeData, is_causal, model_acts, model_fingerprint
from belief_lens.probing.sweep import probe_table, targets_for
from belief_lens.probing.table import ProbeTable

__all__ = ["distance_r2", "next_token_control", "shuffle_control", "untrained_control"]


def shuffle_control(
    data: ProbeData, *, seed: int = 0, ridge: float = 0.0, concat: bool = True
) -> ProbeTable:
    """Probes with beliefs permuted across sequences *and* positions (``seed``-ed).

    No affine map can do better than predicting the mean, so held-out R^2 is near 0 and MSE
    approaches the belief variance (about 0.111 for the paper's Mess3).
    """
    S = data.beliefs.shape[-1]
    flat = data.beliefs.reshape(-1, S)
    gen = torch.Generator().manual_seed(seed + 1)
    shuffled = flat[torch.randperm(flat.shape[0], generator=gen)].reshape(data.beliefs.shape)
    return probe_table(
        data, shuffled, ridge=ridge, concat=concat, name="shuffle", target_name="beliefs"
    )


def next_token_control(data: ProbeData, *, ridge: float = 0.0, concat: bool = True) -> ProbeTable:
    """Probes with next-token distributions ``P(x_{t+1} | x_0..x_t)`` as targets.

    Where the belief geometry is more than the next-token geometry (RRXOR), beliefs hold
    structure these targets lack; compare R^2 (not MSE) with ``fit_probes`` and ``distance_r2``.
    """
    targets = targets_for(data, "next_token")
    return probe_table(
        data, targets, ridge=ridge, concat=concat, name="next_token", target_name="next_token"
    )


def untrained_control(
    model: Any,
    data: ProbeData,
    *,
    seed: int = 0,
    ridge: float = 0.0,
    concat: bool = True,
    batch_size: int = 4096,
) -> ProbeTable:
    """Probes on a randomly initialised model of ``model``'s architecture: same sequences,
    beliefs and split, one more forward pass.

    The architecture is read from ``model.cfg`` (``ModelConfig.from_model``) and built with
    ``belief_lens.models.toy_transformer(config, seed=seed)``.
    """
    if not isinstance(data, ProbeData):
        raise BeliefLensError(
            f"untrained_control(model, data): data must be ProbeData, got {type(data).__name__}"
        )
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise BeliefLensError(
            f"untrained_control needs a model with a cfg, got {type(model).__name__}"
        )
    fresh = toy_transformer(ModelConfig.from_model(model), seed=seed).eval()
    bos_id = data.hmm.n_symbols if data.bos else None
    dedupe = is_causal(fresh)  # then one row per distinct prefix, as collect_probe_data keeps
    prefixes = data.prefix_index() if dedupe and data.dedupe else None
    acts = model_acts(fresh, data.tokens, data.hooks, bos_id, batch_size, prefixes)
    fresh_data = data.with_acts(acts, dedupe=dedupe, fingerprint=model_fingerprint(fresh))
    return probe_table(
        fresh_data, data.beliefs, ridge=ridge, concat=concat, name="untrained",
        target_name="beliefs",
    )  # fmt: skip


def distance_r2(
    pred_beliefs: Float[Tensor, "... S"] | np.ndarray,
    true_beliefs: Float[Tensor, "... S"] | np.ndarray,
    true_next_token: Float[Tensor, "... V"] | np.ndarray,
    *,
    n_pairs: int = 100_000,
    seed: int = 0,
) -> dict[str, float]:
    """Does the probe output keep the belief geometry, or only the next-token geometry?

    Draws ``n_pairs`` random pairs of points (``seed``-ed, without self-pairs) and compares the
    Euclidean distance between the two probe outputs with the distance between the two true
    beliefs and between the two true next-token distributions. Each score is the R^2 of a
    least-squares line between the distances (the squared Pearson correlation), so it is
    scale-free and the two are comparable. Returns ``{"r2_beliefs", "r2_next_token",
    "n_pairs"}``.
    """
    P, B, T = (torch.as_tensor(x) for x in (pred_beliefs, true_beliefs, true_next_token))
    if P.shape != B.shape:
        raise BeliefLensError(
            f"pred_beliefs has shape {tuple(P.shape)} but true_beliefs has {tuple(B.shape)}"
        )
    if P.ndim < 2 or T.shape[:-1] != P.shape[:-1]:
        raise BeliefLensError(
            f"need [..., S] beliefs and [..., V] next-token distributions with equal leading "
            f"dims, got {tuple(P.shape)} and {tuple(T.shape)}"
        )
    P, B, T = (t.reshape(-1, t.shape[-1]).to("cpu", torch.float64) for t in (P, B, T))
    for t, name in ((P, "pred_beliefs"), (B, "true_beliefs"), (T, "true_next_token")):
        if not bool(torch.isfinite(t).all()):
            raise BeliefLensError(f"{name} contains NaN or inf")
    n = P.shape[0]
    if n < 2 or n_pairs < 2:
        raise BeliefLensError(f"need at least 2 points and 2 pairs, got {n} points, {n_pairs}")
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(n, (n_pairs,), generator=gen)
    j = (i + torch.randint(1, n, (n_pairs,), generator=gen)) % n  # never j == i

    def dist(A: Tensor) -> Tensor:
        return (A[i] - A[j]).norm(dim=-1)

    def r2(a: Tensor, b: Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        denom = float((a @ a) * (b @ b))
        return float((a @ b) ** 2 / denom) if denom > 0 else float("nan")

    dp = dist(P)
    return {"r2_beliefs": r2(dp, dist(B)), "r2_next_token": r2(dp, dist(T)), "n_pairs": n_pairs}
