# %% [markdown]
# # Does a pretrained language model track HMM beliefs in context?
#
# We write Mess3 and RRXOR text in GPT-2's vocabulary (" A, B, C," and " 0, 1,"), feed it to a
# pretrained model, and measure, as a function of the number of symbols seen:
#
# - the in-context learning curve: the model's next-symbol cross-entropy (its softmax restricted
#   to the mapped tokens) against the Bayes-optimal predictor, and the KL between them;
# - where beliefs live: affine probes from every residual-stream hook to the belief state, one
#   per window of context positions, scored on held-out sequences.
#
# Run: `python demos/pretrained_in_context.py [--model gpt2] [--out runs/pretrained_in_context]`.
# Where the model hub is unreachable it prints one line and exits with status 75 (EX_TEMPFAIL),
# unless `--local` (or `BELIEF_LENS_LOCAL_MODEL=1`) asks for a locally built GPT-2-architecture
# model, which goes through the same code path (CI runs it that way).

# %%
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from belief_lens.activations import residual_hooks
from belief_lens.errors import BeliefLensError
from belief_lens.in_context import fit_position_probes, in_context_curve
from belief_lens.pretrained import gpt2_like, load_pretrained, word_tokenizer
from belief_lens.processes import mess3, rrxor
from belief_lens.token_map import TokenMap
from belief_lens.training import TrainConfig, train

#: Exit status when the hub is unreachable (sysexits EX_TEMPFAIL: try again later).
EXIT_HUB_UNREACHABLE = 75

PROCESSES = {
    # name: (process, one string per symbol, separator)
    "mess3": (mess3, [" A", " B", " C"], ","),
    "rrxor": (rrxor, [" 0", " 1"], ","),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gpt2", help="hub model name (default: gpt2)")
    parser.add_argument(
        "--local",
        action="store_true",
        default=os.environ.get("BELIEF_LENS_LOCAL_MODEL", "0") not in ("", "0"),
        help="use a locally built GPT-2-like model instead of the hub "
        "(also BELIEF_LENS_LOCAL_MODEL=1)",
    )
    parser.add_argument("--out", default="runs/pretrained_in_context", help="output folder")
    parser.add_argument("--processes", nargs="+", default=list(PROCESSES), choices=list(PROCESSES))
    parser.add_argument("--n-sequences", type=int, default=256, help="sequences per measurement")
    parser.add_argument("--length", type=int, default=128, help="symbols per sequence")
    parser.add_argument("--window", type=int, default=16, help="context positions per probe")
    parser.add_argument("--device", default=None, help="e.g. cuda (default: CPU)")
    parser.add_argument("--memory-gb", type=float, default=4.0, help="memory bound for streaming")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="with --local, first train the local model this many steps on mapped text",
    )
    parser.add_argument("--local-layers", type=int, default=2)
    parser.add_argument("--local-d-model", type=int, default=64)
    return parser.parse_args(argv)


# %% [markdown]
# ## The model
# A hub model by name, or a GPT-2-architecture stand-in (real vocabulary, random weights) with a
# small local tokenizer that knows the tokens we use.


# %%
def load_model(args: argparse.Namespace):
    if args.local:
        n_ctx = 2 * args.length + 1  # BOS, then symbol and separator per symbol
        return gpt2_like(
            n_ctx=n_ctx,
            n_layers=args.local_layers,
            d_model=args.local_d_model,
            n_heads=2,
            tokenizer=word_tokenizer(),
            device=args.device,
        )
    return load_pretrained(args.model, device=args.device)


# %% [markdown]
# ## Figures


# %%
def curve_figure(curves: dict) -> go.Figure:
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("cross-entropy (nats)", "KL(Bayes || model)", "off-map mass"),
    )
    for i, (name, c) in enumerate(curves.items()):
        colour = ["#1f77b4", "#d62728", "#2ca02c"][i % 3]
        x = c.n_seen.tolist()
        fig.add_scatter(x=x, y=c.model_ce_mean.tolist(), name=f"{name}: model", row=1, col=1,
                        line={"color": colour})  # fmt: skip
        fig.add_scatter(x=x, y=c.optimal_entropy.tolist(), name=f"{name}: Bayes optimum",
                        row=1, col=1, line={"color": colour, "dash": "dash"})  # fmt: skip
        fig.add_scatter(x=x, y=c.kl_mean.tolist(), name=f"{name}: KL", row=1, col=2,
                        line={"color": colour}, showlegend=False)  # fmt: skip
        fig.add_scatter(x=x, y=c.off_map_mass_mean.tolist(), name=f"{name}: off-map", row=1,
                        col=3, line={"color": colour}, showlegend=False)  # fmt: skip
    fig.update_xaxes(title_text="symbols seen")
    fig.update_layout(title="In-context learning curve against the Bayes-optimal predictor")
    return fig


def probe_figure(tables: dict) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(tables), subplot_titles=list(tables))
    for j, (_name, table) in enumerate(tables.items(), start=1):
        grid = table.grid("r2_heldout")
        fig.add_heatmap(
            z=grid.tolist(),
            x=table.window_centres,
            y=table.hooks,
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={"title": "held-out R^2"},
            row=1,
            col=j,
        )
        fig.update_xaxes(title_text="symbols seen (window centre)", row=1, col=j)
    fig.update_layout(title="Belief probes per layer and context window", height=500)
    return fig


# %% [markdown]
# ## Run


# %%
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model = load_model(args)
    except BeliefLensError as err:
        if "hub unreachable" in str(err):
            print(
                f"pretrained_in_context: {err} (exit {EXIT_HUB_UNREACHABLE}; --local runs offline)"
            )
            return EXIT_HUB_UNREACHABLE
        raise
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    memory = int(args.memory_gb * 2**30)
    hooks = residual_hooks(model)
    curves, tables, metrics = {}, {}, {"model": args.model if not args.local else "gpt2_like"}
    for name in args.processes:
        make, strings, separator = PROCESSES[name]
        hmm = make()
        token_map = TokenMap.from_strings(model, strings, separator=separator, bos=True)
        length = min(args.length, token_map.max_symbols(int(model.cfg.n_ctx)))
        if args.local and args.train_steps > 0:
            config = TrainConfig(
                steps=args.train_steps, length=length, batch_size=16, lr=3e-3, targets="bayes",
                eval_sequences=64,
            )  # fmt: skip
            train(model, hmm, config, token_map=token_map, progress=False)
        print(f"{name}: {token_map}, {length} symbols, {args.n_sequences} sequences")
        curve = in_context_curve(
            model, hmm, token_map, args.n_sequences, length, memory_limit_bytes=memory
        )
        table = fit_position_probes(
            model, hmm, token_map, hooks, n_sequences=args.n_sequences, length=length,
            window=args.window, memory_limit_bytes=memory,
        )  # fmt: skip
        curves[name], tables[name] = curve, table
        best = max(table.rows, key=lambda r: r["r2_heldout"])
        print(
            f"  KL(Bayes || model) {curve.kl_mean[1].item():.3f} after 1 symbol, "
            f"{curve.kl_mean[-1].item():.3f} after {length}; off-map mass "
            f"{curve.off_map_mass_mean.mean().item():.3f}; best probe R^2 {best['r2_heldout']:.3f} "
            f"at {best['hook']} window {best['window_start']}-{best['window_stop']}"
        )
        metrics[name] = {
            "token_map": repr(token_map),
            "curve": curve.to_dict(),
            "probes": table.to_dict(),
        }
    curve_figure(curves).write_html(out / "in_context_curve.html")
    probe_figure(tables).write_html(out / "position_probes.html")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"wrote {out / 'in_context_curve.html'}, {out / 'position_probes.html'}, metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
