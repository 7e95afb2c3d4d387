"""Held-out error at each context position: where along the context a probe generalises.

A table's cross-validated score pools every position; early positions have few distinct
prefixes (Mess3 has 3 of length 1), so few that holding one out leaves its position nearly
unseen. ``heldout_by_position`` scores each position on its own, under a stated rule:
positions the folds hold out (enough distinct prefixes) get the mean and standard error over
folds; positions every fold trains on (fewer than ``MIN_PREFIXES_PER_FOLD * folds`` prefixes)
are scored by leave-one-prefix-out, each prefix predicted by the probe fitted on every other
row: unseen-prefix extrapolation, reported as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.metrics import mean_se, regression_metrics
from belief_lens.probing.data import CONCAT, ProbeData, prefix_groups
from belief_lens.probing.estimator import AffineProbe
from belief_lens.probing.moments import Moments, total
from belief_lens.probing.sweep import fold_labels, targets_for
from belief_lens.probing.table import ProbeTable

__all__ = ["FOLD_RULE", "LOO_RULE", "heldout_by_position"]

Rule = Literal["folds", "leave-one-prefix-out"]
FOLD_RULE: Rule = "folds"
LOO_RULE: Rule = "leave-one-prefix-out"


def heldout_by_position(
    table: ProbeTable, data: ProbeData, hooks: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One row per (hook, position): held-out ``mse_heldout``/``r2_heldout`` (with ``_se`` over
    folds, None under leave-one-prefix-out), the ``rule`` that scored it, the number of distinct
    ``prefixes`` at that position, and the all-rows probe's in-sample ``mse_all`` there.

    ``hooks`` defaults to the table's best hook. The table must be cross-validated by
    ``fit_probes`` on ``data`` (its fold probes are scored, not refitted)."""
    folds = table.meta.get("folds")
    if not table.fold_probes or not folds:
        raise BeliefLensError(
            "heldout_by_position needs a cross-validated table from fit_probes(data, n_folds=K)"
        )
    hooks = [table.best_hook] if hooks is None else list(hooks)
    bad = [h for h in hooks if h == CONCAT or h not in table.fold_probes or h not in data.acts]
    if bad:
        raise BeliefLensError(f"hooks {bad} are not single hooks of both table and data")
    targets = targets_for(data, table.meta.get("targets", "beliefs"))
    groups, n_groups, loo_of = _position_groups(data, folds)
    out = []
    for hook in hooks:
        moments = data.select_hooks([hook]).moments(targets, groups, n_groups, concat=False)
        out.extend(_score_hook(hook, table, moments, loo_of, folds, data.tokens.shape[1]))
    return out


def _position_groups(data: ProbeData, folds: int) -> tuple[Tensor, int, list[list[int]]]:
    """Group ids ``[N, L]``: ``fold * L + t`` for rows the folds hold out, one group per prefix
    for rows every fold trains on; their number; and the prefix groups of each position."""
    labels, _, _ = fold_labels(data, folds)
    L = labels.shape[1]
    groups = labels * L + torch.arange(L)
    always = labels == folds
    loo_of: list[list[int]] = [[] for _ in range(L)]
    if bool(always.any()):
        ids, inverse = torch.unique(prefix_groups(data.tokens)[always], return_inverse=True)
        groups[always] = folds * L + inverse
        position = torch.nonzero(always)[:, 1]
        for j in range(len(ids)):
            loo_of[int(position[inverse == j][0])].append(folds * L + j)
        return groups, folds * L + len(ids), loo_of
    return groups, folds * L, loo_of


def _ss_res(probe: AffineProbe, moments: Moments) -> Tensor:
    per_target = probe.metrics_moments(moments)["mse_per_target"]
    return torch.tensor(per_target, dtype=torch.float64) * float(moments.w)


def _score_hook(
    hook: str,
    table: ProbeTable,
    moments: list[Moments],
    loo_of: list[list[int]],
    folds: int,
    L: int,
) -> list[dict[str, Any]]:
    whole, fold_probes = table.probes[hook], table.fold_probes[hook]
    rows = []
    for t in range(L):
        if loo_of[t]:
            here = [moments[g] for g in loo_of[t]]
            held = _leave_one_prefix_out(loo_of[t], moments, whole.ridge)
            rule, n = LOO_RULE, len(here)
        else:
            here = [moments[k * L + t] for k in range(folds)]
            scores = [probe.metrics_moments(m) for probe, m in zip(fold_probes, here, strict=True)]
            mse, mse_se = mean_se([s["mse"] for s in scores])
            r2, r2_se = mean_se([s["r2"] for s in scores])
            held = {"mse_heldout": mse, "mse_heldout_se": mse_se, "r2_heldout": r2}
            held["r2_heldout_se"] = r2_se
            rule, n = FOLD_RULE, None
        at_t = total(here)
        rows.append(
            {
                "hook": hook,
                "position": t,
                "rule": rule,
                "prefixes": n,
                **held,
                "mse_all": whole.metrics_moments(at_t)["mse"],
            }
        )
    return rows


def _leave_one_prefix_out(
    own: list[int], moments: list[Moments], ridge: float
) -> dict[str, float | None]:
    """Each prefix group of ``own`` predicted by a probe fitted on every other group; the
    position's MSE and R^2 pooled over its prefixes (no fold spread: s.e. None)."""
    ss_res = torch.zeros(moments[0].n_targets, dtype=torch.float64)
    for g in own:
        rest = total([m for j, m in enumerate(moments) if j != g])
        probe = AffineProbe(ridge=ridge).fit_moments(rest)
        ss_res += _ss_res(probe, moments[g])
    at_t = total([moments[g] for g in own])
    ss_tot = at_t.about(at_t.mean_x, at_t.mean_y)[2].diagonal()
    m = regression_metrics(ss_res, ss_tot, float(at_t.w))
    return {"mse_heldout": m["mse"], "mse_heldout_se": None, "r2_heldout": m["r2"]} | {
        "r2_heldout_se": None
    }
