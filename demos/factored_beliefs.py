# %% [markdown]
# # Factored belief geometry: Mess3 x Mess3
#
# Shai et al., "Transformers learn factored representations" (arXiv 2602.02385), contrast two
# ways a network can hold its belief about a world made of parts. Two Mess3 processes run side
# by side and emit one joint token (9 symbols, 9 joint hidden states):
# - the **joint** hypothesis: an affine image of the belief over all 9 states, 8 dimensions;
# - the **factored** hypothesis: each factor's belief in its own subspace, the subspaces
#   orthogonal, 2 + 2 = 4 dimensions; lossless here, because the factors are independent.
#
# We train the paper's 4-layer Mess3 architecture on the independent product and on a coupled
# version (joint-vocabulary noise `epsilon`: each joint token is replaced by a uniform one with
# probability epsilon, so observing one factor's token tells about the other's state), then read
# per-factor probes, principal angles between the factors' subspaces, and the effective
# dimension over training against both predictions.
#
# Run: `python demos/factored_beliefs.py [--epsilon 0.2] [--minutes 4] [--out runs/factored]`.

# %%
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from belief_lens.cli_args import export_formats
from belief_lens.experiments.factored import (
    FactoredExperiment,
    factored_training,
    run_factored_experiment,
    write_factored_report,
)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Factored belief geometry on Mess3 x Mess3.")
    p.add_argument("--epsilon", type=float, default=0.2, help="noise of the coupled run")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per run")
    p.add_argument("--max-steps", type=int, default=None, help="cap on training steps per run")
    p.add_argument("--out", default="runs/factored", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", default="png,pdf", help="figure files: png,pdf, png, pdf or none")
    return p.parse_args(argv)


# %%
def run_one(epsilon: float, args, out: Path) -> dict:
    training = factored_training(seconds=args.minutes * 60, steps=args.max_steps, seed=args.seed)
    run = run_factored_experiment(FactoredExperiment(epsilon=epsilon, train=training), out)
    export = export_formats(args.export)
    title = f"Factored belief geometry: {run.process_name}"
    return write_factored_report(run, out, title, export=export)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    results = {
        "independent": run_one(0.0, args, out / "independent"),
        "coupled": run_one(args.epsilon, args, out / "coupled"),
    }
    keys = ("epsilon", "steps", "factor_r2_heldout", "joint_r2_heldout", "max_subspace_cosine",
            "vary_one_overlap", "dims_95", "dims_99", "verdict", "factored_cost_nats")  # fmt: skip
    summary = {name: {k: m[k] for k in keys} for name, m in results.items()}
    print(json.dumps(summary, indent=1))
    print("predictions: factored", results["independent"]["predicted_dims_factored"],
          "dims, joint", results["independent"]["predicted_dims_joint"], "dims")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
