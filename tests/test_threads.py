"""The scoped thread guard of the hot loops: one intra-op thread for small ops, restored after."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from belief_lens import threads
from belief_lens.beliefs import belief_states, enumerate_sequences, sample_sequences
from belief_lens.processes import mess3, post_quantum
from belief_lens.threads import (
    SMALL_MODEL_PARAMS,
    SMALL_OP_ELEMENTS,
    adaptive_threads_for_model,
    recheck,
    running_elsewhere,
    single_thread_below,
)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_guard_sets_one_thread_below_the_limit_and_restores(two_threads):
    with single_thread_below(1000):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with single_thread_below(SMALL_OP_ELEMENTS + 1):
        assert torch.get_num_threads() == 2  # large ops keep their threads
    with single_thread_below(10, device="meta"):
        assert torch.get_num_threads() == 2  # only CPU work is guarded
    with pytest.raises(RuntimeError), single_thread_below(10):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2  # restored on the way out of an error too


def test_hot_loops_run_at_one_thread_and_leave_the_setting(two_threads, monkeypatch):
    """A generalized HMM's sampler steps beliefs at one thread; sampling, enumeration and
    filtering (a compiled single-threaded kernel, no torch ops per step) leave the caller's
    setting as it was."""
    hmm = post_quantum()
    seen = []
    step = type(hmm).step

    def spy(self, eta, tokens):
        seen.append(torch.get_num_threads())
        return step(self, eta, tokens)

    monkeypatch.setattr(type(hmm), "step", spy)
    tokens = sample_sequences(hmm, 500, 8, seed=0)
    assert seen and set(seen) == {1}
    belief_states(hmm, tokens)
    assert torch.get_num_threads() == 2
    enumerate_sequences(mess3(), 5)
    assert torch.get_num_threads() == 2


def test_model_guard_is_sized_by_the_parameter_count(two_threads, run_queue):
    """A model of at most ``SMALL_MODEL_PARAMS`` parameters is analysed at one thread on a busy
    machine; a larger one (here: a limit below its size) keeps the caller's threads, as does a
    quiet machine; each restores the setting."""
    model = torch.nn.Linear(10, 10)  # 110 parameters
    run_queue[0] = 1
    with adaptive_threads_for_model(model):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with adaptive_threads_for_model(model, limit=109):
        assert torch.get_num_threads() == 2
    run_queue[0] = 0
    with adaptive_threads_for_model(model):
        assert torch.get_num_threads() == 2  # a quiet machine keeps its threads
    assert SMALL_MODEL_PARAMS >= 2_000_000  # both paper models (0.1M, 0.7M) and then some


def test_busy_is_other_runnable_work_against_the_free_cores(two_threads, monkeypatch):
    """Busy when the tasks runnable elsewhere now leave fewer free cores than torch's threads;
    the 1-minute load average decides only where /proc does not say."""
    import belief_lens.threads as threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(threads, "running_elsewhere", lambda: 1)
    assert threads.machine_busy()  # one other task and two threads on two cores
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # lagging: ignored
    monkeypatch.setattr(threads, "running_elsewhere", lambda: 0)
    assert not threads.machine_busy()
    monkeypatch.setattr(threads, "running_elsewhere", lambda: None)  # no /proc
    assert threads.machine_busy()
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 9.0, 9.0))
    assert not threads.machine_busy()

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert not threads.machine_busy()


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="procs_running is Linux's")
def test_running_elsewhere_counts_another_runnable_process():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        counted = running_elsewhere(samples=9)
        assert counted is not None and counted >= 1
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def run_queue(monkeypatch):
    """A scripted run queue: ``run_queue[0]`` tasks runnable elsewhere at every read, on two
    cores, each read counted as ``RECHECK_SPACING`` apart."""
    state = [0]
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "runnable_elsewhere_now", lambda: state[0])
    monkeypatch.setattr(threads, "RECHECK_SPACING", 0.0)
    return state


def test_adaptive_guard_gives_the_threads_back_when_the_other_work_ends(two_threads, run_queue):
    """A stage that starts beside other work runs at one thread, returns to two once the median
    of the recent reads says the cores are free (one stray read flips nothing), before the
    model's next forward pass and at each ``recheck``; the caller's setting is restored."""
    model = torch.nn.Linear(4, 4)
    run_queue[0] = 1  # one other task and our two threads on two cores
    with adaptive_threads_for_model(model) as guard:
        assert torch.get_num_threads() == 1
        run_queue[0] = 0
        recheck()  # one quiet read against a window of busy ones: still crowded
        assert torch.get_num_threads() == 1
        for _ in range(threads.RECHECK_WINDOW):
            model(torch.ones(1, 4))  # each forward pass re-decides first
        assert torch.get_num_threads() == 2
        run_queue[0] = 2
        for _ in range(threads.RECHECK_WINDOW):
            recheck()
        assert torch.get_num_threads() == 1
    assert guard.used == [1, 2, 1]
    assert torch.get_num_threads() == 2
    assert not model._forward_pre_hooks  # the hook goes with the guard
    recheck()  # outside a guard: nothing to re-decide
    assert torch.get_num_threads() == 2


def test_adaptive_guard_leaves_large_models_and_single_thread_callers_alone(two_threads, run_queue):
    run_queue[0] = 5
    with adaptive_threads_for_model(torch.nn.Linear(10, 10), limit=109) as guard:
        assert guard is None and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with adaptive_threads_for_model(torch.nn.Linear(2, 2)) as guard:
        assert guard is None and torch.get_num_threads() == 1
