"""Per-position probes: how a model's belief code evolves with context position.

``fit_position_probes`` streams sequences through the model and keeps, per hook and context
window, only ``Moments`` (a ``d x d`` Gram matrix and cross moments, float64, on the model's
device), for every fold of ``prefix_folds`` (or both sides of one ``split_prefixes``) at once: one
pass, memory independent of the number of sequences. The folds are known before the pass, so
each batch's rows are ordered by (window, fold) on the host and every row enters exactly one Gram
matrix of ``SegmentedMoments`` on the device, with no host synchronisation. Probes are solved with
``AffineProbe.fit_moments`` and scored held out with ``AffineProbe.metrics_moments``.

Alignment follows ``TokenMap``: beliefs are read at symbol positions (the position of symbol
``t`` holds the belief after symbols ``0..t``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.activations import check_tokens, model_device, require_eval_mode, residual_stream
from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.metrics import mean_se
from belief_lens.probing.data import prefix_counts, prefix_folds, resolve_hooks, split_prefixes
from belief_lens.probing.distributed import (
    all_reduce_moment_list,
    rank_and_world_size,
    require_process_group,
    shard,
)
from belief_lens.probing.estimator import AffineProbe, check_ridge
from belief_lens.probing.moments import Moments, SegmentedMoments, total
from belief_lens.probing.table import markdown_table, overfit_reason
from belief_lens.storage import jsonable
from belief_lens.token_map import TokenMap

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "PositionProbeTable",
    "batch_row_order",
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
class PositionProbeTable:
    """Probe results per (hook, context window): how the belief code evolves with position.

    Attributes:
        rows: one dict per (hook, window): ``hook``, ``window_start``, ``window_stop`` (symbol
            positions ``[start, stop)``, i.e. beliefs after ``start + 1 .. stop`` symbols),
            ``features``, ``train_prefixes`` (distinct training inputs of the window; the fewest
            over folds), ``test_prefixes`` (distinct held-out inputs, over all folds),
            ``mse_heldout``, ``r2_heldout`` (over folds: the mean, with ``_se`` its standard
            error and ``folds`` their number; NaN where the window has too few prefixes to
            hold any out), ``mse_train``, ``r2_train``, ``mse_all`` (in-sample), ``overfit``
            and ``overfit_reason`` (``overfit_reason``; with one split only the feature-count
            reason can apply). R^2 is the uniform average over belief coordinates.
        probes: ``{(hook, window_start): AffineProbe}`` fitted on every row (cross-validated)
            or on the training rows (one split).
        meta: process, token map, length, window, seed, split, memory figures, world size,
            and ``seconds`` (wall time of the passes over the sequences and of the solves).
    """

    rows: list[dict[str, Any]]
    probes: dict[tuple[str, int], AffineProbe] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, int]) -> dict[str, Any]:
        """The row for ``(hook, window_start)``."""
        for row in self.rows:
            if (row["hook"], row["window_start"]) == tuple(key):
                return row
        raise BeliefLensError(
            f"no row for {key!r}; keys are (hook, window_start) with hooks {self.hooks} and "
            f"window starts {sorted({r['window_start'] for r in self.rows})}"
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys(row["hook"] for row in self.rows))

    @property
    def windows(self) -> list[tuple[int, int]]:
        """The ``(start, stop)`` symbol-position windows, in order."""
        return list(dict.fromkeys((row["window_start"], row["window_stop"]) for row in self.rows))

    @property
    def window_centres(self) -> list[float]:
        """The mean number of symbols seen by the beliefs of each window (for plotting)."""
        return [(lo + hi + 1) / 2 for lo, hi in self.windows]

    def grid(self, metric: str = "r2_heldout") -> Float[Tensor, "n_hooks n_windows"]:
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"rows", "meta"}`` (``pandas.DataFrame(t.rows)`` for a frame)."""
        return jsonable({"rows": self.rows, "meta": self.meta})

    def to_markdown(self, digits: int = 4) -> str:
        """A markdown table, floats to ``digits`` significant digits; flagged rows marked."""
        return markdown_table(self.rows, digits)

    def __str__(self) -> str:
        return f"position probes, process={self.meta.get('process')}\n" + self.to_markdown()


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


def _stats_bytes(n_windows: int, d: int, S: int, sides: int = 2) -> int:
    """Bytes of one hook's statistics: ``Moments`` per window and side (fold)."""
    return sides * 8 * n_windows * ((d + S) * (d + S) + 2 * (d + S) + 1)


def _window_prefix_counts(
    symbols: Tensor, labels: Tensor, windows: list[tuple[int, int]], held: list[int]
) -> list[dict[str, int]]:
    """Distinct (position, prefix) inputs in each window: training (the fewest over the
    held-out groups ``held``) and held out (over all of them)."""
    per_k = [prefix_counts(symbols, labels == k) for k in held]
    return [
        {
            "train": min(sum(a for a, _ in c[lo:hi]) for c in per_k),
            "test": sum(b for c in per_k for _, b in c[lo:hi]),
        }
        for lo, hi in windows
    ]


def batch_row_order(
    labels: Int[Tensor, "n L"], window_of: Int[Tensor, " L"], n_windows: int, sides: int = 2
) -> tuple[Int[Tensor, " nL"], list[int]]:
    """The rows of a batch (``[n, L]`` flattened) ordered by window, then side (``labels``:
    0/1 or False/True for one split, the fold for cross-validation, ``< sides``).

    Returns the order and the ``sides * n_windows + 1`` bounds (host ints) of its segments:
    window 0's side 0, its side 1, ..., window 1's side 0, ... Computed on the host from the
    labels, so the device indexes with ``index_select`` and slices, never with a boolean mask
    (which waits for the device on CUDA).
    """
    key = (window_of[None, :] * sides + labels.long()).reshape(-1)
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=sides * n_windows)
    return order, [0, *torch.cumsum(counts, 0).tolist()]


@dataclass(frozen=True)
class _Plan:
    """Everything one fit needs, resolved and checked before the first forward pass."""

    hooks: list[str]
    symbols: Tensor
    labels: Tensor  # [n, L]: the side of each row (fold, or K for always trained on)
    folds: int | None  # None: one split, labels 0 (train) / 1 (held out)
    windows: list[tuple[int, int]]
    positions: Tensor
    model_length: int
    device: torch.device
    groups: list[list[int]]
    batch_size: int
    stats_bytes_per_hook: int
    memory_limit_bytes: int

    @property
    def length(self) -> int:
        return self.symbols.shape[1]

    @property
    def sides(self) -> int:
        return 2 if self.folds is None else self.folds + 1

    @property
    def held(self) -> list[int]:
        return [1] if self.folds is None else list(range(self.folds))

    def meta(self, hmm: HMM, token_map: TokenMap, ridge: float, distributed: bool) -> dict:
        """What was fitted and how the memory was planned."""
        return {
            "name": "position_probes",
            "process": hmm.name,
            "token_map": repr(token_map),
            "length": self.length,
            "hooks": self.hooks,
            "ridge": ridge,
            "batch_size": self.batch_size,
            "hook_groups": len(self.groups),
            "stats_bytes_per_hook": self.stats_bytes_per_hook,
            "memory_limit_bytes": self.memory_limit_bytes,
            "world_size": rank_and_world_size()[1] if distributed else 1,
        }

    @property
    def window_of(self) -> Int[Tensor, " L"]:
        sizes = torch.tensor([hi - lo for lo, hi in self.windows])
        return torch.repeat_interleave(torch.arange(len(self.windows)), sizes)


def _symbols(
    model: Any,
    hmm: HMM,
    token_map: TokenMap,
    n_sequences: int,
    length: int | None,
    seed: int,
    symbols: Tensor | None,
) -> Int[Tensor, "n L"]:
    """The sequences to probe: ``symbols`` checked, or ``n_sequences`` sampled with ``seed``."""
    if symbols is None:
        if length is None:
            length = token_map.max_symbols(int(model.cfg.n_ctx))
        check_length(model, token_map, length)
        if n_sequences < 2:
            raise BeliefLensError(f"n_sequences must be >= 2, got {n_sequences}")
        return sample_sequences(hmm, n_sequences, length, seed)
    symbols = hmm.check_tokens(symbols)
    if symbols.ndim != 2:
        raise BeliefLensError(f"symbols must be [n, L], got shape {tuple(symbols.shape)}")
    check_length(model, token_map, symbols.shape[1])
    return symbols


def _read_positions(token_map: TokenMap, length: int, read_at: str) -> Int[Tensor, " L"]:
    if read_at == "symbol":
        return token_map.symbol_positions(length)
    if read_at == "prediction":
        return token_map.prediction_positions(length)
    raise BeliefLensError(f"read_at must be 'symbol' or 'prediction', got {read_at!r}")


def _plan(
    model: Any,
    hmm: HMM,
    token_map: TokenMap,
    hooks: list[str],
    symbols: Tensor,
    window: int | None,
    split: tuple[float, int, int | None],
    memory: tuple[int | None, int],
    device: torch.device,
    read_at: str,
) -> _Plan:
    """Windows, positions and the memory plan: hooks grouped so that their statistics take at
    most half of the memory limit, batches sized to the other half."""
    (n_sequences, length), (batch_size, limit) = symbols.shape, memory
    windows = _windows(length, window)
    positions = _read_positions(token_map, length, read_at)
    d, S = int(model.cfg.d_model), hmm.n_states
    test_fraction, seed, folds = split
    if folds is None:
        labels = split_prefixes(symbols, test_fraction, seed).long()
    else:
        f = prefix_folds(symbols, folds, seed)
        labels = torch.where(f < 0, folds, f)
    sides = 2 if folds is None else folds + 1
    per_hook = _stats_bytes(len(windows), d, S, sides)
    if per_hook > limit // 2:
        smallest = math.ceil(length / max(1, (limit // 2) // _stats_bytes(1, d, S, sides)))
        raise BeliefLensError(
            f"probe statistics for one hook need {per_hook / _GIB:.2f} GiB ({len(windows)} "
            f"windows x d={d}), more than half of memory_limit_bytes="
            f"{limit / _GIB:.2f} GiB; use window >= {smallest} or raise the limit"
        )
    groups = _group_hooks(len(hooks), per_hook, limit // 2)
    widest = max(len(g) for g in groups)
    model_length = token_map.model_length(length)
    needs_logits = any(not n.startswith(("blocks.", "hook_")) for n in hooks)
    per_seq = forward_bytes_per_sequence(model, model_length, widest, logits=needs_logits)
    per_seq += 4 * widest * length * d  # the gathered copy
    per_seq += 8 * length * (d + S + 1)  # one hook's float64 rows at a time
    size = batch_size_within(
        batch_size, limit - widest * per_hook, per_seq, "fit_position_probes", n_sequences
    )
    return _Plan(
        hooks=hooks,
        symbols=symbols,
        labels=labels,
        folds=folds,
        windows=windows,
        positions=positions,
        model_length=model_length,
        device=device,
        groups=groups,
        batch_size=size,
        stats_bytes_per_hook=per_hook,
        memory_limit_bytes=limit,
    )


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    # Pinned host memory lets the copy run without waiting for the device to finish.
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # once per pass, never per batch
    return time.perf_counter()


def _stream(
    model: Any, hmm: HMM, token_map: TokenMap, plan: _Plan, hooks: list[str], distributed: bool
) -> dict[str, list[list[Moments]]]:
    """One pass over the sequences: each hook's ``Moments`` per window and side (fold)
    (``[window][side]``), all-reduced over ranks when ``distributed``."""
    length, dev, d = plan.length, plan.device, int(model.cfg.d_model)
    S, n_windows = hmm.n_states, len(plan.windows)
    window_of = plan.window_of
    sides = plan.sides
    engines = {h: SegmentedMoments(n_windows, sides, d, S, dev) for h in hooks}
    seq_idx = torch.arange(plan.symbols.shape[0])
    if distributed:
        seq_idx = shard(seq_idx)
    for lo in range(0, len(seq_idx), plan.batch_size):
        sel = seq_idx[lo : lo + plan.batch_size]
        batch = plan.symbols[sel]
        tokens = check_tokens(model, token_map.encode(batch))  # checked on the host
        tokens = tokens.pin_memory() if dev.type == "cuda" else tokens
        acts = residual_stream(model, tokens, hooks, batch_size=len(sel), device=dev)
        order, bounds = batch_row_order(plan.labels[sel], window_of, n_windows, sides)
        rows = _to_device(
            (order // length) * plan.model_length + plan.positions[order % length], dev
        )
        beliefs = _to_device(belief_states(hmm, batch).reshape(-1, S)[order], dev)
        for h in hooks:
            a = acts.pop(h)
            engines[h].add(a.reshape(-1, d).index_select(0, rows), beliefs, bounds)
            del a
    moments = {h: e.moments() for h, e in engines.items()}
    if distributed:
        for h in hooks:
            flat = all_reduce_moment_list([m for group in moments[h] for m in group])
            moments[h] = [flat[k : k + sides] for k in range(0, len(flat), sides)]
    return moments


def _solve(
    hook: str,
    moments: list[list[Moments]],
    windows: list[tuple[int, int]],
    counts: list[dict[str, int]],
    ridge: float,
    folds: int | None,
) -> list[tuple[dict[str, Any], AffineProbe]]:
    """Each window's probe and scores: (row, probe)."""
    out = []
    for (lo, hi), groups, n in zip(windows, moments, counts, strict=True):
        row: dict[str, Any] = {"hook": hook, "window_start": lo, "window_stop": hi}
        row.update(features=groups[0].n_features, train_prefixes=n["train"])
        row["test_prefixes"] = n["test"]
        if folds is None:
            scores, probe = _one_split(hook, groups, ridge, n["train"])
        else:
            scores, probe = _over_folds(hook, groups, ridge, n["train"])
        out.append(({**row, **scores}, probe))
    return out


def _one_split(
    hook: str, groups: list[Moments], ridge: float, train_prefixes: int
) -> tuple[dict[str, Any], AffineProbe]:
    train, test = groups
    probe = AffineProbe(ridge=ridge).fit_moments(train, hook=hook)
    tr, te = probe.metrics_moments(train), probe.metrics_moments(test)
    why = overfit_reason(train.n_features, train_prefixes)  # one split: no spread to judge by
    scores = {"mse_heldout": te["mse"], "r2_heldout": te["r2"]}
    scores.update(mse_train=tr["mse"], r2_train=tr["r2"], overfit=bool(why), overfit_reason=why)
    return scores, probe


def _over_folds(
    hook: str, groups: list[Moments], ridge: float, train_prefixes: int
) -> tuple[dict[str, Any], AffineProbe]:
    """Each fold (all but the last group, which every fold trains on) held out in turn: fold
    means with standard errors, and the probe on every row, scored in-sample."""
    whole = AffineProbe(ridge=ridge).fit_moments(total(groups), hook=hook)
    held, train, insame = [], [], []
    for k in range(len(groups) - 1):
        if not float(groups[k].w) > 0:
            continue
        rest = total([m for j, m in enumerate(groups) if j != k])
        probe = AffineProbe(ridge=ridge).fit_moments(rest, hook=hook)
        held.append(probe.metrics_moments(groups[k]))
        train.append(probe.metrics_moments(rest))
        insame.append(whole.metrics_moments(groups[k])["mse"])
    nan = float("nan")
    mse, mse_se = mean_se([m["mse"] for m in held]) if held else (nan, nan)
    r2, r2_se = mean_se([m["r2"] for m in held]) if held else (nan, nan)
    mse_tr = mean_se([m["mse"] for m in train])[0] if train else nan
    r2_tr = mean_se([m["r2"] for m in train])[0] if train else nan
    why = overfit_reason(groups[0].n_features, train_prefixes, [m["mse"] for m in held], insame)
    scores = {"mse_heldout": mse, "mse_heldout_se": mse_se, "r2_heldout": r2}
    scores.update(r2_heldout_se=r2_se, folds=len(held), mse_train=mse_tr, r2_train=r2_tr)
    scores.update(mse_all=whole.metrics_moments(total(groups))["mse"])
    scores.update(overfit=bool(why), overfit_reason=why)
    return scores, whole


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
    n_folds: int | None = 5,
    symbols: Int[Tensor, "n L"] | None = None,
    batch_size: int | None = None,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT,
    device: str | torch.device | None = None,
    read_at: Literal["symbol", "prediction"] = "symbol",
    distributed: bool = False,
) -> PositionProbeTable:
    """Affine probes from the residual stream at symbol positions to beliefs, per context window.

    Samples ``n_sequences`` sequences of ``length`` symbols (default: as many as fit ``n_ctx``)
    from ``hmm`` with ``seed`` (or takes ``symbols``), and fits, for every hook and every window
    of ``window`` consecutive symbol positions (``None``: one window over all positions; ``1``: a
    probe per position), ``AffineProbe``s cross-validated over ``prefix_folds(symbols, n_folds,
    seed)`` (held-out scores as mean ± s.e. over folds; the table's probe is fitted on every
    row), or with ``n_folds=None`` one probe on the training rows of
    ``split_prefixes(symbols, test_fraction, seed)``. Activations are read at
    ``token_map.symbol_positions``. With separators, ``read_at="prediction"`` reads the last
    separator after symbol ``t`` instead, the position whose logits predict symbol ``t + 1``.

    One streamed pass accumulates each window's ``SegmentedMoments`` per fold (float64, on
    ``device``, default the model's; nothing grows with ``n_sequences``). Hooks whose
    statistics exceed half of ``memory_limit_bytes`` go in groups, one pass each; batches fit
    the other half.

    ``distributed=True`` (inside an initialised ``torch.distributed`` process group, e.g. under
    ``torchrun``): every rank draws the same sequences and split, harvests every
    ``world_size``-th sequence (``belief_lens.probing.distributed.shard``), and the statistics are
    all-reduced, so every rank returns the same table, equal to one process's up to float64
    rounding. Every rank must call with the same arguments."""
    require_eval_mode(model)
    check_token_map(model, hmm, token_map)
    names = resolve_hooks(model, hooks)
    if distributed:
        require_process_group()
    symbols = _symbols(model, hmm, token_map, n_sequences, length, seed, symbols)
    ridge = check_ridge(ridge)
    work = model_device(model) if device is None else torch.device(device)
    plan = _plan(
        model,
        hmm,
        token_map,
        names,
        symbols,
        window,
        (test_fraction, seed, _check_folds(n_folds)),
        (batch_size, memory_limit_bytes),
        work,
        read_at,
    )
    counts = _window_prefix_counts(symbols, plan.labels, plan.windows, plan.held)
    seconds = {"pass": 0.0, "solve": 0.0}
    fitted: list[tuple[dict[str, Any], AffineProbe]] = []
    for group in plan.groups:
        t0 = _clock(work)
        group_hooks = [names[i] for i in group]
        moments = _stream(model, hmm, token_map, plan, group_hooks, distributed)
        t1 = _clock(work)
        for h in group_hooks:
            fitted += _solve(h, moments[h], plan.windows, counts, ridge, plan.folds)
        seconds["pass"] += t1 - t0
        seconds["solve"] += _clock(work) - t1
    fitted.sort(key=lambda rp: (names.index(rp[0]["hook"]), rp[0]["window_start"]))
    meta = plan.meta(hmm, token_map, ridge, distributed)
    meta.update(window=window, read_at=read_at, seed=seed, folds=n_folds, seconds=seconds)
    meta["test_fraction"] = test_fraction if n_folds is None else None
    probes = {(r["hook"], r["window_start"]): p for r, p in fitted}
    return PositionProbeTable(rows=[r for r, _ in fitted], probes=probes, meta=meta)


def _check_folds(n_folds: Any) -> int | None:
    if n_folds is None:
        return None
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise BeliefLensError(
            f"n_folds must be an int >= 2, or None for one split; got {n_folds!r}"
        )
    return n_folds
