"""The ``torchrun`` entry point: per-position probes harvested by every rank of a job.

Each rank builds or loads the model, harvests its shard of the sequences and the statistics are
summed with ``torch.distributed`` (:mod:`belief_lens.probing.distributed`); rank 0 writes
``table.json`` and ``probes.safetensors``::

    torchrun --standalone --nproc-per-node 4 -m belief_lens.probing.torchrun \\
        --model gpt2 --symbols " A" " B" " C" --process mess3 --n-sequences 20000 --out runs/gpt2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from belief_lens.errors import BeliefLensError
from belief_lens.pretrained import gpt2_like, load_pretrained
from belief_lens.probing.distributed import check_same_on_all_ranks, rank_and_world_size
from belief_lens.probing.positions import fit_position_probes
from belief_lens.processes import make_process
from belief_lens.storage import (
    atomic_write_text,
    exclusive_lock,
    refuse_existing,
    save_tensors,
)
from belief_lens.token_map import TokenMap

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m belief_lens.probing.torchrun",
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
    p.add_argument(
        "--folds", type=int, default=5, help="prefix folds to cross-validate over (0: one split)"
    )
    p.add_argument("--test-fraction", type=float, default=0.2, help="held out with --folds 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--backend", choices=["auto", "nccl", "gloo"], default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass")
    p.add_argument("--memory-limit-gib", type=float, default=2.0)
    p.add_argument("--out", required=True, help="output directory (written by rank 0)")
    return p


def _load_model(args: argparse.Namespace, device: torch.device) -> Any:
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
    tensors = {}
    for (hook, start), probe in table.probes.items():
        for name in ("coef_", "intercept_", "x_mean_", "y_mean_", "encoding_"):
            tensors[f"{hook}/{start}/{name}"] = getattr(probe, name).detach().cpu().contiguous()
    save_tensors(out / "probes.safetensors", tensors, {"format": "pt"})

    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    rows = [{k: clean(v) for k, v in row.items()} for row in table.rows]
    meta = {
        k: v for k, v in table.meta.items() if isinstance(v, (str, int, float, list, type(None)))
    }
    text = json.dumps({"rows": rows, "meta": meta}, indent=1)
    atomic_write_text(out / "table.json", text, overwrite=False)


def _claim(out: Path, stack: contextlib.ExitStack) -> None:
    """On rank 0, refuse an ``--out`` that holds this job's files or that another job is
    writing (its lock is held to the end); every rank learns the refusal at once."""
    import torch.distributed as dist

    refusal = None
    if dist.get_rank() == 0:
        try:
            for name in ("probes.safetensors", "table.json"):
                refuse_existing(out / name, overwrite=False)
            stack.enter_context(exclusive_lock(out.parent / f".{out.name}.lock", f"--out {out}"))
        except BeliefLensError as err:
            refusal = str(err)
    box = [refusal]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise BeliefLensError(box[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job on this rank (``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    import torch.distributed as dist

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
    stack = contextlib.ExitStack()
    try:
        _claim(out, stack)
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
            n_folds=args.folds or None,
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
        stack.close()
        dist.destroy_process_group()
    return 0


def _exit_now(code: int) -> NoReturn:
    """Leave a rank after :func:`main` without the interpreter's teardown. Its files are already
    fsynced and its process group destroyed; what teardown would add is the destruction of
    torch.distributed's C++ state at exit, which under load occasionally aborts a finished gloo
    rank ("terminate called without an active exception", SIGABRT), failing a job whose results
    are written (pytorch/pytorch#190489)."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
