"""Layer sweeps: one probe per hook and one on their concatenation, scored held out first."""

from __future__ import annotations

from itertools import pairwise
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.beliefs import next_token_distributions
from belief_lens.errors import BeliefLensError
from belief_lens.metrics import regression_metrics
from belief_lens.probing.data import CONCAT, ProbeData
from belief_lens.probing.estimator import AffineProbe, check_ridge
from belief_lens.probing.moments import Moments
from belief_lens.probing.table import ProbeTable, is_overfit

__all__ = [
    "fit_probes",
    "probe_table",
    "targets_for",
]

Targets = Literal["beliefs", "next_token"]


def targets_for(data: ProbeData, targets: Targets) -> Float[Tensor, "N L S"]:
    """The target tensor ``[N, L, S]`` named by ``targets``: beliefs or next-token
    distributions."""
    if targets == "beliefs":
        return data.beliefs
    if targets == "next_token":
        return next_token_distributions(data.hmm, data.tokens, beliefs=data.beliefs)
    raise BeliefLensError(f"targets must be 'beliefs' or 'next_token', got {targets!r}")


def probe_table(
    data: ProbeData,
    targets: Float[Tensor, "N L S"],
    *,
    ridge: float = 0.0,
    concat: bool = True,
    name: str = "probes",
    target_name: str = "beliefs",
) -> ProbeTable:
    """Fit and score one probe per hook (and the concatenation) on ``targets [N, L, S]``."""
    if not isinstance(data, ProbeData):
        raise BeliefLensError(
            f"expected ProbeData (from collect_probe_data), got {type(data).__name__}"
        )
    ridge = check_ridge(ridge)
    hooks = data.hooks
    with_concat = bool(concat) and len(hooks) > 1
    groups = data.moments(targets, concat=with_concat)
    everything = groups["train"] + groups["test"]
    widths = [data.acts[h].shape[-1] for h in hooks]
    bounds = np.cumsum([0, *widths]).tolist()
    parts = [(h, slice(lo, hi), h) for h, (lo, hi) in zip(hooks, pairwise(bounds), strict=True)]
    if with_concat:
        parts.append((CONCAT, slice(0, bounds[-1]), None))
    counts = data.prefix_counts()
    provenance = {"process": data.hmm.name, "model_fingerprint": data.model_fingerprint}
    distinct = data.distinct_rows(targets) if ridge == 0 else None
    if distinct is not None:  # small enough to solve on the rows: lstsq-exact
        distinct["all"] = tuple(torch.cat([a, b]) for a, b in zip(*distinct.values(), strict=True))[
            :3
        ] + (distinct["train"][3] + distinct["test"][3],)
    rows, probes = [], {}
    for label, cols, hook in parts:
        moments = tuple(m.select(cols) for m in (groups["train"], groups["test"], everything))
        (tr, te, al), all_probe = _fit_part(moments, cols, hook, distinct, ridge)
        all_probe.provenance_ = dict(provenance, hooks=hooks if hook is None else [label])
        features = cols.stop - cols.start
        rows.append(
            {
                "hook": label,
                "features": features,
                "train_prefixes": counts["train"],
                "test_prefixes": counts["test"],
                "mse_heldout": te["mse"],
                "r2_heldout": te["r2"],
                "mse_train": tr["mse"],
                "r2_train": tr["r2"],
                "mse_all": al["mse"],
                "r2_all": al["r2"],
                "rank": all_probe.rank_,
                "overfit": is_overfit(features, counts["train"], te["mse"], tr["mse"]),
            }
        )
        probes[label] = all_probe
    meta = {
        "name": name,
        "targets": target_name,
        "mode": data.mode,
        "weighted": data.weights is not None,
        "n_ctx": data.n_ctx,
        "process": data.hmm.name,
        "hooks": hooks,
        "ridge": ridge,
        "test_fraction": data.test_fraction,
        "seed": data.seed,
        "bos": data.bos,
        "model_fingerprint": data.model_fingerprint,
    }
    return ProbeTable(rows=rows, probes=probes, meta=meta)


def _fit_part(
    moments: tuple[Moments, Moments, Moments],
    cols: slice,
    hook: str | None,
    distinct: dict[str, tuple] | None,
    ridge: float,
) -> tuple[tuple[dict, dict, dict], AffineProbe]:
    """One row's probes: fitted on the training rows (scored on both sides) and on all rows
    (scored in-sample); from the distinct rows when ``distinct`` holds them (lstsq-exact), else
    from the moments. Returns the train, held-out and all-rows metrics and the all-rows probe."""
    train, test, whole = moments
    if distinct is None:
        split_probe = AffineProbe(ridge=ridge).fit_moments(train, hook=hook)
        all_probe = AffineProbe(ridge=ridge).fit_moments(whole, hook=hook)
        tr = split_probe.metrics_moments(train)
        te = split_probe.metrics_moments(test) if float(test.w) > 0 else _nan_metrics()
        return (tr, te, all_probe.metrics_moments(whole)), all_probe
    sub = {g: (X[:, cols], Y, c) for g, (X, c, Y, _) in distinct.items()}
    split_probe = AffineProbe().fit_moments(train, hook=hook, rows=sub["train"])
    all_probe = AffineProbe().fit_moments(whole, hook=hook, rows=sub["all"])
    tr = _row_metrics(split_probe, sub["train"], distinct["train"][3], train)
    te = (
        _row_metrics(split_probe, sub["test"], distinct["test"][3], test)
        if float(test.w) > 0
        else _nan_metrics()
    )
    al = _row_metrics(all_probe, sub["all"], distinct["all"][3], whole)
    return (tr, te, al), all_probe


def _row_metrics(
    probe: AffineProbe,
    rows: tuple[Tensor, Tensor, Tensor],
    within: Tensor,
    moments: Moments,
) -> dict[str, Any]:
    """Metrics from the distinct rows (residuals summed exactly, not from moments)."""
    X, Y, c = rows
    ss_res = c @ (probe.predict(X) - Y) ** 2 + within
    ss_tot = moments.about(moments.mean_x, moments.mean_y)[2].diagonal()
    return regression_metrics(ss_res, ss_tot, float(moments.w))


def _nan_metrics() -> dict[str, float]:
    nan = float("nan")
    return {"mse": nan, "r2": nan}


def fit_probes(
    data: ProbeData,
    *,
    targets: Targets = "beliefs",
    ridge: float = 0.0,
    concat: bool = True,
) -> ProbeTable:
    """Affine probes from each hook of ``data`` (and their concatenation) to beliefs.

    For each hook: a probe fitted on the training rows of ``split_prefixes`` and scored on the
    held-out rows (``mse_heldout``, the figure to trust) and on its own rows (``mse_train``), and
    one fitted on every row (``mse_all``, in-sample, as the paper reports; kept in
    ``table.probes``). ``concat`` adds a row for the concatenation of all hooks (two or more).
    ``targets="next_token"`` fits next-token distributions instead of beliefs.

    On the paper's Mess3 checkpoint (in-sample MSE 0.000386)::

        data = collect_probe_data(model, mess3(), 10, ["blocks.3.hook_resid_post"])
        fit_probes(data)["blocks.3.hook_resid_post"]["mse_all"]
    """
    if not isinstance(data, ProbeData):
        raise BeliefLensError(
            f"fit_probes(data): expected ProbeData (from collect_probe_data), got "
            f"{type(data).__name__}"
        )
    name = "probes" if targets == "beliefs" else "next_token"
    return probe_table(
        data, targets_for(data, targets), ridge=ridge, concat=concat, name=name,
        target_name=targets,
    )  # fmt: skip
