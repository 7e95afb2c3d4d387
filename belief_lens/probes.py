"""Affine probes from residual streams to beliefs: the public face of ``belief_lens.probing``.

One engine serves every fitter. ``collect_probe_data`` runs the model and the belief filter once
and holds out whole prefixes (``split_prefixes``), so no input is on both sides; ``fit_probes``
and the controls take that ``ProbeData``; all of them reduce rows to ``Moments`` (float64
sufficient statistics that add across batches, windows and processes) and solve them with
``AffineProbe.fit_moments``, exactly and scale-invariantly.

>>> from belief_lens.probes import AffineProbe, Moments, split_prefixes  # doctest: +SKIP
>>> data = collect_probe_data(model, mess3(), 10)  # doctest: +SKIP
>>> table = fit_probes(data)  # doctest: +SKIP
>>> controls = [shuffle_control(data), next_token_control(data), untrained_control(model, data)]
... # doctest: +SKIP
"""

from __future__ import annotations

from belief_lens.probing.by_position import heldout_by_position
from belief_lens.probing.controls import (
    distance_r2,
    next_token_control,
    shuffle_control,
    untrained_control,
)
from belief_lens.probing.crossval import CrossValidated, cross_validate
from belief_lens.probing.data import (
    CONCAT,
    ProbeData,
    Weighting,
    collect_probe_data,
    model_fingerprint,
    prefix_folds,
    prefix_groups,
    split_prefixes,
)
from belief_lens.probing.estimator import AffineProbe
from belief_lens.probing.moments import Moments, SegmentedMoments
from belief_lens.probing.positions import PositionProbeTable, fit_position_probes
from belief_lens.probing.solvers import RowFactor
from belief_lens.probing.sweep import (
    fit_probes,
    out_of_fold_predictions,
    predict_concatenation,
)
from belief_lens.probing.table import (
    ProbeTable,
    best_hook,
    heldout,
    is_overfit,
    overfit_reason,
    tied_hooks,
)

__all__ = [
    "CONCAT",
    "AffineProbe",
    "CrossValidated",
    "Moments",
    "PositionProbeTable",
    "ProbeData",
    "ProbeTable",
    "RowFactor",
    "SegmentedMoments",
    "Weighting",
    "best_hook",
    "heldout",
    "heldout_by_position",
    "is_overfit",
    "collect_probe_data",
    "cross_validate",
    "distance_r2",
    "fit_position_probes",
    "fit_probes",
    "model_fingerprint",
    "out_of_fold_predictions",
    "overfit_reason",
    "predict_concatenation",
    "prefix_folds",
    "prefix_groups",
    "next_token_control",
    "shuffle_control",
    "split_prefixes",
    "tied_hooks",
    "untrained_control",
]
