# %% [markdown]
# # Attention as constrained belief updating
#
# Piotrowski, Riechers, Filan & Shai (ICML 2025, arXiv 2502.01954) explain what the first
# attention layer of a transformer trained on Mess3 computes. Attention sums one vector per past
# token, so it cannot run Bayes' rule (a product of matrices); the paper's constrained update sums
# per-token corrections instead, each the one-token update from the stationary belief carried
# forward by the process's dynamics:
#
#     eta_d ~ pi + sum_{s <= d} (pi_{x_s} T^(d-s) - pi),   T = sum_x T^(x).
#
# For Mess3 every correction is an eigenvector of T with eigenvalue lam = 1 - 3x, so the token n
# steps back contributes lam^n times its correction: a log-slope ln|lam| per step of distance,
# along a direction fixed by the token (the OV vector). Where lam < 0 the contributions alternate
# in sign, which positive softmax weights cannot produce with one head.
#
# The constrained update is Bayes' rule to first order in the emission contrast, so it describes
# the optimum only for weak emissions (alpha near 1/3): `token_sum_profile` checks that on the
# process alone, from the best sum of one vector per past token on exact beliefs.
#
# This demo: the theory and its first-order check for the experiment's settings and the
# checkpoint's process, then the measurement on the paper's 4-layer checkpoint
# (if present), then (with `--train`) the head-count experiment.
#
# Run: `python demos/attention.py [--train] [--steps 1500] [--out runs/attention-demo]`.

# %%
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from belief_lens.attention import attention_theory, token_sum_profile
from belief_lens.beliefs import sample_sequences
from belief_lens.experiments.attention import (
    AttentionExperiment,
    analyse_attention,
    run_attention_experiment,
    write_attention_report,
)
from belief_lens.models import find_checkpoint, load_checkpoint
from belief_lens.processes import mess3


def parse_args(argv):
    p = argparse.ArgumentParser(description="Attention as constrained belief updating.")
    p.add_argument("--train", action="store_true", help="also run the head-count experiment")
    p.add_argument("--steps", type=int, default=1500, help="training steps per model")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="runs/attention-demo", help="output directory")
    return p.parse_args(argv)


# %% The theory, from the process alone, and whether its first-order assumption holds.
def show_theory() -> None:
    config = AttentionExperiment()
    for x, alpha in [config.positive, config.negative, config.checkpoint_process]:
        t = attention_theory(mess3(x, alpha))
        v = token_sum_profile(mess3(x, alpha))
        print(
            f"mess3(x={x}, alpha={alpha}): lam = {t.eigenvalue:+.3f}, heads needed "
            f"{t.heads_needed}, OV direction of token 0 {t.ov_directions()[0].tolist()}; "
            f"best token sum decays at {v.slope:+.3f} per step against ln|lam| "
            f"{v.predicted:+.3f} ({v.rel_gap:.0%} apart): first order "
            f"{'holds' if v.applies else 'fails'}"
        )


# %% The paper's 4-layer checkpoint, layer by layer.
def show_checkpoint() -> None:
    try:
        path = find_checkpoint("mess3_paper")
    except FileNotFoundError as err:
        print(f"skipping the checkpoint: {err}")
        return
    hmm = mess3()
    model = load_checkpoint(path).eval()
    tokens = sample_sequences(hmm, 2000, model.cfg.n_ctx, seed=0)
    analysis = analyse_attention(model, hmm, tokens, attention_theory(hmm))
    for (c, *_), r2 in zip(analysis.comparisons, analysis.probe_r2, strict=True):
        print(
            f"layer {c.layer}: contribution slope {c.contribution.slope:+.3f} "
            f"(± {c.contribution.se:.3f}), attention {c.attention.slope:+.3f}, predicted "
            f"{c.slope_predicted:+.3f}; OV cosine min {min(c.ov_cosines):.3f}; probe R² {r2:.3f}"
        )


# %% The head-count experiment.
def main(argv=None) -> int:
    args = parse_args(argv)
    show_theory()
    show_checkpoint()
    if args.train:
        config = AttentionExperiment(steps=args.steps, seeds=tuple(args.seeds))
        metrics = write_attention_report(run_attention_experiment(config), Path(args.out))
        keys = (
            "attention_slope_predicted",
            "attention_slope_measured",
            "attention_slope_raw",
            "attention_slope_rel_error",
            "ov_cosine_min",
            "head_count_prediction_holds",
        )
        print(json.dumps({k: metrics[k] for k in keys}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
