# %% [markdown]
# # Steering a transformer across the Mess3 fractal
#
# A probe shows that beliefs are linearly decodable; steering shows the model uses them. We take
# the paper's Mess3 checkpoint, pick a source and a target sequence whose beliefs lie far apart on
# the fractal, and move the source's last-position residual stream along the probe's encoding
# directions by `(target - current) @ P`. If the model computes its prediction from the belief,
# its next-token distribution must move to `P(. | target belief)`, which the HMM gives exactly.
# A norm-matched change along random directions orthogonal to the beliefs is the control.
# Then activation patching, through TransformerLens's own `generic_activation_patch`: swapping the
# belief subspace of a clean run into a corrupted one, against theory and the same control.
#
# Run: `python demos/belief_steering.py [--checkpoint PATH] [--out runs/steering]`.

# %%
from __future__ import annotations

import argparse
import json
from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from belief_lens.beliefs import belief_states, sample_sequences
from belief_lens.interventions import (
    Steer,
    intervene,
    intervention_report,
    patching_report,
    steerable_hooks,
)
from belief_lens.models import ModelConfig, find_checkpoint, load_checkpoint, toy_transformer
from belief_lens.plotting import patching_figure, simplex_projection
from belief_lens.probes import collect_probe_data, fit_probes
from belief_lens.processes import mess3
from belief_lens.training import TrainConfig, train


def parse_args(argv):
    p = argparse.ArgumentParser(description="Steer the Mess3 model's belief and compare to theory.")
    p.add_argument("--checkpoint", default=None, help="default: the paper's mess3 checkpoint")
    p.add_argument("--minutes", type=float, default=2.0, help="training budget without checkpoint")
    p.add_argument("--max-steps", type=int, default=None, help="cap on training steps")
    p.add_argument("--mode", default="paper", choices=("paper", "sampled"), help="probe data")
    p.add_argument("--n-sequences", type=int, default=None, help="for --mode sampled")
    p.add_argument("--report-sequences", type=int, default=512, help="sequences per layer")
    p.add_argument("--out", default="runs/steering")
    return p.parse_args(argv)


def get_model(args, hmm):
    path = args.checkpoint
    if path is None:
        try:
            path = find_checkpoint("mess3_paper")
        except FileNotFoundError:
            path = None
    if path is not None:
        return load_checkpoint(path).eval()
    print("paper checkpoint not found: training the paper architecture from scratch")
    model = toy_transformer(ModelConfig.paper("mess3", d_vocab=hmm.n_symbols), seed=0)
    config = TrainConfig.preset("bayes", "mess3", seconds=args.minutes * 60, steps=args.max_steps)
    train(model, hmm, config, progress=False)
    return model.eval()


# %% [markdown]
# ## One source, one target: decoded belief and prediction, before and after


# %%
def single_example(model, hmm, probe, hook):
    tokens = sample_sequences(hmm, 2000, 10, seed=0)
    last = belief_states(hmm, tokens)[:, -1]
    # The most distant pair among a few candidates: a clear move across the fractal.
    cand = torch.arange(50)
    dist = torch.cdist(last[cand], last[cand])
    i, j = divmod(int(dist.argmax()), len(cand))
    src, tgt = tokens[i : i + 1], last[j : j + 1]
    _, cache = model.run_with_cache(src, names_filter=[hook])
    acts = cache[hook]
    steer = Steer.from_probe(probe, hook, tgt, positions=-1)  # a value: save it, control it
    steered = steer.apply(acts)
    logits_before = model(src)[0, -1]
    logits_after = intervene(model, src, steer)[0, -1]
    return {
        "true source belief": last[i],
        "target belief": tgt[0],
        "decoded before": probe.predict(acts[0, -1].double()),
        "decoded after": probe.predict(steered[0, -1].double()),
        "theory: P(.|source)": hmm.next_token_probs(last[i]),
        "theory: P(.|target)": hmm.next_token_probs(tgt[0]),
        "model before": torch.softmax(logits_before.double(), -1),
        "model after": torch.softmax(logits_after.double(), -1),
    }


def example_figure(example, background):
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Belief (probe readout)", "Next token"))
    bg = simplex_projection(background)
    styles = {
        "true source belief": ("circle", "black"), "target belief": ("star", "red"),
        "decoded before": ("circle-open", "black"), "decoded after": ("star-open", "red"),
        "theory: P(.|source)": ("circle", "black"), "theory: P(.|target)": ("star", "red"),
        "model before": ("circle-open", "black"), "model after": ("star-open", "red"),
    }  # fmt: skip
    for col, keys in ((1, list(styles)[:4]), (2, list(styles)[4:])):
        fig.add_trace(
            go.Scattergl(x=bg[:, 0], y=bg[:, 1], mode="markers", showlegend=False,
                         marker={"size": 1.5, "color": "lightgray"}),
            row=1, col=col,
        )  # fmt: skip
        for k in keys:
            xy = simplex_projection(example[k][None])
            symbol, color = styles[k]
            fig.add_trace(
                go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=k,
                           marker={"size": 14, "symbol": symbol, "color": color}),
                row=1, col=col,
            )  # fmt: skip
    fig.update_layout(template="plotly_white", width=1000, height=480)
    return fig


# %% [markdown]
# ## Every layer: how far steering moves the model to theory


# %%
def layer_figure(summaries):
    fig = go.Figure()
    for kind in ("encoding", "decoding", "control"):
        fig.add_trace(
            go.Bar(x=list(summaries), y=[s[f"fold_{kind}"] for s in summaries.values()], name=kind)
        )
    fig.update_layout(
        yaxis={"type": "log", "title": "KL before / KL after (x)"},
        template="plotly_white",
        title="Steering to another sequence's belief, per hook",
        width=1000,
        height=450,
    )
    return fig


# %% [markdown]
# ## Every layer: patching the belief subspace, against theory
#
# `patching_report` runs `transformer_lens.patching.generic_activation_patch` with the package's
# `subspace_patch_setter` and `theory_kl_metric`: at each layer and position, the clean run's
# belief-subspace component replaces the corrupted run's. Recovery is 0 for the corrupted run and 1
# for the clean run, measured as KL from the theory's prediction for the clean belief.


# %%
def patch_every_layer(model, hmm, table, n):
    n_layers = int(model.cfg.n_layers)
    probes = {layer: table.probes[f"blocks.{layer}.hook_resid_post"] for layer in range(n_layers)}
    clean = sample_sequences(hmm, n, 10, seed=1)
    corrupted = sample_sequences(hmm, n, 10, seed=2)
    result = patching_report(model, clean, corrupted, probes, hmm)
    print(result.to_markdown())
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    hmm = mess3()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = get_model(args, hmm)
    hooks = steerable_hooks(model)
    data = collect_probe_data(model, hmm, 10, hooks, mode=args.mode, n_sequences=args.n_sequences)
    table = fit_probes(data, concat=False)
    hook = hooks[-1]
    example = single_example(model, hmm, table.probes[hook], hook)
    background = data.beliefs.reshape(-1, 3)[:20_000]
    example_figure(example, background).write_html(out / "example.html")
    summaries = {}
    for hk in hooks:
        rep = intervention_report(
            model, None, table.probes[hk], hk, hmm, n_sequences=args.report_sequences
        )
        s = summaries[hk] = rep.to_dict()
        print(
            f"{hk:26s} KL {s['kl_before_mean']:.4f} -> {s['kl_after_encoding_mean']:.4f} "
            f"encoding ({s['fold_encoding']:.0f}x), decoding {s['fold_decoding']:.1f}x, "
            f"control {s['fold_control']:.2f}x"
        )
    layer_figure(summaries).write_html(out / "layers.html")
    patching = patch_every_layer(model, hmm, table, args.report_sequences)
    patching_figure(patching).write_html(out / "patching.html")
    results = {
        "example": {k: v.tolist() for k, v in example.items()},
        "layers": summaries,
        "patching": patching.to_dict(),
    }
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    print(f"figures in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
