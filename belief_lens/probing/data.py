"""What probes are fitted on: activations, beliefs, weights, and the one leak-free split.

``collect_probe_data`` runs the model and the belief filter once; every fitter (``fit_probes``,
the controls) then works from the returned ``ProbeData`` and the moments it caches. The held-out
split (``split_prefixes``) is by *prefix*: a causal model's activation at position ``t`` is a
function of ``tokens[:, :t+1]`` alone, so a row is held out exactly when its prefix is, and no
input is on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal, get_args

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from belief_lens.activations import residual_hooks, residual_stream, resolve_hook
from belief_lens.beliefs import belief_states, enumerate_sequences, log_probs, sample_sequences
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.metrics import effective_sample_size
from belief_lens.probing.estimator import SVD_MAX_ELEMENTS
from belief_lens.probing.moments import Moments, row_chunks
from belief_lens.probing.prefixes import (
    PrefixActs,
    acts_dim,
    check_acts_memory,
    collect_prefix_acts,
    prefix_counts,
    prefix_groups,
    prefix_ids,
    prefix_reps,
)
from belief_lens.validation import check_float, check_real_tensor, check_seed

__all__ = [
    "CONCAT",
    "DEFAULT_SAMPLED",
    "ProbeData",
    "collect_probe_data",
    "model_fingerprint",
    "MIN_PREFIXES_PER_FOLD",
    "Weighting",
    "prefix_counts",
    "prefix_folds",
    "prefix_groups",
    "prefix_ids",
    "resolve_hooks",
    "split_prefixes",
]

Mode = Literal["paper", "weighted", "sampled"]
#: How rows are weighted in a fit and its scores: ``"rows"``, each row by its sequence's weight
#: (the mode's: one per sequence, or the sequence probability, the paper's); ``"prefixes"``,
#: each distinct (position, prefix) equally, however many sequences share it (coverage of the
#: geometry: rare prefixes count as much as common ones).
Weighting = Literal["rows", "prefixes"]

#: Name of the table row (and probe) fitted on the concatenation of all requested hooks.
CONCAT = "concat"
#: Sequences ``mode="sampled"`` draws when ``n_sequences`` is not given.
DEFAULT_SAMPLED = 20_000


def split_prefixes(
    tokens: Int[Tensor, "N L"], test_fraction: float, seed: int = 0
) -> Bool[Tensor, "N L"]:
    """The held-out mask ``[N, L]``: row ``(n, t)`` is held out exactly when its prefix
    ``tokens[n, :t+1]`` is a held-out prefix.

    At each length, ``round(test_fraction * n_distinct)`` of the distinct prefixes are held out,
    chosen by a ``seed``-ed permutation. Equal prefixes always fall on the same side, so for a
    causal model no input is both trained on and tested on. Every fitter uses this split.

    >>> tokens = torch.tensor([[0, 1], [0, 1], [1, 0], [1, 1]])
    >>> mask = split_prefixes(tokens, 0.5, seed=0)
    >>> bool((mask[0] == mask[1]).all())  # equal sequences, same side
    True
    """
    tokens = check_real_tensor("tokens", tokens, integer=True)  # floats would truncate
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1 or tokens.min() < 0:
        got = f"{tuple(tokens.shape)}" + (f", min {int(tokens.min())}" if tokens.numel() else "")
        raise BeliefLensError(f"tokens must be integers >= 0 of shape [N, L >= 1], got {got}")
    test_fraction = check_float("test_fraction", test_fraction, low=0, high=1, high_open=True)
    gen = torch.Generator().manual_seed(check_seed("seed", seed))
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for t, ids in enumerate(prefix_ids(tokens.cpu())):
        n_u = int(ids.max()) + 1
        held = torch.zeros(n_u, dtype=torch.bool)
        held[torch.randperm(n_u, generator=gen)[: int(round(n_u * test_fraction))]] = True
        mask[:, t] = held[ids]
    return mask


#: A position is cross-validated only when each fold can hold out at least this many of its
#: distinct prefixes; rarer positions (position 0 has one prefix per symbol) stay in every
#: training set, since holding one out asks the probe for an activation it never saw.
MIN_PREFIXES_PER_FOLD = 2


def prefix_folds(tokens: Int[Tensor, "N L"], n_folds: int = 5, seed: int = 0) -> Int[Tensor, "N L"]:
    """The K-fold assignment by prefix ``[N, L]``: the fold (``0..n_folds-1``) whose held-out
    set holds row ``(n, t)``, or -1 for a row in every training set.

    At each length, the distinct prefixes are dealt round-robin over a ``seed``-ed permutation,
    so equal prefixes share a fold and no input is ever on both sides (as ``split_prefixes``).
    Lengths with fewer than ``MIN_PREFIXES_PER_FOLD * n_folds`` distinct prefixes are never
    held out (-1).

    >>> tokens = torch.tensor([[0, 1], [0, 1], [1, 0], [1, 1]])
    >>> folds = prefix_folds(tokens, 2, seed=0)
    >>> bool((folds[0] == folds[1]).all()) and folds[:, 0].tolist() == [-1, -1, -1, -1]
    True
    """
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise BeliefLensError(
            f"tokens must have shape [N, L] with N, L >= 1, got {tuple(tokens.shape)}"
        )
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise BeliefLensError(f"n_folds must be an int >= 2, got {n_folds!r}")
    gen = torch.Generator().manual_seed(int(seed))
    folds = torch.full(tokens.shape, -1, dtype=torch.long)
    for t, ids in enumerate(prefix_ids(tokens.cpu())):
        n_u = int(ids.max()) + 1
        if n_u < MIN_PREFIXES_PER_FOLD * n_folds:
            continue
        fold_of = torch.empty(n_u, dtype=torch.long)
        fold_of[torch.randperm(n_u, generator=gen)] = torch.arange(n_u) % n_folds
        folds[:, t] = fold_of[ids]
    return folds


def resolve_hooks(model: Any, hooks: Any) -> list[str]:
    """Hook names for ``hooks`` (names or ``(name, layer)`` shorthands; None: every residual
    hook), deduplicated in order."""
    if hooks is None:
        return residual_hooks(model)
    if isinstance(hooks, (str, tuple)):
        hooks = [hooks]
    names = list(dict.fromkeys(resolve_hook(model, h) for h in hooks))
    if not names:
        raise BeliefLensError("hooks is empty; give at least one hook name or None for all")
    if CONCAT in names:
        raise BeliefLensError(f"{CONCAT!r} is reserved for the concatenation row")
    return names


def model_fingerprint(model: Any) -> str:
    """A short sha256 of the model's parameters and buffers (names, shapes, values): probes
    record it, so a probe is not read through a different model by mistake."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, Tensor):
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def is_causal(model: Any) -> bool:
    """Whether the model's attention is causal (then equal prefixes give equal activations)."""
    return getattr(getattr(model, "cfg", None), "attention_dir", "causal") == "causal"


def model_acts(
    model: Any,
    tokens: Tensor,
    hooks: list[str],
    bos_id: int | None,
    batch_size: int,
    prefixes: list[tuple[Tensor, Tensor]] | None = None,
) -> dict[str, Tensor] | PrefixActs:
    """Residual streams at the process tokens' positions (a BOS position is dropped); with
    ``prefixes`` (``ProbeData.prefix_index``), one row per distinct prefix (``PrefixActs``)."""
    if prefixes is not None:
        forward = lambda batch: model_acts(model, batch, hooks, bos_id, batch_size)  # noqa: E731
        return collect_prefix_acts(forward, tokens, prefixes, batch_size)
    if bos_id is not None:
        bos_col = torch.full((tokens.shape[0], 1), bos_id, dtype=tokens.dtype)
        tokens = torch.cat([bos_col, tokens], 1)
    acts = residual_stream(model, tokens, hooks, batch_size=batch_size)
    if bos_id is not None:
        acts = {h: a[:, 1:].contiguous() for h, a in acts.items()}
    return acts


@dataclass(repr=False)
class ProbeData:
    """Activations, targets, weights and the prefix split that probes are fitted on.

    Build it with ``collect_probe_data`` and hand it to ``fit_probes`` and the controls, which
    reuse the forward pass and the activation moments (cached here: treat it as read-only).

    Attributes
    ----------
    tokens : Tensor, int64, shape ``[N, L]``
        Process tokens (without BOS).
    beliefs : Tensor, float64, shape ``[N, L, S]``
        ``beliefs[:, t]``: the belief after tokens ``0..t``, aligned with activation position t.
    acts : dict of str to Tensor, float32, shape ``[N, L, d]``
        Residual streams by hook, in the requested order (BOS position dropped).
    weights : Tensor, float64, shape ``[N]``, or None
        Per-sequence weights (sequence probabilities in ``"weighted"`` mode), or None.
    test_mask : Tensor, bool, shape ``[N, L]``
        ``split_prefixes(tokens, test_fraction, seed)``: True for held-out rows.
    bos : bool
        Whether the model read a BOS token first (its position is not in ``acts``).
    dedupe : bool
        Whether activations at equal prefixes are equal (a causal model), so that each distinct
        prefix is processed once. Exact; False for bidirectional attention.
    model_fingerprint : str or None
        ``model_fingerprint(model)`` of the model the activations came from.
    """

    tokens: Int[Tensor, "N L"]
    beliefs: Float[Tensor, "N L S"]
    acts: dict[str, Float[Tensor, "N L d"]]
    weights: Float[Tensor, " N"] | None
    test_mask: Bool[Tensor, "N L"]
    hmm: HMM
    n_ctx: int
    mode: str
    seed: int
    test_fraction: float
    bos: bool = False
    dedupe: bool = True
    model_fingerprint: str | None = None
    weighting: Weighting = "rows"
    _cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weighting not in get_args(Weighting):
            raise BeliefLensError(
                f"weighting must be one of {get_args(Weighting)}, got {self.weighting!r}"
            )
        N, L = self.tokens.shape
        if tuple(self.test_mask.shape) != (N, L):
            raise BeliefLensError(
                f"test_mask must have shape [N, L] = {[N, L]} (split_prefixes), got "
                f"{tuple(self.test_mask.shape)}"
            )
        for h in self.acts:
            shape = self._shape(h)
            if tuple(shape[:2]) != (N, L):
                raise BeliefLensError(f"acts[{h!r}] has shape {shape}, expected [{N}, {L}, d]")

    def _shape(self, hook: str) -> tuple[int, ...]:
        a = self.acts
        return a.shape(hook) if isinstance(a, PrefixActs) else tuple(a[hook].shape)

    def __repr__(self) -> str:
        acts = ", ".join(f"{h}: {list(self._shape(h))}" for h in self.acts)
        return (
            f"ProbeData(process={self.hmm.name!r}, mode={self.mode!r}, "
            f"tokens={list(self.tokens.shape)}, "
            f"beliefs={list(self.beliefs.shape)}, held_out_rows={int(self.test_mask.sum())}, "
            f"weighted={self.weights is not None}, bos={self.bos}, acts={{{acts}}})"
        )

    @property
    def hooks(self) -> list[str]:
        return list(self.acts)

    def with_acts(
        self, acts: dict[str, Tensor], *, dedupe: bool, fingerprint: str | None
    ) -> ProbeData:
        """The same sequences, beliefs, weights and split with other activations (a control)."""
        return ProbeData(
            tokens=self.tokens,
            beliefs=self.beliefs,
            acts=acts,
            weights=self.weights,
            test_mask=self.test_mask,
            hmm=self.hmm,
            n_ctx=self.n_ctx,
            mode=self.mode,
            seed=self.seed,
            test_fraction=self.test_fraction,
            bos=self.bos,
            dedupe=dedupe,
            model_fingerprint=fingerprint,
            weighting=self.weighting,
        )

    def select_hooks(self, hooks: Sequence[str]) -> ProbeData:
        """The same data with only ``hooks``' activations, sharing the prefix index."""
        missing = [h for h in hooks if h not in self.acts]
        if missing:
            raise BeliefLensError(f"hooks {missing} are not in this data; it has {self.hooks}")
        a = self.acts
        acts = a.select(hooks) if isinstance(a, PrefixActs) else {h: a[h] for h in hooks}
        out = self.with_acts(acts, dedupe=self.dedupe, fingerprint=self.model_fingerprint)
        if "prefixes" in self._cache:
            out._cache["prefixes"] = self._cache["prefixes"]
        return out

    def prefix_index(self) -> list[tuple[Tensor, Tensor]]:
        """Per position: ``(ids, reps)``, prefix ids ``[N]`` (one per sequence without dedupe)
        and one sequence index per id (``prefixes.prefix_reps``).

        A causal model's activation at ``t`` depends only on that prefix, so each distinct
        prefix's activation enters the moments once, weighted by its number of sequences
        (6.7x fewer rows for all Mess3 sequences of length 10).
        """
        if "prefixes" not in self._cache:
            self._cache["prefixes"] = prefix_reps(self.tokens, self.dedupe)
        return self._cache["prefixes"]

    def _rows(self, hook: str, t: int, u: Tensor) -> Tensor:
        """The activations at ``hook``, position ``t``, of prefix ids ``u``."""
        if isinstance(self.acts, PrefixActs):
            return self.acts.rows[hook][t][u]
        return self.acts[hook][self.prefix_index()[t][1][u], t]

    def prefix_counts(self) -> dict[str, int]:
        """Distinct (position, prefix) inputs on each side of the split: ``train``, ``test``."""
        if "counts" not in self._cache:
            per_t = prefix_counts(self.tokens, self.test_mask)
            self._cache["counts"] = {
                "train": sum(a for a, _ in per_t),
                "test": sum(b for _, b in per_t),
            }
        return self._cache["counts"]

    def _grouped(
        self, t: int, seqs: Tensor, Y: Tensor, w: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The rows ``seqs`` at position ``t`` grouped by prefix: per distinct prefix, the
        summed weight ``[m]`` and summed weighted targets ``[m, S]``, and the ``present`` ids
        (prefixes with rows on this side)."""
        ids, reps = self.prefix_index()[t]
        f64 = torch.float64
        w = torch.ones(len(seqs), dtype=f64) if w is None else w
        count = torch.zeros(len(reps), dtype=f64).index_add_(0, ids[seqs], w)
        wy = torch.zeros(len(reps), Y.shape[-1], dtype=f64).index_add_(0, ids[seqs], Y * w[:, None])
        return count, wy, torch.nonzero(count > 0).flatten()

    def _weights_of(self, seqs: Tensor, t: int) -> Tensor | None:
        """The weights of rows ``(seqs, t)`` under ``weighting`` (None: all ones)."""
        w = None if self.weights is None else self.weights[seqs].to(torch.float64)
        if self.weighting == "rows":
            return w
        ids, reps = self.prefix_index()[t]
        every = torch.ones(len(ids), dtype=torch.float64) if self.weights is None else self.weights
        total = torch.zeros(len(reps), dtype=torch.float64).index_add_(0, ids, every.double())
        mine = total[ids[seqs]]
        return (1.0 if w is None else w) / mine

    def _shift_x(self) -> Tensor:
        if "shift_x" not in self._cache:
            a = self.acts
            means = [
                a.mean(h)
                if isinstance(a, PrefixActs)
                else a[h].reshape(-1, a[h].shape[-1]).mean(0, dtype=torch.float64)
                for h in a
            ]
            self._cache["shift_x"] = torch.cat([m.to("cpu", torch.float64) for m in means])
        return self._cache["shift_x"]

    def _check_groups(self, targets: Tensor, labels: Tensor, n_groups: int) -> None:
        if tuple(targets.shape[:2]) != tuple(self.tokens.shape):
            raise BeliefLensError(
                f"targets must have shape [N, L, S] = [{self.tokens.shape[0]}, "
                f"{self.tokens.shape[1]}, S], got {tuple(targets.shape)}"
            )
        if tuple(labels.shape) != tuple(self.tokens.shape) or labels.dtype.is_floating_point:
            raise BeliefLensError(
                f"labels must be integer group ids of shape [N, L] = "
                f"{list(self.tokens.shape)}, got {labels.dtype} {tuple(labels.shape)}"
            )
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < n_groups:
            raise BeliefLensError(f"labels must lie in [0, {n_groups}), got {labels.unique()}")

    def distinct_rows(
        self, targets: Float[Tensor, "N L S"], labels: Int[Tensor, "N L"], n_groups: int
    ) -> list[tuple[Tensor, Tensor, Tensor, Tensor]] | None:
        """The distinct (position, prefix) rows of each group of rows (``labels``, by prefix), or
        None when they hold more than ``SVD_MAX_ELEMENTS`` activation entries.

        Per group: activations of the concatenated hooks ``[m, D]`` (float64), summed row
        weights ``[m]``, weighted-mean targets ``[m, S]``, and the weighted squared deviation of
        the targets from those means ``[S]`` (zero for beliefs, a function of the prefix).
        """
        self._check_groups(targets, labels, n_groups)
        f64 = torch.float64
        D = sum(acts_dim(self.acts, h) for h in self.acts)
        if sum(len(reps) for _, reps in self.prefix_index()) * D > SVD_MAX_ELEMENTS:
            return None
        S = targets.shape[-1]
        out = []
        for g in range(n_groups):
            xs, cs, ys = [], [], []
            within = torch.zeros(S, dtype=f64)
            for t, (ids, _) in enumerate(self.prefix_index()):
                seqs = torch.nonzero(labels[:, t] == g).flatten()
                w = self._weights_of(seqs, t)
                Y = targets[seqs, t].to(f64)
                count, wy, present = self._grouped(t, seqs, Y, w)
                mean = wy / count.clamp_min(torch.finfo(f64).tiny)[:, None]
                dev = (Y - mean[ids[seqs]]) ** 2
                within += (dev if w is None else w[:, None] * dev).sum(0)
                xs.append(torch.cat([self._rows(h, t, present) for h in self.acts], -1).to(f64))
                cs.append(count[present])
                ys.append(mean[present])
            out.append((torch.cat(xs), torch.cat(cs), torch.cat(ys), within))
        return out

    def memo(self, key: str) -> dict:
        """A dict kept with this data for values derived from it (the factorisations its probe
        tables share); it goes with the data."""
        return self._cache.setdefault("memo-" + key, {})

    def moments(
        self,
        targets: Float[Tensor, "N L S"],
        labels: Int[Tensor, "N L"],
        n_groups: int,
        *,
        concat: bool,
    ) -> list[Moments]:
        """Moments of ``[all hooks concatenated, targets]`` for each group of rows: group ``g``
        holds the rows with ``labels == g`` (folds, or the two sides of a split).

        The activation block (the expensive part) is computed once per grouping and cached: the
        full Gram of the concatenation when ``concat`` (needed for a concat probe), else its
        diagonal blocks.
        """
        self._check_groups(targets, labels, n_groups)
        f64 = torch.float64
        hooks = self.hooks
        bounds = np.cumsum([0, *(acts_dim(self.acts, h) for h in hooks)]).tolist()
        D, S = bounds[-1], targets.shape[-1]
        shift_x = self._shift_x()
        shift_y = targets.reshape(-1, S).mean(0).to(f64)
        key = "xx-" + hashlib.sha256(labels.cpu().numpy().tobytes()).hexdigest()[:16]
        cached = self._cache.get(key)
        reuse = cached is not None and (cached[0] or not concat)
        gram = "none" if reuse else ("full" if concat else "diag")
        out = []
        for g in range(n_groups):
            mom = Moments.zeros(D, S, shift=torch.cat([shift_x, shift_y]))
            for t in range(len(self.prefix_index())):
                seqs = torch.nonzero(labels[:, t] == g).flatten()
                w_seq = self._weights_of(seqs, t)
                Y = targets[seqs, t].to(f64) - shift_y  # [n, S]
                mom.add_targets(Y, w_seq)
                count, wy_sum, present = self._grouped(t, seqs, Y, w_seq)
                for rows in row_chunks(len(present), D):
                    u = present[rows]
                    X = torch.empty(len(u), D, dtype=f64)
                    for h, (lo, hi) in zip(hooks, pairwise(bounds), strict=True):
                        X[:, lo:hi] = self._rows(h, t, u)
                    X -= shift_x
                    mom.add_cross(X, wy_sum[u])
                    mom.add_features(X, count[u], bounds, gram)
            if reuse:
                mom.M[:D, :D] = cached[1][g]
            out.append(mom.symmetrise())
        if not reuse:
            self._cache[key] = (concat, [m.M[:D, :D].clone() for m in out])
        return out

    def effective_n(self, labels: Int[Tensor, "N L"]) -> float:
        """Kish's effective number of distinct inputs among the rows with ``labels >= 0``: each
        distinct (position, prefix) weighted by the summed weight of its rows. Equal prefixes
        give one activation, so they count once, however many sequences share them."""
        counts = []
        for t in range(self.tokens.shape[1]):
            seqs = torch.nonzero(labels[:, t] >= 0).flatten()
            w = self._weights_of(seqs, t)
            count, _, present = self._grouped(t, seqs, torch.zeros(len(seqs), 1), w)
            counts.append(count[present])
        return effective_sample_size(torch.cat(counts)) if counts else 0.0


def _check_collect_args(
    mode: Any, test_fraction: Any, n_sequences: Any, tokens: Any, bos: Any, batch_size: Any
) -> None:
    if mode not in ("paper", "weighted", "sampled"):
        raise BeliefLensError(f"mode must be 'paper', 'weighted' or 'sampled', got {mode!r}")
    if isinstance(test_fraction, bool) or not 0 <= test_fraction < 1:
        raise BeliefLensError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    if n_sequences is not None and (mode != "sampled" or tokens is not None):
        raise BeliefLensError(
            f"n_sequences only applies to mode='sampled' without tokens, got mode={mode!r}"
        )
    if not isinstance(bos, bool):
        raise BeliefLensError(f"bos must be True or False, got {bos!r}")
    if batch_size < 1:
        raise BeliefLensError(f"batch_size must be >= 1, got {batch_size}")


def _sequences(
    hmm: HMM,
    length: int,
    mode: Mode,
    seed: int,
    n_sequences: int | None,
    tokens: Tensor | None,
    bos: bool,
) -> tuple[Int[Tensor, "N L"], Float[Tensor, "N L S"], Float[Tensor, " N"] | None]:
    """The sequences a mode asks for, their beliefs and (``"weighted"``) their probabilities."""
    if tokens is not None:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != length:
            raise BeliefLensError(
                f"tokens must have shape [N, {length}] (n_ctx={length + int(bos)}, bos={bos}), "
                f"got {tuple(tokens.shape)}"
            )
        tokens = hmm.check_tokens(tokens).long()
        weights = log_probs(hmm, tokens)[:, -1].exp() if mode == "weighted" else None
        return tokens, belief_states(hmm, tokens), weights
    if mode == "sampled":
        n = DEFAULT_SAMPLED if n_sequences is None else int(n_sequences)
        if n < 2:
            raise BeliefLensError(f"n_sequences must be >= 2, got {n}")
        tokens = sample_sequences(hmm, n, length, seed)
        return tokens, belief_states(hmm, tokens), None
    seqs = enumerate_sequences(hmm, length)
    return seqs.tokens, seqs.beliefs, seqs.probs if mode == "weighted" else None


def collect_probe_data(
    model: Any,
    hmm: HMM,
    n_ctx: int,
    hooks: Any = None,
    *,
    mode: Mode = "paper",
    test_fraction: float = 0.2,
    seed: int = 0,
    n_sequences: int | None = None,
    bos: bool = False,
    tokens: Tensor | None = None,
    batch_size: int = 4096,
    weighting: Weighting = "rows",
) -> ProbeData:
    """Run the model and the belief filter once: activations, beliefs, weights and the split.

    Parameters
    ----------
    model : a TransformerLens model (``HookedTransformer`` or ``TransformerBridge``), eval mode.
    hmm : the process generating the data.
    n_ctx : positions the model reads: ``n_ctx`` process tokens, or BOS and ``n_ctx - 1``.
    hooks : hook names or ``(name, layer)`` shorthands; None means every residual-stream hook.
    mode : ``"paper"``: every length-``n_ctx`` sequence of nonzero probability, all positions,
        unweighted. ``"weighted"``: the same sequences weighted by their probability.
        ``"sampled"``: ``n_sequences`` sampled sequences (default 20,000), unweighted.
    test_fraction : fraction of the distinct prefixes at each length held out
        (``split_prefixes``); 0 for none.
    n_sequences : only for ``mode="sampled"``.
    bos : prepend a BOS token of id ``hmm.n_symbols`` (as ``belief_lens.training`` does); the
        paper's setup has none. The BOS position is left out of the probe data.
    tokens : ``[N, length]`` process sequences to use instead (``length`` is ``n_ctx``, or
        ``n_ctx - 1`` with BOS); unweighted unless ``mode="weighted"``.
    weighting : ``"rows"`` (each row by its sequence's weight) or ``"prefixes"`` (each distinct
        (position, prefix) equally), for fits and scores alike; see ``Weighting``.
    """
    _check_collect_args(mode, test_fraction, n_sequences, tokens, bos, batch_size)
    if weighting not in get_args(Weighting):
        raise BeliefLensError(f"weighting must be one of {get_args(Weighting)}, got {weighting!r}")
    length = int(n_ctx) - (1 if bos else 0)
    if length < 1:
        raise BeliefLensError(f"n_ctx={n_ctx} leaves no process token (bos={bos})")
    names = resolve_hooks(model, hooks)
    tokens, beliefs, weights = _sequences(hmm, length, mode, seed, n_sequences, tokens, bos)
    test_mask = split_prefixes(tokens, test_fraction, seed)
    dedupe = is_causal(model)
    prefixes = prefix_reps(tokens, dedupe)
    rows = sum(len(reps) for _, reps in prefixes)
    check_acts_memory(rows, int(model.cfg.d_model), len(names))
    bos_id = hmm.n_symbols if bos else None
    acts = model_acts(model, tokens, names, bos_id, batch_size, prefixes if dedupe else None)
    data = ProbeData(
        tokens=tokens,
        beliefs=beliefs,
        acts=acts,
        weights=weights,
        test_mask=test_mask,
        hmm=hmm,
        n_ctx=n_ctx,
        mode=mode,
        seed=seed,
        test_fraction=test_fraction,
        bos=bos,
        dedupe=dedupe,
        model_fingerprint=model_fingerprint(model),
        weighting=weighting,
    )
    data._cache["prefixes"] = prefixes
    return data
