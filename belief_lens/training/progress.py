"""How a training run shows its progress: a bar on a terminal, log lines elsewhere.

A tqdm bar redrawn every few milliseconds is right on a terminal and wrong in a file: piped into
a log it writes a carriage-return frame per redraw (254 KB for one ``make demo``). So
``train(progress=True)`` draws a bar only when stderr is a terminal and otherwise writes one
line every tenth of the run or every 30 seconds, whichever comes first, with the step, the
training loss, the last evaluation's ratio to the optimal loss, the learning rate and the time
left. ``progress="bar"`` or ``"log"`` chooses either; ``False`` shows nothing.

:func:`quiet_unwatched_bars` does the same for TransformerLens's own bars (activation patching),
which this package does not draw: silent when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal

from belief_lens.errors import BeliefLensError

__all__ = ["Progress", "ProgressMode", "check_progress", "quiet_unwatched_bars"]

logger = logging.getLogger("belief_lens.training")

ProgressMode = Literal["bar", "log"]

#: A log line at least every this many seconds (and at each tenth of the run).
LOG_EVERY_SECONDS = 30.0


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def check_progress(progress: Any) -> ProgressMode | None:
    """The display ``progress`` asks for: ``True`` is a bar on a terminal and log lines
    elsewhere, ``"bar"`` or ``"log"`` that one, ``False`` none (``None``)."""
    if progress is True:
        return "bar" if _stderr_is_tty() else "log"
    if progress is False:
        return None
    if isinstance(progress, str) and progress in ("bar", "log"):
        return progress  # type: ignore[return-value]
    raise BeliefLensError(
        f"progress must be True, False, 'bar' or 'log', got {progress!r} "
        f"({type(progress).__name__})"
    )


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """One training run's progress display (see the module doc).

    ``steps`` is the step budget (None for a time budget alone: the bar then runs over percent
    of the budget); ``done`` the steps already done and ``start`` the progress reached (a
    resumed run), so the time left is estimated from this run's own pace; ``clock`` the run's
    clock.
    Call :meth:`update` after each step, :meth:`evaluated` after each evaluation, and
    :meth:`close` at the end.
    """

    def __init__(
        self,
        mode: ProgressMode,
        *,
        desc: str,
        steps: int | None,
        done: int,
        clock: Callable[[], float],
        start: float = 0.0,
        every_seconds: float = LOG_EVERY_SECONDS,
    ) -> None:
        self.mode, self.desc, self.steps, self.clock = mode, desc, steps, clock
        self.every_seconds = every_seconds
        self.t0 = self.last_line = clock()
        self.p0 = start  # the progress at the start (a resumed run's is above 0)
        self.next_tenth = (int(start * 10 + 1e-9) + 1) / 10
        self.eval_text = ""
        self.last_step = -1  # the step of the last log line
        self.bar: Any = None
        if mode == "bar":
            self.bar = self._bar(done)

    def _bar(self, done: int) -> Any:
        from tqdm.auto import tqdm  # only when a bar is wanted

        if self.steps is not None:
            bar = tqdm(total=self.steps, desc=self.desc, unit="step")
            bar.update(min(done, self.steps))
            return bar
        # A time budget: percent of it, without tqdm's rate ("%/s" says nothing).
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"
        return tqdm(total=100, desc=self.desc, bar_format=fmt)

    def due(self, p: float) -> bool:
        """Whether :meth:`update` at progress ``p`` would draw or write anything."""
        if self.mode == "bar":
            return True
        overdue = self.clock() - self.last_line >= self.every_seconds
        return p >= self.next_tenth or overdue  # next_tenth is 1.0 last, then 1.1: one 100% line

    def update(self, step: int, p: float, loss: Callable[[], float], lr: float) -> None:
        """After ``step`` steps at progress ``p`` in ``[0, 1]``: move the bar, or write a log
        line when one is due (``loss()`` gives the latest training loss, read only then)."""
        if self.bar is not None:
            if self.steps is not None:
                self.bar.update(1)
            else:
                self.bar.n = min(100, int(100 * p))
                self.bar.set_postfix_str(f"step {step}{self.eval_text}", refresh=False)
                self.bar.refresh()
            return
        if not self.due(p):
            return
        now = self.clock()
        self.last_line, self.last_step = now, step
        self.next_tenth = (int(p * 10 + 1e-9) + 1) / 10
        done = p - self.p0
        left = (now - self.t0) * (1.0 - p) / done if done > 0 else float("nan")
        of = f"/{self.steps}" if self.steps is not None else ""
        line = (
            f"{self.desc}: step {step}{of} ({100 * min(p, 1.0):.0f}%), loss {loss():.5f}"
            f"{self.eval_text}, lr {lr:.3g}, "
            + (f"{_duration(left)} left" if left == left else "time left unknown")
        )
        _emit(line)

    def evaluated(self, step: int, loss: float, ratio: float) -> None:
        """Record an evaluation, shown with the next bar frame or log line."""
        # The step says how fresh it is: under a time budget evaluations may be sparse.
        self.eval_text = f", eval loss {loss:.5f} = {ratio:.4f} x optimal (step {step})"
        if self.bar is not None and self.steps is not None:
            self.bar.set_postfix_str(self.eval_text.lstrip(", "), refresh=False)

    def finish(self, step: int, p: float, loss: Callable[[], float], lr: float) -> None:
        """The run ended after ``step`` steps at progress ``p``: the bar shows it, and the log
        gets its closing line unless the last one already said the same."""
        if self.bar is not None:
            if self.steps is None:
                self.bar.n = min(100, int(100 * p))
                self.bar.set_postfix_str(f"step {step}{self.eval_text}", refresh=False)
                self.bar.refresh()
            return
        if self.last_step != step:
            self.next_tenth = 0.0  # due now
            self.update(step, p, loss, lr)

    def close(self) -> None:
        """Close the bar (log lines need no closing)."""
        if self.bar is not None:
            self.bar.close()


def _emit(line: str) -> None:
    """A progress line through logging where it is set up (the CLI), else onto stderr."""
    if logger.hasHandlers():
        logger.info(line)
    else:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_unwatched_bars(module: Any) -> Iterator[None]:
    """Within the block, ``module``'s tqdm bars (TransformerLens's, e.g. its patching loops)
    are drawn only when stderr is a terminal: a piped log gets no frames from them."""
    original = getattr(module, "tqdm", None)
    if original is None or _stderr_is_tty():
        yield
        return
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original
