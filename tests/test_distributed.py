"""Scale-out: probes harvested across processes (torch.distributed), on GPUs, in low precision.

The two-process run is a real ``torchrun`` job (gloo on CPU, a free loopback port chosen by
``--standalone``) of ``python -m belief_lens.probing.torchrun``; the single-process reference
is ``fit_position_probes`` in this process on the same locally built model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from belief_lens.errors import BeliefLensError
from belief_lens.probing.distributed import all_reduce_moments, rank_and_world_size, shard
from belief_lens.processes import mess3
from belief_lens.token_map import TokenMap

pytest.importorskip("transformer_lens")

from belief_lens.in_context import fit_position_probes  # noqa: E402
from belief_lens.pretrained import gpt2_like  # noqa: E402

IDS = [317, 347, 327]  # GPT-2's " A", " B", " C"
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
ROOT = Path(__file__).resolve().parents[1]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny(**kw):
    """The model ``python -m belief_lens.probing.torchrun --random 2,16`` builds on each rank."""
    return gpt2_like(n_ctx=128, n_layers=2, d_model=16, n_heads=2, seed=0, **kw)


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` from the repository, which must exit 0;
    a rank that crashes prints its Python stack (``PYTHONFAULTHANDLER``)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONFAULTHANDLER": "1",
    }
    proc = subprocess.run(
        cmd + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# ------------------------------------------------------------------------------ pieces
def test_shard_partitions_indices_without_a_process_group():
    idx = torch.arange(10)
    assert rank_and_world_size() == (0, 1)
    assert torch.equal(shard(idx), idx)
    # The rule every rank applies: rank r takes every world-th index from r.
    parts = [idx[r::3] for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))


def test_all_reduce_moments_moves_shifted_moments_exactly():
    """Single process: the moments come back about the data mean, as computed directly."""
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(2, 50, 4, generator=g, dtype=torch.float64) * 3 + 10  # two windows
    shift = Z[:, :5].mean(1)
    Zs = Z - shift[:, None]
    w = torch.full((2,), 50.0, dtype=torch.float64)
    W, s, M, centre = all_reduce_moments(w, Zs.sum(1), Zs.transpose(1, 2) @ Zs, shift)
    mean = Z.mean(1)
    Zc = Z - mean[:, None]
    torch.testing.assert_close(centre, mean, rtol=1e-13, atol=0)
    torch.testing.assert_close(s, torch.zeros_like(s), rtol=0, atol=1e-11)
    torch.testing.assert_close(M, Zc.transpose(1, 2) @ Zc, rtol=1e-12, atol=1e-10)
    assert torch.equal(W, w)


def test_distributed_needs_a_process_group():
    with pytest.raises(BeliefLensError, match="no process group is initialised; launch with"):
        fit_position_probes(tiny(), mess3(), TokenMap(IDS), HOOKS, n_sequences=8, distributed=True)


def test_cli_refuses_to_run_outside_torchrun(tmp_path, capsys, monkeypatch):
    from belief_lens.probing.torchrun import main

    monkeypatch.delenv("RANK", raising=False)
    args = ["--random", "2,16", "--token-ids", *map(str, IDS), "--out", str(tmp_path)]
    assert main(args) == 2
    assert "run me under torchrun" in capsys.readouterr().err


# ------------------------------------------------------------------------------ two processes
def test_two_gloo_processes_give_the_single_process_probes(tmp_path):
    """Each rank harvests half the sequences in several batches (so each rank's statistics have
    their own shift); the all-reduced probes equal one process's to 1e-10 relative.

    One window over all positions keeps the Gram matrix well conditioned (cond ~ 3e4): two
    float64 fits that add the same rows in different orders agree to about cond * 1e-16, so a
    1e-10 comparison is only meaningful where that is small."""
    out = tmp_path / "run"
    n, length = 80, 12
    cmd = [
        "-m", "belief_lens.probing.torchrun", "--random", "2,16", "--token-ids", *map(str, IDS),
        "--process", "mess3", "--n-sequences", str(n), "--length", str(length), "--window", "0",
        "--hooks", *HOOKS, "--batch-size", "8", "--backend", "gloo", "--seed", "3",
        "--out", str(out),
    ]  # fmt: skip
    proc = torchrun(cmd)
    assert "probes from 2 ranks (gloo)" in proc.stdout

    from safetensors.torch import load_file

    got = load_file(out / "probes.safetensors")
    table = json.loads((out / "table.json").read_text())
    assert table["meta"]["world_size"] == 2
    one = fit_position_probes(
        tiny(), mess3(), TokenMap(IDS), HOOKS, n_sequences=n, length=length, window=None,
        seed=3, batch_size=24,
    )  # fmt: skip
    assert len(got) == 5 * len(one.probes)
    for (hook, start), probe in one.probes.items():
        for name in ("coef_", "intercept_", "encoding_"):
            assert rel(got[f"{hook}/{start}/{name}"], getattr(probe, name)) < 1e-10, (hook, name)
    for row, ref in zip(table["rows"], one.rows, strict=True):
        assert row["hook"] == ref["hook"]
        assert (row["train_prefixes"], row["test_prefixes"]) == (
            ref["train_prefixes"], ref["test_prefixes"]
        )  # fmt: skip
        for key in ("mse_train", "r2_train", "mse_heldout", "r2_heldout"):
            assert abs(row[key] - ref[key]) <= 1e-10 * abs(ref[key]), (row["hook"], key)


# ------------------------------------------------------------------------------ precision
def _scores(model, **kw):
    """``[hook, (train, test)]`` MSE and R^2 of one-window probes on 400 sequences."""
    table = fit_position_probes(
        model, mess3(), TokenMap(IDS), HOOKS, n_sequences=400, length=12, window=None, seed=0, **kw
    )
    get = lambda key: [[r[f"{key}_train"], r[f"{key}_heldout"]] for r in table.rows]  # noqa: E731
    return torch.tensor(get("mse"), dtype=torch.float64), torch.tensor(
        get("r2"), dtype=torch.float64
    )


def _mse(model, **kw):
    return _scores(model, **kw)[0]


def _precision_bound(dtype, r2):
    """Relative MSE change expected from activations rounded to unit roundoff ``u``.

    A relative perturbation ``u`` of the activations moves predictions by about ``u`` times the
    target's spread; against residuals of size ``sqrt(mse)`` that changes the (held-out) MSE by
    about ``2 u sqrt(var / mse) = 2 u / sqrt(1 - R^2)`` relative. Two layers of rounding and a
    margin give 4 u / sqrt(1 - R^2)."""
    u = torch.finfo(dtype).eps / 2
    return 4 * u / (1 - r2).sqrt()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models_give_the_float32_mse_within_their_precision(dtype):
    ref, r2 = _scores(tiny())
    low = _mse(tiny().to(dtype))
    assert (((low - ref).abs() / ref) < _precision_bound(dtype, r2)).all(), (low, ref, r2)
    assert not torch.equal(low, ref)  # the model really ran in low precision


# ------------------------------------------------------------------------------ CUDA
@CUDA
def test_cuda_harvest_matches_cpu():
    """Activations and statistics stay on the GPU; probes agree with the CPU's to the float32
    forward pass's precision (kernels differ)."""
    ref = _mse(tiny())
    gpu = _mse(tiny(device="cuda"))
    assert ((gpu - ref).abs() / ref).max() < 1e-3


@CUDA
def test_cuda_bf16_model():
    ref, r2 = _scores(tiny(device="cuda"))
    low = _mse(tiny(device="cuda").to(torch.bfloat16))
    assert (((low - ref).abs() / ref) < _precision_bound(torch.bfloat16, r2)).all()


@CUDA
def test_cuda_host_synchronisations_do_not_grow_with_batches():
    """No device-to-host synchronisation per batch: torch's sync debug mode warns at each one,
    and 8 batches give no more warnings than 2. (TransformerLens's forward pass is in the loop,
    so this checks it too.)"""
    import warnings

    model = tiny(device="cuda")

    def syncs(batch_size: int) -> int:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _mse(model, batch_size=batch_size)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(50) == syncs(200)


@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for a two-process NCCL run"
)
def test_two_nccl_processes(tmp_path):
    cmd = [
        "-m", "belief_lens.probing.torchrun", "--random", "2,16", "--token-ids", *map(str, IDS),
        "--n-sequences", "80", "--length", "12", "--window", "0", "--hooks", *HOOKS,
        "--backend", "nccl", "--out", str(tmp_path),
    ]  # fmt: skip
    torchrun(cmd)
    from safetensors.torch import load_file

    got = load_file(tmp_path / "probes.safetensors")
    one = fit_position_probes(
        tiny(device="cuda"), mess3(), TokenMap(IDS), HOOKS, n_sequences=80, length=12, window=None
    )
    for (hook, start), probe in one.probes.items():
        assert rel(got[f"{hook}/{start}/coef_"], probe.coef_.cpu()) < 1e-10


def test_readme_torchrun_command_parses():
    """The README's "Large models" command uses only options the entry point has."""
    import re
    import shlex

    from belief_lens.probing.torchrun import _parser

    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Large models\n.*?```bash\n(.*?)```", text, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:5] == ["torchrun", "--standalone", "--nproc-per-node", "4", "-m"]
    assert argv[5] == "belief_lens.probing.torchrun"
    args = _parser().parse_args(argv[6:])
    assert (args.model, args.dtype, args.symbols, args.separator) == (
        "gpt2", "bfloat16", [" A", " B", " C"], ","
    )  # fmt: skip


FACTOR_SCRIPT = """
import os
import torch, torch.distributed as dist
from belief_lens.probes import AffineProbe
from belief_lens.probing.solvers import RowFactor

dist.init_process_group("gloo")
rank = dist.get_rank()
g = torch.Generator().manual_seed(0)
scales = torch.logspace(-3, 3, 12, dtype=torch.float64)  # columns 1e6 apart
X = (torch.randn(6000, 12, generator=g, dtype=torch.float64) + 100) * scales
Y = torch.softmax(torch.randn(6000, 3, generator=g, dtype=torch.float64), -1)
w = torch.rand(6000, generator=g, dtype=torch.float64)
mine = slice(0, 2500) if rank == 0 else slice(2500, 6000)
merged = RowFactor.zeros(12, 3)
for lo in range(mine.start, mine.stop, 700):  # streamed in batches, each rank its own shift
    hi = min(lo + 700, mine.stop)
    merged = merged + RowFactor.of(X[lo:hi], Y[lo:hi], w[lo:hi])
merged.all_reduce()
two = AffineProbe().fit_factor(merged)
one = AffineProbe().fit(X, Y, w)
err = max(
    float(((two.coef_ - one.coef_) * scales).abs().max() / (one.coef_ * scales).abs().max()),
    float((two.intercept_ - one.intercept_).abs().max() / one.intercept_.abs().max()),
)
if rank == 0:
    print("RESULT", err, merged.n_rows, two.rank_, one.rank_, flush=True)
dist.destroy_process_group()
os._exit(0)  # no interpreter teardown, as the entry point leaves (probing/torchrun.py)
"""


def test_two_gloo_processes_merge_row_factors_to_the_one_process_probe(tmp_path):
    """``RowFactor.all_reduce`` (each rank streams its shard, the factors are gathered and
    merged by a QR of the stack) gives the probe one process fits on all rows, to 1e-10."""
    script = tmp_path / "factor.py"
    script.write_text(FACTOR_SCRIPT)
    proc = torchrun([str(script)])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    _, err, n_rows, rank_two, rank_one = line.split()
    assert float(err) < 1e-10 and int(n_rows) == 6000 and rank_two == rank_one == "12"
