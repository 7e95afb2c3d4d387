# %% [markdown]
# # In-context learning and steering as one belief dynamics
#
# A transformer trained on a non-ergodic mixture of two Mess3 processes must infer, from context,
# which one is running: that inference is in-context learning (Riechers et al. 2025), and the
# mixture fixes its loss curve exactly. Steering along the model's component direction should
# act as a change of prior that context then argues against (Bigelow et al. 2025): in log-odds
# the two add, so a closed form with one fitted number `s` predicts the steered predictions and
# where the model switches component. A second closed form, also with one `s`, moves the belief
# itself toward the target component's vertex of the simplex (what a residual stream holding
# beliefs linearly does); it is the headline, the log-odds form is reported beside it. Here the
# latent concept (the component) and the evidence of each token are known exactly, so nothing
# else is assumed. The output says which predictions held and by how much.
#
# Run: `python demos/icl.py [--minutes M] [--out DIR]` (the same as `belief-lens icl`).

# %%
from __future__ import annotations

import argparse
import json
from pathlib import Path

from belief_lens.cli_args import export_formats
from belief_lens.experiments.icl import (
    ICLExperiment,
    icl_training,
    run_icl_experiment,
    write_icl_report,
)


def parse_args(argv):
    p = argparse.ArgumentParser(description="In-context learning and steering on a mixture.")
    p.add_argument("--minutes", type=float, default=5.0, help="training CPU minutes (default 5)")
    p.add_argument("--max-steps", type=int, default=None, help="cap on training steps")
    p.add_argument("--n-ctx", type=int, default=32, help="context length (default 32)")
    p.add_argument("--n-sequences", type=int, default=20_000, help="loss-curve sequences")
    p.add_argument("--n-probe-sequences", type=int, default=3000, help="probe sequences")
    p.add_argument("--n-steer-sequences", type=int, default=256, help="steered sequences")
    p.add_argument("--export", default="png,pdf", help="figure files: png,pdf, png, pdf or none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/icl")
    return p.parse_args(argv)


# %%
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if (out / "metrics.json").exists():
        raise SystemExit(f"{out / 'metrics.json'} exists; choose another --out")
    config = ICLExperiment(
        train=icl_training(seconds=args.minutes * 60, steps=args.max_steps, seed=args.seed),
        n_ctx=args.n_ctx,
        n_sequences=args.n_sequences,
        n_probe_sequences=args.n_probe_sequences,
        n_steer_sequences=args.n_steer_sequences,
    )

    # %% Train, then measure the loss curve, the component probe and the steering grid.
    run = run_icl_experiment(config)

    # %% What held, what did not, and by how much.
    for line in run.verdicts() + run.steering.verdicts():
        print(line)
    refs = run.references
    print(
        f"last position: optimum {float(refs.optimal[-1]):.4f}, never-updating "
        f"{float(refs.never_updating[-1]):.4f}, model {float(run.model_loss[-1]):.4f} nats"
    )

    # %% The report: loss curve, log-odds probe against the truth, the (n, alpha) phase diagram.
    export = export_formats(args.export)
    metrics = write_icl_report(run, out, export=export)
    print(json.dumps({k: metrics[k] for k in list(metrics)[:8]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
