"""Speed of AffineProbe against sklearn LinearRegression, and of ``belief-lens probe``.

Run: ``python bench/probes.py``; it prints the fit with default threads and with one thread.
Goals: fitting 590,490 x 64 activations (every Mess3 position) exactly (the QR solver) faster
than sklearn's ``LinearRegression`` with either setting, and beside it the normal equations
(``solver="moments"``, the default before the QR); ``belief-lens probe`` on the paper's RRXOR
checkpoint in at most 60 s on 2 cores.

The activations are the paper checkpoint's ``blocks.3.hook_resid_post`` where the checkpoint is
found, else random float32 of the same shape. Both fits get the same float32 array, in the same
process, best of 3.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from _timing import best_of
from sklearn.linear_model import LinearRegression

from belief_lens.beliefs import enumerate_sequences
from belief_lens.probes import AffineProbe
from belief_lens.processes import mess3

HOOK = "blocks.3.hook_resid_post"


def mess3_data() -> tuple[torch.Tensor, torch.Tensor, str, str | None]:
    """``acts [590490, 64]`` float32, ``beliefs [590490, 3]``, their source, the checkpoint."""
    seqs = enumerate_sequences(mess3(), 10)
    beliefs = seqs.beliefs.reshape(-1, 3)
    try:
        from belief_lens.activations import residual_stream
        from belief_lens.models import find_checkpoint, load_checkpoint

        path = find_checkpoint("mess3_paper")
        model = load_checkpoint(path)
        acts = residual_stream(model, seqs.tokens, [HOOK])[HOOK].reshape(-1, 64)
        return acts, beliefs, f"mess3_paper {HOOK}", str(path)
    except (FileNotFoundError, ImportError) as err:
        print(f"(checkpoint unavailable: {err}; using random float32 activations)")
        g = torch.Generator().manual_seed(0)
        return torch.randn(len(beliefs), 64, generator=g), beliefs, "random float32", None


def bench_fit() -> None:
    from threadpoolctl import threadpool_limits

    acts, beliefs, source, _ = mess3_data()
    X, Y = acts.numpy(), beliefs.numpy()
    print(f"fit on {X.shape[0]:,} x {X.shape[1]} activations ({source}) -> {Y.shape[1]} targets")
    default = torch.get_num_threads()
    for label, threads in (("default threads", None), ("one thread", 1)):
        if threads is None:
            limits = threadpool_limits(limits=None)
        else:
            limits = threadpool_limits(limits=threads)  # numpy/scipy BLAS and OpenMP pools
            torch.set_num_threads(threads)
        with limits:
            probe = AffineProbe()
            t_ours = best_of(lambda probe=probe: probe.fit(acts, beliefs))
            normal = AffineProbe(solver="moments")
            t_normal = best_of(lambda normal=normal: normal.fit(acts, beliefs))
            sk = LinearRegression()
            t_sk = best_of(lambda sk=sk: sk.fit(X, Y))
        torch.set_num_threads(default)
        diff = np.abs(np.asarray(probe.coef_) - sk.coef_).max() / np.abs(sk.coef_).max()
        print(f"  {label} (torch {threads or default}):")
        print(f"    AffineProbe.fit (QR, exact)          {t_ours:8.3f} s")
        print(f"    AffineProbe(solver='moments').fit    {t_normal:8.3f} s  (normal equations)")
        print(f"    sklearn LinearRegression             {t_sk:8.3f} s")
        print(f"    speed-up over sklearn                {t_sk / t_ours:8.1f}x   (goal > 1x)")
        print(f"    QR / normal equations                {t_ours / t_normal:8.2f}x")
        print(f"    max |coef difference| / max |coef|: {diff:.2e} (sklearn solves in float32)")
    print(f"  in-sample MSE {probe.metrics(acts, beliefs)['mse']:.6f}")


def bench_cli() -> None:
    exe = shutil.which("belief-lens")
    cmd = [exe] if exe else [sys.executable, "-m", "belief_lens.cli"]
    try:
        from belief_lens.models import find_checkpoint

        path = find_checkpoint("rrxor_paper")
    except FileNotFoundError as err:
        print(f"belief-lens probe: skipped ({err})")
        return
    try:
        import belief_lens.cli  # noqa: F401
    except ImportError as err:
        print(f"belief-lens probe: skipped, the CLI is not importable ({err})")
        return
    with tempfile.TemporaryDirectory() as out:
        args = [*cmd, "probe", "--checkpoint", str(path), "--process", "rrxor", "--out", out]
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"belief-lens probe: exit {proc.returncode} after {wall:.1f} s: {tail}")
        return
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"belief-lens probe --checkpoint rrxor_paper --process rrxor: {wall:.1f} s wall")
    print(f"  (goal <= 60 s on 2 cores; OMP_NUM_THREADS={threads})")


if __name__ == "__main__":
    bench_fit()
    bench_cli()
