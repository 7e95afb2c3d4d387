"""Probing across processes with ``torch.distributed``: shard the sequences, add the statistics.

A probe needs only sufficient statistics (row counts, sums, ``Z^T Z`` of ``z = [x, y]``), and
these add across disjoint sets of rows. So each rank harvests its own shard of the sequences on its
own device, the statistics are summed with ``all_reduce``, and every rank solves the same probe
from the same sums; activations never leave the device that made them. Works under any
``torch.distributed`` backend: ``gloo`` (CPU) and ``nccl`` (GPUs), launched by ``torchrun``.

Entry point: ``fit_position_probes(..., distributed=True)`` inside an initialised process group,
or this module's command line::

    torchrun --standalone --nproc-per-node 4 -m belief_lens.probing.distributed \\
        --model gpt2 --symbols " A" " B" " C" --process mess3 --n-sequences 20000 --out runs/gpt2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from belief_lens.errors import BeliefLensError

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
    u = centre - shift
    s_moved = s - w[..., None] * u
    M_moved = (
        M
        - s[..., :, None] * u[..., None, :]
        - u[..., :, None] * s[..., None, :]
        + w[..., None, None] * u[..., :, None] * u[..., None, :]
    )
    s_sum, M_sum = all_reduce_sum([s_moved, M_moved], group)
    return W, s_sum, M_sum, centre


def all_reduce_moment_list(moments: Sequence[Any], group: Any = None) -> list[Any]:
    """Sum each of several ``Moments`` (same shapes) over the ranks of ``group``, all in two
    collectives (``Moments.all_reduce`` takes four per object; a per-position table has
    thousands). Each rank may have used its own shifts. Returns new ``Moments``."""
    from belief_lens.probing.moments import Moments

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


# ------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m belief_lens.probing.distributed",
        description="Per-position belief probes of a model on HMM text, harvested by every rank "
        "of a torchrun job (each rank its shard of the sequences) and reduced with "
        "torch.distributed. Rank 0 writes table.json and probes.safetensors to --out.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a Hugging Face model name (e.g. gpt2), loaded on each rank")
    src.add_argument(
        "--random",
        metavar="N_LAYERS,D_MODEL",
        help="a randomly initialised GPT-2-architecture model of this size, built on each rank",
    )
    p.add_argument("--process", default="mess3", help="a process name (make_process)")
    ids = p.add_mutually_exclusive_group(required=True)
    ids.add_argument("--symbols", nargs="+", help="one single-token string per HMM symbol")
    ids.add_argument("--token-ids", type=int, nargs="+", help="one token id per HMM symbol")
    p.add_argument("--separator", default=None, help="a string written after every symbol")
    p.add_argument("--bos", action="store_true", help="prepend the tokenizer's BOS token")
    p.add_argument("--hooks", nargs="*", default=None, help="hook names (default: residual)")
    p.add_argument("--n-sequences", type=int, default=1000)
    p.add_argument("--length", type=int, default=None, help="symbols per sequence")
    p.add_argument("--window", type=int, default=1, help="positions per probe (0: all in one)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--backend", choices=["auto", "nccl", "gloo"], default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass")
    p.add_argument("--memory-limit-gib", type=float, default=2.0)
    p.add_argument("--out", required=True, help="output directory (written by rank 0)")
    return p


def _load_model(args: argparse.Namespace, device: torch.device) -> Any:
    from belief_lens.pretrained import gpt2_like, load_pretrained

    dtype = getattr(torch, args.dtype)
    if args.model:
        model = load_pretrained(args.model, device=device)
    else:
        try:
            n_layers, d_model = (int(v) for v in args.random.split(","))
        except ValueError:
            raise BeliefLensError(
                f"--random takes N_LAYERS,D_MODEL (e.g. 2,64), got {args.random!r}"
            ) from None
        model = gpt2_like(
            n_ctx=128, n_layers=n_layers, d_model=d_model, n_heads=2, seed=0, device=device
        )
    if dtype != torch.float32:
        model = model.to(dtype)
    model.eval()
    return model


def _save(table: Any, out: Path) -> None:
    from safetensors.torch import save_file

    from belief_lens.storage import atomic_write, atomic_write_text

    tensors = {}
    for (hook, start), probe in table.probes.items():
        for name in ("coef_", "intercept_", "x_mean_", "y_mean_", "encoding_"):
            tensors[f"{hook}/{start}/{name}"] = getattr(probe, name).detach().cpu().contiguous()
    atomic_write(out / "probes.safetensors", lambda tmp: save_file(tensors, tmp))

    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    rows = [{k: clean(v) for k, v in row.items()} for row in table.rows]
    meta = {
        k: v for k, v in table.meta.items() if isinstance(v, (str, int, float, list, type(None)))
    }
    atomic_write_text(out / "table.json", json.dumps({"rows": rows, "meta": meta}, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job on this rank (``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    import torch.distributed as dist

    from belief_lens.in_context import fit_position_probes
    from belief_lens.processes import make_process
    from belief_lens.token_map import TokenMap

    args = _parser().parse_args(argv)
    out = Path(args.out)
    if "RANK" not in os.environ:
        print("run me under torchrun (RANK is not set); see --help", file=sys.stderr)
        return 2
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)
    try:
        model = _load_model(args, device)
        hmm = make_process(args.process)
        if args.symbols:
            tmap = TokenMap.from_strings(
                model, args.symbols, separator=args.separator, bos=args.bos or None
            )
        else:
            if args.separator is not None or args.bos:
                raise BeliefLensError("--separator and --bos need --symbols (a tokenizer)")
            tmap = TokenMap(args.token_ids)
        table = fit_position_probes(
            model,
            hmm,
            tmap,
            args.hooks,
            n_sequences=args.n_sequences,
            length=args.length,
            window=args.window or None,
            test_fraction=args.test_fraction,
            seed=args.seed,
            batch_size=args.batch_size,
            memory_limit_bytes=int(args.memory_limit_gib * (1 << 30)),
            distributed=True,
        )
        coefs = [p.coef_ for p in table.probes.values()]
        check_same_on_all_ranks(coefs, "probe coefficients")
        if dist.get_rank() == 0:
            _save(table, out)
            rank, world = rank_and_world_size()
            print(f"{len(table.rows)} probes from {world} ranks ({backend}); wrote {out}")
        # Every rank waits for rank 0's write: a rank that tears gloo down while its peer still
        # holds the connection can abort at exit.
        dist.barrier()
    except BeliefLensError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
