"""Per-position probes: how a model's belief code evolves with context position.

``fit_position_probes`` streams sequences through the model and keeps, per hook and context
window, only ``Moments`` (a ``d x d`` Gram matrix and cross moments, float64, on the model's
device), for the training and the held-out rows of ``split_prefixes`` at once: one pass, memory
independent of the number of sequences. Probes are solved with ``AffineProbe.fit_moments`` and
scored held out with ``AffineProbe.metrics_moments``.

Alignment follows ``TokenMap``: beliefs are read at symbol positions (the position of symbol
``t`` holds the belief after symbols ``0..t``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.probing.data import prefix_ids, resolve_hooks, split_prefixes
from belief_lens.probing.estimator import AffineProbe, check_ridge
from belief_lens.probing.moments import Moments
from belief_lens.probing.sweep import OVERFIT_FEATURE_RATIO, OVERFIT_MSE_RATIO, ProbeTable
from belief_lens.token_map import TokenMap

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "PositionProbeTable",
    "batch_size_within",
    "check_length",
    "check_token_map",
    "fit_position_probes",
    "forward_bytes_per_sequence",
]

_GIB = 1 << 30
#: Default memory bound for streamed collection: 2 GiB.
DEFAULT_MEMORY_LIMIT = 2 * _GIB


def check_length(model: Any, token_map: TokenMap, length: int) -> None:
    if length < 1:
        raise BeliefLensError(f"length must be >= 1 symbols, got {length}")
    n_ctx = int(model.cfg.n_ctx)
    need = token_map.model_length(length)
    if need > n_ctx:
        raise BeliefLensError(
            f"{length} symbols take {need} model positions under {token_map}, more than the "
            f"model's n_ctx={n_ctx}; use length <= {token_map.max_symbols(n_ctx)}"
        )


def check_token_map(model: Any, hmm: HMM, token_map: TokenMap) -> None:
    if token_map.n_symbols != hmm.n_symbols:
        raise BeliefLensError(
            f"token_map maps {token_map.n_symbols} symbols but {hmm.name} emits {hmm.n_symbols}"
        )
    token_map.check_model(model)


def forward_bytes_per_sequence(model: Any, model_length: int, n_hooks: int, logits: bool) -> int:
    """A generous estimate of the float32 bytes one sequence needs during a forward pass."""
    cfg = model.cfg
    d_model = int(cfg.d_model)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d_model)
    n_heads = int(getattr(cfg, "n_heads", 1) or 1)
    per_position = 8 * d_model + 2 * d_mlp + n_hooks * d_model
    if logits:
        per_position += 3 * int(cfg.d_vocab)  # logits, their softmax, a gathered copy
    attention = 3 * n_heads * model_length * model_length
    return 4 * (model_length * per_position + attention)


def batch_size_within(
    requested: int | None, budget: int, per_sequence: int, what: str, n_sequences: int
) -> int:
    """The largest batch within ``budget`` bytes (at most ``requested``); raises if none fits."""
    fits = budget // max(per_sequence, 1)
    if fits < 1:
        raise BeliefLensError(
            f"{what}: one sequence needs about {per_sequence / _GIB:.2f} GiB, more than the "
            f"{budget / _GIB:.2f} GiB left under memory_limit_bytes; raise the limit or shorten "
            "the sequences"
        )
    size = fits if requested is None else min(int(requested), fits)
    return max(1, min(size, n_sequences))


# ---------------------------------------------------------------------------------- probes
@dataclass
class PositionProbeTable(ProbeTable):
    """Probe results per (hook, context window): how the belief code evolves with position.

    Attributes:
        rows: one dict per (hook, window): ``hook``, ``window_start``, ``window_stop`` (symbol
            positions ``[start, stop)``, i.e. beliefs after ``start + 1 .. stop`` symbols),
            ``features``, ``train_prefixes``, ``test_prefixes`` (distinct inputs of the window on
            each side of ``split_prefixes``), ``mse_test``, ``r2_test`` (NaN without held-out
            data), ``mse_train``, ``r2_train``, ``overfit`` (as ``ProbeTable``). R^2 is the
            uniform average over belief coordinates.
        probes: ``{(hook, window_start): AffineProbe}`` fitted on the training rows.
        meta: process, token map, length, window, seed, split, memory figures.
    """

    probes: dict[Any, AffineProbe] = field(default_factory=dict)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        """The row for ``(hook, window_start)``."""
        for row in self.rows:
            if (row["hook"], row["window_start"]) == tuple(key):
                return row
        raise BeliefLensError(
            f"no row for {key!r}; keys are (hook, window_start) with hooks {self.hooks} and "
            f"window starts {sorted({r['window_start'] for r in self.rows})}"
        )

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys(row["hook"] for row in self.rows))

    def __str__(self) -> str:
        return f"position probes, process={self.meta.get('process')}\n" + self.to_markdown()

    @property
    def windows(self) -> list[tuple[int, int]]:
        """The ``(start, stop)`` symbol-position windows, in order."""
        return list(dict.fromkeys((row["window_start"], row["window_stop"]) for row in self.rows))

    @property
    def window_centres(self) -> list[float]:
        """The mean number of symbols seen by the beliefs of each window (for plotting)."""
        return [(lo + hi + 1) / 2 for lo, hi in self.windows]

    def grid(self, metric: str = "r2_test") -> Float[Tensor, "n_hooks n_windows"]:
        """``metric`` as a ``[hook, window]`` tensor (rows in ``hooks`` order)."""
        hooks, windows = self.hooks, self.windows
        out = torch.full((len(hooks), len(windows)), float("nan"), dtype=torch.float64)
        for row in self.rows:
            if metric not in row:
                raise BeliefLensError(f"unknown metric {metric!r}; columns: {list(row)}")
            i = hooks.index(row["hook"])
            j = windows.index((row["window_start"], row["window_stop"]))
            out[i, j] = float(row[metric])
        return out


def _windows(length: int, window: int | None) -> list[tuple[int, int]]:
    if window is None:
        return [(0, length)]
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise BeliefLensError(f"window must be a positive int or None, got {window!r}")
    return [(lo, min(lo + window, length)) for lo in range(0, length, window)]


def _group_hooks(n_hooks: int, per_hook: int, budget: int) -> list[list[int]]:
    """Hook indices in consecutive groups whose statistics fit ``budget`` bytes together."""
    per_group = max(1, budget // max(per_hook, 1))
    return [list(range(i, min(i + per_group, n_hooks))) for i in range(0, n_hooks, per_group)]


def _stats_bytes(n_windows: int, d: int, S: int) -> int:
    """Bytes of one hook's statistics: train and held-out ``Moments`` per window."""
    return 2 * 8 * n_windows * ((d + S) * (d + S) + 2 * (d + S) + 1)


def _window_prefix_counts(
    symbols: Tensor, test_mask: Tensor, windows: list[tuple[int, int]]
) -> list[dict[str, int]]:
    """Distinct (position, prefix) inputs in each window on each side of the split."""
    per_t = []
    for t, ids in enumerate(prefix_ids(symbols)):
        m = test_mask[:, t]
        per_t.append((len(torch.unique(ids[~m])), len(torch.unique(ids[m]))))
    return [
        {"train": sum(a for a, _ in per_t[lo:hi]), "test": sum(b for _, b in per_t[lo:hi])}
        for lo, hi in windows
    ]


def fit_position_probes(
    model: Any,
    hmm: HMM,
    token_map: TokenMap,
    hooks: Any = None,
    n_sequences: int = 1000,
    length: int | None = None,
    window: int | None = 1,
    test_fraction: float = 0.2,
    seed: int = 0,
    ridge: float = 0.0,
    *,
    symbols: Int[Tensor, "n L"] | None = None,
    batch_size: int | None = None,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT,
    device: str | torch.device | None = None,
    read_at: Literal["symbol", "prediction"] = "symbol",
) -> PositionProbeTable:
    """Affine probes from the residual stream at symbol positions to beliefs, per context window.

    Samples ``n_sequences`` sequences of ``length`` symbols (default: as many as fit ``n_ctx``)
    from ``hmm`` with ``seed`` (or takes ``symbols``), holds out the rows of
    ``split_prefixes(symbols, test_fraction, seed)``, and fits, for every hook and every window
    of ``window`` consecutive symbol positions (``None``: one window over all positions; ``1``: a
    probe per position), one ``AffineProbe`` on the training rows. Activations are read at
    ``token_map.symbol_positions``. With separators, ``read_at="prediction"`` reads the last
    separator after symbol ``t`` instead, the position whose logits predict symbol ``t + 1``.

    One streamed pass accumulates each window's training and held-out ``Moments`` (float64, on
    ``device``, default the model's); probes and held-out errors come from them. Nothing grows
    with ``n_sequences``. When the statistics of all hooks exceed half of
    ``memory_limit_bytes``, hooks are processed in groups, one pass each; batches are sized to
    the other half.
    """
    from belief_lens.activations import (
        check_tokens,
        model_device,
        require_eval_mode,
        residual_stream,
    )

    require_eval_mode(model)
    check_token_map(model, hmm, token_map)
    names = resolve_hooks(model, hooks)
    if symbols is None:
        if length is None:
            length = token_map.max_symbols(int(model.cfg.n_ctx))
        check_length(model, token_map, length)
        if n_sequences < 2:
            raise BeliefLensError(f"n_sequences must be >= 2, got {n_sequences}")
        symbols = sample_sequences(hmm, n_sequences, length, seed)
    else:
        symbols = hmm.check_tokens(symbols)
        if symbols.ndim != 2:
            raise BeliefLensError(f"symbols must be [n, L], got shape {tuple(symbols.shape)}")
        n_sequences, length = symbols.shape
        check_length(model, token_map, length)
    ridge = check_ridge(ridge)
    windows = _windows(length, window)
    test_mask = split_prefixes(symbols, test_fraction, seed)
    S = hmm.n_states
    d = int(model.cfg.d_model)
    work = model_device(model) if device is None else torch.device(device)
    if read_at == "symbol":
        positions = token_map.symbol_positions(length)
    elif read_at == "prediction":
        positions = token_map.prediction_positions(length)
    else:
        raise BeliefLensError(f"read_at must be 'symbol' or 'prediction', got {read_at!r}")
    L_model = token_map.model_length(length)

    per_hook = _stats_bytes(len(windows), d, S)
    stats_budget = memory_limit_bytes // 2
    if per_hook > stats_budget:
        smallest = math.ceil(length / max(1, stats_budget // _stats_bytes(1, d, S)))
        raise BeliefLensError(
            f"probe statistics for one hook need {per_hook / _GIB:.2f} GiB ({len(windows)} "
            f"windows x d={d}), more than half of memory_limit_bytes="
            f"{memory_limit_bytes / _GIB:.2f} GiB; use window >= {smallest} or raise the limit"
        )
    groups = _group_hooks(len(names), per_hook, stats_budget)
    max_group = max(len(g) for g in groups)
    needs_logits = any(not n.startswith(("blocks.", "hook_")) for n in names)
    per_seq = forward_bytes_per_sequence(model, L_model, max_group, logits=needs_logits)
    per_seq += 4 * max_group * length * d  # the gathered copy (float64 per window is transient)
    size = batch_size_within(
        batch_size,
        memory_limit_bytes - max_group * per_hook,
        per_seq,
        "fit_position_probes",
        n_sequences,
    )
    counts = _window_prefix_counts(symbols, test_mask, windows)
    pos = positions.to(work)

    rows: list[dict[str, Any]] = []
    probes: dict[Any, AffineProbe] = {}
    for group in groups:
        hook_names = [names[i] for i in group]
        # moments[h][k] = (train, test) for hook h and window k; built on the first batch
        moments: dict[str, list[tuple[Moments, Moments]]] = {}
        for lo_seq in range(0, n_sequences, size):
            batch = symbols[lo_seq : lo_seq + size]
            tokens = check_tokens(model, token_map.encode(batch))
            acts = residual_stream(model, tokens, hook_names, batch_size=size, device=work)
            beliefs = belief_states(hmm, batch).to(work)
            held = test_mask[lo_seq : lo_seq + size].to(work, torch.float64)
            for h in hook_names:
                a = acts.pop(h)[:, pos]  # [n, L, d]: only the symbol positions
                if h not in moments:
                    moments[h] = []
                    for lo, hi in windows:
                        shift = torch.cat(
                            [a[:, lo:hi].double().mean((0, 1)), beliefs[:, lo:hi].mean((0, 1))]
                        )
                        pair = tuple(Moments.zeros(d, S, shift=shift) for _ in range(2))
                        moments[h].append(pair)
                for k, (lo, hi) in enumerate(windows):
                    X = a[:, lo:hi].reshape(-1, d)
                    Y = beliefs[:, lo:hi].reshape(-1, S)
                    m = held[:, lo:hi].reshape(-1)
                    train, test = moments[h][k]
                    train.update(X, Y, 1.0 - m)
                    test.update(X, Y, m)
                del a
        for h in hook_names:
            for k, (lo, hi) in enumerate(windows):
                train, test = moments[h][k]
                probe = AffineProbe(ridge=ridge).fit_moments(train, hook_name=h)
                tr = probe.metrics_moments(train)
                te = probe.metrics_moments(test)
                overfit = d >= OVERFIT_FEATURE_RATIO * counts[k]["train"] or (
                    te["mse"] > OVERFIT_MSE_RATIO * tr["mse"]
                )
                rows.append(
                    {
                        "hook": h,
                        "window_start": lo,
                        "window_stop": hi,
                        "features": d,
                        "train_prefixes": counts[k]["train"],
                        "test_prefixes": counts[k]["test"],
                        "mse_test": te["mse"],
                        "r2_test": te["r2"],
                        "mse_train": tr["mse"],
                        "r2_train": tr["r2"],
                        "overfit": bool(overfit),
                    }
                )
                probes[(h, lo)] = probe
        del moments
    order = {h: i for i, h in enumerate(names)}
    rows.sort(key=lambda r: (order[r["hook"]], r["window_start"]))
    meta = {
        "name": "position_probes",
        "process": hmm.name,
        "token_map": repr(token_map),
        "length": length,
        "window": window,
        "read_at": read_at,
        "hooks": names,
        "ridge": ridge,
        "test_fraction": test_fraction,
        "seed": seed,
        "batch_size": size,
        "hook_groups": len(groups),
        "stats_bytes_per_hook": per_hook,
        "memory_limit_bytes": memory_limit_bytes,
    }
    return PositionProbeTable(rows=rows, probes=probes, meta=meta)
