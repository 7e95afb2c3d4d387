"""Issue 21, provenance: probes and interventions record the model they were made from; using one
on another model warns with both fingerprints, raises under strict=True, is silent under
allow_other_model=True; files saved without a fingerprint load with provenance "unknown"."""

import warnings

import pytest
import torch

from belief_lens import interventions, probes
from belief_lens.errors import BeliefLensError, ProvenanceWarning
from belief_lens.models import ModelConfig, toy_transformer
from belief_lens.probing.data import model_fingerprint
from belief_lens.processes import mess3

CFG = ModelConfig(n_layers=2, d_model=16, n_heads=1, d_head=8, d_mlp=32, n_ctx=5, d_vocab=3)
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup():
    hmm = mess3()
    a = toy_transformer(CFG, seed=0).eval()
    b = toy_transformer(CFG, seed=1).eval()
    table = probes.fit_probes(probes.collect_probe_data(a, hmm, 5, [HOOK]))
    return hmm, a, b, table.probes[HOOK]


def _target():
    return torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)


def test_steer_carries_the_probe_model_fingerprint_hook_and_process(setup):
    hmm, a, _, probe = setup
    steer = interventions.Steer.from_probe(probe, HOOK, _target(), positions=(-1,))
    assert steer.model_fingerprint == model_fingerprint(a)  # the independent hash of the weights
    assert steer.process == hmm.name and steer.hook == HOOK
    assert steer.control(3).model_fingerprint == steer.model_fingerprint


@pytest.mark.parametrize("entry", ["intervene", "steer_to_belief", "intervention_report"])
def test_another_model_warns_with_both_fingerprints_strict_raises_allow_silences(setup, entry):
    hmm, a, b, probe = setup
    tokens = torch.zeros(4, 5, dtype=torch.long)
    steer = interventions.Steer.from_probe(probe, HOOK, _target(), positions=(-1,))

    def run(model, **kw):
        if entry == "intervene":
            return interventions.intervene(model, tokens, steer, **kw)
        if entry == "steer_to_belief":
            return interventions.steer_to_belief(model, tokens, probe, HOOK, _target(),
                                                 positions=(-1,), **kw)  # fmt: skip
        return interventions.intervention_report(model, None, probe, HOOK, hmm, n_sequences=16,
                                                 **kw)  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(a)  # its own model: silent
        run(b, allow_other_model=True)  # on purpose: silent
    with pytest.warns(ProvenanceWarning) as record:
        run(b)
    text = str(record[0].message)
    assert model_fingerprint(a) in text and model_fingerprint(b) in text
    with pytest.raises(BeliefLensError, match="allow_other_model=True"):
        run(b, strict=True)


def test_ablate_and_patching_check_the_probe(setup):
    hmm, a, b, probe = setup
    tokens = torch.zeros(4, 5, dtype=torch.long)
    for made in (interventions.SubspacePatch.from_probe(probe, HOOK, tokens + 1),
                 interventions.Ablate.from_probe(probe, HOOK, "mean")):  # fmt: skip
        assert made.model_fingerprint == model_fingerprint(a) and made.process == hmm.name
        with pytest.warns(ProvenanceWarning):
            interventions.intervene(b, tokens, made)
    with pytest.warns(ProvenanceWarning):
        interventions.ablate_belief_subspace(b, tokens, probe, HOOK)
    with pytest.raises(BeliefLensError, match="fingerprint"):
        interventions.patching_report(b, tokens, tokens + 1, {0: probe, 1: probe}, hmm,
                                      strict=True)  # fmt: skip


def test_saved_interventions_keep_their_provenance_and_old_files_load_as_unknown(setup, tmp_path):
    _, a, b, probe = setup
    steer = interventions.Steer.from_probe(probe, HOOK, _target(), positions=(-1,))
    loaded = interventions.Steer.load(steer.save(tmp_path / "s.safetensors"))
    assert loaded.model_fingerprint == steer.model_fingerprint and loaded.process == steer.process
    # A file written before fingerprints were recorded: no provenance fields in its header.
    old = interventions.SubspacePatch(hook=HOOK, basis=torch.eye(16, dtype=torch.float64)[:, :2],
                                      source=torch.zeros(4, 5, dtype=torch.long))  # fmt: skip
    old_loaded = interventions.load_intervention(old.save(tmp_path / "old.safetensors"))
    assert old_loaded.model_fingerprint is None and old_loaded.provenance == "unknown"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interventions.intervene(b, torch.zeros(4, 5, dtype=torch.long), old_loaded)


def test_the_fingerprint_follows_in_place_changes(setup):
    _, a, _, _ = setup
    model = toy_transformer(CFG, seed=0).eval()
    before = interventions.current_fingerprint(model)
    assert before == model_fingerprint(a)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert interventions.current_fingerprint(model) == model_fingerprint(model) != before


# ------------------------------------------------------------------ checkpoints and processes
def _recorded_checkpoint(tmp_path, hmm):
    from belief_lens.models import save_checkpoint
    from belief_lens.training import process_fingerprint

    model = toy_transformer(CFG.replace(n_ctx=4), seed=0)
    extra = {"process": {"name": hmm.name, "fingerprint": process_fingerprint(hmm)}}
    return save_checkpoint(model, tmp_path / "m.safetensors", extra=extra)


def test_probe_refuses_a_checkpoint_of_another_process_naming_both(tmp_path, capsys):
    from belief_lens.cli import main

    ckpt = str(_recorded_checkpoint(tmp_path, mess3(x=0.05, alpha=0.85)))
    argv = ["-q", "probe", "--checkpoint", ckpt, "--process", "mess3", "--param", "x=0.2",
            "--param", "alpha=0.6", "--no-controls", "--no-interventions",
            "--export", "none"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "was trained on" in err and "--allow-process-mismatch" in err
    assert "x=0.05" in err or "0.05" in err  # the recorded process, by name
    # On purpose: it runs, and the report says where the model came from and that it mismatches.
    assert main([*argv, "--allow-process-mismatch", "--out", str(tmp_path / "b")]) == 0
    html = (tmp_path / "b" / "report.html").read_text()
    assert "loaded from" in html and "Process mismatch" in html
    assert "trained in this run" not in html


def test_the_paper_mess3_checkpoint_run_as_rrxor_is_a_mismatch(shared_checkpoint, tmp_path, capsys):
    from belief_lens.cli import main

    ckpt = str(shared_checkpoint("mess3_paper"))
    assert main(["-q", "probe", "--checkpoint", ckpt, "--process", "rrxor",
                 "--out", str(tmp_path / "p")]) == 2  # fmt: skip
    assert "records no process" in capsys.readouterr().err
    assert main(["-q", "discover", "--checkpoint", ckpt, "--process", "rrxor",
                 "--out", str(tmp_path / "d")]) == 2  # fmt: skip
    assert "3 tokens" in capsys.readouterr().err


def test_checkpoint_process_check_records_provenance(tmp_path, shared_checkpoint):
    from belief_lens.training import check_checkpoint_process

    hmm = mess3()
    ok = check_checkpoint_process(_recorded_checkpoint(tmp_path, hmm), hmm)
    assert ok["process_check"] == "matches" and ok["recorded_process"] == hmm.name
    paper = check_checkpoint_process(shared_checkpoint("mess3_paper"), hmm)
    assert paper["process_check"] == "unknown" and paper["recorded_process"] == "unknown"
