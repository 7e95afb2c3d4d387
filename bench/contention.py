"""Hot paths alone and as one of two concurrent processes, at default threads.

Run: ``python bench/contention.py`` (or ``make bench``). Each hot path runs in a fresh process
alone, then in two fresh processes started together; the slowdown is the concurrent time over
the alone time (best of 3 inside each process). Goal (issue "Fast on a shared machine"): every
hot path at most 2x slower beside a twin than alone, at torch's default threads. On a machine
with more cores than 2 the twin is not a contender; the figure that matters is on 2 cores.

``--baseline`` runs the same paths with the package's thread guard disabled (the threads torch
picks), the comparison the guard is measured against.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

PATHS = ("belief_states", "sample_sequences", "enumerate_sequences", "msp", "moments")


def work(name: str) -> None:
    """One hot path, sized as the issue measured it."""
    import torch

    from belief_lens.beliefs import belief_states, enumerate_sequences, sample_sequences
    from belief_lens.msp import mixed_state_presentation
    from belief_lens.probing.moments import Moments
    from belief_lens.processes import mess3

    hmm = mess3()
    if name == "belief_states":
        tokens = sample_sequences(hmm, 100_000, 64, seed=0)
        run = lambda: belief_states(hmm, tokens)  # noqa: E731
    elif name == "sample_sequences":
        run = lambda: sample_sequences(hmm, 100_000, 64, seed=1)  # noqa: E731
    elif name == "enumerate_sequences":
        run = lambda: enumerate_sequences(hmm, 11)  # noqa: E731
    elif name == "msp":
        run = lambda: mixed_state_presentation(hmm, max_depth=9)  # noqa: E731
    else:
        g = torch.Generator().manual_seed(0)
        X, Y = torch.randn(590_490, 64, generator=g), torch.rand(590_490, 3, generator=g)
        run = lambda: Moments.of(X, Y)  # noqa: E731
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    print(f"{best:.6f}")


def timed(name: str, copies: int, baseline: bool) -> list[float]:
    env = dict(os.environ)
    if baseline:
        env["BELIEF_LENS_BENCH_NO_GUARD"] = "1"
    cmd = [sys.executable, __file__, "--worker", name]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(copies)
    ]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--baseline", action="store_true", help="without the thread guard")
    p.add_argument("--paths", nargs="*", choices=PATHS, default=list(PATHS))
    args = p.parse_args()
    if args.worker:
        if os.environ.get("BELIEF_LENS_BENCH_NO_GUARD"):
            import belief_lens.threads as threads

            threads.SMALL_OP_ELEMENTS = -1  # every op keeps torch's threads
        work(args.worker)
        return
    import torch

    label = "without the guard (baseline)" if args.baseline else "with the package's guard"
    print(f"{os.cpu_count()} cores, torch {torch.get_num_threads()} threads, {label}")
    print(f"{'hot path':22s} {'alone':>9s} {'beside a twin':>14s} {'slowdown':>9s}")
    for name in args.paths:
        alone = timed(name, 1, args.baseline)[0]
        both = timed(name, 2, args.baseline)
        print(f"{name:22s} {alone:8.3f}s {max(both):13.3f}s {max(both) / alone:8.1f}x")


if __name__ == "__main__":
    main()
