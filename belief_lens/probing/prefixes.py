"""Prefixes of the probe sequences, and activations stored once per distinct prefix.

A causal model's activation at position ``t`` is a function of ``tokens[:, :t+1]`` alone, so
every row ``(n, t)`` sharing a prefix holds the same activation. :class:`PrefixActs` keeps one
row per distinct (position, prefix): for every Mess3 sequence of length 10, 88,572 rows instead
of 590,490 per hook (1.5 GB of float32 over the paper model's ten hooks, against 0.23 GB).
The fits already read one row per prefix, weighted by its count (``ProbeData.moments``), so
they read exactly the rows they did; callers that index ``data.acts[hook]`` get the per-row
``[N, L, d]`` view, built on demand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from belief_lens.activations import final_logits, logits_match_forward
from belief_lens.beliefs import check_memory
from belief_lens.errors import BeliefLensError

__all__ = [
    "PrefixActs",
    "acts_at",
    "acts_dim",
    "check_acts_memory",
    "collect_prefix_acts",
    "distinct_prefix_bound",
    "prefix_counts",
    "prefix_groups",
    "prefix_ids",
    "prefix_logits",
    "prefix_reps",
]

logger = logging.getLogger(__name__)

#: ``prefix_logits`` gives up where the per-row logits would exceed this many bytes.
MAX_LOGITS_BYTES = 1 << 28


def prefix_ids(tokens: Int[Tensor, "N L"]) -> list[Int[Tensor, " N"]]:
    """Per position ``t``, ids ``[N]`` numbering the distinct prefixes ``tokens[:, :t+1]``
    (0..n_distinct-1, in lexicographic order of the prefixes: deterministic)."""
    N, L = tokens.shape
    out = []
    ids = torch.zeros(N, dtype=torch.long)
    V = int(tokens.max()) + 1 if tokens.numel() else 1
    for t in range(L):
        _, ids = torch.unique(ids * V + tokens[:, t].long(), return_inverse=True)
        out.append(ids)
    return out


def prefix_counts(
    tokens: Int[Tensor, "N L"], test_mask: Bool[Tensor, "N L"]
) -> list[tuple[int, int]]:
    """Per position ``t``: the distinct prefixes ``tokens[:, :t+1]`` on the training and on the
    held-out side of ``test_mask`` (the inputs a probe sees, not the rows)."""
    out = []
    for t, ids in enumerate(prefix_ids(tokens)):
        m = test_mask[:, t]
        out.append((len(torch.unique(ids[~m])), len(torch.unique(ids[m]))))
    return out


def prefix_groups(tokens: Int[Tensor, "N L"]) -> Int[Tensor, "N L"]:
    """A group id per row ``(n, t)``, equal exactly when two rows share position and prefix
    ``tokens[:, :t+1]``: the ``groups`` for scikit-learn's ``GroupKFold`` on rows flattened as
    ``[N * L]``. Grouping by sequence instead leaks (equal prefixes in different sequences land
    in different folds)."""
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2:
        raise BeliefLensError(f"tokens must have shape [N, L], got {tuple(tokens.shape)}")
    out, offset = torch.empty(tokens.shape, dtype=torch.long), 0
    for t, ids in enumerate(prefix_ids(tokens.cpu())):
        out[:, t] = ids + offset
        offset += int(ids.max()) + 1
    return out


def prefix_reps(tokens: Int[Tensor, "N L"], dedupe: bool) -> list[tuple[Tensor, Tensor]]:
    """Per position: ``(ids, reps)``, prefix ids ``[N]`` (one per sequence without ``dedupe``)
    and one representative sequence index per id, whose activation stands for the prefix."""
    N = tokens.shape[0]
    out = []
    for ids in prefix_ids(tokens):
        if not dedupe:
            ids = torch.arange(N)
        n_u = int(ids.max()) + 1
        reps = torch.empty(n_u, dtype=torch.long).scatter_(0, ids, torch.arange(N))
        out.append((ids, reps))
    return out


class PrefixActs(Mapping):
    """Activations by hook, one row per distinct (position, prefix): ``rows[hook][t]`` is
    ``[n_prefixes_t, d]``, row ``i`` the activation of prefix id ``i`` (``prefix_ids``).

    As a mapping it is the per-row view: ``acts[hook]`` is ``[N, L, d]``, built on demand (one
    hook at a time); ``hook in acts``, ``len`` and iteration build nothing.
    """

    def __init__(self, rows: dict[str, list[Tensor]], ids: Sequence[Tensor]) -> None:
        self.rows, self.ids = rows, list(ids)
        self._index: Tensor | None = None  # per (n, t): its row in the stacked rows
        for h, per_t in rows.items():
            if len(per_t) != len(self.ids):
                raise BeliefLensError(
                    f"rows[{h!r}] has {len(per_t)} positions, expected {len(self.ids)}"
                )

    def __getitem__(self, hook: str) -> Float[Tensor, "N L d"]:
        per_t = self.rows[hook]
        return torch.stack([r[i] for r, i in zip(per_t, self.ids, strict=True)], 1)

    def __contains__(self, hook: object) -> bool:
        return hook in self.rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def shape(self, hook: str) -> tuple[int, int, int]:
        """The per-row view's shape ``(N, L, d)``, without building it."""
        per_t = self.rows[hook]
        return (len(self.ids[0]) if self.ids else 0, len(per_t), per_t[0].shape[-1])

    def mean(self, hook: str) -> Float[Tensor, " d"]:
        """The per-row view's mean over its ``N * L`` rows (each prefix's row counted once per
        sequence that holds it), in float64, without building the view."""
        total = torch.zeros(self.shape(hook)[-1], dtype=torch.float64)
        for r, ids in zip(self.rows[hook], self.ids, strict=True):
            total += torch.bincount(ids, minlength=len(r)).to(torch.float64) @ r.cpu().double()
        return total / (len(self.ids[0]) * len(self.ids))

    def select(self, hooks: Sequence[str]) -> PrefixActs:
        """The same prefixes with only ``hooks``."""
        return PrefixActs({h: self.rows[h] for h in hooks}, self.ids)

    def at(self, hook: str, mask: Bool[Tensor, "N L"]) -> Float[Tensor, "m d"]:
        """``self[hook][mask]`` (rows in the same order) without building the whole view."""
        if self._index is None:  # the same for every hook: one row count per position
            offsets = torch.tensor([0, *(len(r) for r in self.rows[hook][:-1])]).cumsum(0)
            self._index = torch.stack(self.ids, 1) + offsets
        return torch.cat(self.rows[hook])[self._index[mask]]  # a copy of the rows: not kept


def acts_dim(acts: Mapping[str, Tensor], hook: str) -> int:
    """The width ``d`` of ``acts[hook]``, building no per-row view."""
    return acts.shape(hook)[-1] if isinstance(acts, PrefixActs) else acts[hook].shape[-1]


def acts_at(acts: Mapping[str, Tensor], hook: str, mask: Bool[Tensor, "N L"]) -> Tensor:
    """``acts[hook][mask]``, building no per-row view of a :class:`PrefixActs`."""
    return acts.at(hook, mask) if isinstance(acts, PrefixActs) else acts[hook][mask]


def collect_prefix_acts(
    forward: Callable[[Tensor], dict[str, Tensor]],
    tokens: Int[Tensor, "N L"],
    prefixes: Sequence[tuple[Tensor, Tensor]],
    batch_size: int,
) -> PrefixActs:
    """Run ``forward`` (tokens ``[n, L]`` to ``{hook: [n, L, d]}``) over ``tokens`` in batches of
    ``batch_size`` and keep, per position, the row of each prefix's representative sequence
    (``prefix_reps``): the rows ``ProbeData`` fits read, in the batches a whole-tensor pass
    would run, so the same values; only one batch of per-row activations is held at a time."""
    rows: dict[str, list[Tensor]] = {}
    for start in range(0, tokens.shape[0], batch_size):
        got = forward(tokens[start : start + batch_size])
        end = start + next(iter(got.values())).shape[0]
        for h, a in got.items():
            per_t = rows.setdefault(
                h, [a.new_empty(len(reps), a.shape[-1]) for _, reps in prefixes]
            )
            for t, (_, reps) in enumerate(prefixes):
                mine = torch.nonzero((reps >= start) & (reps < end)).flatten()
                per_t[t][mine] = a[reps[mine] - start, t]
    return PrefixActs(rows, [ids for ids, _ in prefixes])


def distinct_prefix_bound(n_sequences: int, length: int, n_symbols: int) -> int:
    """At most how many distinct (position, prefix) rows ``n_sequences`` sequences of ``length``
    hold: ``min(n_sequences, n_symbols ** (t + 1))`` at position ``t``."""
    rows, reach = 0, 1
    for _ in range(length):
        reach = min(reach * n_symbols, n_sequences)
        rows += reach
    return rows


def check_acts_memory(
    rows: int, d_model: int, n_hooks: int, copies: int = 1, max_bytes: int | None = None
) -> int:
    """Refuse, before any forward pass, holding ``rows`` float32 activation rows at ``n_hooks``
    hooks of width ``d_model`` for ``copies`` models at once (a probe run holds the untrained
    control's beside the model's) past the memory bound (default a quarter of the available
    memory); returns the estimate in bytes."""
    estimate = 4 * rows * d_model * n_hooks * copies
    check_memory(
        estimate,
        max_bytes,
        f"holding the activations of {rows} (position, prefix) rows at {n_hooks} hooks of width "
        f"{d_model}" + (f" for {copies} models" if copies > 1 else ""),
        "fewer sequences (--n-sequences), a shorter context (--n-ctx), or fewer hooks",
    )
    return estimate


@torch.no_grad()
def prefix_logits(
    model: Any, acts: PrefixActs, tokens: Int[Tensor, "N L"]
) -> Float[Tensor, "N L V"] | None:
    """The model's logits on ``tokens`` from the activations a probe pass kept: the final norm
    (where the model has one) and the unembedding applied once per distinct prefix to the last
    block's residual stream, copied to every row of the prefix. Checked against the model's own
    forward pass on the first sequences; None where that hook was not kept, the logits would
    take more than :data:`MAX_LOGITS_BYTES`, or the check fails (then run the model)."""
    hook = f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post"
    if hook not in acts or not hasattr(model, "unembed"):
        return None
    N, L, _ = acts.shape(hook)
    if N * L * int(model.cfg.d_vocab) * 4 > MAX_LOGITS_BYTES or tuple(tokens.shape) != (N, L):
        return None
    per_t = [final_logits(model, r[None])[0] for r in acts.rows[hook]]
    logits = torch.stack([p[i] for p, i in zip(per_t, acts.ids, strict=True)], 1)
    return logits if logits_match_forward(model, logits, tokens) else None
