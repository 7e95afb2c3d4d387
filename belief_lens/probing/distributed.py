"""Probing across processes with ``torch.distributed``: shard the sequences, add the statistics.

A probe needs only sufficient statistics (row counts, sums, ``Z^T Z`` of ``z = [x, y]``), and
these add across disjoint sets of rows. So each rank harvests its own shard of the sequences on its
own device, the statistics are summed with ``all_reduce``, and every rank solves the same probe
from the same sums; activations never leave the device that made them. Works under any
``torch.distributed`` backend: ``gloo`` (CPU) and ``nccl`` (GPUs), launched by ``torchrun``.

Entry point: ``fit_position_probes(..., distributed=True)`` inside an initialised process group,
or the command line of :mod:`belief_lens.probing.torchrun`::

    torchrun --standalone --nproc-per-node 4 -m belief_lens.probing.torchrun \\
        --model gpt2 --symbols " A" " B" " C" --process mess3 --n-sequences 20000 --out runs/gpt2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.errors import BeliefLensError
from belief_lens.probing.moments import Moments, recentre

__all__ = [
    "all_reduce_moment_list",
    "all_reduce_moments",
    "all_reduce_sum",
    "check_same_on_all_ranks",
    "rank_and_world_size",
    "require_process_group",
    "shard",
]


def require_process_group() -> None:
    """Raise unless ``torch.distributed`` is available with a default process group set up."""
    import torch.distributed as dist

    if not dist.is_available():
        raise BeliefLensError("distributed=True but this torch build has no torch.distributed")
    if not dist.is_initialized():
        raise BeliefLensError(
            "distributed=True but no process group is initialised; launch with torchrun and call "
            "torch.distributed.init_process_group('nccl' or 'gloo') first"
        )


def rank_and_world_size(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group`` (default: the world), ``(0, 1)`` without a group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def shard(indices: Tensor, group: Any = None) -> Tensor:
    """This rank's share of ``indices``: every ``world_size``-th one starting at ``rank``.

    Deterministic, disjoint, and covering: the shards of all ranks partition ``indices``, and
    their sizes differ by at most one.
    """
    rank, world = rank_and_world_size(group)
    return indices[rank::world]


def _comm_device(group: Any) -> torch.device:
    """Where a collective of ``group``'s backend wants its tensors (NCCL: this rank's GPU)."""
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: Sequence[Tensor], group: Any = None) -> list[Tensor]:
    """Sum each tensor over the ranks of ``group`` in one float64 ``all_reduce``.

    Returns new float64 tensors, each on its input's device; every rank gets the same bits. The
    tensors are packed into one buffer on the backend's device, so a call costs one collective
    and at most one copy each way. Without a process group the inputs come back as float64.
    """
    flat = [t.detach().to(torch.float64).reshape(-1) for t in tensors]
    rank, world = rank_and_world_size(group)
    if world == 1:
        return [f.reshape(t.shape) for f, t in zip(flat, tensors, strict=True)]
    import torch.distributed as dist

    device = _comm_device(group)
    buffer = torch.cat([f.to(device) for f in flat])
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
    out, start = [], 0
    for t in tensors:
        n = t.numel()
        out.append(buffer[start : start + n].reshape(t.shape).to(t.device))
        start += n
    return out


def all_reduce_moments(
    w: Float[Tensor, " *K"],
    s: Float[Tensor, "*K P"],
    M: Float[Tensor, "*K P P"],
    shift: Float[Tensor, "*K P"],
    group: Any = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sum shifted moments over ranks whose shifts differ; returns ``(w, s, M, centre)``.

    Each rank holds ``w = sum 1``, ``s = sum (z - shift)`` and ``M = sum (z - shift)(z -
    shift)^T`` about its own ``shift`` (leading dims ``K`` are independent sets, e.g. windows).
    The global mean becomes the common ``centre``; each rank moves its moments there exactly
    (``M - s u^T - u s^T + w u u^T`` with ``u = centre - shift``) and the moved moments are
    summed. A rank with no rows passes zeros. Everything stays on ``s``'s device.
    """
    f64 = torch.float64
    dev = s.device
    w, s, M, shift = (t.to(dev, f64) for t in (w, s, M, shift))
    W, total = all_reduce_sum([w, w[..., None] * shift + s], group)
    centre = torch.where(W[..., None] > 0, total / W.clamp_min(1e-300)[..., None], 0.0)
    s_moved, M_moved = recentre(w, s, M, centre - shift)
    s_sum, M_sum = all_reduce_sum([s_moved, M_moved], group)
    return W, s_sum, M_sum, centre


def all_reduce_moment_list(moments: Sequence[Any], group: Any = None) -> list[Any]:
    """Sum each of several ``Moments`` (same shapes) over the ranks of ``group``, all in two
    collectives (``Moments.all_reduce`` takes four per object; a per-position table has
    thousands). Each rank may have used its own shifts. Returns new ``Moments``."""
    if not moments:
        return []
    w = torch.stack([m.w for m in moments])
    s = torch.stack([m.s for m in moments])
    M = torch.stack([m.M for m in moments])
    shift = torch.stack([m.shift.to(s.device) for m in moments])
    W, S, MM, centre = all_reduce_moments(w, s, M, shift, group)
    D = moments[0].n_features
    return [Moments(W[k], S[k], MM[k], centre[k], D) for k in range(len(moments))]


def check_same_on_all_ranks(tensors: Sequence[Tensor], what: str, group: Any = None) -> None:
    """Raise unless every rank holds bit-identical ``tensors`` (compared by all-reduced min/max)."""
    rank, world = rank_and_world_size(group)
    if world == 1:
        return
    import torch.distributed as dist

    device = _comm_device(group)
    flat = torch.cat([t.detach().to(device, torch.float64).reshape(-1) for t in tensors])
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    differ = (lo != hi) & ~(torch.isnan(lo) & torch.isnan(hi))
    if bool(differ.any()):
        raise BeliefLensError(
            f"{what} differ between ranks at {int(differ.sum())} of {flat.numel()} entries; "
            "every rank must solve from the same reduced statistics on the same kind of device"
        )
