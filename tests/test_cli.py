"""The belief-lens command end to end on a tiny budget, and its one-line errors."""

import json
import subprocess
import sys

import pytest

from belief_lens import cli
from belief_lens.cli import main
from belief_lens.models.checkpoints import read_checkpoint_config
from belief_lens.training import PROCESS_LEARNING_RATES

REPORT_KEYS = {
    "process", "n_ctx", "train_seconds", "train_steps", "ground_truth", "model_loss", "probes",
    "controls", "interventions", "training", "analysis_seconds",
}  # fmt: skip


def test_demo_end_to_end_on_a_tiny_budget(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--process", "rrxor", "--minutes", "30", "--max-steps", "8"]  # steps bind
    argv += ["--export", "none"]  # figure files: tests/test_report*.py
    assert main(["-q", *argv]) == 0
    (out,) = (tmp_path / "runs").iterdir()  # a new runs/<process>-<time> directory
    assert out.name.startswith("rrxor-")
    metrics = json.loads((out / "metrics.json").read_text())
    assert REPORT_KEYS <= set(metrics)
    assert metrics["training"]["steps"] == 8 and metrics["train_steps"] == 8
    assert 0 < metrics["train_seconds"] == metrics["training"]["seconds"]
    assert metrics["model_loss"]["optimal_loss_method"] == "exact"
    assert metrics["training"]["config"]["lr"] == PROCESS_LEARNING_RATES["rrxor"] == 3e-3
    hooks = [row["hook"] for row in metrics["probes"]["rows"]]
    assert hooks[0] == "blocks.0.hook_resid_pre" and hooks[-1] == "concat"
    assert set(metrics["controls"]) == {
        "shuffled beliefs", "untrained model", "next-token targets", "distance_r2"
    }  # fmt: skip
    assert "blocks.3.hook_resid_post" in metrics["interventions"]
    resid_post = [f"blocks.{layer}.hook_resid_post" for layer in range(4)]
    assert list(metrics["patching"]["recovered"]) == resid_post
    assert "Activation patching" in (out / "report.html").read_text()
    assert metrics["model_loss"]["optimal_loss"] == pytest.approx(0.57819, abs=1e-5)
    html = (out / "report.html").read_text()
    for section in ("Summary", "Belief geometry", "Probes per hook", "Controls", "Steering"):
        assert section in html
    assert "Training" in html
    # Eight steps leave the model far from the optimum: the summary says so first.
    assert metrics["model_loss"]["undertrained"]
    assert metrics["summary"][0].startswith("Under-trained: the loss is")
    assert metrics["best_hook"]["hook"] in hooks
    assert (out / "model.safetensors").is_file()
    # The paper's RRXOR architecture, not its Mess3 one.
    assert read_checkpoint_config(out / "model.safetensors")["d_model"] == 128
    assert f"wrote runs/{out.name}/report.html" in capsys.readouterr().out

    # Nothing a run wrote is replaced by a later run into the same directory.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["-q", *argv, "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    probe = ["probe", "--checkpoint", str(out / "model.safetensors"), "--process", "rrxor"]
    assert main(["-q", *probe, "--out", str(out), "--no-controls"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_output_is_checked_before_training(tmp_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr("belief_lens.experiments.paper.train", no_training)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--max-steps", "1", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(blocker) in err and "\n" not in err


def test_params_are_typed_by_the_process_signature():
    hmm = cli._process("random", [("n_states", "3"), ("n_symbols", "2"), ("seed", "4")])
    assert (hmm.n_states, hmm.n_symbols) == (3, 2)
    with pytest.raises(cli.BeliefLensError, match="random expects an integer for n_states"):
        cli._process("random", [("n_states", "2.5"), ("n_symbols", "2")])
    with pytest.raises(cli.BeliefLensError, match="x must be a finite number"):
        cli._process("mess3", [("x", "nan")])
    assert cli._process("mess3", [("x", "0.1")]).name.startswith("mess3(x=0.1")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--minutes", "nan", "expected a finite number, got 'nan'"),
        ("--minutes", "-1", "expected a positive number, got '-1'"),
        ("--batch-size", "0", "expected a positive number, got '0'"),
        ("--max-steps", "0", "expected a positive number, got '0'"),
        ("--max-steps", "2.5", "expected an integer, got '2.5'"),
        ("--lr", "inf", "expected a finite number, got 'inf'"),
    ],
)
def test_bad_numbers_are_refused(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_unexpected_errors_print_one_line_and_suggest_debug(monkeypatch, capsys, tmp_path):
    def broken(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli, "run_demo", broken)
    assert main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "RuntimeError: something broke" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        main(["demo", "--debug", "--out", str(tmp_path)])


def test_probe_reproduces_the_paper_checkpoint(mess3_paper_probe_run):
    # Paper mode, all 59,049 sequences, run once per worker (conftest): its page is checked in
    # a browser by tests/test_report_browser.py.
    assert mess3_paper_probe_run.code == 0
    metrics = json.loads((mess3_paper_probe_run.out / "metrics.json").read_text())
    assert metrics["probes"]["meta"]["mode"] == "paper"  # every sequence, unweighted
    mse = {row["hook"]: row["mse_all"] for row in metrics["probes"]["rows"]}
    assert mse["blocks.3.hook_resid_post"] == pytest.approx(0.0004, abs=0.0001)
    assert mse["ln_final.hook_normalized"] == pytest.approx(0.0003, abs=0.0001)
    assert metrics["model_loss"]["loss_over_optimal"] < 1.002
    assert metrics["model_loss"]["logits_from"] == "the probe pass"  # no second forward pass


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--process", "mess4"], "unknown process 'mess4'; known processes:"),
        (["probe", "--checkpoint", "nope.safetensors", "--process", "mess3"], "does not exist"),
        (["demo", "--param", "y=2", "--max-steps", "1"], "bad parameters for mess3"),
    ],
)
def test_bad_arguments_give_one_line_errors(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("belief-lens")


def test_checkpoint_that_does_not_fit_the_process(shared_checkpoint, capsys, tmp_path):
    path = shared_checkpoint("rrxor_paper")  # 2 tokens; mess3 emits 3
    assert (
        main(["probe", "--checkpoint", str(path), "--process", "mess3", "--out", str(tmp_path)])
        == 2
    )
    assert "vocabulary of 2 tokens does not fit mess3" in capsys.readouterr().err


def test_unreadable_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert (
        main(["probe", "--checkpoint", str(bad), "--process", "mess3", "--out", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert "bad.safetensors" in err and "\n" not in err.strip()


def test_the_command_freezes_what_main_leaves_out_of_the_final_collection(tmp_path):
    """``belief-lens`` (``console_main``) returns ``main``'s exit code with the objects left
    frozen, so the interpreter's last collection skips them; ``main`` itself freezes nothing
    (tests call it in-process)."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    code = (
        "import gc, sys\n"
        "from belief_lens.cli import console_main, main\n"
        "args = ['probe', '--checkpoint', sys.argv[1], '--process', 'mess3']\n"
        "args += ['--out', sys.argv[2]]\n"
        "assert main(args) == 2 and gc.get_freeze_count() == 0\n"
        "sys.argv[1:] = args\n"
        "print(console_main(), gc.get_freeze_count() > 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(bad), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.stdout.split() == ["2", "True"], done.stderr


@pytest.mark.parametrize("command", [[], ["demo"], ["probe"]])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    if command == ["demo"]:
        for option in ("--process", "--minutes", "--out", "--targets", "--mode", "--seed"):
            assert option in text
    if command == ["probe"]:
        assert "--checkpoint" in text and "--process" in text


def test_bad_flag_value_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--param", "novalue"])
    assert exit_info.value.code == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err


def test_weighting_reaches_the_analysis_config():
    """``--weighting prefixes`` counts each distinct prefix once in the probes; ``rows`` is the
    default; anything else is refused by the parser."""
    from belief_lens.cli import _analysis_config, build_parser

    base = ["probe", "--checkpoint", "m.safetensors", "--process", "mess3"]
    parser = build_parser()
    assert _analysis_config(parser.parse_args(base)).weighting == "rows"
    args = parser.parse_args([*base, "--weighting", "prefixes"])
    assert _analysis_config(args).weighting == "prefixes"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--weighting", "uniform"])
