"""Residual-stream hooks on both model kinds, and the paper's probe figures on its checkpoint."""

from __future__ import annotations

import pytest
import torch

from belief_lens import tl_compat
from belief_lens.activations import (
    blocks_match_forward,
    logits_from_block,
    residual_hooks,
    residual_stream,
    resolve_hook,
)
from belief_lens.errors import BeliefLensError
from belief_lens.models import load_checkpoint, toy_transformer

KINDS = [
    k
    for k, ok in [
        ("bridge", tl_compat.is_bridge_available()),
        ("hooked", tl_compat.is_hooked_transformer_available()),
    ]
    if ok
]
EXPECTED_HOOKS = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_mid",
    "blocks.0.hook_resid_post",
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_resid_post",
    "blocks.2.hook_resid_mid",
    "blocks.2.hook_resid_post",
    "ln_final.hook_normalized",
]


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    return toy_transformer(
        4, 6, n_layers=3, d_model=16, d_head=4, n_heads=2, d_mlp=32, kind=request.param
    ).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 4, (37, 6), generator=torch.Generator().manual_seed(0))


def test_residual_hooks_order(model):
    assert residual_hooks(model) == EXPECTED_HOOKS


def test_residual_stream_shapes_and_values(model, tokens):
    acts = residual_stream(model, tokens)
    assert list(acts) == EXPECTED_HOOKS
    _, cache = model.run_with_cache(tokens)
    for name, value in acts.items():
        assert value.shape == (37, 6, 16) and value.dtype == torch.float32
        assert value.device.type == "cpu"
        torch.testing.assert_close(value, cache[name].float(), rtol=0, atol=1e-6)


def test_batches_and_early_stop_agree(model, tokens):
    full = residual_stream(model, tokens, hooks=["blocks.1.hook_resid_post"])
    batched = residual_stream(model, tokens, hooks=["blocks.1.hook_resid_post"], batch_size=5)
    torch.testing.assert_close(full, batched, rtol=0, atol=1e-6)
    pre = residual_stream(model, tokens[:3, :4], hooks="blocks.0.hook_resid_pre")
    assert pre["blocks.0.hook_resid_pre"].shape == (3, 4, 16)


def test_one_batch_is_returned_uncopied_only_where_nothing_else_shares_it(model, tokens):
    """A single batch skips the copy into the result, but no result shares memory with another
    hook's result or with the model: writing into one changes nothing else."""
    hooks = [*EXPECTED_HOOKS, "blocks.1.hook_resid_pre", "hook_embed"]
    before = {k: v.clone() for k, v in residual_stream(model, tokens, hooks=hooks).items()}
    acts = residual_stream(model, tokens, hooks=hooks)
    assert acts["blocks.0.hook_resid_post"].is_contiguous()
    ptrs = [a.untyped_storage().data_ptr() for a in acts.values()]
    assert len(set(ptrs)) == len(ptrs)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not weights & set(ptrs)
    for a in acts.values():
        a += 1.0
    again = residual_stream(model, tokens, hooks=hooks, batch_size=5)
    for name, value in again.items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(acts[name], before[name] + 1.0, rtol=0, atol=1e-6)


def test_logits_from_block_run_the_later_blocks_only(model, tokens):
    """From the residual entering block ``k`` (or leaving the last), the logits are the model's
    own, and blocks before ``k`` do not run; a residual that is not the pass's fails the check."""
    names = [f"blocks.{k}.hook_resid_pre" for k in range(3)] + ["blocks.2.hook_resid_post"]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
        entering = {k: cache[name] for k, name in enumerate(names)}
        ran = []
        handles = [
            b.register_forward_hook(lambda m, a, o, k=k: ran.append(k))
            for k, b in enumerate(model.blocks)
        ]
        try:
            for start, resid in entering.items():
                ran.clear()
                got = logits_from_block(model, resid, start)
                assert ran == list(range(start, 3))
                torch.testing.assert_close(got, logits, rtol=0, atol=1e-5)
        finally:
            for h in handles:
                h.remove()
        assert blocks_match_forward(model, logits, entering)
        assert not blocks_match_forward(model, logits, {1: entering[1].flip(0)})


def test_concat_and_shorthand(model, tokens):
    hooks = [("resid_post", 2), ("resid_mid", -3), "ln_final.hook_normalized"]
    acts = residual_stream(model, tokens, hooks=hooks)
    assert list(acts) == [
        "blocks.2.hook_resid_post",
        "blocks.0.hook_resid_mid",
        "ln_final.hook_normalized",
    ]
    single = residual_stream(model, tokens, hooks=hooks[0])
    assert list(single) == ["blocks.2.hook_resid_post"]  # one return type, one hook included
    stacked = torch.cat(list(acts.values()), -1)
    assert stacked.shape == (37, 6, 48)
    torch.testing.assert_close(stacked[..., 16:32], acts["blocks.0.hook_resid_mid"])
    assert resolve_hook(model, ("resid_post", -1)) == "blocks.2.hook_resid_post"


def test_unknown_hook_lists_valid_names(model, tokens):
    with pytest.raises(
        BeliefLensError,
        match=r"unknown hook.*blocks\.0\.hook_resid_pre.*"
        r"ln_final\.hook_normalized",
    ):
        residual_stream(model, tokens, hooks=["blocks.9.hook_resid_post"])
    with pytest.raises(BeliefLensError, match=r"layer must be in \[-3, 3\)"):
        residual_stream(model, tokens, hooks=[("resid_post", 3)])


def test_bad_tokens_raise(model, tokens):
    with pytest.raises(BeliefLensError, match="7 positions but the model's n_ctx is 6"):
        residual_stream(model, torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(BeliefLensError, match=r"\[0, 4\).*max 4"):
        residual_stream(model, torch.full((2, 3), 4))
    with pytest.raises(BeliefLensError, match="min -1"):
        residual_stream(model, torch.full((2, 3), -1))
    with pytest.raises(BeliefLensError, match="integers"):
        residual_stream(model, torch.zeros(2, 3))


def test_train_mode_raises(tokens):
    model = toy_transformer(4, 6, n_layers=1, d_model=8, d_head=4, d_mlp=16)
    model.train()
    with pytest.raises(BeliefLensError, match="train mode.*call model.eval"):
        residual_stream(model, tokens)


PAPER_HOOKS = ["blocks.3.hook_resid_post", "ln_final.hook_normalized"]


@pytest.fixture(scope="module")
def mess3_paper(shared_checkpoint):
    """The paper's Mess3 model on all 59,049 sequences, and its residual stream at the last block
    and the final norm from one ``residual_stream`` pass (the probe and loss tests share it)."""
    from belief_lens.beliefs import enumerate_sequences
    from belief_lens.processes import mess3

    hmm = mess3(0.05, 0.85)
    model = load_checkpoint(shared_checkpoint("mess3_paper"))
    every = enumerate_sequences(hmm, 10)
    assert len(every) == 59_049
    acts = residual_stream(model, every.tokens, hooks=PAPER_HOOKS)
    return hmm, model, every, acts


def _affine_mse(acts: torch.Tensor, beliefs: torch.Tensor) -> float:
    x = acts.reshape(-1, acts.shape[-1]).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    y = beliefs.reshape(-1, beliefs.shape[-1])
    solution = torch.linalg.lstsq(x, y).solution
    return float(((x @ solution - y) ** 2).mean())


def test_paper_probe_mse(mess3_paper):
    _, _, every, acts = mess3_paper
    hooks = PAPER_HOOKS
    assert list(acts) == hooks and acts[hooks[0]].shape == (59_049, 10, 64)
    assert _affine_mse(acts[hooks[0]], every.beliefs) == pytest.approx(0.0004, abs=0.00005)
    assert _affine_mse(acts[hooks[1]], every.beliefs) == pytest.approx(0.0003, abs=0.00005)


def test_paper_model_loss_near_optimal(mess3_paper):
    from belief_lens.compmech import optimal_loss

    hmm, model, every, acts = mess3_paper
    # The logits are the final norm and unembedding of the last block's output, read in the
    # fixture's pass; they are the model's own on the first sequences (no second full pass).
    with torch.no_grad():
        logits = model.unembed(model.ln_final(acts["blocks.3.hook_resid_post"]))
        own = model(every.tokens[:256])
    torch.testing.assert_close(logits[:256], own, rtol=1e-4, atol=1e-4)
    exact = hmm.next_token_probs(every.beliefs)  # P(token t+1 | tokens 0..t)
    ce = -(exact * logits.double().log_softmax(-1)).sum(-1)  # [N, 10]
    expected_ce = (every.probs[:, None] * ce).sum(0)
    optimum = optimal_loss(hmm, 10)
    assert float(expected_ce.mean() / optimum.mean()) == pytest.approx(1.0, abs=0.002)
    assert (expected_ce >= optimum - 1e-9).all()


def test_residual_stream_stops_once_every_hook_fired(model, tokens):
    """Later blocks and the unembedding don't run; the activations equal a full cached run's."""
    calls = {"unembed": 0, "last_block": 0}
    handles = [
        model.unembed.register_forward_hook(
            lambda *a: calls.__setitem__("unembed", 1 + calls["unembed"])
        ),
        model.blocks[2].register_forward_hook(
            lambda *a: calls.__setitem__("last_block", 1 + calls["last_block"])
        ),
    ]
    try:
        hooks = ["blocks.1.hook_resid_post", "blocks.0.hook_resid_mid"]
        acts = residual_stream(model, tokens, hooks, batch_size=len(tokens))
        assert calls == {"unembed": 0, "last_block": 0}
        residual_stream(model, tokens, ["ln_final.hook_normalized"], batch_size=len(tokens))
        assert calls == {"unembed": 0, "last_block": 1}
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
        assert calls == {"unembed": 1, "last_block": 2}
    finally:
        for handle in handles:
            handle.remove()
    for hook in hooks:
        torch.testing.assert_close(acts[hook], cache[hook].float(), rtol=1e-6, atol=1e-6)
