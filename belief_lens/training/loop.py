"""The training loop: ``train(model, hmm, TrainConfig(...))``, within a step, token or time budget,
with resumable checkpoints that a crash cannot corrupt.

Data is sampled on the fly, vectorised, through ``make_batch``'s code (see :mod:`.data`), so a
run resumed from a checkpoint sees exactly the batches an uninterrupted run would. With
``targets="bayes"`` every prediction position is trained against the exact next-token
distribution ``P(. | belief)`` (soft-target cross-entropy): same optimum as sampled tokens, far
less noise. The learning-rate schedule is laid over the run's progress: the fraction of its steps
done, or of its time budget elapsed.

``train`` checks its arguments once, then runs short named steps over one :class:`_Run` state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from belief_lens.activations import model_device
from belief_lens.beliefs import check_hmm
from belief_lens.errors import BeliefLensError
from belief_lens.hmm import HMM
from belief_lens.models import ModelConfig
from belief_lens.token_map import TokenMap
from belief_lens.tracking import Tracker, active_tracker, start_tracking
from belief_lens.training.checkpoints import prepare_checkpoint_dir, resume, write_checkpoint
from belief_lens.training.config import TrainConfig, lr_at
from belief_lens.training.data import TrainingBatches, data_layout
from belief_lens.training.evaluate import Evaluator
from belief_lens.training.history import TrainingHistory, process_fingerprint
from belief_lens.training.progress import Progress, ProgressMode, check_progress

__all__ = ["train"]

logger = logging.getLogger(__name__)

Callback = Callable[[int, TrainingHistory], bool | None]


def train(
    model: Any,
    hmm: HMM,
    config: TrainConfig | None = None,
    *,
    token_map: TokenMap | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool | ProgressMode = True,
    callback: Callback | None = None,
    clock: Callable[[], float] = time.perf_counter,
    **overrides: Any,
) -> TrainingHistory:
    """Train ``model`` in place on sequences from ``hmm``; returns the ``TrainingHistory``.

    ``config`` is a ``TrainConfig``; keyword ``overrides`` replace its fields (or build one:
    ``train(model, hmm, steps=500, lr=3e-3)``). A toy model reads symbols as token ids
    ``0..n_symbols-1`` (BOS ``n_symbols``); any other model reads them through ``token_map``
    and is trained at the map's prediction positions against the full-vocabulary softmax.
    With a ``seconds`` budget the run ends within it, evaluations included, and the learning-rate
    schedule follows the fraction of the budget elapsed (measured with ``clock``).
    With ``checkpoint_dir``, checkpoints are written atomically and a rerun resumes from the
    newest intact one (a run of another process or configuration is refused by name); a
    step-budget run resumed gives exactly the uninterrupted result. ``callback(step, history)``
    runs after every step; returning True stops training there (after a last evaluation and
    checkpoint). The model's train/eval mode is restored at the end; data follows its device.
    With ``config.track`` (or inside a :func:`belief_lens.tracking.tracking` block, whose
    tracker is used) the parameters, each step's loss, ratio to optimum and learning rate, and
    each evaluation are logged to W&B or MLflow.
    ``progress``: True draws a bar on a terminal and writes a log line every tenth of the run or
    30 s otherwise (a piped log stays small); "bar" or "log" forces one; False shows nothing.
    """
    check_hmm(hmm)
    mode = check_progress(progress)
    config = _resolve_config(config, overrides)
    run = _start(model, hmm, config, token_map, checkpoint_dir, clock)
    was_training = model.training
    with contextlib.ExitStack() as stack:
        stack.callback(model.train, was_training)
        if mode is not None:
            run.display = Progress(
                mode,
                desc=f"train ({config.targets})",
                steps=run.steps,
                done=run.history.steps,
                start=_progress(run, run.history.steps),
                clock=clock,
            )
            stack.callback(run.display.close)
        _start_tracking(run, stack, hmm)
        model.train()
        _loop(run, callback)
        _finish(run)
    return run.history


def _start_tracking(run: _Run, stack: contextlib.ExitStack, hmm: HMM) -> None:
    """Log to the active tracker, or to a run of ``config.track`` started (and closed) here."""
    tracker = active_tracker()
    if tracker is None and run.config.track != "none":
        tracker = start_tracking(run.config.track, name=f"train-{hmm.name}")
        stack.enter_context(_closing(tracker))
    if tracker is None:
        return
    run.tracker, run.track_prefix = tracker, tracker.begin_training()
    history = run.history
    params = {"model": history.model_config, "train": history.config, "process": history.process}
    tracker.log_params(params if run.track_prefix == "train" else {run.track_prefix: params})


@contextlib.contextmanager
def _closing(tracker: Tracker) -> Any:
    """Close ``tracker`` at the end, marked failed if training raised."""
    try:
        yield
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close()


def _resolve_config(config: TrainConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    """The run's ``TrainConfig``: ``config`` with ``overrides``, or built from them."""
    if config is None:
        return TrainConfig(**overrides)
    if not isinstance(config, TrainConfig):
        raise BeliefLensError(f"config must be a TrainConfig, got {type(config).__name__}")
    return config.replace(**overrides) if overrides else config


@dataclass
class _Run:
    """The state a training run's steps share."""

    model: Any
    config: TrainConfig
    steps: int | None  # the step budget (from steps or n_tokens), None for time alone
    history: TrainingHistory
    optimizer: torch.optim.Optimizer
    batches: TrainingBatches
    evaluator: Evaluator
    directory: Path | None
    clock: Callable[[], float]
    t_start: float  # when the run began (less a resumed run's earlier training time)
    origin: float  # where the time-budget schedule starts
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reserve: dict[str, float] = field(default_factory=lambda: {"eval": 0.0, "checkpoint": 0.0})
    pending: list[Tensor] = field(default_factory=list)  # step losses not yet in the history
    pending_grads: list[Tensor] = field(default_factory=list)  # their gradient norms
    display: Progress | None = None
    tracker: Tracker | None = None
    track_prefix: str = "train"
    n_evals: int = 10
    next_eval: float = 0.0


def _start(
    model: Any,
    hmm: HMM,
    config: TrainConfig,
    token_map: TokenMap | None,
    checkpoint_dir: str | os.PathLike | None,
    clock: Callable[[], float],
) -> _Run:
    """Lay out the data, build the optimizer and history, resume from a checkpoint if there is
    one, and prepare the evaluation set and loss floor."""
    t_start = clock()
    layout = data_layout(model, hmm, config, token_map)
    tokens_per_step = config.batch_size * layout.n_predictions
    steps = config.steps
    if config.n_tokens is not None:
        steps = max(1, math.ceil(config.n_tokens / tokens_per_step))
    directory = prepare_checkpoint_dir(checkpoint_dir) if checkpoint_dir is not None else None
    optimizer = _make_optimizer(model, config)
    history = TrainingHistory(
        tokens_per_step=tokens_per_step,
        config=config.to_dict(),
        model_config=ModelConfig.from_model(model).to_dict(),
        process={"name": hmm.name, "fingerprint": process_fingerprint(hmm)}
        | ({"token_map": repr(token_map)} if token_map is not None else {}),
    )
    saved = resume(directory, model, optimizer, history, config) if directory else None
    if saved is not None:
        history = saved
        t_start = clock() - history.seconds
    evaluator = Evaluator.build(hmm, layout, config.eval_sequences, config.seed)
    history.set_floor(evaluator.floor)
    return _Run(
        model=model,
        config=config,
        steps=steps,
        history=history,
        optimizer=optimizer,
        batches=TrainingBatches(hmm, layout, config),
        evaluator=evaluator,
        directory=directory,
        clock=clock,
        t_start=t_start,
        # The schedule spans the loop's time: from its start (less the time of a resumed run's
        # earlier part) to the deadline, less the closing evaluation and checkpoint.
        origin=clock() - history.seconds,
        device=model_device(model),
    )


def _make_optimizer(model: Any, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)


def _progress(run: _Run, step: int) -> float:
    """The run's progress in ``[0, 1]`` after ``step`` steps: of its steps, or of its time budget
    (up to the deadline less the measured cost of a closing evaluation and checkpoint)."""
    p = step / run.steps if run.steps is not None else 0.0
    budget = run.config.seconds
    if budget is not None:
        reserve = 1.2 * (run.reserve["eval"] + run.reserve["checkpoint"])
        end = run.t_start + budget - reserve
        p = max(p, (run.clock() - run.origin) / max(end - run.origin, 1e-9))
    return p


def _loop(run: _Run, callback: Callback | None) -> None:
    """Train until the run's progress reaches 1 or the callback stops it."""
    step = run.history.steps
    if not run.history.evals:
        _evaluate(run, 0)
        run.origin = run.clock()
    # Evaluations at each tenth of the run; under a time budget, fewer where they would take
    # more than a tenth of it.
    budget = run.config.seconds
    if budget is not None and run.reserve["eval"] > 0:
        run.n_evals = max(1, min(10, int(0.1 * budget / run.reserve["eval"])))
    run.next_eval = math.floor(_progress(run, step) * run.n_evals + 1) / run.n_evals
    stopped = False
    while not stopped:
        p = _progress(run, step)
        if p >= 1.0:
            break
        _optimizer_step(run, step, p)
        step += 1
        if callback is not None:
            _flush(run)
            stopped = callback(step, run.history) is True
            if stopped:
                logger.info("callback stopped training at step %d", step)
        _after_step(run, step, stopped)


def _optimizer_step(run: _Run, step: int, progress: float) -> None:
    """One optimizer step on step ``step``'s batch at learning rate ``lr_at(step, progress)``."""
    config = run.config
    inputs, target = run.batches(step)
    lr = lr_at(step, progress, config)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    logp = run.batches.layout.model_logp(run.model(inputs.to(run.device, non_blocking=True)))
    target = target.to(run.device, non_blocking=True)
    if config.targets == "tokens":
        loss = F.nll_loss(logp.reshape(-1, logp.shape[-1]), target.reshape(-1))
    else:
        loss = -(target.to(logp.dtype) * logp).sum(-1).mean()
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    if config.grad_clip is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    else:
        grad_norm = grad_total_norm(grads)
    run.optimizer.step()
    run.pending.append(loss.detach())
    run.pending_grads.append(grad_norm.detach())
    run.history.lr.append(lr)


def _after_step(run: _Run, step: int, stopped: bool) -> None:
    """Evaluate, checkpoint and show progress as due after ``step`` steps."""
    config = run.config
    p_after = _progress(run, step)
    is_last = stopped or p_after >= 1.0
    if config.eval_every is not None:
        due = step % config.eval_every == 0
    else:
        due = p_after >= run.next_eval
        if due:
            run.next_eval = math.floor(p_after * run.n_evals + 1) / run.n_evals
    if len(run.pending) >= 32 or due or is_last:
        _flush(run)
    if due or is_last:
        _evaluate(run, step)
    if config.checkpoint_every is not None:
        save = step % config.checkpoint_every == 0 or is_last
    else:
        save = due or is_last
    if save:
        _checkpoint(run, step)
    if run.display is not None and run.display.due(p_after):
        run.display.update(step, p_after, lambda: _latest_loss(run), run.history.lr[-1])


def _latest_loss(run: _Run) -> float:
    """The last step's training loss (moving the pending losses into the history)."""
    _flush(run)
    return run.history.loss[-1] if run.history.loss else float("nan")


def grad_total_norm(grads: list[Tensor]) -> Tensor:
    """The 2-norm of all gradients together, on their device (no host sync)."""
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _flush(run: _Run) -> None:
    """Move the pending step losses into the history (one device sync for many steps), raising
    at the first step whose loss or gradient was not finite: a diverged run never reaches a
    checkpoint or an evaluation."""
    if run.pending:
        losses = torch.stack(run.pending).cpu()
        grads = torch.stack([g.float() for g in run.pending_grads]).cpu()
        bad = ~(torch.isfinite(losses) & torch.isfinite(grads))
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            step = len(run.history.loss) + i + 1
            loss, grad = float(losses[i]), float(grads[i])
            what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad}"
            lr = run.history.lr[step - 1] if step - 1 < len(run.history.lr) else run.config.lr
            raise BeliefLensError(
                f"training diverged: {what} at step {step} (learning rate {lr:.3g}); no "
                "checkpoint of it was written. Train again with a lower learning rate (e.g. "
                f"lr={run.config.lr / 10:.3g}) or a grad_clip"
            )
        first = len(run.history.loss)
        run.history.loss.extend(losses.tolist())
        if run.tracker is not None:
            _track_steps(run, first)
        run.pending.clear()
        run.pending_grads.clear()


def _track_steps(run: _Run, first: int) -> None:
    """Log steps ``first + 1``.. (their loss, its ratio to the optimal loss, the learning rate)."""
    floor, key = run.evaluator.floor.mean, run.track_prefix
    h = run.history
    rows = [
        (i + 1, {f"{key}/loss": h.loss[i], f"{key}/loss_over_optimal": h.loss[i] / floor,
                 f"{key}/lr": h.lr[i]})
        for i in range(first, len(h.loss))
    ]  # fmt: skip
    run.tracker.log_steps(rows)


def _evaluate(run: _Run, step: int) -> None:
    """Evaluate the model after ``step`` steps, timing it for the budget's reserve."""
    t0 = run.clock()
    run.model.eval()
    tokens = step * run.history.tokens_per_step
    record = run.evaluator(run.model, step, tokens, run.clock() - run.t_start)
    run.model.train()
    run.reserve["eval"] = run.clock() - t0
    run.history.evals.append(record)
    ratio = f"{record.loss_over_optimal:.4f}"
    method = run.evaluator.floor.method
    # With a progress display the ratio shows there; a separate line would repeat it.
    log = logger.debug if run.display is not None else logger.info
    log("step %d (%.0f s): loss %.5f (%s x optimal, %s)", step, record.seconds, record.loss,
        ratio, method)  # fmt: skip
    if run.display is not None:
        run.display.evaluated(step, record.loss, record.loss_over_optimal)
    if run.tracker is not None:
        key = run.track_prefix
        values = {
            f"{key}/eval_loss": record.loss,
            f"{key}/eval_loss_over_optimal": record.loss_over_optimal,
        }
        run.tracker.log_steps([(step, values | {f"{key}/tokens": float(tokens)})])


def _checkpoint(run: _Run, step: int) -> None:
    """Write the step checkpoint (with a checkpoint_dir), timing it for the budget's reserve."""
    if run.directory is None:
        return
    t0 = run.clock()
    _flush(run)
    run.history.seconds = run.clock() - run.t_start
    write_checkpoint(
        run.directory, run.model, run.optimizer, run.history, step, run.config.keep_checkpoints
    )
    run.reserve["checkpoint"] = run.clock() - t0


def _finish(run: _Run) -> None:
    """Close the run: a last evaluation and checkpoint unless the last step had them."""
    _flush(run)
    step = run.history.steps
    if not run.history.evals or run.history.evals[-1].step != step:
        _evaluate(run, step)
        _checkpoint(run, step)
    run.history.seconds = run.clock() - run.t_start
    if run.display is not None and run.history.lr:
        p = min(1.0, _progress(run, step))
        p = 1.0 if p >= 0.99 else p  # a time budget ends within a hair of its deadline
        run.display.finish(step, p, lambda: _latest_loss(run), run.history.lr[-1])
