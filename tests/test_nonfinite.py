"""Issue 21, part 1 and the small ones: a diverged model is an error, never a number; an invalid
generalized HMM is an error at any depth; a bool is never a token id."""

import math

import numpy as np
import pytest
import torch

from belief_lens import interventions, probes
from belief_lens.activations import check_finite_activations, residual_stream
from belief_lens.errors import BeliefLensError, InvalidProcessError
from belief_lens.hmm import GeneralizedHMM
from belief_lens.models import ModelConfig, toy_transformer
from belief_lens.processes import mess3
from belief_lens.token_map import TokenMap
from belief_lens.training import evaluate_loss, train

CFG = ModelConfig(n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=32, n_ctx=6, d_vocab=3)


def _nan_model(one_weight: bool = False):
    model = toy_transformer(CFG, seed=0)
    with torch.no_grad():
        param = next(p for n, p in model.named_parameters() if "W_in" in n or "mlp" in n)
        if one_weight:
            param.view(-1)[0] = float("nan")
        else:
            for p in model.parameters():
                p.fill_(float("nan"))
    return model.eval()


def test_divergent_training_stops_naming_the_step_and_writes_no_nan_checkpoint(tmp_path):
    model = toy_transformer(CFG, seed=0)
    with pytest.raises(BeliefLensError, match=r"diverged: .* at step \d+ .*lower learning rate"):
        train(model, mess3(), steps=20, lr=1e30, batch_size=8, checkpoint_dir=tmp_path,
              progress=False)  # fmt: skip
    from safetensors.torch import load_file

    for path in tmp_path.rglob("*.safetensors"):  # a checkpoint, if any, is finite
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path


def test_a_nan_gradient_with_a_finite_loss_stops_training():
    model = toy_transformer(CFG, seed=0)
    param = next(iter(model.parameters()))
    param.register_hook(lambda g: torch.full_like(g, float("inf")))
    with pytest.raises(BeliefLensError, match=r"gradient norm inf at step 1 "):
        train(model, mess3(), steps=3, lr=1e-3, batch_size=8, progress=False)


def test_evaluate_loss_of_a_nan_model_raises_instead_of_scoring_zero():
    with pytest.raises(BeliefLensError, match="logits are not finite.*lower learning rate"):
        evaluate_loss(_nan_model(), mess3())


def test_evaluate_loss_counts_zero_probability_symbols_as_zero_not_nan():
    # RRXOR's T/F states rule symbols out: 0 * log p must be 0 with no nan_to_num.
    from belief_lens.processes import rrxor

    model = toy_transformer(CFG.replace(d_vocab=2), seed=0).eval()
    record = evaluate_loss(model, rrxor())
    assert math.isfinite(record.loss) and record.loss > 0


def test_residual_stream_and_fit_probes_refuse_one_nan_weight():
    model = _nan_model(one_weight=True)
    tokens = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(BeliefLensError, match=r"activations at blocks\.0\..* are not finite"):
        residual_stream(model, tokens, "blocks.0.hook_resid_post")
    with pytest.raises(BeliefLensError, match="not finite"):
        probes.collect_probe_data(model, mess3(), 6, ["blocks.0.hook_resid_post"])


def test_interventions_refuse_non_finite_logits():
    model = _nan_model(one_weight=True)
    hook = "blocks.0.hook_resid_pre"
    probe = probes.AffineProbe().fit(torch.randn(50, 16), torch.rand(50, 3).softmax(-1))
    target = torch.tensor([1.0, 0, 0], dtype=torch.float64)
    steer = interventions.Steer.from_probe(probe, hook, target, positions=(-1,))
    with pytest.raises(BeliefLensError, match="not finite"):
        interventions.intervene(model, torch.zeros(2, 6, dtype=torch.long), steer)


def _fanizza_T(a: float, lam: float) -> torch.Tensor:
    """Fanizza's matrices written out (simplexity's definition); lam=0.7 is not a valid process."""
    c, s = math.cos(a), math.sin(a)
    den = 1 - 2 * lam * c + lam**2
    A, B = (1 - lam * c + lam * s) / den, (1 - lam * c - lam * s) / den
    pi0 = np.array([1 - (2 / (1 - lam) - A - B) / 4, 1 / (2 * (1 - lam)), -A / 4, -B / 4])
    w = np.array([1, 1 - lam, 1 + lam * (s - c), 1 - lam * (s + c)])
    T1 = lam * np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, c, -s], [0, 0, s, c]])
    return torch.from_numpy(np.stack([np.outer(w, pi0), T1]))


def test_invalid_generalized_hmm_beyond_the_checked_depth_is_an_error_not_a_fallback():
    g = GeneralizedHMM(_fanizza_T(2000.0, 0.7), tau=torch.ones(4), check_depth=1)
    model = toy_transformer(CFG.replace(d_vocab=2), seed=0)
    # The enumeration's error (naming the word) reaches the user: it is not caught and replaced
    # by a sampled evaluation.
    with pytest.raises(InvalidProcessError, match=r"word \[0, 0\] .*not a valid process"):
        train(model, g, steps=2, batch_size=4, progress=False)
    with pytest.raises(InvalidProcessError, match=r"word \[0, 0\]"):
        evaluate_loss(model, g)


def test_n_sequences_zero_raises():
    model = toy_transformer(CFG, seed=0)
    with pytest.raises(BeliefLensError, match="n_sequences must be an integer in"):
        evaluate_loss(model, mess3(), n_sequences=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ids": [5, 6, 7], "bos": True},
        {"ids": [5, 6, 7], "bos": False},
        {"ids": [5, 6, 7], "bos": np.bool_(True)},
        {"ids": [5, True, 7]},
        {"ids": [5, 6, 7], "separator": [False]},
    ],
)
def test_a_bool_is_never_a_token_id(kwargs):
    ids = kwargs.pop("ids")
    with pytest.raises(BeliefLensError, match="bool|token id"):
        TokenMap(ids, **kwargs)


def test_demo_with_a_huge_learning_rate_fails_plainly(tmp_path, capsys):
    from belief_lens.cli import main

    out = tmp_path / "d"
    argv = ["-q", "demo", "--lr", "1e30", "--max-steps", "3", "--n-ctx", "4", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "lower learning rate" in err
    assert not (out / "model.safetensors").exists()


def test_probe_on_a_nan_checkpoint_fails_plainly(tmp_path, capsys):
    from belief_lens.cli import main
    from belief_lens.models import save_checkpoint

    path = save_checkpoint(_nan_model(one_weight=True), tmp_path / "nan.safetensors")
    argv = ["-q", "probe", "--checkpoint", str(path), "--process", "mess3",
            "--out", str(tmp_path / "p")]  # fmt: skip
    assert main(argv) == 2
    assert "not finite" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_non_finite_entry_anywhere_is_caught(dtype, bad):
    """The check reduces to a min and a max (NaN propagates through both): one bad entry among
    thousands, in any float dtype, is named with its count; an empty tensor passes."""
    x = torch.randn(64, 10, 16).to(dtype)
    check_finite_activations("acts", x)
    x[37, 4, 11] = bad
    with pytest.raises(BeliefLensError, match="acts are not finite \\(1 of 10240 entries"):
        check_finite_activations("acts", x)
    check_finite_activations("acts", torch.zeros(0, 3, dtype=dtype))
