# %% [markdown]
# # One hidden structure, two vocabularies
#
# Does a transformer understand that two processes share their hidden structure but not their
# tokens? We train the paper's Mess3 architecture on a non-ergodic mixture: each sequence is
# Mess3, written either in tokens 0-2 (vocabulary A) or in tokens 3-5 (vocabulary B). Then we ask
# whether a belief probe fitted on A reads B (and the reverse), how far apart the two belief
# subspaces lie, whether steering B along A's encoding directions moves B's predictions as theory
# says (against a norm-matched control), and whether the mixture's own belief (which vocabulary,
# and the belief within it) is linearly decodable. The answer is whatever the model does.
#
# Run: `python demos/shared_structure.py [--minutes M] [--out DIR]`.

# %%
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from belief_lens.activations import eval_mode
from belief_lens.cli_args import export_formats
from belief_lens.models import ModelConfig, save_checkpoint, toy_transformer
from belief_lens.plotting import compare_figure
from belief_lens.processes import mess3, mixture
from belief_lens.report import shared_structure_section, write_report
from belief_lens.training import TrainConfig, evaluate_loss, train
from belief_lens.transfer import collect_vocab, shared_structure

VOCAB_MAPS = [[0, 1, 2], [3, 4, 5]]
HOOK = "blocks.3.hook_resid_post"


def parse_args(argv):
    p = argparse.ArgumentParser(description="Shared belief structure under two vocabularies.")
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget (default 5)")
    p.add_argument("--max-steps", type=int, default=None, help="cap on training steps")
    p.add_argument("--n-sequences", type=int, default=2048, help="probe sequences per vocabulary")
    p.add_argument(
        "--eval-sequences", type=int, default=200_000, help="loss evaluation (exact up to this)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/shared_structure")
    p.add_argument("--export", default="png,pdf", help="figure files: png,pdf, png, pdf or none")
    return p.parse_args(argv)


# %%
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if (out / "metrics.json").exists():
        raise SystemExit(f"{out / 'metrics.json'} exists; choose another --out")
    component = mess3()
    hmm = mixture([component, component], vocab_maps=VOCAB_MAPS)
    model = toy_transformer(ModelConfig.paper("mess3", d_vocab=6), seed=args.seed)
    config = TrainConfig.preset(
        "bayes", "mess3", seconds=args.minutes * 60, steps=args.max_steps, seed=args.seed
    )
    t0 = time.perf_counter()
    print(f"training on {hmm.name} for up to {args.minutes} min", flush=True)
    history = train(model, hmm, config, progress=True)
    train_seconds = time.perf_counter() - t0
    model.eval()
    print(
        f"trained {history.steps} steps in {train_seconds:.0f} s; evaluating the loss", flush=True
    )
    loss = evaluate_loss(model, hmm, n_sequences=args.eval_sequences)
    # The evaluation is of the trained model: record its step and tokens, not 0.
    tokens = history.steps * history.tokens_per_step
    loss = dataclasses.replace(loss, step=history.steps, tokens=tokens)
    print(f"loss {loss.loss_over_optimal:.4f}x the optimum; measuring at {HOOK}", flush=True)

    # %% Every measurement at the last residual stream.
    result = shared_structure(
        model, component, VOCAB_MAPS, HOOK, n_sequences=args.n_sequences, seed=args.seed
    )
    metrics = {
        **result.to_dict(),
        "train_steps": history.steps,
        "train_seconds": train_seconds,
        "loss": dataclasses.asdict(loss),
    }
    print(json.dumps(metrics, indent=1), flush=True)

    # %% A's probe read on B's sequences, beside B's true beliefs.
    b = collect_vocab(model, component, VOCAB_MAPS[1], HOOK, n_sequences=2000, seed=99)
    with eval_mode(model):
        pred = result.transfer.probe_a.predict(b.acts.reshape(-1, b.acts.shape[-1]).double())
    fig = compare_figure(
        b.beliefs.reshape(-1, 3), pred.cpu(), titles=("B: true beliefs", "B read by A's probe"),
        title="Probe fitted on vocabulary A, applied to vocabulary B",
    )  # fmt: skip
    section = shared_structure_section(result, [fig], loss_over_optimal=loss.loss_over_optimal)
    export = export_formats(args.export)
    write_report(out, "One structure, two vocabularies", [section], metrics, export=export)
    save_checkpoint(model, out / "model.safetensors", overwrite=True)  # a rerun, as the report
    print(f"wrote {out}/report.html and {out}/metrics.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
