"""Bad input past the core (issue "Never lose work", part two): the probe, training and model
configs, the analysis config, intervention values and the CLI's argument types each refuse every
bad value with a clear error, listed and generated (hypothesis), before any work is done."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from belief_lens.cli import main
from belief_lens.errors import BeliefLensError
from belief_lens.interventions import Steer
from belief_lens.models import ModelConfig
from belief_lens.probing.estimator import AffineProbe
from belief_lens.report.analysis import AnalysisConfig
from belief_lens.training import TrainConfig

_COMMON = ["x", b"x", complex(0.5, 0.5), math.nan, math.inf, object(), [1], None]
BAD = {
    "nonneg": _COMMON + [-1e-9, -1.0, True],
    "positive": _COMMON + [0.0, -1.0],
    "count": _COMMON + [0, -1, 2.5, "3", True],
    "fraction": _COMMON + [-0.1, 1.0, 1.5],
    "optional_count": [v for v in _COMMON if v is not None] + [0, -1, 2.5, "3", True],
    "seed": [-1, 2**70, 2.5, "1", math.nan, object()],
    "bool": [1, 0, "yes", None, 0.0],
    "finite": _COMMON + [-math.inf],
    "option": ["nope", 3, None, ["auto"]],
}
_not_number = st.one_of(st.text(max_size=3), st.complex_numbers().filter(lambda z: z.imag != 0))
EXTRA = {
    "nonneg": st.one_of(_not_number, st.floats().filter(lambda v: not 0 <= v < math.inf)),
    "positive": st.one_of(_not_number, st.floats().filter(lambda v: not 0 < v < math.inf)),
    "count": st.one_of(_not_number, st.integers(max_value=0), st.floats()),
    "optional_count": st.one_of(_not_number, st.integers(max_value=0), st.floats()),
    "fraction": st.one_of(_not_number, st.floats().filter(lambda v: not 0 <= v < 1)),
    "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64), st.floats()),
    "finite": st.one_of(_not_number, st.sampled_from([math.nan, math.inf, -math.inf])),
    "option": st.text(min_size=1, max_size=6).filter(lambda s: s not in {"auto", "qr", "svd"}),
}

X = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
Y = torch.rand(40, 3, generator=torch.Generator().manual_seed(1))


def fit_probe(**kw):
    """The scikit-learn convention: parameters are checked in ``fit``, before any solve."""
    return AffineProbe(**kw).fit(X, Y)


def steer(**kw):
    basis = torch.eye(8)[:, :2]
    args = dict(hook="blocks.0.hook_resid_post", basis=basis, coordinates=torch.rand(3, 2))
    beliefs = dict(target=torch.tensor([1.0, 0.0, 0.0]), current=torch.tensor([0.2, 0.3, 0.5]))
    return Steer(**{**args, **beliefs, **kw})


# (function, valid keyword arguments, {argument: kind of bad value})
CALLS = [
    (fit_probe, {}, {"ridge": "nonneg", "fit_intercept": "bool", "solver": "option"}),
    (
        TrainConfig,
        dict(steps=5),
        {"steps": "count", "batch_size": "count", "lr": "positive", "seed": "seed"},
    ),
    (
        ModelConfig,
        dict(d_vocab=3, n_ctx=10),
        {"d_vocab": "count", "n_ctx": "count", "n_layers": "count", "d_model": "count"},
    ),
    (
        AnalysisConfig,
        {},
        {
            "test_fraction": "fraction",
            "ridge": "nonneg",
            "seed": "seed",
            "n_sequences": "optional_count",
            "controls": "bool",
            "mode": "option",
            "intervention_sequences": "count",
        },
    ),
    (steer, {}, {"scale": "finite"}),
]


def test_every_valid_call_succeeds():
    for fn, kwargs, _ in CALLS:
        fn(**kwargs)


def test_every_listed_bad_value_raises():
    for fn, kwargs, args in CALLS:
        for arg, kind in args.items():
            for value in BAD[kind]:
                if kind == "option" and value is None and arg == "solver":
                    continue
                with pytest.raises(BeliefLensError):
                    fn(**{**kwargs, arg: value})


@st.composite
def bad_call(draw):
    fn, kwargs, args = draw(st.sampled_from(CALLS))
    arg = draw(st.sampled_from(sorted(args)))
    kind = args[arg]
    value = draw(st.one_of(st.sampled_from(BAD[kind]), EXTRA.get(kind, st.nothing())))
    return fn, {**kwargs, arg: value}, arg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_call())
def test_bad_arguments_raise_belief_lens_error(call):
    fn, kwargs, arg = call
    try:
        out = fn(**kwargs)
    except BeliefLensError:
        return
    raise AssertionError(f"{getattr(fn, '__name__', fn)}({arg}={kwargs[arg]!r}) returned {out!r}")


# ----------------------------------------------------------------------------- the CLI
CLI_NUMBERS = [
    ("demo", "--minutes"),
    ("demo", "--max-steps"),
    ("demo", "--seed"),
    ("probe", "--ridge"),
    ("probe", "--n-sequences"),
]


# capsys is read (and so emptied) in every example
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from(CLI_NUMBERS),
    st.one_of(
        st.sampled_from(["x", "", "nan", "inf", "-inf", "-1", "1e999", "0x10", "--"]),
        st.floats(allow_nan=True).map(repr).filter(lambda s: s.startswith("-") or "n" in s),
        st.text(alphabet="abc-.", min_size=1, max_size=4),
    ),
)
def test_cli_refuses_bad_numbers_before_any_work(tmp_path_factory, capsys, where, text):
    """Every numeric flag refuses a non-number, a non-finite or a negative value with argparse's
    usage error (exit status 2, a message naming the flag), before any directory is made."""
    command, flag = where
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = [command, flag, text, "--out", str(out)]
    if command == "probe":
        argv += ["--checkpoint", __file__, "--process", "mess3"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert not out.exists()


def test_cli_bad_numbers_are_named_in_the_message(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--minutes", "nan", "--out", str(tmp_path / "x")])
    assert "expected a finite number, got 'nan'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
