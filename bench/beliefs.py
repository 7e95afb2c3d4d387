"""Speed of the comp-mech core against plain-Python baselines, as ratios measured in one process.

Run: ``python bench/beliefs.py``. Goals (issues 2 and 23): belief_states >= 100x a hand-written
per-token numpy filter run one sequence at a time, and within 10x of the time to write its
output; enumerate_sequences(mess3, 10) <= 0.5 s; sample_sequences >= 100x a per-token numpy
sampler. Also shown: belief_states called once per sequence, which measures the cost of a call
(issue 2 took it as the baseline while a call cost 1 ms; the compiled filter's costs 35 us, so
that ratio fell as the baseline got faster).
"""

from __future__ import annotations

import numpy as np
import torch
from _timing import best_of

from belief_lens.beliefs import belief_states, enumerate_sequences, sample_sequences
from belief_lens.processes import mess3


def loop_beliefs(T: np.ndarray, pi: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The baseline: one sequence at a time, one token at a time."""
    out = np.empty(tokens.shape + (len(pi),))
    for i, seq in enumerate(tokens):
        eta = pi
        for t, x in enumerate(seq):
            v = eta @ T[x]
            eta = v / v.sum()
            out[i, t] = eta
    return out


def loop_sampler(T: np.ndarray, pi: np.ndarray, n: int, length: int, rng) -> np.ndarray:
    """The baseline: one ``numpy.random.choice`` per token, as the paper's code samples."""
    S = len(pi)
    joint = T.transpose(1, 0, 2).reshape(S, -1)
    out = np.empty((n, length), dtype=np.int64)
    for i in range(n):
        s = rng.choice(S, p=pi)
        for t in range(length):
            k = rng.choice(joint.shape[1], p=joint[s])
            out[i, t], s = divmod(k, S)
    return out


def main() -> None:
    hmm = mess3()
    T, pi = hmm.T.numpy(), hmm.initial_state.numpy()
    n, L = 100_000, 64
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    tokens = sample_sequences(hmm, n, L, seed=0)
    t_fast = best_of(lambda: belief_states(hmm, tokens))
    # The same function, one sequence at a time: what a call costs.
    n_seq = 500

    def per_sequence() -> None:
        for seq in tokens[:n_seq]:
            belief_states(hmm, seq[None])

    t_seq = best_of(per_sequence, repeats=1) * n / n_seq
    # The baseline: a hand-written per-token numpy filter, one sequence at a time.
    n_loop = 1_000
    t_loop = best_of(lambda: loop_beliefs(T, pi, tokens[:n_loop].numpy()), repeats=1) * n / n_loop
    print(f"belief_states            {n * L / t_fast:12,.0f} tokens/s on {n:,} x {L}")
    print(
        f"  vs per-sequence loop of belief_states {n * L / t_seq:10,.0f} tokens/s: "
        f"ratio {t_seq / t_fast:6.0f}x  (the cost of a call)"
    )
    print(
        f"  vs per-token numpy filter loop        {n * L / t_loop:10,.0f} tokens/s: "
        f"ratio {t_loop / t_fast:6.0f}x  (goal >= 100x)"
    )

    # The memory-bandwidth bound: writing an array of the output's size, into memory already
    # touched (pure bandwidth) and freshly allocated (what returning a new array costs).
    out = torch.empty(n, L, hmm.n_states, dtype=torch.float64).fill_(0.0)
    src = torch.rand(out.shape, dtype=torch.float64)
    t_copy = best_of(lambda: out.copy_(src))
    # numpy, one thread: torch's copy_ faults a fresh array's pages from two threads at once,
    # which serialise on the kernel's page-table lock (10x slower, varying run to run)
    t_fresh = best_of(lambda: np.copyto(np.empty(out.shape), src.numpy()))
    mb = out.numel() * out.element_size() / 1e6
    print(
        f"  vs writing its {mb:.0f} MB output: copy into touched memory {t_copy * 1e3:.1f} ms, "
        f"ratio {t_fast / t_copy:.1f}x; into a fresh array {t_fresh * 1e3:.1f} ms, ratio "
        f"{t_fast / t_fresh:.1f}x  (goal <= 10x)"
    )

    t_enum = best_of(lambda: enumerate_sequences(hmm, 10))
    print(f"enumerate_sequences(mess3, 10): {t_enum:.3f} s  (goal <= 0.5 s)")

    t_samp = best_of(lambda: sample_sequences(hmm, n, L, seed=1))
    rng = np.random.default_rng(0)
    n_loop = 200
    t_ref = best_of(lambda: loop_sampler(T, pi, n_loop, L, rng), repeats=1) * n / n_loop
    print(
        f"sample_sequences {n * L / t_samp:11,.0f} tokens/s   numpy.random.choice loop "
        f"{n * L / t_ref:9,.0f} tokens/s   ratio {t_ref / t_samp:6.0f}x  (goal >= 100x)"
    )


if __name__ == "__main__":
    main()
