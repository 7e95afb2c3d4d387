"""Issue 16: invalid generalized HMMs refused, memory-bounded enumeration, and every bad argument
to the core a BeliefLensError (checked case by case and with hypothesis)."""

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from belief_lens import beliefs, compmech, processes
from belief_lens.beliefs import (
    belief_states,
    belief_walk,
    count_sequences,
    enumerate_sequences,
    log_probs,
    next_token_distributions,
    sample_sequences,
)
from belief_lens.compmech import belief_levels, mixed_state_presentation
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM, GeneralizedHMM
from belief_lens.probing.data import split_prefixes
from belief_lens.processes import mess3, random_hmm, rrxor, tom_quantum


def fanizza_T(a: float, lam: float) -> torch.Tensor:
    """Fanizza's matrices written out (simplexity's definition); lam=0.7 is not a valid process."""
    c, s = math.cos(a), math.sin(a)
    den = 1 - 2 * lam * c + lam**2
    A, B = (1 - lam * c + lam * s) / den, (1 - lam * c - lam * s) / den
    pi0 = np.array([1 - (2 / (1 - lam) - A - B) / 4, 1 / (2 * (1 - lam)), -A / 4, -B / 4])
    w = np.array([1, 1 - lam, 1 + lam * (s - c), 1 - lam * (s + c)])
    T1 = lam * np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, c, -s], [0, 0, s, c]])
    return torch.from_numpy(np.stack([np.outer(w, pi0), T1]))


# ------------------------------------------------------------------ valid generalized HMMs
def test_negative_word_refused_at_construction_naming_it():
    with pytest.raises(BeliefLensError, match=r"word \[1\] has negative probability -0.5"):
        GeneralizedHMM([[[1.5]], [[-0.5]]])
    # Fanizza with lamb=0.7: every single token is fine, the word "0 0" is not.
    T = fanizza_T(2000.0, 0.7)
    with pytest.raises(BeliefLensError, match=r"not a valid process: word \[0, 0\]"):
        GeneralizedHMM(T, tau=torch.ones(4, dtype=torch.float64))


def test_invalid_generalized_hmm_raises_when_used():
    g = GeneralizedHMM(fanizza_T(2000.0, 0.7), tau=torch.ones(4), check_depth=1)
    assert g.checked_depth == 1
    pi = g.initial_state.numpy()
    T = g.T.numpy()
    assert pi @ T[0] @ T[0] @ np.ones(4) < 0  # the reference: word 00 is negative
    with pytest.raises(BeliefLensError, match=r"word \[0, 0\] .* negative probability"):
        enumerate_sequences(g, 3)
    with pytest.raises(BeliefLensError, match="negative probability"):
        log_probs(g, torch.tensor([[0, 0]]))
    with pytest.raises(BeliefLensError, match="negative probability"):
        log_probs(g, torch.tensor([[0, 0]]), impossible="mask")
    with pytest.raises(BeliefLensError, match="negative probability"):
        sample_sequences(g, 200, 5, seed=0)
    with pytest.raises(BeliefLensError, match="negative probability"):
        list(belief_levels(g, 3))
    with pytest.raises(BeliefLensError, match="negative probability"):
        mixed_state_presentation(g, max_depth=3)


def test_check_depth_is_settable():
    assert GeneralizedHMM(tom_quantum().T, check_depth=3).checked_depth == 3
    with pytest.raises(BeliefLensError, match="check_depth must be an integer"):
        GeneralizedHMM(tom_quantum().T, check_depth=2.0)


# ------------------------------------------------------------------ memory-bounded enumeration
def test_count_sequences_matches_enumeration():
    for hmm, L in ((rrxor(), 7), (mess3(), 5), (processes.golden_mean(), 9)):
        assert count_sequences(hmm, L) == len(enumerate_sequences(hmm, L))
    assert count_sequences(mess3(), 20) == 3**20


def test_memory_estimate_raises_with_options():
    with pytest.raises(BeliefLensError) as e:
        enumerate_sequences(rrxor(), 12, max_bytes=10_000)
    msg = str(e.value)
    assert "GiB" in msg and "max_bytes=" in msg and "shorter length" in msg
    assert "sample_sequences" in msg
    # The per-level estimate (generalized HMMs have no exact count).
    with pytest.raises(BeliefLensError, match=r"needs about .* GiB.*max_bytes"):
        enumerate_sequences(tom_quantum(1.0, 0.5), 10, max_bytes=10**6)
    with pytest.raises(BeliefLensError, match=r"belief level .* needs about .*max_bytes"):
        list(belief_levels(mess3(), 30, max_bytes=10**7))
    assert len(enumerate_sequences(rrxor(), 6, max_bytes=10**7)) == count_sequences(rrxor(), 6)


def test_default_bound_is_a_quarter_of_available_memory(monkeypatch):
    monkeypatch.setattr(beliefs, "available_memory", lambda: 4 * 2**30)
    assert beliefs.default_max_bytes() == 2**30
    with pytest.raises(BeliefLensError, match="a quarter of available memory"):
        enumerate_sequences(random_hmm(5, 2), 23)


PEAK_SCRIPT = textwrap.dedent(
    """
    import sys
    import belief_lens.beliefs as b
    from belief_lens.errors import BeliefLensError
    from belief_lens.processes import mess3, random_hmm
    # Pretend a 16 GiB machine (bound 4 GiB), so the check does not depend on this one's memory.
    b.available_memory = lambda: 16 * 2**30
    hmm, length, kwargs = {
        "mess3": (mess3(), 20, {}),
        "random": (random_hmm(5, 2), 23, {}),
        # min_prob > 0 has no exact count up front: the per-level and final checks must hold.
        "min_prob": (mess3(), 13, {"min_prob": 1e-300, "max_bytes": 950 * 2**20}),
        "200_symbols": (random_hmm(3, 200), 4, {"min_prob": 1e-300}),
    }[sys.argv[1]]

    def status_kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field))

    # The peak of this process image alone: ru_maxrss would carry the forking parent's peak
    # across exec; writing 5 to clear_refs resets VmHWM to the current RSS.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS:")
    try:
        print("sequences:", len(b.enumerate_sequences(hmm, length, **kwargs)))
    except BeliefLensError as e:
        print("raised:", e)
    print("peak_growth_kib", status_kib("VmHWM:") - before)
    """
)


@pytest.mark.parametrize("which", ["mess3", "random", "200_symbols"])
def test_large_enumeration_raises_before_allocating(which, tmp_path):
    out = _peak(which, tmp_path)
    assert "raised:" in out
    growth_kib = int(out.split("peak_growth_kib")[1])
    assert growth_kib < 2**20  # under 1 GiB of peak memory growth


def test_enumeration_with_min_prob_stays_within_its_bound(tmp_path):
    """Measured peak memory (RSS growth) of a completed enumeration is within ``max_bytes``."""
    out = _peak("min_prob", tmp_path)
    assert "sequences: " in out, out
    assert 1_500_000 < int(out.split("sequences:")[1].split()[0]) <= 3**13
    growth_kib = int(out.split("peak_growth_kib")[1])
    # The bound counts tensors; the allocator's arenas and thread stacks add a little (5%).
    assert 500 * 2**10 < growth_kib <= 1.05 * 950 * 2**10, out


def _peak(which: str, tmp_path) -> str:
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script), which], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


# ------------------------------------------------------------------ bad inputs, case by case
def test_issue_cases_raise_belief_lens_errors():
    T = mess3().T
    cases = [
        lambda: HMM(T.to(torch.complex128) * (1 + 1e-3j)),
        lambda: HMM(np.array(T.numpy(), dtype=object)),
        lambda: HMM("not a matrix"),
        lambda: HMM([[[0.5, 0.5], [1.0]], [[0.0, 0.0], [0.0, 0.0]]]),
        lambda: random_hmm(3, 2, concentration=0),
        lambda: random_hmm(3, 2, concentration=-1),
        lambda: random_hmm(3, 2, concentration=float("nan")),
        lambda: HMM(T, atol=float("nan")),
        lambda: sample_sequences(mess3(), 10.0, 5),
        lambda: sample_sequences(mess3(), 10, 2.5),
        lambda: sample_sequences(mess3(), 10, 5, seed=2**70),
        lambda: enumerate_sequences(mess3(), 2.5),
        lambda: belief_states(mess3(), [[0, 1], [2]]),
        lambda: belief_states(mess3(), np.array([["a", "b"]])),
        lambda: belief_states(mess3(), torch.tensor([[0, 1]]) * (1 + 1j)),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(BeliefLensError):
            case()
            pytest.fail(f"case {i} did not raise")
    # A complex input whose imaginary part is zero is read as real.
    assert torch.equal(HMM(T.to(torch.complex128)).T, T)


# ------------------------------------------------------------------ bad inputs, property test
BAD_COMMON = [
    "x",
    b"x",
    complex(0.5, 0.5),
    float("nan"),
    float("inf"),
    object(),
    [0.5, 0.5],
    np.array(["a"], dtype=object),
]
BAD = {
    # values outside each kind of argument, never a valid value of that kind
    "prob": BAD_COMMON + [-0.1, 1.5, None, True],
    "positive": BAD_COMMON + [0.0, -1.0, None],
    "real": BAD_COMMON + [None],
    "count": BAD_COMMON + [2.5, -1, 2.0, "3", True],
    "length": BAD_COMMON + [2.5, -1, 0, "3", np.float64(3.0)],
    "dim": [1, -2, 2.5, "0", None, True],
    "weights": [w for w in BAD_COMMON if not isinstance(w, list)] + [[0.7, 0.7], [-0.5, 1.5]],
    "probs": [
        "abc",
        [0.5, [0.5]],
        np.array([0.5, 0.5], dtype=object),
        torch.tensor([0.5, 0.5]) * (1 + 1j),
        torch.tensor([float("nan"), 1.0]),
        torch.tensor([-0.5, 1.5]),
        torch.tensor(0.5),
    ],
    "seed": [2**70, -1, 2.5, "1", float("nan"), complex(1, 1), object()],
    "hmm": [3, "mess3", None, torch.ones(2, 2, 2), object()],
    "tokens": [
        [[0, 1], [2]],
        np.array([["a", "b"]]),
        np.array([[0, 1]], dtype=object),
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[0, 1]]) * (1 + 1j),
        torch.tensor([[0, 3]]),
        torch.tensor([[-1, 0]]),
        "01",
        None,
    ],
    "prefix_tokens": [  # tokens without a vocabulary: any integer >= 0
        [[0, 1], [2]],
        np.array([["a", "b"]]),
        np.array([[0, 1]], dtype=object),
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[0.5, 1.0]]),
        torch.tensor([[0, 1]]) * (1 + 1j),
        torch.tensor([[-1, 0]]),
        torch.tensor([0, 1]),
        "01",
        None,
    ],
    "matrix": [
        "abc",
        [[[0.5, 0.5], [1.0]]],
        np.array([[[1.0]]], dtype=object),
        torch.ones(1, 1, 1) * (1 + 1j),
        torch.full((1, 1, 1), float("nan")),
        torch.ones(2, 2),
        None,
        torch.full((1, 1, 1), -1.0),
    ],
    "belief": [
        "abc",
        [0.5, [0.5]],
        np.array([1.0, 0, 0], dtype=object),
        torch.tensor([1.0, 0, 0]) * (1 + 1j),
        torch.tensor([float("nan"), 0, 0]),
        torch.tensor([0.5, 0.5]),
        torch.tensor([2.0, 0, 0]),
    ],
    "method": ["exact_", 3, None, ["exact"]],
    "beliefs": [
        "abc",
        [0.5, [0.5]],
        np.array([1.0, 0, 0], dtype=object),
        torch.tensor([1.0, 0, 0]) * (1 + 1j),
        torch.tensor([float("nan"), 0, 0]),
        torch.tensor([0.5, 0.5]),
        torch.tensor(1.0),
    ],
    "bool": [1, "yes", None, 0.0],
}

M3 = mess3()
TOK = torch.tensor([[0, 1, 2]])

# (function, valid keyword arguments, {argument: kind of bad value})
CALLS = [
    (HMM, dict(transition_matrices=M3.T), {"transition_matrices": "matrix", "atol": "positive"}),
    (
        GeneralizedHMM,
        dict(transition_matrices=tom_quantum().T),
        {"transition_matrices": "matrix", "atol": "positive", "check_depth": "count"},
    ),
    (processes.mess3, {}, {"x": "prob", "alpha": "prob"}),
    (processes.rrxor, {}, {"p1": "prob", "p2": "prob"}),
    (processes.z1r, {}, {"p": "prob"}),
    (processes.golden_mean, {}, {"p": "prob"}),
    (processes.even_process, {}, {"p": "prob"}),
    (processes.coin, {}, {"p": "prob"}),
    (processes.leaky_rrxor, {}, {"epsilon": "prob", "p1": "prob"}),
    (processes.mr_name, {}, {"p": "prob", "q": "prob"}),
    (processes.sns, {}, {"p": "prob", "q": "prob"}),
    (processes.matching_parens, {}, {"open_probs": "real"}),
    (processes.fanizza, {}, {"alpha": "real", "lamb": "prob"}),
    (processes.post_quantum, {}, {"alpha": "real", "beta": "real"}),
    (processes.tom_quantum, {}, {"alpha": "real", "beta": "real"}),
    (
        processes.random_hmm,
        dict(n_states=3, n_symbols=2),
        {"n_states": "length", "n_symbols": "length", "seed": "seed", "concentration": "positive"},
    ),
    (processes.make_process, dict(name="mess3"), {"name": "method"}),
    (processes.relabel, dict(hmm=M3, vocab_map=[0, 1, 2]), {"hmm": "hmm", "vocab_map": "real"}),
    (processes.mixture, dict(processes=[M3, M3]), {"processes": "hmm", "weights": "weights"}),
    (
        sample_sequences,
        dict(hmm=M3, n_sequences=4, length=3, seed=0),
        {"hmm": "hmm", "n_sequences": "count", "length": "count", "seed": "seed"},
    ),
    (
        belief_states,
        dict(hmm=M3, tokens=TOK),
        {"hmm": "hmm", "tokens": "tokens", "initial_state": "belief"},
    ),
    (log_probs, dict(hmm=M3, tokens=TOK), {"tokens": "tokens", "impossible": "method"}),
    (next_token_distributions, dict(hmm=M3, tokens=TOK), {"hmm": "hmm", "tokens": "tokens"}),
    (
        enumerate_sequences,
        dict(hmm=M3, length=2),
        {
            "hmm": "hmm",
            "length": "length",
            "min_prob": "prob",
            "max_sequences": "length",
            "max_bytes": "length",
            "initial_state": "belief",
        },
    ),
    (count_sequences, dict(hmm=M3, length=2), {"hmm": "hmm", "length": "count"}),
    (
        belief_walk,
        dict(hmm=M3, beliefs=M3.initial_state[None], uniforms=torch.rand(2, 1)),
        {"hmm": "hmm", "beliefs": "matrix", "uniforms": "tokens"},
    ),
    (compmech.entropy, dict(p=torch.tensor([0.5, 0.5])), {"p": "probs", "dim": "dim"}),
    (
        lambda **kw: list(belief_levels(**kw)),
        dict(hmm=M3, max_length=2),
        {"hmm": "hmm", "max_length": "count", "tol": "positive", "max_bytes": "length"},
    ),
    (compmech.myopic_entropy, dict(hmm=M3, max_length=2), {"hmm": "hmm", "max_length": "count"}),
    (compmech.block_entropy, dict(hmm=M3, max_length=2), {"hmm": "hmm", "max_length": "count"}),
    (
        compmech.optimal_loss,
        dict(hmm=M3, n_ctx=2),
        {"hmm": "hmm", "n_ctx": "length", "bos": "bool"},
    ),
    (
        mixed_state_presentation,
        dict(hmm=rrxor(), max_depth=3),
        {"hmm": "hmm", "max_depth": "count", "tol": "positive", "max_states": "length"},
    ),
    (compmech.statistical_complexity, dict(hmm=rrxor()), {"hmm": "hmm"}),
    (
        compmech.entropy_rate,
        dict(hmm=rrxor(), max_length=8),
        {
            "hmm": "hmm",
            "method": "method",
            "max_length": "length",
            "tol": "positive",
            "n_chains": "length",
            "seed": "seed",
        },
    ),
    (
        compmech.excess_entropy,
        dict(hmm=rrxor(), max_length=4),
        {"hmm": "hmm", "max_length": "count"},
    ),
    (
        lambda **kw: M3.next_token_probs(**kw),
        dict(beliefs=M3.initial_state),
        {"beliefs": "beliefs"},
    ),
    (
        lambda **kw: M3.update(**kw),
        dict(beliefs=M3.initial_state[None], tokens=torch.tensor([0])),
        {"beliefs": "beliefs", "tokens": "tokens"},
    ),
    (lambda **kw: M3.check_belief(**kw), dict(belief=M3.initial_state), {"belief": "belief"}),
    # the analysis layer (issue 22): probing's split refuses floats and negative tokens
    (
        split_prefixes,
        dict(tokens=torch.tensor([[0, 1], [1, 0]]), test_fraction=0.5),
        {"tokens": "prefix_tokens", "test_fraction": "prob", "seed": "seed"},
    ),
]


# Generated bad values on top of the listed ones.
_not_number = st.one_of(st.text(max_size=3), st.complex_numbers().filter(lambda z: z.imag != 0))
EXTRA = {
    "prob": st.one_of(_not_number, st.floats().filter(lambda v: not 0 <= v <= 1)),
    "positive": st.one_of(_not_number, st.floats().filter(lambda v: not v > 0 or v == math.inf)),
    "real": st.one_of(_not_number, st.sampled_from([math.nan, math.inf, -math.inf])),
    "count": st.one_of(
        _not_number,
        st.integers(max_value=-1),
        st.floats().filter(lambda v: v != int(v) if math.isfinite(v) else True),
    ),
    "length": st.one_of(_not_number, st.integers(max_value=0), st.floats()),
    "seed": st.one_of(st.integers(min_value=2**63), st.integers(max_value=-1), st.floats()),
}


@st.composite
def bad_call(draw):
    fn, kwargs, args = draw(st.sampled_from(CALLS))
    arg = draw(st.sampled_from(sorted(args)))
    kind = args[arg]
    value = draw(st.one_of(st.sampled_from(BAD[kind]), EXTRA.get(kind, st.nothing())))
    return fn, {**kwargs, arg: value}, arg


def test_every_listed_bad_value_raises():
    for fn, kwargs, args in CALLS:
        for arg, kind in args.items():
            for value in BAD[kind]:
                with pytest.raises(BeliefLensError):
                    fn(**{**kwargs, arg: value})


def test_every_valid_call_in_the_property_test_succeeds():
    for fn, kwargs, _ in CALLS:
        fn(**kwargs)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_call())
def test_bad_arguments_raise_belief_lens_error(call):
    fn, kwargs, arg = call
    try:
        out = fn(**kwargs)
    except BeliefLensError:
        return
    raise AssertionError(f"{getattr(fn, '__name__', fn)}({arg}={kwargs[arg]!r}) returned {out!r}")


def test_shared_checks_for_flags_options_and_seeds():
    from typing import Literal

    from belief_lens.validation import check_bool, check_option, check_seed

    assert check_bool("flag", np.bool_(True)) is True
    for bad in (1, 0, "yes", None):
        with pytest.raises(BeliefLensError, match="flag must be True or False"):
            check_bool("flag", bad)
    assert check_option("mode", "b", Literal["a", "b"]) == "b"
    assert check_option("norm", None, (None, "LN")) is None
    with pytest.raises(BeliefLensError, match="mode must be 'a' or 'b', got 'c'"):
        check_option("mode", "c", Literal["a", "b"])
    with pytest.raises(BeliefLensError, match="must be one of 'x', 'y', 'z', got 1"):
        check_option("axis", 1, ("x", "y", "z"))
    with pytest.raises(BeliefLensError, match="flag must be True or False, got 1"):
        check_option("flag", 1, (True, False))  # 1 == True, but it is not a bool
    assert check_seed("seed", np.int64(2**63 - 1)) == 2**63 - 1
    for bad in (-1, 2**63, 1.0, True):
        with pytest.raises(BeliefLensError, match="seed must be an integer"):
            check_seed("seed", bad)
