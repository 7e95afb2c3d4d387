"""The memory a training run needs, estimated from the architecture and batch size before any
work, so an impossible run (a long context, a huge batch) is refused at once with the estimate
and the limit instead of failing in the allocator minutes later."""

from __future__ import annotations

from belief_lens.beliefs import check_memory
from belief_lens.models import ModelConfig
from belief_lens.training.evaluate import eval_batch_size

__all__ = ["check_training_memory", "training_bytes"]


def training_bytes(model: ModelConfig, batch_size: int) -> int:
    """Bytes of activations (float32) for the larger of one training step (forward and backward:
    attention scores, patterns and their gradients, the residual-stream and MLP activations) and
    one evaluation batch (forward only, one layer at a time)."""
    n, heads = model.n_ctx, model.n_heads
    width = 8 * model.d_model + 2 * model.d_mlp + 4 * heads * model.d_head + 3 * model.d_vocab
    train_floats = batch_size * model.n_layers * (4 * heads * n * n + width * n)
    eval_batch = eval_batch_size(n, model.d_vocab, heads)
    eval_floats = eval_batch * (2 * heads * n * n + width * n)
    return 4 * max(train_floats, eval_floats)


def check_training_memory(model: ModelConfig, batch_size: int, max_bytes: int | None = None) -> int:
    """Raise before any work when training ``model`` in batches of ``batch_size`` needs more than
    ``max_bytes`` (default: a quarter of the available memory); returns the estimate."""
    estimate = training_bytes(model, batch_size)
    check_memory(
        estimate,
        max_bytes,
        f"training a {model.n_layers}-layer model at n_ctx {model.n_ctx} in batches of "
        f"{batch_size}",
        "a shorter context (--n-ctx), a smaller batch (--batch-size), or a machine with more "
        "memory",
    )
    return estimate
