# %% [markdown]
# # Belief-state geometry in the residual stream (Shai et al. 2024, Figures 2-4)
#
# Train the paper's transformer (4 layers, d_model 64) on Mess3 or RRXOR from scratch on a CPU,
# or load the paper's released checkpoint, then fit affine probes from the residual stream to the
# Bayesian belief states and draw them next to the ground truth.
#
# - Mess3: the beliefs form a fractal; the last layer's probe output reproduces it.
# - RRXOR: no single layer holds the geometry well; the concatenation of layers does, and the
#   geometry is more than the next-token geometry.
#
# Run: `python demos/paper_figures.py --process mess3` (or `rrxor`); `--checkpoint PATH` analyses a
# checkpoint instead of training. Figures and numbers go to `--out`.

# %%
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from belief_lens.activations import residual_hooks
from belief_lens.models import ModelConfig, load_checkpoint, toy_transformer
from belief_lens.plotting import compare_figure, layer_grid_figure, training_curve_figure
from belief_lens.probes import collect_probe_data, fit_probes, next_token_control
from belief_lens.processes import make_process
from belief_lens.training import TrainConfig, train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Reproduce the paper's belief-geometry figures.")
    parser.add_argument("--process", default="mess3", choices=("mess3", "rrxor"))
    parser.add_argument("--checkpoint", default=None, help="analyse this checkpoint, no training")
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on training steps")
    parser.add_argument("--mode", default="paper", choices=("paper", "weighted", "sampled"))
    parser.add_argument("--n-sequences", type=int, default=None, help="for --mode sampled")
    parser.add_argument("--out", default=None, help="output folder (default runs/<process>)")
    return parser.parse_args(argv)


# %% [markdown]
# ## The model: trained here with exact (Bayes) next-token targets, or the paper's checkpoint


# %%
def get_model(args: argparse.Namespace, hmm):
    if args.checkpoint:
        return load_checkpoint(args.checkpoint), None
    model = toy_transformer(ModelConfig.paper(args.process, d_vocab=hmm.n_symbols), seed=0)
    config = TrainConfig.preset(
        "bayes", args.process, seconds=args.minutes * 60, steps=args.max_steps
    )
    history = train(model, hmm, config, progress=False)
    return model, history


# %% [markdown]
# ## Probes per layer and on the concatenated residual stream


# %%
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    hmm = make_process(args.process)
    out = Path(args.out or f"runs/{args.process}")
    out.mkdir(parents=True, exist_ok=True)
    model, history = get_model(args, hmm)
    model.eval()
    hooks = residual_hooks(model)
    data = collect_probe_data(
        model, hmm, 10, hooks, mode=args.mode, n_sequences=args.n_sequences, seed=0
    )
    table = fit_probes(data)
    next_token = next_token_control(data)
    print(table.to_markdown())

    # %% Figures: ground truth beside the best probe, and every layer.
    S = hmm.n_states
    true = data.beliefs.reshape(-1, S)
    preds = {hk: table.probes[hk].predict(data.acts[hk].double()).reshape(-1, S) for hk in hooks}
    preds["concat"] = (
        table.probes["concat"]
        .predict(torch.cat([data.acts[hk] for hk in hooks], -1).double())
        .reshape(-1, S)
    )
    shown = "blocks.3.hook_resid_post" if args.process == "mess3" else "concat"
    sub = torch.randperm(len(true), generator=torch.Generator().manual_seed(0))[:30_000]
    compare_figure(
        true[sub], preds[shown][sub], titles=("Ground truth beliefs", f"Probe at {shown}"),
        title=f"{hmm.name}: belief geometry in the residual stream",
    ).write_html(out / "geometry.html")  # fmt: skip
    mse = {r["hook"]: r["mse_all"] for r in table.rows}
    layer_grid_figure(
        true[sub[:4000]], {k: v[sub[:4000]] for k, v in preds.items()}, mse
    ).write_html(out / "layers.html")
    if history is not None:
        per = history.tokens_per_step
        training_curve_figure(
            [per * (i + 1) for i in range(len(history.loss))],
            history.loss,
            sum(history.optimal_loss) / len(history.optimal_loss),
        ).write_html(out / "training.html")

    # %% Numbers behind the figures.
    results = {
        "process": hmm.name,
        "probes": table.to_dict(),
        "next_token_control": next_token.to_dict(),
    }
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    best = min(table.rows, key=lambda r: r["mse_heldout"])
    print(f"{hmm.name}: best held-out probe MSE {best['mse_heldout']:.2e} at {best['hook']}")
    print(f"figures in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
