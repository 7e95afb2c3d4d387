"""Scale: probe harvesting against a bare forward pass, and memory against the number of sequences.

Run: ``python bench/scale.py`` (``--help`` for the model size). Goals (issue 15): harvesting per-
position probes costs at most 10% over a bare forward pass of the same model on the same tokens,
on CPU and on CUDA (skipped, with the reason, without a GPU); peak memory flat in the number of
sequences.

Three timings per device on the same tokens, best of interleaved runs (the fixed cost of solving
the probes, once per hook and window, is reported apart):

- ``forward``: ``model(tokens)`` in batches, logits included: what a user runs anyway;
- ``hooked``: ``residual_stream`` to the device, the forward pass that harvesting does (it stops
  once the last hook fired, so it skips the unembedding);
- ``harvest``: ``fit_position_probes``'s pass over the sequences (``meta["seconds"]["pass"]``:
  activations, beliefs, float64 training and held-out statistics per hook and window), for all
  residual hooks and for one hook.

Memory: each number of sequences in a fresh process (peak RSS on CPU; peak allocated on CUDA, in
this process after a reset). Figures are ratios against baselines run in the same process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from belief_lens.activations import residual_hooks, residual_stream
from belief_lens.beliefs import sample_sequences
from belief_lens.in_context import fit_position_probes
from belief_lens.pretrained import gpt2_like
from belief_lens.processes import mess3
from belief_lens.token_map import TokenMap

IDS, EOT = [317, 347, 327], 50256  # GPT-2's " A", " B", " C" and <|endoftext|>


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--length", type=int, default=64, help="symbols per sequence (+ BOS)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sequences", type=int, default=128)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--memory-sequences", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build(args: argparse.Namespace, device: str):
    model = gpt2_like(
        n_ctx=args.length + 1,
        n_layers=args.layers,
        d_model=args.d_model,
        n_heads=args.heads,
        seed=0,
        device=device,
    )
    return model, TokenMap(IDS, bos=EOT)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def speed(args: argparse.Namespace, device: str) -> None:
    model, tm = build(args, device)
    hmm = mess3()
    all_hooks = residual_hooks(model)
    last = f"blocks.{args.layers - 1}.hook_resid_post"
    n = args.sequences
    symbols = sample_sequences(hmm, n, args.length, 0)
    tokens = tm.encode(symbols)
    n_tokens = tokens.numel()
    B = args.batch_size

    def forward() -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for lo in range(0, n, B):
                model(tokens[lo : lo + B].to(device))
        sync(device)
        return time.perf_counter() - t0

    def hooked(hooks: list[str]) -> float:
        sync(device)
        t0 = time.perf_counter()
        residual_stream(model, tokens, hooks, batch_size=B, device=device)
        sync(device)
        return time.perf_counter() - t0

    def harvest(hooks: list[str]) -> tuple[float, float]:
        """The pass over the sequences and the solves, in seconds."""
        table = fit_position_probes(
            model, hmm, tm, hooks, symbols=symbols, window=args.window, batch_size=B
        )
        return table.meta["seconds"]["pass"], table.meta["seconds"]["solve"]

    params = sum(p.numel() for p in model.parameters())
    print(
        f"\n[{device}] gpt2_like: {args.layers} layers, d_model={args.d_model}, "
        f"{params / 1e6:.1f}M params (vocab 50257); {n} sequences x {tokens.shape[1]} tokens, "
        f"batch {B}, window {args.window}; best of {args.repeats} interleaved runs; "
        f"threads={torch.get_num_threads()}"
    )
    configs = {"all": all_hooks, "one": [last]}
    best: dict[str, float] = {}
    solve: dict[str, float] = {}

    def keep(key: str, value: float) -> None:
        best[key] = min(best.get(key, float("inf")), value)

    for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
        keep("forward", forward())
        for name, hooks in configs.items():
            keep(f"hooked {name}", hooked(hooks))
            t, s = harvest(hooks)
            keep(f"harvest {name}", t)
            solve[name] = s
    fwd = best["forward"]
    print(f"  forward (logits)               {n_tokens / fwd:10.0f} tokens/s")
    for name, hooks in configs.items():
        label = f"all {len(hooks)} residual hooks" if name == "all" else hooks[0]
        hk = best[f"hooked {name}"]
        print(f"  {label}:")
        print(f"    hooked forward (no stats)    {n_tokens / hk:10.0f} tokens/s   {hk / fwd:5.2f}x")
        hv = best[f"harvest {name}"]
        print(
            f"    harvest pass                 {n_tokens / hv:10.0f} tokens/s   {hv / fwd:5.2f}x "
            f"forward, {hv / hk:5.2f}x hooked; then solving: {solve[name]:.2f} s"
        )


def memory_child(args: argparse.Namespace) -> None:
    """One harvest of ``--memory-child`` sequences; prints its peak memory as JSON."""
    device = args.device
    model, tm = build(args, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    table = fit_position_probes(
        model, mess3(), tm, None, n_sequences=args.memory_child, length=args.length,
        window=args.window, batch_size=args.batch_size, test_fraction=0.2,
    )  # fmt: skip
    out = {
        "n": args.memory_child,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "probes": len(table.probes),
    }
    if device.startswith("cuda"):
        out["cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def memory(args: argparse.Namespace, device: str) -> None:
    print(f"\n[{device}] peak memory of fit_position_probes (all residual hooks) against sequences")
    base = [sys.executable, __file__, "--layers", str(args.layers), "--d-model", str(args.d_model)]
    base += ["--heads", str(args.heads), "--length", str(args.length), "--window", str(args.window)]
    base += ["--batch-size", str(args.batch_size), "--device", device]
    first = None
    for n in args.memory_sequences:
        proc = subprocess.run(
            [*base, "--memory-child", str(n)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            print(f"  n={n}: failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        key = "cuda_mib" if "cuda_mib" in res else "rss_mib"
        first = first or res[key]
        print(
            f"  {n:6d} sequences: peak {'GPU' if key == 'cuda_mib' else 'RSS'} "
            f"{res[key]:8.0f} MiB   ({res[key] / first:4.2f}x the smallest; {res['probes']} probes)"
        )


def main() -> None:
    args = parse()
    if args.memory_child is not None:
        memory_child(args)
        return
    speed(args, "cpu")
    memory(args, "cpu")
    if torch.cuda.is_available():
        speed(args, "cuda")
        memory(args, "cuda")
    else:
        print("\n[cuda] skipped: torch.cuda.is_available() is False (no GPU in this process)")


if __name__ == "__main__":
    main()
