"""Issue 22, saves and loads: no save replaces a file it was not asked to, every file carries a
sha256 of its tensors that every load checks, loads check metadata before allocating, and
checkpoint rotation never keeps a corrupt step over a good one."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from belief_lens.errors import BeliefLensError
from belief_lens.interventions import Steer, load_intervention
from belief_lens.models import load_checkpoint, save_checkpoint, toy_transformer
from belief_lens.probes import AffineProbe
from belief_lens.processes import mess3
from belief_lens.storage import CHECKSUM_KEY, atomic_write_text, save_tensors, tensors_sha256
from belief_lens.training import TrainConfig, step_checkpoints, train

TINY = dict(n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=32)


def _probe(seed=0):
    g = np.random.default_rng(seed)
    X = g.normal(size=(200, 5))
    Y = g.dirichlet(np.ones(3), size=200)
    return AffineProbe().fit(X, Y, hook="blocks.0.hook_resid_post"), X


def _zero_data_bytes(path, n, at=0):
    """Zero ``n`` bytes of a safetensors file's tensor data (after its header), ``at`` in."""
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0] + at
    data[start : start + n] = bytes(n)
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------- saves never replace


def test_probe_save_refuses_an_existing_file(tmp_path):
    probe, X = _probe()
    path = tmp_path / "user.safetensors"
    path.write_bytes(b"the user's own file")
    with pytest.raises(BeliefLensError, match="exists; pass overwrite=True"):
        probe.save(path)
    assert path.read_bytes() == b"the user's own file"
    assert probe.save(path, overwrite=True) == path
    np.testing.assert_array_equal(AffineProbe.load(path).predict(X), probe.predict(X))


def test_model_save_refuses_and_never_touches_the_sidecar(tmp_path):
    model = toy_transformer(3, 8, **TINY, seed=0)
    path, sidecar = tmp_path / "user.safetensors", tmp_path / "user.config.json"
    sidecar.write_text("the user's notes")
    save_checkpoint(model, path)
    assert sidecar.read_text() == "the user's notes"  # a file the caller did not name
    before = path.read_bytes()
    with pytest.raises(BeliefLensError, match="exists; pass overwrite=True"):
        save_checkpoint(toy_transformer(3, 8, **TINY, seed=1), path)
    assert path.read_bytes() == before
    save_checkpoint(toy_transformer(3, 8, **TINY, seed=1), path, overwrite=True)
    assert path.read_bytes() != before and sidecar.read_text() == "the user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.config.json", "user.safetensors"]


def test_exclusive_write_refuses_a_file_that_appears_meanwhile(tmp_path):
    """The refusal is atomic: a file created after the early check still wins (hard link)."""
    path = tmp_path / "t.safetensors"

    def racing_write(tmp):
        path.write_text("the other writer's")
        save_file({"a": torch.zeros(2)}, tmp)

    from belief_lens.storage import atomic_write

    with pytest.raises(BeliefLensError, match="exists"):
        atomic_write(path, racing_write, overwrite=False)
    assert path.read_text() == "the other writer's"
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temp left


# ----------------------------------------------------------------------- checksums


def test_checksum_is_an_independent_sha256(tmp_path):
    import hashlib

    t = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, 2, dtype=torch.float64)}
    h = hashlib.sha256()
    h.update(b"a|torch.float64|(2, 2)|" + np.ones((2, 2)).tobytes())
    h.update(b"b|torch.float32|(3,)|" + np.arange(3, dtype=np.float32).tobytes())
    assert tensors_sha256(t) == h.hexdigest()
    path = save_tensors(tmp_path / "t.safetensors", t, {"x": "1"})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()[CHECKSUM_KEY] == h.hexdigest() and f.metadata()["x"] == "1"


def test_zeroed_bytes_in_a_probe_are_refused_naming_the_file(tmp_path):
    probe, _ = _probe()
    path = probe.save(tmp_path / "probe.safetensors")
    _zero_data_bytes(path, 16, at=8)
    with pytest.raises(BeliefLensError, match=r"probe\.safetensors.*corrupt.*sha256"):
        AffineProbe.load(path)


def test_zeroed_bytes_in_a_model_are_refused_naming_the_file(tmp_path):
    path = save_checkpoint(toy_transformer(3, 8, **TINY, seed=0), tmp_path / "m.safetensors")
    _zero_data_bytes(path, 1000, at=100)
    with pytest.raises(BeliefLensError, match=r"m\.safetensors.*corrupt.*sha256"):
        load_checkpoint(path)


def test_zeroed_bytes_in_an_intervention_are_refused(tmp_path):
    basis = torch.eye(4, dtype=torch.float64)[:, :2]
    target = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    coords = torch.ones(3, 2, dtype=torch.float64)
    steer = Steer("blocks.0.hook_resid_post", basis, coords, target, current=target)
    path = steer.save(tmp_path / "steer.safetensors")
    assert isinstance(load_intervention(path), Steer)
    _zero_data_bytes(path, 8)
    with pytest.raises(BeliefLensError, match=r"steer\.safetensors.*corrupt"):
        load_intervention(path)


def test_files_without_a_checksum_still_load(tmp_path):
    probe, X = _probe()
    path = probe.save(tmp_path / "p.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != CHECKSUM_KEY}
    save_file(load_file(str(path)), str(tmp_path / "old.safetensors"), metadata=meta)
    np.testing.assert_array_equal(
        AffineProbe.load(tmp_path / "old.safetensors").predict(X), probe.predict(X)
    )
    model = toy_transformer(3, 8, **TINY, seed=0).eval()
    mpath = save_checkpoint(model, tmp_path / "m.safetensors")
    with safe_open(str(mpath), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != CHECKSUM_KEY}
    save_file(load_file(str(mpath)), str(tmp_path / "old_m.safetensors"), metadata=meta)
    tokens = torch.randint(0, 3, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_checkpoint(tmp_path / "old_m.safetensors")(tokens), model(tokens))


# ----------------------------------------------------------------------- crafted metadata


def _rewrite_meta(path, out, key, edit):
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    inner = json.loads(meta[key])
    edit(inner)
    meta[key] = json.dumps(inner)
    save_file(load_file(str(path)), str(out), metadata=meta)
    return out


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["params"].update(unknown=1),
        lambda m: m.update(n_features="x"),
        lambda m: m.update(n_targets=True),
        lambda m: m.update(n_features=10**9),
        lambda m: m.update(params="ridge"),
        lambda m: m["params"].update(solver="magic"),
        lambda m: m.update(hook=7),
    ],
    ids=["unknown-param", "n_features-str", "bool", "huge", "params-str", "solver", "hook-int"],
)
def test_crafted_probe_metadata_is_a_clear_error(tmp_path, edit):
    probe, _ = _probe()
    path = probe.save(tmp_path / "p.safetensors")
    bad = _rewrite_meta(path, tmp_path / "bad.safetensors", "belief_lens", edit)
    with pytest.raises(BeliefLensError, match=r"bad\.safetensors|magic"):
        AffineProbe.load(bad)


def test_crafted_model_seed_is_a_clear_error(tmp_path):
    path = save_checkpoint(toy_transformer(3, 8, **TINY, seed=0), tmp_path / "m.safetensors")
    bad = _rewrite_meta(path, tmp_path / "bad.safetensors", "belief_lens",
                        lambda m: m.update(seed="../../x"))  # fmt: skip
    with pytest.raises(BeliefLensError, match=r"bad\.safetensors.*seed"):
        load_checkpoint(bad)


def test_huge_config_beside_real_weights_is_refused_before_building(tmp_path, monkeypatch):
    import belief_lens.models.checkpoints as checkpoints

    model = toy_transformer(3, 8, **TINY, seed=0)
    path = save_checkpoint(model, tmp_path / "m.safetensors", config_json=True)
    save_file(load_file(str(path)), str(path))  # the paper's style: config only in the sidecar
    config_path = tmp_path / "m.config.json"
    config = json.loads(config_path.read_text())
    config.update(d_model=200_000, d_mlp=200_000, n_layers=40)
    config_path.write_text(json.dumps(config))
    built = []
    monkeypatch.setattr(checkpoints, "toy_transformer", lambda *a, **k: built.append(1))
    with pytest.raises(BeliefLensError, match=r"m\.safetensors.*40 layers.*blocks \[0\]"):
        load_checkpoint(path)
    config.update(n_layers=1)
    config_path.write_text(json.dumps(config))
    with pytest.raises(BeliefLensError, match=r"shape mismatches: embed\.W_E: file \(3, 16\)"):
        load_checkpoint(path)
    assert built == []


# ----------------------------------------------------------------------- rotation


def test_rotation_never_keeps_a_corrupt_step_over_a_good_one(tmp_path):
    hmm = mess3()
    config = TrainConfig(steps=16, batch_size=16, checkpoint_every=4, keep_checkpoints=1,
                         eval_sequences=64)  # fmt: skip
    train(toy_transformer(3, 8, **TINY, seed=0), hmm, config, checkpoint_dir=tmp_path,
          progress=False)  # fmt: skip
    assert [s for s, _ in step_checkpoints(tmp_path)] == [16]
    weights = tmp_path / "step_00000016" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])  # truncated: the newest step is corrupt
    with pytest.warns(RuntimeWarning, match="corrupt"):
        train(toy_transformer(3, 8, **TINY, seed=0), hmm, config, checkpoint_dir=tmp_path,
              progress=False, callback=lambda step, h: step == 5)  # fmt: skip
    # The good step the stop wrote (5) survives; the corrupt step 16 is the one pruned.
    assert [s for s, _ in step_checkpoints(tmp_path)] == [5]


def test_rotation_deletes_nothing_without_a_good_step(tmp_path):
    from belief_lens.training.checkpoints import prune_checkpoints

    for step in (1, 2):
        (tmp_path / f"step_{step:08d}").mkdir()
        atomic_write_text(tmp_path / f"step_{step:08d}" / "state.json", "{broken")
    prune_checkpoints(tmp_path, 1)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [1, 2]
