"""In-context belief tracking: how a model's predictions and belief code evolve with context.

A pretrained model shown HMM text (through a ``TokenMap``) can only learn the process in context.
Two measurements, each a function of the number of symbols seen:

- ``in_context_curve``: the model's next-symbol distribution (its softmax restricted to the mapped
  tokens) against the Bayes-optimal ``P(. | belief)``: KL, cross-entropy on the sampled next
  symbol, the optimal cross-entropy, and the probability mass outside the mapped tokens.
- ``fit_position_probes``: affine probes from the residual stream at symbol positions to beliefs,
  one per context window, since a pretrained model's belief code may drift with position.

Both stream over sequences in batches under a memory bound (``memory_limit_bytes``): probes keep
only sufficient statistics (per hook and window: a ``d x d`` Gram matrix and ``d x S`` cross
moments), never activations, so memory does not grow with the number of sequences. Work runs on
the model's device (CUDA where the model is).

Alignment follows ``TokenMap``: beliefs are read at symbol positions, predictions at the last
position before the next symbol; with BOS, the BOS prediction of symbol 0 is the first point of
the learning curve (``n_seen = 0``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.probes import AffineProbe, ProbeTable, _metrics, _Moments
from belief_lens.probing.distributed import (
    all_reduce_moments,
    all_reduce_sum,
    rank_and_world_size,
    require_process_group,
    shard,
)
from belief_lens.token_map import TokenMap

__all__ = [
    "InContextResult",
    "PositionProbeTable",
    "fit_position_probes",
    "in_context_curve",
]

_GIB = 1 << 30
#: Default memory bound for streamed collection: 2 GiB.
DEFAULT_MEMORY_LIMIT = 2 * _GIB


# ---------------------------------------------------------------------------------- helpers
def _check_length(model: Any, token_map: TokenMap, length: int) -> None:
    if length < 1:
        raise BeliefLensError(f"length must be >= 1 symbols, got {length}")
    n_ctx = int(model.cfg.n_ctx)
    need = token_map.model_length(length)
    if need > n_ctx:
        raise BeliefLensError(
            f"{length} symbols take {need} model positions under {token_map}, more than the "
            f"model's n_ctx={n_ctx}; use length <= {token_map.max_symbols(n_ctx)}"
        )


def _check_map(model: Any, hmm: HMM, token_map: TokenMap) -> None:
    if token_map.n_symbols != hmm.n_symbols:
        raise BeliefLensError(
            f"token_map maps {token_map.n_symbols} symbols but {hmm.name} emits {hmm.n_symbols}"
        )
    token_map.check_model(model)


def _forward_bytes_per_sequence(model: Any, model_length: int, n_hooks: int, logits: bool) -> int:
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


def _batch_size(
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


def _split(n: int, test_fraction: float, seed: int) -> Tensor:
    """A seeded boolean mask of held-out sequences (a by-sequence split, never by token)."""
    if not 0 <= test_fraction < 1:
        raise BeliefLensError(f"test_fraction must be in [0, 1), got {test_fraction}")
    n_test = int(round(n * test_fraction))
    if n - n_test < 2:
        raise BeliefLensError(
            f"test_fraction={test_fraction} of {n} sequences leaves fewer than 2 to train on"
        )
    gen = torch.Generator().manual_seed(seed + 7919)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:n_test]] = True
    return mask


# ---------------------------------------------------------------------------------- the curve
@dataclass
class InContextResult:
    """The in-context learning curve of a model on HMM text, against the Bayes-optimal predictor.

    Every curve is indexed by prediction ``p``: the prediction of the next symbol after
    ``n_seen[p]`` symbols. Without BOS, ``n_seen = 1..L``; with BOS the BOS prediction of
    symbol 0 comes first (``n_seen = 0..L``). Means and standard deviations are over sequences,
    in nats.

    Attributes:
        n_seen: ``[P]`` symbols read before each prediction.
        kl_mean, kl_std: ``KL(P(. | belief) || model restricted to the mapped tokens)``.
        model_ce_mean, model_ce_std: ``-log q(x_next)``, the model's cross-entropy on the sampled
            next symbol (restricted, renormalised distribution).
        bayes_ce_mean, bayes_ce_std: ``-log P(x_next | belief)`` on the same symbols.
        optimal_entropy: mean ``H[P(. | belief)]``, an unbiased estimate of the optimal loss
            ``h(n_seen)`` (``myopic_entropy``); ``model_ce_mean - bayes_ce_mean`` is the excess.
        off_map_mass_mean, off_map_mass_std: probability the full softmax puts on unmapped tokens.
        n_sequences: sequences averaged.
        meta: process, token map, length, seed.
    """

    n_seen: Int[Tensor, " P"]
    kl_mean: Float[Tensor, " P"]
    kl_std: Float[Tensor, " P"]
    model_ce_mean: Float[Tensor, " P"]
    model_ce_std: Float[Tensor, " P"]
    bayes_ce_mean: Float[Tensor, " P"]
    bayes_ce_std: Float[Tensor, " P"]
    optimal_entropy: Float[Tensor, " P"]
    off_map_mass_mean: Float[Tensor, " P"]
    off_map_mass_std: Float[Tensor, " P"]
    n_sequences: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def excess_ce(self) -> Float[Tensor, " P"]:
        """Model minus Bayes cross-entropy on the same sampled symbols (nats)."""
        return self.model_ce_mean - self.bayes_ce_mean

    def summary(self) -> dict[str, float]:
        """Means over positions of each curve, plus the last position's KL."""
        return {
            "kl_mean": float(self.kl_mean.mean()),
            "kl_last": float(self.kl_mean[-1]),
            "model_ce_mean": float(self.model_ce_mean.mean()),
            "bayes_ce_mean": float(self.bayes_ce_mean.mean()),
            "optimal_entropy_mean": float(self.optimal_entropy.mean()),
            "off_map_mass_mean": float(self.off_map_mass_mean.mean()),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready lists and numbers."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            out[name] = value.tolist() if isinstance(value, Tensor) else value
        return out


class _Running:
    """Per-position sums of a quantity and its square over sequences (float64, on ``device``
    until ``mean``/``std`` bring them to the host)."""

    def __init__(self, P: int, device: torch.device) -> None:
        self.s = torch.zeros(P, dtype=torch.float64, device=device)
        self.ss = torch.zeros(P, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, values: Float[Tensor, "n P"]) -> None:
        values = values.detach().to(self.s.device, torch.float64)
        self.s += values.sum(0)
        self.ss += (values * values).sum(0)
        self.n += values.shape[0]

    def mean(self) -> Tensor:
        return (self.s / self.n).cpu()

    def std(self) -> Tensor:
        if self.n < 2:
            return torch.full_like(self.s, float("nan")).cpu()
        var = (self.ss - self.s * self.s / self.n) / (self.n - 1)
        return var.clamp_min(0).sqrt().cpu()


@torch.no_grad()
def in_context_curve(
    model: Any,
    hmm: HMM,
    token_map: TokenMap,
    n_sequences: int,
    length: int,
    seed: int = 0,
    batch_size: int | None = None,
    *,
    symbols: Int[Tensor, "n L_plus_1"] | None = None,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT,
) -> InContextResult:
    """The model's next-symbol predictions against ``P(. | belief)`` at every context length.

    Samples ``n_sequences`` sequences of ``length + 1`` symbols from ``hmm`` (``seed``), feeds the
    first ``length`` through ``token_map``, and scores the restricted prediction after each symbol
    against the exact belief's prediction and against the next sampled symbol. ``symbols`` gives
    the sequences instead (``[n, length + 1]``). Batches are sized so that the logits stay within
    ``memory_limit_bytes`` (``batch_size`` caps them). The model must be in eval mode.
    """
    from belief_lens.activations import check_tokens, model_device, require_eval_mode

    require_eval_mode(model)
    _check_map(model, hmm, token_map)
    if symbols is None:
        if n_sequences < 1:
            raise BeliefLensError(f"n_sequences must be >= 1, got {n_sequences}")
        _check_length(model, token_map, length)
        symbols = sample_sequences(hmm, n_sequences, length + 1, seed)
    else:
        symbols = hmm.check_tokens(symbols)
        if symbols.ndim != 2 or symbols.shape[1] < 2:
            raise BeliefLensError(
                f"symbols must be [n, length + 1] with length >= 1, got {tuple(symbols.shape)}"
            )
        n_sequences, length = symbols.shape[0], symbols.shape[1] - 1
        _check_length(model, token_map, length)
    with_bos = token_map.bos is not None
    P = length + int(with_bos)
    L_model = token_map.model_length(length)
    device = model_device(model)
    per_seq = _forward_bytes_per_sequence(model, L_model, 0, logits=True)
    size = _batch_size(batch_size, memory_limit_bytes, per_seq, "in_context_curve", n_sequences)
    stats = {k: _Running(P, device) for k in ("kl", "model_ce", "bayes_ce", "entropy", "off")}

    def to_device(t: Tensor) -> Tensor:
        # Pinned host memory lets the copy run without waiting for the device to finish.
        return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t

    start_belief = hmm.initial_state
    for lo in range(0, n_sequences, size):
        batch = symbols[lo : lo + size]
        n = batch.shape[0]
        beliefs = belief_states(hmm, batch[:, :length])  # [n, L, S]
        if with_bos:
            beliefs = torch.cat([start_belief.expand(n, 1, -1), beliefs], dim=1)
        theory = to_device(hmm.next_token_probs(beliefs))  # [n, P, V]
        nxt = to_device(batch[:, 1:] if not with_bos else batch)  # the symbols scored on
        tokens = to_device(check_tokens(model, token_map.encode(batch[:, :length])))
        logits = model(tokens)
        probs, off = token_map.predictions(logits, length, include_initial=with_bos)
        probs = probs.to(torch.float64)
        del logits
        log_q = probs.clamp_min(1e-300).log()
        log_p = theory.clamp_min(1e-300).log()
        kl = torch.where(theory > 0, theory * (log_p - log_q), 0.0).sum(-1)
        stats["kl"].add(kl)
        stats["model_ce"].add(-log_q.gather(-1, nxt[..., None])[..., 0])
        stats["bayes_ce"].add(-log_p.gather(-1, nxt[..., None])[..., 0])
        stats["entropy"].add(-torch.where(theory > 0, theory * log_p, 0.0).sum(-1))
        stats["off"].add(off)
    n_seen = torch.arange(P) + int(not with_bos)
    return InContextResult(
        n_seen=n_seen,
        kl_mean=stats["kl"].mean(),
        kl_std=stats["kl"].std(),
        model_ce_mean=stats["model_ce"].mean(),
        model_ce_std=stats["model_ce"].std(),
        bayes_ce_mean=stats["bayes_ce"].mean(),
        bayes_ce_std=stats["bayes_ce"].std(),
        optimal_entropy=stats["entropy"].mean(),
        off_map_mass_mean=stats["off"].mean(),
        off_map_mass_std=stats["off"].std(),
        n_sequences=n_sequences,
        meta={
            "process": hmm.name,
            "token_map": repr(token_map),
            "length": length,
            "seed": seed,
            "batch_size": size,
        },
    )


# ---------------------------------------------------------------------------------- probes
@dataclass
class PositionProbeTable(ProbeTable):
    """Probe results per (hook, context window): how the belief code evolves with position.

    Attributes:
        rows: one dict per (hook, window): ``hook``, ``window_start``, ``window_stop`` (symbol
            positions ``[start, stop)``, i.e. beliefs after ``start + 1 .. stop`` symbols),
            ``d``, ``n_train``, ``n_test`` (sequences), ``mse_train``, ``r2_train``,
            ``mse_test``, ``r2_test`` (NaN without held-out data). R^2 is the uniform average
            over belief coordinates.
        probes: ``{(hook, window_start): AffineProbe}`` fitted on the training sequences.
        meta: process, token map, length, window, seed, split, memory figures, and ``seconds``:
            wall time of the training pass, the solves and the held-out pass.
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


class _WindowMoments:
    """Shifted sufficient statistics of rows ``z = [activations, beliefs]`` for each window.

    Per window ``k``: the row count, ``s[k] = sum (z - shift[k])`` and
    ``M[k] = sum (z - shift[k])(z - shift[k])^T`` in float64 on ``device``; the shift is the first
    batch's mean, so the sums don't cancel. With ``accumulate="float32"`` each batch's Gram matrix
    is computed in float32 (fast where float64 is slow, e.g. consumer GPUs) and added to the
    float64 sums. ``moments(k)`` hands them to ``AffineProbe``'s solver.
    """

    def __init__(
        self, windows: list[tuple[int, int]], d: int, S: int, device: torch.device, accumulate: str
    ) -> None:
        f64 = torch.float64
        K = len(windows)
        self.d = d
        self.windows = windows
        self.gram_dtype = torch.float32 if accumulate == "float32" else f64
        self.w = torch.zeros(K, dtype=f64)
        self.s = torch.zeros(K, d + S, dtype=f64, device=device)
        self.M = torch.zeros(K, d + S, d + S, dtype=f64, device=device)
        self.shift: Tensor | None = None  # [K, d + S]

    def add(self, Z: Float[Tensor, "n L P"]) -> None:
        """Add float64 rows ``Z = [X, Y]`` of every window (positions along dim 1)."""
        n, _, P = Z.shape
        if self.shift is None:  # centre on the first batch's window means
            self.shift = torch.stack([Z[:, lo:hi].mean((0, 1)) for lo, hi in self.windows])
        width = self.windows[0][1] - self.windows[0][0]
        # Windows of equal width go through one batched GEMM; a shorter last one on its own.
        full = [k for k, (lo, hi) in enumerate(self.windows) if hi - lo == width]
        rest = [k for k in range(len(self.windows)) if k not in full]
        K = len(full)
        Zf = Z[:, : K * width].reshape(n, K, width, P).transpose(0, 1).reshape(K, n * width, P)
        self._add(slice(0, K), Zf - self.shift[:K, None])
        for k in rest:
            lo, hi = self.windows[k]
            self._add(slice(k, k + 1), (Z[:, lo:hi].reshape(1, -1, P) - self.shift[k]))

    def _add(self, ks: slice, Zc: Float[Tensor, "K m P"]) -> None:
        self.w[ks] += Zc.shape[1]
        self.s[ks] += Zc.sum(1)
        Zg = Zc.to(self.gram_dtype)
        self.M[ks] += torch.bmm(Zg.transpose(1, 2), Zg).to(torch.float64)

    def all_reduce(self, group: Any = None) -> None:
        """Sum the statistics over the ranks of ``group`` (each rank had its own shift)."""
        shift = torch.zeros_like(self.s) if self.shift is None else self.shift
        w, self.s, self.M, self.shift = all_reduce_moments(self.w, self.s, self.M, shift, group)
        self.w = w.cpu()

    def moments(self, k: int) -> _Moments:
        """Window ``k`` as ``belief_lens.probes._Moments`` on the CPU."""
        cpu = torch.device("cpu")
        return _Moments(
            float(self.w[k]), self.s[k].to(cpu), self.M[k].to(cpu), self.shift[k].to(cpu), self.d
        )


def _stats_bytes(n_windows: int, d: int, S: int) -> int:
    return 8 * n_windows * ((d + S) * (d + S) + 2 * (d + S))


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
    accumulate: Literal["float64", "float32"] = "float64",
    distributed: bool = False,
) -> PositionProbeTable:
    """Affine probes from the residual stream at symbol positions to beliefs, per context window.

    Samples ``n_sequences`` sequences of ``length`` symbols (default: as many as fit ``n_ctx``)
    from ``hmm`` with ``seed`` (or takes ``symbols``), holds out ``test_fraction`` of the
    *sequences*, and fits, for every hook and every window of ``window`` consecutive symbol
    positions (``None``: one window over all positions; ``1``: a probe per position), one
    ``AffineProbe`` on the training sequences. Activations are read at
    ``token_map.symbol_positions``: the position of symbol ``t`` holds the belief after symbols
    ``0..t``. With separators, ``read_at="prediction"`` reads the last separator after symbol
    ``t`` instead, the position whose logits predict symbol ``t + 1`` (the same as ``"symbol"``
    without separators).

    Streaming: a first pass over the training sequences accumulates each window's sufficient
    statistics (a ``d x d`` Gram matrix and cross moments, float64, on ``device``, default the
    model's); the probes are solved from them with ``AffineProbe``'s solver; a second pass over
    the held-out sequences accumulates their squared errors. Nothing grows with
    ``n_sequences``. When the statistics of all hooks exceed half of ``memory_limit_bytes``, the
    hooks are processed in groups, each with its own passes (more compute, same memory); batches
    are sized to the other half.

    Devices and precision: activations stay on ``device`` in the model's dtype until the symbol
    positions are gathered and upcast there (bf16/fp16 models work); statistics are float64, or,
    with ``accumulate="float32"``, per-batch float32 Gram matrices summed in float64 (for GPUs
    whose float64 is slow). Nothing is copied to the host until the passes end.

    ``distributed=True`` (inside an initialised ``torch.distributed`` process group, e.g. under
    ``torchrun``): every rank draws the same sequences and split, harvests every
    ``world_size``-th sequence (``belief_lens.probing.distributed.shard``), and the statistics of
    both passes are all-reduced, so every rank returns the same table, equal to one process's up
    to rounding. Every rank must call with the same arguments.
    """
    from belief_lens.activations import (
        check_tokens,
        model_device,
        require_eval_mode,
        residual_stream,
    )
    from belief_lens.probes import _resolve_hooks

    require_eval_mode(model)
    _check_map(model, hmm, token_map)
    names = _resolve_hooks(model, hooks)
    if accumulate not in ("float64", "float32"):
        raise BeliefLensError(f"accumulate must be 'float64' or 'float32', got {accumulate!r}")
    if distributed:
        require_process_group()
    if symbols is None:
        if length is None:
            length = token_map.max_symbols(int(model.cfg.n_ctx))
        _check_length(model, token_map, length)
        if n_sequences < 2:
            raise BeliefLensError(f"n_sequences must be >= 2, got {n_sequences}")
        symbols = sample_sequences(hmm, n_sequences, length, seed)
    else:
        symbols = hmm.check_tokens(symbols)
        if symbols.ndim != 2:
            raise BeliefLensError(f"symbols must be [n, L], got shape {tuple(symbols.shape)}")
        n_sequences, length = symbols.shape
        _check_length(model, token_map, length)
    if ridge < 0 or not math.isfinite(ridge):
        raise BeliefLensError(f"ridge must be a finite number >= 0, got {ridge!r}")
    windows = _windows(length, window)
    test_mask = _split(n_sequences, test_fraction, seed)
    train_idx = torch.nonzero(~test_mask).flatten()
    test_idx = torch.nonzero(test_mask).flatten()
    n_train, n_test = len(train_idx), len(test_idx)
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
    positions = positions.to(work)
    on_cuda = work.type == "cuda"
    if distributed:
        train_idx, test_idx = shard(train_idx), shard(test_idx)

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
    per_seq = _forward_bytes_per_sequence(model, L_model, max_group, logits=needs_logits)
    per_seq += 4 * max_group * length * d  # the gathered copy (float64 per window is transient)
    size = _batch_size(
        batch_size,
        memory_limit_bytes - max_group * per_hook,
        per_seq,
        "fit_position_probes",
        n_sequences,
    )

    def to_work(t: Tensor) -> Tensor:
        # Pinned host memory lets the copy run without waiting for the device to finish.
        return t.pin_memory().to(work, non_blocking=True) if on_cuda else t.to(work)

    def batches(idx: Tensor, hook_names: list[str]):
        for lo in range(0, len(idx), size):
            seq = idx[lo : lo + size]
            batch = symbols[seq]
            tokens = check_tokens(model, token_map.encode(batch))  # on the host: checked there
            tokens = tokens.pin_memory() if on_cuda else tokens
            acts = residual_stream(model, tokens, hook_names, batch_size=size, device=work)
            beliefs = to_work(belief_states(hmm, batch))
            gathered = {h: a[:, positions] for h, a in acts.items()}
            del acts  # keep only the symbol positions while the caller works
            yield gathered, beliefs

    rows: list[dict[str, Any]] = []
    probes: dict[Any, AffineProbe] = {}
    # Beliefs of an HMM sum to 1 (S - 1 free coordinates); a generalized HMM's need not.
    sums_to_one = bool(torch.allclose(hmm.tau, torch.ones_like(hmm.tau)))
    eps_x = torch.finfo(torch.float32).eps
    eps_y = torch.finfo(torch.float64).eps
    seconds = {"train_pass": 0.0, "solve": 0.0, "test_pass": 0.0}

    def clock() -> float:
        if on_cuda:
            torch.cuda.synchronize(work)  # once per pass, never per batch
        return time.perf_counter()

    for group in groups:
        hook_names = [names[i] for i in group]
        t0 = clock()
        mom = {h: _WindowMoments(windows, d, S, work, accumulate) for h in hook_names}
        for acts, beliefs in batches(train_idx, hook_names):
            for h in hook_names:
                mom[h].add(torch.cat([acts[h].double(), beliefs], dim=-1))  # [n, L, d + S]
        if distributed:
            for h in hook_names:
                mom[h].all_reduce()
        t1 = clock()
        seconds["train_pass"] += t1 - t0
        fitted: dict[str, list[AffineProbe]] = {}
        for h in hook_names:
            fitted[h] = [
                AffineProbe(ridge=float(ridge))._fit_moments(
                    mom[h].moments(k), sums_to_one=sums_to_one, eps=eps_x, eps_y=eps_y, hook_name=h
                )
                for k in range(len(windows))
            ]
        t2 = clock()
        seconds["solve"] += t2 - t1
        train_scores = {
            h: [p._score_moments(mom[h].moments(k)) for k, p in enumerate(fitted[h])]
            for h in hook_names
        }
        del mom
        # Held-out pass: squared errors and target sums per window and belief coordinate, on
        # the work device until the pass ends.
        zeros = {"dtype": torch.float64, "device": work}
        ss_res = {h: torch.zeros(len(windows), S, **zeros) for h in hook_names}
        sy = torch.zeros(len(windows), S, **zeros)
        syy = torch.zeros(len(windows), S, **zeros)
        n_rows = torch.zeros(len(windows), dtype=torch.float64)
        coefs = {
            h: [(p.coef_.T.to(work), p.intercept_.to(work)) for p in fitted[h]] for h in hook_names
        }
        for acts, beliefs in batches(test_idx, hook_names):
            for k, (lo, hi) in enumerate(windows):
                Y = beliefs[:, lo:hi].reshape(-1, S)
                sy[k] += Y.sum(0)
                syy[k] += (Y * Y).sum(0)
                n_rows[k] += Y.shape[0]
                for h in hook_names:
                    B, b = coefs[h][k]
                    pred = acts[h][:, lo:hi].reshape(-1, d).double() @ B + b
                    ss_res[h][k] += ((Y - pred) ** 2).sum(0)
        held_out = [sy, syy, n_rows, *(ss_res[h] for h in hook_names)]
        if distributed:
            held_out = all_reduce_sum(held_out)
        sy, syy, n_rows, *res = (t.cpu() for t in held_out)
        seconds["test_pass"] += clock() - t2
        ss_res = dict(zip(hook_names, res, strict=True))
        for h in hook_names:
            for k, (lo, hi) in enumerate(windows):
                n = float(n_rows[k])
                ss_tot = syy[k] - sy[k] ** 2 / n if n > 0 else torch.zeros(S)
                te = _metrics(ss_res[h][k], ss_tot, n)
                tr = train_scores[h][k]
                rows.append(
                    {
                        "hook": h,
                        "window_start": lo,
                        "window_stop": hi,
                        "d": d,
                        "n_train": n_train,
                        "n_test": n_test,
                        "mse_train": tr["mse"],
                        "r2_train": tr["r2"],
                        "mse_test": te["mse"],
                        "r2_test": te["r2"],
                    }
                )
                probes[(h, lo)] = fitted[h][k]
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
        "accumulate": accumulate,
        "seconds": seconds,
        "world_size": rank_and_world_size()[1] if distributed else 1,
    }
    return PositionProbeTable(rows=rows, probes=probes, meta=meta)
