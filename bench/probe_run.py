"""``belief-lens probe`` on the paper's two checkpoints: wall time and peak memory of the run.

Run: ``python bench/probe_run.py`` (or ``make bench``). Each checkpoint is analysed with the
default analysis (probes, controls, steering, patching, figure export) in a fresh child process;
its wall time and peak resident memory (``os.wait4``'s ``ru_maxrss``: the child's own, not the
export's browser) are printed beside the load average. Goal (issue 23): at most 30 s and 2 GB on
either checkpoint. ``--baseline`` runs the same command with the small-model thread guard off
(it applies when the load average is at least the number of cores;
``threads.SMALL_MODEL_PARAMS = -1``: the threads torch picks), the comparison it is measured
against, in the same session. The checkpoints are read from ``../shared/checkpoints/``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parents[1].parent / "shared" / "checkpoints"
RUNS = {"mess3": "mess3_paper.safetensors", "rrxor": "rrxor_paper.safetensors"}
GOAL_SECONDS, GOAL_GB = 30.0, 2.0


def worker(process: str, out: str) -> None:
    """The ``probe`` command as a user runs it (``-q``: no progress bars in the timing)."""
    if os.environ.get("BELIEF_LENS_BENCH_NO_GUARD"):
        import belief_lens.threads as threads

        threads.SMALL_MODEL_PARAMS = -1  # every model keeps torch's threads
    from belief_lens.cli import main

    checkpoint = str(CHECKPOINTS / RUNS[process])
    sys.exit(main(["-q", "probe", "--checkpoint", checkpoint, "--process", process, "--out", out]))


def timed(process: str, baseline: bool) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one probe run in a fresh process."""
    env = dict(os.environ)
    if baseline:
        env["BELIEF_LENS_BENCH_NO_GUARD"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--worker", process, str(Path(tmp) / "run")]
        log = Path(tmp) / "log"
        with log.open("w") as sink:  # the run's log and progress bars, shown if it fails
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            tail = log.read_text()[-3000:]
            raise SystemExit(f"the probe run on {process} failed (exit {status}):\n{tail}")
    return seconds, usage.ru_maxrss / 1024**2  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", nargs=2, metavar=("PROCESS", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--baseline", action="store_true", help="without the small-model guard")
    p.add_argument("--processes", nargs="*", choices=list(RUNS), default=list(RUNS))
    args = p.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    missing = [RUNS[name] for name in args.processes if not (CHECKPOINTS / RUNS[name]).is_file()]
    if missing:
        print(f"skipped: {missing} not found in {CHECKPOINTS}")
        return
    label = "without the thread guard (baseline)" if args.baseline else "as shipped"
    print(f"{os.cpu_count()} cores, {label}; goal <= {GOAL_SECONDS:.0f} s, <= {GOAL_GB:.0f} GB")
    print(f"{'checkpoint':12s} {'wall':>8s} {'peak RSS':>9s} {'load before/after':>18s}")
    for name in args.processes:
        before = os.getloadavg()[0]
        seconds, gb = timed(name, args.baseline)
        after = os.getloadavg()[0]
        print(f"{name:12s} {seconds:7.1f}s {gb:7.2f}GB {before:8.2f} / {after:.2f}")


if __name__ == "__main__":
    main()
