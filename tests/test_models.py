"""Toy-model factory and checkpoints, on whichever TransformerLens is installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from belief_lens import tl_compat
from belief_lens.errors import BeliefLensError
from belief_lens.models import (
    ModelConfig,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    seeded,
    toy_transformer,
)

KINDS = [
    k
    for k, ok in [
        ("bridge", tl_compat.is_bridge_available()),
        ("hooked", tl_compat.is_hooked_transformer_available()),
    ]
    if ok
]
SMALL = dict(n_layers=2, d_model=32, n_heads=2, d_head=8, d_mlp=64)


def _tokens(d_vocab=3, n=4, n_ctx=8, seed=0):
    return torch.randint(0, d_vocab, (n, n_ctx), generator=torch.Generator().manual_seed(seed))


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_default_kind_follows_version():
    expected = "bridge" if tl_compat.tl_version() >= (3, 4, 0) else "hooked"
    assert tl_compat.default_kind() == expected
    if tl_compat.tl_version() >= (4, 0, 0):
        assert not tl_compat.is_hooked_transformer_available()


@pytest.mark.parametrize("kind", KINDS)
def test_toy_transformer_is_deterministic_and_leaves_global_rng(kind):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = toy_transformer(3, 8, **SMALL, seed=1, kind=kind)
    after = torch.rand(3)
    assert torch.equal(before, after), "building a model must not consume the global RNG"
    b = toy_transformer(3, 8, **SMALL, seed=1, kind=kind)
    c = toy_transformer(3, 8, **SMALL, seed=2, kind=kind)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    assert (a.cfg.n_ctx, a.cfg.d_vocab, a.cfg.n_layers, a.cfg.d_model) == (8, 3, 2, 32)
    a.eval()
    assert a(_tokens()).shape == (4, 8, 3)


def test_unavailable_kind_raises():
    missing = {"bridge", "hooked"} - set(KINDS)
    for kind in missing:
        with pytest.raises(BeliefLensError, match="needs TransformerLens"):
            toy_transformer(3, 8, kind=kind)
    with pytest.raises(BeliefLensError, match="kind must be"):
        toy_transformer(3, 8, kind="nope")
    with pytest.raises(
        BeliefLensError, match=r"ModelConfig.d_model must be an integer in \[1, inf\], got 0"
    ):
        toy_transformer(3, 8, d_model=0)
    with pytest.raises(BeliefLensError, match=r"unknown field\(s\) \['d_modle'\]"):
        toy_transformer(3, 8, d_modle=32)


def test_toy_transformer_from_a_config():
    config = ModelConfig(d_vocab=3, n_ctx=8, **SMALL)
    a = toy_transformer(config, seed=4)
    b = toy_transformer(3, 8, **SMALL, seed=4)
    assert _same_weights(a, b)
    assert ModelConfig.from_model(a) == config
    c = toy_transformer(config, d_mlp=32)
    assert ModelConfig.from_model(c) == config.replace(d_mlp=32)
    with pytest.raises(BeliefLensError, match="expected a ModelConfig, got dict"):
        toy_transformer({"d_vocab": 3})


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_roundtrip(tmp_path, kind):
    model = toy_transformer(3, 8, **SMALL, seed=3, kind=kind).eval()
    path = save_checkpoint(
        model, tmp_path / "m.safetensors", extra={"note": "hi"}, config_json=True
    )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # the config rides with the weights
        embedded = json.loads(f.metadata()["belief_lens"])
    assert embedded["model_config"] == ModelConfig.from_model(model).to_dict()
    config = json.loads((tmp_path / "m.config.json").read_text())
    assert config["d_model"] == 32 and config["n_heads"] == 2 and config["act_fn"] == "relu"
    meta = config["belief_lens"]
    assert meta["transformer_lens_version"] == tl_compat.tl_version_string()
    assert meta["seed"] == 3 and meta["extra"] == {"note": "hi"}
    assert meta["format"] == "hooked_transformer"  # portable across TransformerLens versions
    loaded = load_checkpoint(path)
    assert not loaded.training
    tokens = _tokens()
    assert torch.equal(model(tokens), loaded(tokens))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.config.json", "m.safetensors"]


def test_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.torch

    model = toy_transformer(3, 8, **SMALL, seed=0)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(toy_transformer(3, 8, **SMALL, seed=1), path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_crash_between_weights_and_sidecar_config_still_loads(tmp_path, monkeypatch):
    """Weights and config land in one write: a crash before the sidecar .config.json is written
    leaves a checkpoint that loads as the new model, even beside a stale sidecar."""
    import belief_lens.models.checkpoints as models

    old = toy_transformer(3, 8, **SMALL, seed=0)
    path = save_checkpoint(old, tmp_path / "m.safetensors", config_json=True)
    real = models.atomic_write
    calls = []

    def crash_on_config(target, write, **kwargs):
        calls.append(target)
        if str(target).endswith(".config.json"):
            raise KeyboardInterrupt
        return real(target, write, **kwargs)

    monkeypatch.setattr(models, "atomic_write", crash_on_config)
    new = toy_transformer(3, 8, **{**SMALL, "d_mlp": 32}, seed=1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(new, path, overwrite=True, config_json=True)
    assert json.loads((tmp_path / "m.config.json").read_text())["d_mlp"] == 64  # stale
    loaded = load_checkpoint(path)
    assert loaded.cfg.d_mlp == 32 and _same_weights(loaded, new.eval())


@pytest.mark.skipif(not tl_compat.is_bridge_available(), reason="needs TransformerBridge")
def test_bridge_to_legacy_inverts_tl_converter():
    from belief_lens.models.convert import bridge_to_legacy

    model = toy_transformer(3, 8, **SMALL, seed=0, kind="bridge")
    state = model.state_dict()
    legacy = bridge_to_legacy(state, ModelConfig.from_model(model).to_dict())
    assert legacy["blocks.0.attn.W_Q"].shape == (2, 32, 8)
    assert legacy["blocks.0.attn.W_O"].shape == (2, 8, 32)
    back = tl_compat.convert_legacy_state_dict(legacy, model.cfg)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_paper_mess3_loads(shared_checkpoint):
    model = load_checkpoint(shared_checkpoint("mess3_paper"))
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.n_ctx, model.cfg.d_vocab) == (
        4,
        64,
        10,
        3,
    )
    with torch.no_grad():
        logits = model(_tokens(3, 5, 10))
    assert logits.shape == (5, 10, 3) and torch.isfinite(logits).all()


def test_paper_rrxor_loads(shared_checkpoint):
    model = load_checkpoint(shared_checkpoint("rrxor_paper"))
    assert (model.cfg.n_heads, model.cfg.d_model, model.cfg.d_vocab) == (4, 128, 2)
    with torch.no_grad():
        logits = model(_tokens(2, 5, 10))
    assert logits.shape == (5, 10, 2) and torch.isfinite(logits).all()


def _paper_style(model, path):
    """A bare HookedTransformer-named state dict with a sidecar config, like the paper's files."""
    from safetensors.torch import load_file, save_file

    save_checkpoint(model, path, config_json=True)
    save_file(load_file(str(path)), str(path))  # drop the embedded config
    return path


def test_load_missing_files(tmp_path):
    with pytest.raises(BeliefLensError, match=r"nothere\.safetensors.*not found"):
        load_checkpoint(tmp_path / "nothere.safetensors")
    model = toy_transformer(3, 8, **SMALL)
    path = _paper_style(model, tmp_path / "m.safetensors")
    (tmp_path / "m.config.json").unlink()
    with pytest.raises(BeliefLensError, match=r"m\.config\.json.*not found"):
        load_checkpoint(path)


def test_load_mismatched_keys_names_them(tmp_path):
    from safetensors.torch import load_file, save_file

    model = toy_transformer(3, 8, **SMALL)
    path = _paper_style(model, tmp_path / "m.safetensors")
    state = load_file(str(path))
    state.pop("blocks.1.mlp.W_in")
    state["blocks.1.mlp.W_extra"] = torch.zeros(2)
    save_file(state, str(path))
    with pytest.raises(
        BeliefLensError,
        match=r"m\.safetensors.*missing keys \['blocks\.1\.mlp\.W_in'\].*"
        r"unexpected keys \['blocks\.1\.mlp\.W_extra'\]",
    ):
        load_checkpoint(path)


def test_load_shape_mismatch_names_it(tmp_path):
    model = toy_transformer(3, 8, **SMALL)
    path = _paper_style(model, tmp_path / "m.safetensors")
    config_path = tmp_path / "m.config.json"
    config = json.loads(config_path.read_text())
    config["d_mlp"] = 48
    config_path.write_text(json.dumps(config))
    with pytest.raises(BeliefLensError, match=r"shape mismatches.*blocks\.0\.mlp\.W_in"):
        load_checkpoint(path)


def test_load_rejects_non_safetensors(tmp_path):
    model = toy_transformer(3, 8, **SMALL)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    path.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(BeliefLensError, match="cannot read"):
        load_checkpoint(path)
    with pytest.raises(BeliefLensError, match="must end in .safetensors"):
        save_checkpoint(model, tmp_path / "m.pt")


def test_find_checkpoint_uses_env(tmp_path, monkeypatch):
    save_checkpoint(toy_transformer(3, 8, **SMALL), tmp_path / "mine.safetensors")
    monkeypatch.setenv("BELIEF_LENS_CHECKPOINTS", str(tmp_path))
    assert find_checkpoint("mine") == tmp_path / "mine.safetensors"
    with pytest.raises(FileNotFoundError, match="BELIEF_LENS_CHECKPOINTS"):
        find_checkpoint("absent_model")


def test_import_does_not_load_transformer_lens():
    code = (
        "import sys, belief_lens, belief_lens.models, belief_lens.activations, "
        "belief_lens.training; print('transformer_lens' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_seeded_seeds_torch_inside_and_restores_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    with seeded(3):
        a = torch.rand(2)
    with seeded(3):
        b = torch.rand(2)
    assert torch.equal(a, b) and not torch.equal(a, expected)
    assert torch.equal(torch.rand(2), expected)  # the caller's stream goes on untouched
    with pytest.raises(BeliefLensError, match=r"seed must be an integer in \[0, "):
        with seeded(-1):
            pass
