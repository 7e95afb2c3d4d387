"""Issue 22, runs: the CLI writes a run into a fresh sibling and renames it into place when
complete; --overwrite swaps whole directories; a second run into the same --out refuses at
once; an interrupted demo keeps its latest checkpoint and --resume finishes it bit-identically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from belief_lens.cli import main
from belief_lens.errors import BeliefLensError
from belief_lens.run_dir import MARKER, RunDir, staging_path
from belief_lens.storage import exclusive_lock
from belief_lens.training import step_checkpoints

FAST = [
    "--process",
    "mess3",
    "--minutes",
    "5",
    "--export",
    "none",
    "--n-ctx",
    "4",
    "--batch-size",
    "16",
]
#: The analysis replaced by a stub that writes a report: these tests are about the run's files.
STUB = """
import sys
from pathlib import Path
from belief_lens.experiments import paper
def analyse(model, hmm, out, **kwargs):
    (Path(out) / "report.html").write_text("new report")
    return {"summary": []}
paper.analyse = analyse
from belief_lens.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def stub_analysis(monkeypatch):
    from belief_lens.experiments import paper

    def analyse(model, hmm, out, **kwargs):
        (Path(out) / "report.html").write_text("new report")
        return {"summary": []}

    monkeypatch.setattr(paper, "analyse", analyse)


def _old_run(final: Path) -> dict[str, bytes]:
    final.mkdir(parents=True)
    files = {"report.html": b"old report", "metrics.json": b"{}", "fig.png": b"old figure"}
    for name, data in files.items():
        (final / name).write_bytes(data)
    return files


def _tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


@pytest.fixture
def live_pid():
    """The id of a live process that is not this one (another run, as far as a lock knows)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


# ----------------------------------------------------------------------- RunDir


def test_overwrite_swaps_whole_directories(tmp_path):
    final = tmp_path / "run"
    _old_run(final)
    with pytest.raises(BeliefLensError, match="already holds files"):
        RunDir.open(final, overwrite=False, resume_hint="x")
    run = RunDir.open(final, overwrite=True, resume_hint="x")
    (run.staging / "report.html").write_bytes(b"new report")
    assert _tree(final)["report.html"] == b"old report"  # intact until the new run completes
    run.commit()
    assert _tree(final) == {"report.html": b"new report"}  # no old figure beside the new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it


def test_second_run_into_the_same_out_refuses_at_once(tmp_path, live_pid):
    final = tmp_path / "C1"
    run = RunDir.open(final, overwrite=False, resume_hint="x")
    (run.staging / MARKER).write_text(f"{live_pid}\n")  # as if another process held it
    with pytest.raises(BeliefLensError, match=rf"another run \(process {live_pid}\) is writing"):
        RunDir.open(final, overwrite=False, resume_hint="x")
    with pytest.raises(BeliefLensError, match="still running"):
        RunDir.resume(final)


def test_an_interrupted_run_is_named_with_its_resume_command(tmp_path):
    final = tmp_path / "S2"
    run = RunDir.open(final, overwrite=False, resume_hint="belief-lens demo --resume S2")
    (run.staging / MARKER).write_text("999999999\n")  # a killed process
    with pytest.raises(BeliefLensError, match=r"interrupted run.*`belief-lens demo --resume S2`"):
        RunDir.open(final, overwrite=False, resume_hint="belief-lens demo --resume S2")
    resumed = RunDir.resume(final)
    assert resumed.staging == staging_path(final)
    resumed.commit()
    assert final.is_dir() and not (final / MARKER).exists()


def test_leftover_of_a_completed_swap_is_cleared(tmp_path):
    """A kill after the exchange leaves the old run under the staging name, without a marker."""
    final = tmp_path / "run"
    _old_run(final)
    leftover = staging_path(final)
    leftover.mkdir()
    (leftover / "report.html").write_bytes(b"older")
    run = RunDir.open(final, overwrite=True, resume_hint="x")
    assert _tree(run.staging) == {MARKER: f"{os.getpid()}\n".encode()}


def test_exclusive_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, live_pid):
    lock = tmp_path / "out" / ".lock"
    lock.parent.mkdir()
    lock.write_text(f"{live_pid}\n")
    with (
        pytest.raises(BeliefLensError, match=rf"process {live_pid}\) is writing --out D"),
        exclusive_lock(lock, "--out D"),
    ):
        pass
    lock.write_text("999999999\n")
    with exclusive_lock(lock, "--out D"):
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()


# ----------------------------------------------------------------------- the CLI


def _interrupt_at(monkeypatch, step: int) -> None:
    """Make the demo's training raise KeyboardInterrupt (Ctrl-C) after ``step`` steps."""
    from belief_lens.experiments import paper

    real = paper.train

    def train(*args, **kwargs):
        def callback(s, history):
            if s == step:
                raise KeyboardInterrupt

        return real(*args, callback=callback, **kwargs)

    train.__wrapped__ = real
    monkeypatch.setattr(paper, "train", train)


def test_ctrl_c_keeps_a_checkpoint_that_resume_finishes_bit_identically(
    tmp_path, monkeypatch, capsys, stub_analysis
):
    monkeypatch.chdir(tmp_path)
    argv = ["-q", "demo", *FAST, "--max-steps", "8"]
    assert main([*argv, "--out", "straight"]) == 0
    _interrupt_at(monkeypatch, 6)
    assert main([*argv, "--out", "S2"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; the latest checkpoint is kept in" in err
    assert "resume with: belief-lens demo --resume S2" in err
    assert not Path("S2").exists()
    assert step_checkpoints(staging_path(Path("S2")) / "checkpoints")  # the latest is kept
    assert main([*argv, "--out", "S2"]) == 2  # a new run into S2 names the resume command
    assert "belief-lens demo --resume S2" in capsys.readouterr().err
    from belief_lens.experiments import paper

    monkeypatch.setattr(paper, "train", paper.train.__wrapped__)
    assert main(["-q", "demo", "--resume", "S2"]) == 0
    a, b = load_file("straight/model.safetensors"), load_file("S2/model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert sorted(p.name for p in Path("S2").iterdir()) == sorted(
        p.name for p in Path("straight").iterdir()
    )  # retention 0: no checkpoints left in a finished run
    assert not staging_path(Path("S2")).exists()


def test_sigkill_during_overwrite_leaves_the_old_run_then_resume_swaps(
    tmp_path, monkeypatch, capsys, stub_analysis
):
    old = _old_run(tmp_path / "C1")
    cmd = [sys.executable, "-c", STUB, "-q", "demo", *FAST, "--max-steps", "16",
           "--out", "C1", "--overwrite"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    checkpoints = staging_path(tmp_path / "C1") / "checkpoints"
    deadline = time.monotonic() + 300
    while not step_checkpoints(checkpoints) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _tree(tmp_path / "C1") == old  # the complete old run
    # What the killed process left is read by later runs (in this process: an interpreter's
    # start-up each would only add time; the analysis is stubbed the same way).
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", "C1", "--overwrite"]) == 2
    assert "belief-lens demo --resume C1" in capsys.readouterr().err
    assert main(["-q", "demo", "--resume", "C1"]) == 0, capsys.readouterr().err
    names = {p.name for p in (tmp_path / "C1").iterdir()}
    assert "model.safetensors" in names and "fig.png" not in names  # wholly the new run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["C1"]


# ----------------------------------------------------------------------- memory before work


@pytest.mark.parametrize(
    "flags",
    [["--n-ctx", "3000"], ["--batch-size", "200000"], ["--n-ctx", "256"]],
    ids=["n_ctx", "batch", "analysis"],  # 256: training fits, the sampled analysis does not
)
def test_demo_too_big_for_memory_is_refused_before_work(flags, tmp_path, monkeypatch, capsys):
    import belief_lens.beliefs as beliefs

    monkeypatch.setattr(beliefs, "available_memory", lambda: 16 * 2**30)  # a 4 GiB bound
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "demo", *flags, "--out", "big"]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "over the bound of 4 GiB" in err and "--n-ctx" in err
    assert list(tmp_path.iterdir()) == []  # no run directory was made


def test_training_estimate_by_hand():
    from belief_lens.models import ModelConfig
    from belief_lens.training.memory import training_bytes

    m = ModelConfig.paper("mess3", d_vocab=3, n_ctx=3000)  # 4 layers, 1 head, d 64, d_mlp 256
    width = 8 * 64 + 2 * 256 + 4 * 8 + 3 * 3
    by_hand = 4 * 128 * 4 * (4 * 3000**2 + width * 3000)  # float32, batch 128
    assert training_bytes(m, 128) == by_hand
    # At n_ctx 10 the evaluation batch (4096 sequences) is the larger part.
    small = ModelConfig.paper("mess3", d_vocab=3, n_ctx=10)
    assert training_bytes(small, 1) == 4 * 4096 * (2 * 100 + width * 10)


# ----------------------------------------------------------------------- discover and torchrun


def test_discover_refuses_an_out_another_run_is_writing(tmp_path, live_pid):
    from belief_lens.experiments.discovery import discover_in_checkpoint
    from belief_lens.processes import mess3

    out = tmp_path / "D"
    out.mkdir()
    (out / ".discovery.lock").write_text(f"{live_pid}\n")
    with pytest.raises(BeliefLensError, match=rf"process {live_pid}\) is writing --out"):
        discover_in_checkpoint(tmp_path / "absent.safetensors", mess3(), out)
    assert sorted(p.name for p in out.iterdir()) == [".discovery.lock"]


def test_torchrun_entry_refuses_existing_results_and_a_held_out(tmp_path, live_pid):
    import contextlib

    import torch.distributed as dist

    from belief_lens.probing.torchrun import _claim

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        out = tmp_path / "D"
        out.mkdir()
        (out / "table.json").write_text("an earlier job's table")
        with contextlib.ExitStack() as stack, pytest.raises(BeliefLensError, match="exists"):
            _claim(out, stack)
        (out / "table.json").unlink()
        (tmp_path / ".D.lock").write_text(f"{live_pid}\n")
        with contextlib.ExitStack() as stack, pytest.raises(BeliefLensError, match="another run"):
            _claim(out, stack)
        (tmp_path / ".D.lock").unlink()
        with contextlib.ExitStack() as stack:
            _claim(out, stack)
            assert (tmp_path / ".D.lock").read_text() == f"{os.getpid()}\n"
        assert not (tmp_path / ".D.lock").exists()
    finally:
        dist.destroy_process_group()


def test_demo_names_the_final_directory_not_the_staging_one(tmp_path, monkeypatch):
    """The model's recorded path is where it ends up, never the ``.partial`` staging directory
    it was written into (seen before: "saved to .../.run.partial/model.safetensors")."""
    from belief_lens.experiments import paper

    seen = {}

    def analyse(model, hmm, out, **kwargs):
        seen.update(kwargs["extra_metrics"])
        (Path(out) / "report.html").write_text("new report")
        return {"summary": [], **kwargs["extra_metrics"]}

    monkeypatch.setattr(paper, "analyse", analyse)
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "demo", *FAST, "--max-steps", "2", "--out", "run"]) == 0
    source = seen["model_source"]
    assert source == f"trained in this run, saved to {Path('run') / 'model.safetensors'}"
    assert ".partial" not in source
    assert Path("run/model.safetensors").is_file()


def test_icl_writes_its_run_through_a_staging_directory(tmp_path, monkeypatch, capsys):
    """``icl`` claims --out as a transaction, writes into the staging directory, renames it into
    place, and its summary names the final directory (earlier: the RunDir's repr)."""
    from belief_lens.experiments import icl

    def write(run, out_dir, *args, **kwargs):
        assert Path(out_dir).name == ".icl.partial"
        (Path(out_dir) / "report.html").write_text("icl report")
        (Path(out_dir) / "metrics.json").write_text("{}")
        return {"verdicts": ["stub"]}

    monkeypatch.setattr(icl, "run_icl_experiment", lambda config, checkpoint_dir: None)
    monkeypatch.setattr(icl, "write_icl_report", write)
    monkeypatch.chdir(tmp_path)
    assert main(["icl", "--max-steps", "1", "--out", "icl"]) == 0
    assert Path("icl/report.html").read_text() == "icl report"
    assert not staging_path(Path("icl")).exists()
    assert not (Path("icl") / MARKER).exists()
    out = capsys.readouterr().out
    assert f"wrote {Path('icl') / 'report.html'}" in out and "RunDir" not in out


def test_distinct_prefix_bound_is_exact_for_every_sequence_and_caps_samples():
    from belief_lens.beliefs import enumerate_sequences
    from belief_lens.probing.prefixes import distinct_prefix_bound, prefix_reps
    from belief_lens.processes import mess3

    seqs = enumerate_sequences(mess3(), 10)
    exact = sum(len(reps) for _, reps in prefix_reps(seqs.tokens, True))
    assert exact == distinct_prefix_bound(len(seqs), 10, 3) == 88_572
    assert distinct_prefix_bound(100, 6, 3) == 3 + 9 + 27 + 81 + 100 + 100


def test_probe_data_too_big_for_memory_is_refused_before_the_forward_pass(monkeypatch):
    import belief_lens.beliefs as beliefs
    from belief_lens.models import ModelConfig, toy_transformer
    from belief_lens.probes import collect_probe_data
    from belief_lens.processes import mess3

    model = toy_transformer(ModelConfig.paper("mess3", d_vocab=3, n_ctx=8), seed=0)
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(beliefs, "available_memory", lambda: 4 * 2**20)  # a 1 MiB bound
    with pytest.raises(BeliefLensError, match=r"activations of \d+ \(position, prefix\) rows"):
        collect_probe_data(model, mess3(), 8, mode="sampled", n_sequences=2000)
    assert calls == []
