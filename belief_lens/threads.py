"""Intra-op threads for loops of small torch ops: one thread below a size, restored after.

A loop of tiny ops (one ``[3, 8192]`` step of the belief filter, one sampling step) opens a
parallel region per op, and every region ends with its threads waiting for each other. On a
shared machine a peer thread is often descheduled, so each step waits a scheduler slice: two
processes each filtering 100k x 64 Mess3 sequences at torch's default 2 threads on 2 cores took
10.4 s and 11.2 s, against 0.33-0.46 s alone, and 0.48 s at one thread each. Such loops run at
one intra-op thread here (a scoped guard that restores the caller's setting, never a global
``set_num_threads``); the large ops where threads pay keep them.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import deque
from collections.abc import Iterator

import torch

__all__ = [
    "SMALL_MODEL_PARAMS",
    "SMALL_OP_ELEMENTS",
    "AdaptiveThreads",
    "adaptive_threads_for_model",
    "machine_busy",
    "recheck",
    "runnable_elsewhere_now",
    "running_elsewhere",
    "single_thread_below",
]

#: Ops below this many elements run on one intra-op thread inside the package's hot loops: far
#: above the sampler's and enumeration's per-step ops (tens of thousands), where
#: one thread is as fast quiet and many times faster beside another process.
SMALL_OP_ELEMENTS = 1 << 22

#: An analysis of a model with at most this many parameters runs on one intra-op thread when the
#: machine is busy (``machine_busy``): its forward passes are loops of small ops (the paper's
#: models have 0.1-0.7M parameters), and beside other processes every op at two threads waits
#: for a descheduled peer. Measured on 2 cores: the Mess3 paper probe run took 143 s at one
#: thread against 593 s at two (load 7), but 63 s against 43 s at load 1.5, so a quiet machine
#: keeps its threads.
SMALL_MODEL_PARAMS = 20_000_000


@contextlib.contextmanager
def single_thread_below(
    size: int, device: torch.device | str | None = None, limit: int | None = None
) -> Iterator[None]:
    """Run the enclosed CPU work on one intra-op thread when ``size`` (elements per op, or a
    matrix dimension for dense linear algebra) is at most ``limit`` (default
    ``SMALL_OP_ELEMENTS``); restore the setting after. GPU work and a caller already at one
    thread are left alone."""
    limit = SMALL_OP_ELEMENTS if limit is None else limit
    on_cpu = device is None or torch.device(device).type == "cpu"
    before = torch.get_num_threads()
    if not on_cpu or size > limit or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def runnable_elsewhere_now() -> int | None:
    """One read of how many tasks other than this process's own threads are runnable: Linux's
    ``procs_running`` (``/proc/stat``) less this process's running threads. None where ``/proc``
    does not say (not Linux)."""
    try:
        with open("/proc/stat") as f:
            running = next(int(line.split()[1]) for line in f if line.startswith("procs_running"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return max(0, running - _own_running_threads())


def running_elsewhere(samples: int = 5, interval: float = 0.01) -> int | None:
    """How many tasks other than this process's own threads are runnable now: the median over
    ``samples`` reads (``runnable_elsewhere_now``), ``interval`` seconds apart. None where
    ``/proc`` does not say (not Linux)."""
    counts = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        count = runnable_elsewhere_now()
        if count is None:
            return None
        counts.append(count)
    return int(statistics.median(counts))


def _own_running_threads() -> int:
    own = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                own += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):  # a thread that ended between the listing and the read
            continue
    return own


def machine_busy() -> bool:
    """Whether other work leaves fewer free cores than torch's intra-op threads: tasks runnable
    elsewhere now (``running_elsewhere``) plus those threads exceed the cores. Where ``/proc``
    does not say, the 1-minute load average at least the cores (False where that is
    unavailable too). Measured now rather than from the load average, which lags by a minute
    and counts this process's own past work."""
    others = running_elsewhere()
    if others is not None:
        return _crowded(others, torch.get_num_threads())
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


def _crowded(others: float, threads: int) -> bool:
    """Whether ``others`` runnable tasks and ``threads`` of ours exceed the cores."""
    return others + threads > (os.cpu_count() or 1)


#: Seconds between two reads of the run queue inside an adaptive guard, and how many recent
#: reads decide (their median): about half a second of history, so one stray read flips nothing.
RECHECK_SPACING = 0.1
RECHECK_WINDOW = 5

_ACTIVE: list[AdaptiveThreads] = []


class AdaptiveThreads:
    """A small model's CPU work at one intra-op thread while other work holds the cores, and at
    its ``threads`` once they are free, re-decided as the work goes on. Each :meth:`recheck`
    (before every forward pass of the guarded model, and from the package's other loops of
    work through :func:`recheck`) adds a read of the run queue at most every
    ``RECHECK_SPACING`` seconds; the median of the last ``RECHECK_WINDOW`` decides. So a stage
    that starts beside the report's figure export gets its second thread back when the export
    is done, rather than running to its end at one (the RRXOR patching stage: 76 ms per forward
    pass at two threads against 142 ms at one).

    ``used`` lists the thread counts the work ran at, in order.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.reads: deque[int] = deque(maxlen=RECHECK_WINDOW)
        self.last = -float("inf")
        self.used: list[int] = []

    def start(self) -> None:
        """The first decision, from a full window of reads 0.01 s apart (as ``running_elsewhere``
        takes them)."""
        for i in range(RECHECK_WINDOW):
            if i:
                time.sleep(0.01)
            self._read()
        self._decide()

    def recheck(self) -> None:
        """Read the run queue (if the last read is ``RECHECK_SPACING`` old) and re-decide."""
        if time.monotonic() - self.last >= RECHECK_SPACING:
            self._read()
            self._decide()

    def _read(self) -> None:
        self.last = time.monotonic()
        count = runnable_elsewhere_now()
        if count is not None:
            self.reads.append(count)

    def _decide(self) -> None:
        if self.reads:
            busy = _crowded(statistics.median(self.reads), self.threads)
        else:  # no /proc: the load average, as ``machine_busy``
            busy = machine_busy()
        want = 1 if busy else self.threads
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)
        if not self.used or self.used[-1] != want:
            self.used.append(want)


def recheck() -> None:
    """Let the innermost :func:`adaptive_threads_for_model` guard re-decide its threads (nothing
    outside one): called from the package's loops of work between their steps."""
    if _ACTIVE:
        _ACTIVE[-1].recheck()


@contextlib.contextmanager
def adaptive_threads_for_model(
    model: torch.nn.Module, limit: int | None = None
) -> Iterator[AdaptiveThreads | None]:
    """An :class:`AdaptiveThreads` guard for a CPU model of at most ``limit`` parameters
    (default ``SMALL_MODEL_PARAMS``), re-deciding before each of its forward passes and at each
    :func:`recheck`; the caller's setting is restored after. Yields None (and changes nothing)
    for a larger model, one on a GPU, or a caller already at one thread."""
    limit = SMALL_MODEL_PARAMS if limit is None else limit
    params = list(model.parameters())
    on_cpu = not params or params[0].device.type == "cpu"
    before = torch.get_num_threads()
    if not on_cpu or sum(p.numel() for p in params) > limit or before == 1:
        yield None
        return
    guard = AdaptiveThreads(before)
    handle = model.register_forward_pre_hook(lambda *_: guard.recheck())
    _ACTIVE.append(guard)
    try:
        guard.start()
        yield guard
    finally:
        handle.remove()
        _ACTIVE.remove(guard)
        torch.set_num_threads(before)
