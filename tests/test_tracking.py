"""Run tracking: W&B (offline) and MLflow (a local file store) receive the parameters, every
step's loss, ratio to optimum and learning rate, the final metrics (equal to metrics.json) and
the artefacts; a missing extra is refused with its install line before any work."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import pytest

from belief_lens import tracking as tracking_module
from belief_lens.cli import main
from belief_lens.errors import BeliefLensError
from belief_lens.models import toy_transformer
from belief_lens.processes import mess3
from belief_lens.tracking import check_track, flatten, numbers_of, tracking
from belief_lens.training import TrainConfig, train

TINY = dict(n_layers=1, d_model=16, n_heads=1, d_head=8, d_mlp=32)
SHORT = dict(steps=6, batch_size=4, eval_sequences=64, progress=False)
#: A metrics.json-like record: nested keys, a list of rows, and values that are not numbers.
METRICS = {
    "model_loss": {"loss": 0.81, "optimal_loss": 0.8, "undertrained": False},
    "probes": {"rows": [{"hook": "a", "mse_heldout": 0.01}, {"hook": "b", "mse_heldout": 0.002}]},
    "train_steps": 6,
    "verdict": "fine",
    "missing": None,
}


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x: file store opt-in
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    import mlflow

    return mlflow.tracking.MlflowClient()


def _only_run(client, experiment="belief_lens"):
    found = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([found.experiment_id])
    return run


def _missing(name):
    real = importlib.import_module

    def fake(module, *args, **kwargs):
        if module == name:
            raise ImportError(f"No module named {name!r}")
        return real(module, *args, **kwargs)

    return fake


def test_numbers_of_flattens_every_number_and_leaves_out_the_rest():
    assert numbers_of(METRICS) == {
        "model_loss.loss": 0.81,
        "model_loss.optimal_loss": 0.8,
        "probes.rows.0.mse_heldout": 0.01,
        "probes.rows.1.mse_heldout": 0.002,
        "train_steps": 6.0,
    }
    assert flatten({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": 1, "a.c": [1, 2]}


@pytest.mark.parametrize("bad", ["tensorboard", "", None, True, "MLflow"])
def test_bad_track_names_the_choices(bad):
    with pytest.raises(BeliefLensError, match="'none', 'wandb', 'mlflow'"):
        check_track(bad)
    with pytest.raises(BeliefLensError, match="TrainConfig.track"):
        TrainConfig(steps=1, track=bad)


@pytest.mark.parametrize("track", ["wandb", "mlflow"])
def test_a_missing_extra_is_refused_with_its_install_line(track, monkeypatch):
    monkeypatch.setattr(tracking_module.importlib, "import_module", _missing(track))
    line = f"pip install 'belief_lens\\[{track}\\]'"
    with pytest.raises(BeliefLensError, match=line):
        check_track(track)
    with pytest.raises(BeliefLensError, match=line):
        TrainConfig(steps=1, track=track)  # at construction, before any training


def test_cli_refuses_a_missing_extra_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tracking_module.importlib, "import_module", _missing("wandb"))
    monkeypatch.chdir(tmp_path)
    assert main(["-q", "demo", "--max-steps", "1", "--track", "wandb", "--out", "x"]) == 2
    assert "pip install 'belief_lens[wandb]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no run directory claimed


def test_mlflow_gets_params_each_step_and_the_final_metrics(mlflow_store, tmp_path):
    model = toy_transformer(3, 10, **TINY)
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    with tracking("mlflow", name="unit") as tracker:
        history = train(model, mess3(), **SHORT)
        tracker.log_final(json.loads((tmp_path / "metrics.json").read_text()))
        tracker.log_artifacts([tmp_path / "metrics.json", tmp_path / "absent.html"])
    run = _only_run(mlflow_store)
    assert run.info.status == "FINISHED" and run.info.run_name == "unit"
    rid = run.info.run_id
    steps = mlflow_store.get_metric_history(rid, "train/loss")
    assert [m.step for m in steps] == list(range(1, 7))
    assert [m.value for m in steps] == pytest.approx(history.loss, rel=1e-12)
    lrs = mlflow_store.get_metric_history(rid, "train/lr")
    assert [m.value for m in lrs] == pytest.approx(history.lr, rel=1e-12)
    floor = history.evals[-1].optimal_loss
    ratios = mlflow_store.get_metric_history(rid, "train/loss_over_optimal")
    assert [m.value for m in ratios] == pytest.approx([x / floor for x in history.loss])
    evals = mlflow_store.get_metric_history(rid, "train/eval_loss_over_optimal")
    assert [m.value for m in evals] == pytest.approx([e.loss_over_optimal for e in history.evals])
    params = run.data.params
    assert params["model.d_model"] == "16" and params["train.steps"] == "6"
    assert params["process.name"] == mess3().name
    for key, value in numbers_of(METRICS).items():
        assert run.data.metrics[key] == pytest.approx(value, rel=1e-12)
    assert [a.path for a in mlflow_store.list_artifacts(rid)] == ["metrics.json"]


def test_train_config_track_starts_and_closes_its_own_run(mlflow_store):
    model = toy_transformer(3, 10, **TINY)
    history = train(model, mess3(), TrainConfig(steps=6, batch_size=4, eval_sequences=64,
                                                track="mlflow"), progress=False)  # fmt: skip
    run = _only_run(mlflow_store)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train/loss"] == pytest.approx(history.loss[-1])


def test_a_second_training_in_one_run_gets_its_own_keys(mlflow_store):
    with tracking("mlflow", name="two"):
        train(toy_transformer(3, 10, **TINY), mess3(), **SHORT)
        train(toy_transformer(3, 10, **TINY), mess3(), **SHORT, lr=2e-3)
    run = _only_run(mlflow_store)
    assert {"train/loss", "train_2/loss"} <= set(run.data.metrics)
    assert run.data.params["train_2.train.lr"] == "0.002"


def test_a_failed_block_marks_the_run_failed(mlflow_store):
    with pytest.raises(RuntimeError), tracking("mlflow", name="boom"):
        raise RuntimeError("boom")
    assert _only_run(mlflow_store).info.status == "FAILED"


def _wandb_run_file(path: Path) -> dict:
    """Read an offline W&B run's transaction log (``run-<id>.wandb``: a LevelDB-style log of
    ``Record`` protobufs in 32 KiB blocks after a 7-byte header) into its history rows, final
    summary and config, as W&B would upload them."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out = {"history": [], "summary": {}, "config": {}, "exit": False}
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind not in (1, 4) or not buf:  # 1: a whole record, 4: a record's last part
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        buf = b""
        which = record.WhichOneof("record_type")
        key = lambda i: i.key or "/".join(i.nested_key)  # noqa: E731
        if which == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif which == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif which == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif which == "exit":
            out["exit"] = True
    return out


def _finished_wandb_run(wandb_dir: Path, seconds: float = 60.0) -> dict:
    """The offline run's log once W&B's writer (its own process, which can still be writing
    after ``finish`` returns: once in three runs here the file held only its header) has
    written the exit record; fails after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        logs = list(wandb_dir.glob("offline-run-*/run-*.wandb"))
        run = _wandb_run_file(logs[0]) if len(logs) == 1 else None
        if run is not None and run["exit"]:
            return run
        assert time.monotonic() < deadline, f"no finished W&B log in {wandb_dir} after {seconds} s"
        time.sleep(0.2)


def test_wandb_offline_run_holds_params_steps_and_final_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    with tracking("wandb", name="offline") as tracker:
        history = train(toy_transformer(3, 10, **TINY), mess3(), **SHORT)
        tracker.log_final(json.loads((tmp_path / "metrics.json").read_text()))
        tracker.log_artifacts([tmp_path / "metrics.json"])
    run = _finished_wandb_run(tmp_path / "wandb")
    rows = [r for r in run["history"] if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert [r["train/loss"] for r in rows] == pytest.approx(history.loss, rel=1e-12)
    assert [r["train/lr"] for r in rows] == pytest.approx(history.lr, rel=1e-12)
    for key, value in numbers_of(METRICS).items():
        assert run["summary"][key] == pytest.approx(value, rel=1e-12)
    config = run["config"]
    assert config["model.d_model"] == 16 and config["train.steps"] == 6
    assert config["process.name"] == mess3().name


@pytest.mark.slow
def test_cli_demo_track_mlflow_logs_what_metrics_json_holds(mlflow_store, tmp_path, monkeypatch):
    """``demo --track mlflow`` end to end: the run's options, each step, every number in its
    metrics.json, and report.html, metrics.json and the model as artefacts."""
    monkeypatch.chdir(tmp_path)
    argv = ["-q", "demo", "--n-ctx", "4", "--max-steps", "4", "--batch-size", "8", "--export",
            "none", "--no-interventions", "--track", "mlflow", "--out", "run"]  # fmt: skip
    assert main(argv) == 0
    run = _only_run(mlflow_store, "belief_lens-demo")
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    metrics = json.loads(Path("run/metrics.json").read_text())
    expected = numbers_of(metrics)
    assert expected and all(
        run.data.metrics[tracking_module._mlflow_key(k)] == pytest.approx(v, rel=1e-12)
        for k, v in expected.items()
    )
    assert run.data.params["cli.process"] == "mess3" and run.data.params["model.n_ctx"] == "4"
    losses = mlflow_store.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2, 3, 4]
    names = sorted(a.path for a in mlflow_store.list_artifacts(run.info.run_id))
    assert names == ["metrics.json", "model.safetensors", "report.html"]


def test_a_checkpointed_run_resumes_with_tracking_switched_on(mlflow_store, tmp_path):
    """``track`` is not a setting of the run: resuming with it on continues the same training
    and logs the steps it trains (a checkpoint written without it is not refused)."""
    kwargs = dict(batch_size=4, eval_sequences=64, progress=False, checkpoint_dir=tmp_path / "c")
    stop_at_3 = lambda step, history: step == 3  # noqa: E731  (an interrupted run)
    train(toy_transformer(3, 10, **TINY), mess3(), steps=6, callback=stop_at_3, **kwargs)
    model = toy_transformer(3, 10, **TINY)
    history = train(model, mess3(), steps=6, track="mlflow", **kwargs)
    assert history.steps == 6
    run = _only_run(mlflow_store)
    losses = mlflow_store.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [4, 5, 6]
    assert [m.value for m in losses] == pytest.approx(history.loss[3:], rel=1e-12)


@pytest.mark.parametrize(
    "command",
    [["demo"], ["probe", "--checkpoint", "c", "--process", "mess3"], ["factored"], ["attention"],
     ["icl"]],
)  # fmt: skip
def test_every_training_command_takes_track(command, capsys):
    from belief_lens.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(command).track == "none"
    assert parser.parse_args([*command, "--track", "mlflow"]).track == "mlflow"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*command, "--track", "tensorboard"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tensorboard'" in capsys.readouterr().err
