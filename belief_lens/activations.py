"""Reading residual streams through TransformerLens hooks.

Only the duck-typed hook surface shared by ``HookedTransformer`` and ``TransformerBridge`` is used
(``hooks``, ``hook_dict``, ``cfg``), so users' own models of either kind work unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens import tl_compat
from belief_lens.errors import BeliefLensError
from belief_lens.threads import recheck

logger = logging.getLogger(__name__)

__all__ = [
    "HookSpec",
    "block_entered",
    "blocks_match_forward",
    "check_finite_activations",
    "eval_mode",
    "final_logits",
    "logits_from_block",
    "logits_match_forward",
    "model_device",
    "require_eval_mode",
    "residual_hooks",
    "residual_stream",
    "resolve_hook",
]

#: A hook given by full name (``"blocks.3.hook_resid_post"``) or ``get_act_name`` shorthand
#: (``("resid_post", 3)``; negative layers count from the end).
HookSpec = Union[str, tuple[str, int]]  # noqa: UP007 (a runtime alias on Python 3.10)


def residual_hooks(model: Any) -> list[str]:
    """Residual-stream hook names in forward order.

    ``blocks.0.hook_resid_pre`` (the embeddings), then each layer's ``hook_resid_mid`` and
    ``hook_resid_post``, then ``ln_final.hook_normalized`` (omitted if the model has no final norm).
    """
    n_layers = int(model.cfg.n_layers)
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(n_layers):
        if not getattr(model.cfg, "attn_only", False):
            names.append(f"blocks.{layer}.hook_resid_mid")
        names.append(f"blocks.{layer}.hook_resid_post")
    if "ln_final.hook_normalized" in model.hook_dict:
        names.append("ln_final.hook_normalized")
    return names


def resolve_hook(model: Any, hook: HookSpec) -> str:
    """Turn a hook name or ``(name, layer)`` shorthand into a full hook name the model has.

    An unknown hook raises, listing the model's residual-stream hooks.
    """
    if isinstance(hook, tuple):
        if len(hook) != 2 or not isinstance(hook[0], str) or not isinstance(hook[1], int):
            raise BeliefLensError(f"hook shorthand must be (name, layer), got {hook!r}")
        name, layer = hook
        n_layers = int(model.cfg.n_layers)
        if layer < 0:
            layer += n_layers
        if not 0 <= layer < n_layers:
            raise BeliefLensError(
                f"hook {hook!r}: layer must be in [-{n_layers}, {n_layers}), got {hook[1]}"
            )
        full = tl_compat.get_act_name(name, layer)
    elif isinstance(hook, str):
        full = tl_compat.get_act_name(hook)
    else:
        raise BeliefLensError(f"hook must be a name or (name, layer), got {type(hook).__name__}")
    if full not in model.hook_dict:
        raise BeliefLensError(
            f"unknown hook {hook!r} (resolved to {full!r}); residual-stream hooks of this model: "
            f"{residual_hooks(model)}"
        )
    return full


class _AllHooksFired(Exception):
    """Raised from the last wanted hook: the rest of the forward pass (the unembedding
    included) is not needed."""


def require_eval_mode(model: Any) -> None:
    """Raise listing the submodules still in train mode (dropout would corrupt activations)."""
    training = [name or "<model>" for name, module in model.named_modules() if module.training]
    if training:
        shown = training[:5] + (["..."] if len(training) > 5 else [])
        raise BeliefLensError(
            f"model is in train mode ({len(training)} modules training: {shown}); call model.eval()"
        )


def check_tokens(model: Any, tokens: Any) -> Int[Tensor, "n pos"]:
    """Validate tokens against the model: 2-D integers, at most ``n_ctx`` long, inside the vocab."""
    tokens = torch.as_tensor(tokens)
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise BeliefLensError(f"tokens must be integers, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise BeliefLensError(f"tokens must be [n, pos], got shape {tuple(tokens.shape)}")
    n_ctx = int(model.cfg.n_ctx)
    if tokens.shape[1] > n_ctx:
        raise BeliefLensError(
            f"tokens have {tokens.shape[1]} positions but the model's n_ctx is {n_ctx}"
        )
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise BeliefLensError(f"tokens are empty, shape {tuple(tokens.shape)}")
    d_vocab = int(model.cfg.d_vocab)
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= d_vocab):
        raise BeliefLensError(
            f"tokens must lie in [0, {d_vocab}) (the model's d_vocab), "
            f"got min {int(tokens.min())}, max {int(tokens.max())}"
        )
    return tokens.long()


def check_finite_activations(what: str, values: Tensor, step: int | None = None) -> None:
    """Raise if ``values`` (activations at a hook, or a model's logits) hold NaN or inf: every
    number computed from them (losses, probe fits, interventions) would be NaN or, worse, a
    NaN hidden by ``nan_to_num``, never a finding. ``what`` names them in the message."""
    if values.numel() == 0:
        return
    lo, hi = torch.aminmax(values.detach())  # NaN propagates: 10x cheaper than isfinite().all()
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        bad = ~torch.isfinite(values)
        at = f"training diverged: after {step} steps, " if step else ""
        raise BeliefLensError(
            f"{at}{what} are not finite ({int(bad.sum())} of {values.numel()} entries NaN or "
            "inf): the model's weights have diverged or hold NaN; train again with a lower "
            "learning rate (or a grad_clip), or load another checkpoint"
        )


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run the body with ``model`` in eval mode and without gradients, restoring its mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


@torch.no_grad()
def residual_stream(
    model: Any,
    tokens: Int[Tensor, "n pos"],
    hooks: HookSpec | Sequence[HookSpec] | None = None,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
) -> dict[str, Float[Tensor, "n pos d_model"]]:
    """Residual-stream activations at ``hooks`` (default: ``residual_hooks(model)``), float32.

    Runs in batches under ``torch.no_grad`` with hooks that keep only the requested activations
    and stop the forward pass once all have fired (no later block, no unembedding). Returns
    ``{hook: [n, pos, d_model]}`` in the order asked, always a dict, one hook included
    (``torch.cat(list(acts.values()), -1)`` concatenates them). Results land on ``device``
    (default CPU). The model must be in eval mode.
    """
    require_eval_mode(model)
    tokens = check_tokens(model, tokens)
    if hooks is None:
        names = residual_hooks(model)
    elif isinstance(hooks, (str, tuple)):
        names = [resolve_hook(model, hooks)]
    else:
        names = [resolve_hook(model, h) for h in hooks]
    if not names:
        raise BeliefLensError("hooks is empty; give at least one hook name")
    names = list(dict.fromkeys(names))
    if batch_size < 1:
        raise BeliefLensError(f"batch_size must be >= 1, got {batch_size}")
    out_device = torch.device("cpu") if device is None else torch.device(device)
    in_device = model_device(model)
    chunks: dict[str, list[Tensor]] = {name: [] for name in names}
    got: dict[str, Tensor] = {}

    def grabber(name: str):
        def grab(activation: Tensor, hook: Any) -> None:
            got[name] = activation.detach().to(out_device, torch.float32)
            if len(got) == len(names):
                raise _AllHooksFired

        return grab

    fwd_hooks = [(name, grabber(name)) for name in names]
    for start in range(0, tokens.shape[0], batch_size):
        # Host-to-device copies never need the host to wait (a pinned source runs async).
        batch = tokens[start : start + batch_size].to(in_device, non_blocking=True)
        got.clear()
        recheck()  # for a model other than the one a stage's thread guard watches
        try:
            with model.hooks(fwd_hooks=fwd_hooks):
                model(batch)
        except _AllHooksFired:
            pass
        missing = [name for name in names if name not in got]
        if missing:
            raise BeliefLensError(f"hooks {missing} did not fire during the forward pass")
        for name in names:
            check_finite_activations(f"activations at {name}", got[name])
            chunks[name].append(got[name])
    out: dict[str, Tensor] = {}
    for name, parts in chunks.items():
        out[name] = parts[0] if _sole_owner(parts, out.values()) else torch.cat(parts)
    return out


def _sole_owner(parts: list[Tensor], kept: Iterable[Tensor]) -> bool:
    """Whether one batch's activation can be returned uncopied: it is the whole of a storage of
    its own, shared with no other hook's (a copy through ``torch.cat`` cost the Mess3 probe run,
    which batches for itself, 1.1 s). A view, of the model's weights or of another hook's
    tensor, is copied, so writing into the result never writes into them."""
    if len(parts) != 1:
        return False
    a = parts[0]
    whole = a.untyped_storage().nbytes() == a.numel() * a.element_size()
    if not (a.is_contiguous() and a.storage_offset() == 0 and whole):
        return False
    ptr = a.untyped_storage().data_ptr()
    return all(k.untyped_storage().data_ptr() != ptr for k in kept)


def _unembed(model: Any, resid: Tensor) -> Tensor:
    """The final norm (where the model has one) and the unembedding, on the model's device."""
    norm = getattr(model, "ln_final", None)
    if norm is None:  # no final norm: the unembedding reads the residual stream itself
        norm = torch.nn.Identity()
    return model.unembed(norm(resid))


def final_logits(model: Any, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """The logits the last block's residual stream ``resid`` gives: the final norm (where the
    model has one) and the unembedding, float32 on the CPU, so a pass that stopped at the last
    block need not run again to the logits (check them with :func:`logits_match_forward`)."""
    with torch.no_grad():
        return _unembed(model, resid.to(model_device(model))).float().cpu()


def block_entered(model: Any, name: str) -> int | None:
    """The block whose input the residual stream at hook ``name`` is: ``k`` for
    ``blocks.k.hook_resid_pre``, ``k + 1`` for ``blocks.k.hook_resid_post`` (``n_layers``: the
    final norm's). None for any other hook, a model without a ``blocks`` stack, or a
    shortformer (its positions are added at every layer, not carried by the residual)."""
    if getattr(model.cfg, "positional_embedding_type", "") == "shortformer":
        return None
    if not isinstance(getattr(model, "blocks", None), torch.nn.ModuleList):
        return None
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", name)
    return None if m is None else int(m[1]) + (m[2] == "post")


def logits_from_block(
    model: Any, resid: Float[Tensor, "batch pos d_model"], start: int
) -> Float[Tensor, "batch pos d_vocab"]:
    """The model's logits from ``resid``, the residual stream entering block ``start``, running
    blocks ``start..`` only (on the model's device and dtype, hooks firing as usual). A
    ``HookedTransformer`` does this itself (``start_at_layer``); the bridge's ``start_at_layer``
    runs every block and swaps the residual in at ``start`` (TL 4.3), so there its blocks run one
    by one, then the final norm and unembedding. Check a model with
    :func:`blocks_match_forward` before trusting it."""
    if tl_compat.start_skips_blocks(model):
        return model(resid, start_at_layer=start)
    recheck()  # the blocks are called directly, past a thread guard's pre-hook on the model
    x = resid
    for block in model.blocks[start:]:
        out = block(x)
        x = out[0] if isinstance(out, tuple) else out
    return _unembed(model, x)


def blocks_match_forward(
    model: Any,
    logits: Float[Tensor, "n pos d_vocab"],
    entering: dict[int, Float[Tensor, "n pos d_model"]],
    k: int = 8,
) -> bool:
    """Whether :func:`logits_from_block` from each ``entering[start]`` (the residual stream
    entering block ``start`` on a pass that gave ``logits``) reproduces those logits on the
    first ``k`` sequences, to float32 rounding: a model whose blocks need more than the residual
    (position ids a rotary model takes from its caller, say) fails here, and is logged."""
    with torch.no_grad():
        if all(_agree(logits_from_block(model, r[:k], s), logits[:k]) for s, r in entering.items()):
            return True
    logger.info("running the blocks from a later one does not give the model's logits")
    return False


def _agree(got: Tensor, want: Tensor) -> bool:
    """Whether logits ``got`` are ``want`` to float32 rounding: the one criterion of
    :func:`blocks_match_forward` and :func:`logits_match_forward`."""
    got, want = got.float().cpu(), want.float().cpu()
    return torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def logits_match_forward(
    model: Any, logits: Float[Tensor, "n pos d_vocab"], tokens: Int[Tensor, "n pos"], k: int = 64
) -> bool:
    """Whether ``logits`` are the model's own forward pass on the first ``k`` sequences of
    ``tokens`` (to float32 rounding); logs where they are not."""
    k = min(len(tokens), k)
    with torch.no_grad():
        own = model(tokens[:k].to(model_device(model))).float().cpu()
    if _agree(logits[:k], own):
        return True
    logger.info("the final norm and unembedding of the last block do not give the logits")
    return False
