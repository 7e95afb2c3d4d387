"""The belief filter's compiled kernel: one sequence at a time, one token at a time, in float64.

A fused loop writes each renormalised belief straight into the output, so the filter costs
about one pass over its output instead of a dozen small torch ops per step over a column layout
and a transposing copy after (measured in ``bench/beliefs.py``). It runs on the calling thread
only (no thread pool to fight torch's or another process's) and releases the GIL.

Compiled with numba on first use and cached on disk beside this file (or in numba's user cache
when the package directory is read-only); where neither can be written it is compiled per
process instead.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["filter_into", "jit_kernel"]


def jit_kernel(fn):
    """``numba.njit`` cached on disk where numba finds a writable cache, in memory otherwise."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, nogil=True)(fn)


@jit_kernel
def _filter_kernel(Tt, tau, init, tokens, out, offset, logp, first, bad_norm):  # pragma: no cover
    n, L = tokens.shape
    S = len(init)
    want_logp = logp.shape[0] == n
    eta = np.empty(S)
    new = np.empty(S)
    for i in range(n):
        for j in range(S):
            eta[j] = init[j]
        total = 0.0
        first[i] = L
        bad_norm[i] = 1.0
        for t in range(L):
            x = tokens[i, t]
            z = 0.0
            for j in range(S):
                acc = 0.0  # a register accumulator: the step's chain never goes through memory
                for k in range(S):
                    acc += eta[k] * Tt[x, j, k]
                new[j] = acc
                z += acc * tau[j]
            if not z > 0.0:  # zero, negative or NaN: the sequence stops here
                first[i] = t
                bad_norm[i] = z
                break
            for j in range(S):
                eta[j] = new[j] / z
                out[i, t + offset, j] = eta[j]
            if want_logp:
                total += np.log(z)
                logp[i, t] = total
        for t in range(first[i], L):
            for j in range(S):
                out[i, t + offset, j] = np.nan
            if want_logp:
                logp[i, t] = -np.inf


def filter_into(
    T: np.ndarray,
    tau: np.ndarray,
    init: np.ndarray,
    tokens: np.ndarray,
    out: np.ndarray,
    offset: int,
    logp: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Filter ``tokens [n, L]`` from ``init``, writing beliefs into ``out[:, offset:offset+L]``
    and, when ``logp`` is given (``[n, L]``), cumulative log-probabilities.

    Returns ``(first, norm)``: per sequence the position of its first normaliser that is not
    positive (``L`` where none) and that normaliser (1 where none). From there on its beliefs
    are NaN and its log-probabilities ``-inf``; the caller decides whether that raises. Arrays
    are C-contiguous: ``tokens`` int64, the rest float64.
    """
    n = tokens.shape[0]
    first = np.empty(n, dtype=np.int64)
    norm = np.empty(n, dtype=np.float64)
    if logp is None:
        logp = np.empty((0, 0), dtype=np.float64)
    Tt = np.ascontiguousarray(T.transpose(0, 2, 1))  # Tt[x, j, k] = T[x, k, j]
    _filter_kernel(Tt, tau, init, tokens, out, offset, logp, first, norm)
    return first, norm
