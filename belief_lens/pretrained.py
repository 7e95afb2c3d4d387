"""Pretrained language models, and local stand-ins with the same architecture.

``load_pretrained(name)`` loads a hub model as the installed TransformerLens kind: a
``HookedTransformer`` on TL 2.x/3.x and a ``TransformerBridge`` on TL 4.x. Where the hub is not
reachable it fails fast with a ``BeliefLensError`` instead of retrying for half a minute.

``gpt2_like(...)`` builds a randomly initialised GPT-2-architecture model (real-sized vocabulary,
learned positions, LayerNorm, GELU) without the hub, through the same TransformerLens path as a
pretrained GPT-2: ``HookedTransformer(HookedTransformerConfig(...))`` on TL < 4, and a bridge over
a ``transformers`` ``GPT2LMHeadModel`` built from a ``GPT2Config`` on TL 4. ``word_tokenizer``
gives it a small local tokenizer, so that ``TokenMap.from_strings`` works offline too.

TransformerLens and transformers are imported inside functions only.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import torch

from belief_lens import tl_compat
from belief_lens.errors import BeliefLensError
from belief_lens.models import seeded
from belief_lens.validation import check_int, check_seed

__all__ = [
    "GPT2_TOKENS",
    "gpt2_like",
    "hub_reachable",
    "load_pretrained",
    "word_tokenizer",
]

#: GPT-2 ids of a few single tokens, so local models use the same ids as the real vocabulary.
GPT2_TOKENS: dict[str, int] = {
    ",": 11,
    "0": 15,
    "1": 16,
    "2": 17,
    " A": 317,
    " B": 347,
    " C": 327,
    " 0": 657,
    " 1": 352,
    " 2": 362,
    "<|endoftext|>": 50256,
}

_EOT = "<|endoftext|>"


def word_tokenizer(
    vocab: Mapping[str, int] | None = None, d_vocab: int = 50257, eos: str = _EOT
) -> Any:
    """A local Hugging Face tokenizer whose words map to fixed ids (GPT-2's by default).

    Strings split GPT-2 style (a leading space belongs to the word: ``" A B"`` is
    ``[" A", " B"]``), and each piece found in ``vocab`` gets its id. Every other id up to
    ``d_vocab`` is filled by a placeholder ``<|id_N|>``, and unknown pieces become ``eos``, which is
    also the BOS, EOS and padding token. No download is involved.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(GPT2_TOKENS if vocab is None else vocab)
    if eos not in vocab:
        vocab[eos] = d_vocab - 1
    bad = {k: v for k, v in vocab.items() if not 0 <= v < d_vocab}
    if bad:
        raise BeliefLensError(f"word_tokenizer: ids must lie in [0, {d_vocab}), got {bad}")
    if len(set(vocab.values())) != len(vocab):
        raise BeliefLensError(f"word_tokenizer: two words share an id in {vocab}")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # The model vocabulary holds byte-level forms (" A" is stored as "ĠA"), as GPT-2's does.
    full = {"".join(p for p, _ in byte_level.pre_tokenize_str(w)) or w: i for w, i in vocab.items()}
    full[eos] = vocab[eos]
    taken = set(full.values())
    full.update({f"<|id_{i}|>": i for i in range(d_vocab) if i not in taken})
    tokenizer = Tokenizer(models.WordLevel(vocab=full, unk_token=eos))
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([eos])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=eos,
        eos_token=eos,
        unk_token=eos,
        pad_token=eos,
        # TransformerLens reloads a tokenizer by name unless add_bos_token is set.
        add_bos_token=True,
        name_or_path="belief_lens/word_tokenizer",
    )


def gpt2_like(
    d_vocab: int = 50257,
    n_ctx: int = 1024,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 2,
    d_mlp: int | None = None,
    *,
    tokenizer: Any | None = None,
    seed: int | None = 0,
    device: str | torch.device | None = None,
) -> Any:
    """A randomly initialised GPT-2-architecture model, built locally, in eval mode.

    GPT-2's architecture (learned positions, pre-LayerNorm, GELU MLP of ``4 * d_model`` unless
    ``d_mlp`` is given) at any size, with the real vocabulary size by default. ``tokenizer`` (e.g.
    ``word_tokenizer()``) is attached, so ``model.to_single_token`` and
    ``TokenMap.from_strings`` work. The same arguments and seed give the same weights; the
    caller's global RNG state is left untouched.
    """
    d_vocab, n_ctx, n_layers, d_model, n_heads = (
        check_int(f"gpt2_like: {name}", value, low=1)
        for name, value in (
            ("d_vocab", d_vocab),
            ("n_ctx", n_ctx),
            ("n_layers", n_layers),
            ("d_model", d_model),
            ("n_heads", n_heads),
        )
    )
    if d_model % n_heads:
        raise BeliefLensError(
            f"gpt2_like: d_model={d_model} must be divisible by n_heads={n_heads}"
        )
    d_mlp = 4 * d_model if d_mlp is None else check_int("gpt2_like: d_mlp", d_mlp, low=1)
    seed = None if seed is None else check_seed("gpt2_like: seed", seed)
    device = torch.device("cpu") if device is None else torch.device(device)
    if tl_compat.is_hooked_transformer_available():
        model = _hooked_gpt2(d_vocab, n_ctx, n_layers, d_model, n_heads, d_mlp, tokenizer, seed)
    else:
        model = _bridge_gpt2(d_vocab, n_ctx, n_layers, d_model, n_heads, d_mlp, tokenizer, seed)
    if device.type != "cpu":
        model = model.to(device)
    model.eval()
    return model


def _hooked_gpt2(d_vocab, n_ctx, n_layers, d_model, n_heads, d_mlp, tokenizer, seed) -> Any:
    model_cls, config_cls = tl_compat.hooked_classes()
    cfg = config_cls(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_model // n_heads,
        d_mlp=d_mlp,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        seed=seed,
        device="cpu",
    )
    with seeded(seed):
        return model_cls(cfg, tokenizer=tokenizer)


def _bridge_gpt2(d_vocab, n_ctx, n_layers, d_model, n_heads, d_mlp, tokenizer, seed) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    try:
        from transformer_lens.model_bridge.sources._bridge_builder import (
            build_bridge_from_module,
        )
    except ImportError as err:
        raise BeliefLensError(
            f"TransformerLens {tl_compat.tl_version_string()} cannot wrap a local transformers "
            f"model in a bridge ({err}); use belief_lens.models.toy_transformer instead"
        ) from err
    hf_config = GPT2Config(
        vocab_size=d_vocab,
        n_positions=n_ctx,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        n_inner=d_mlp,
        activation_function="gelu_new",
        bos_token_id=d_vocab - 1,
        eos_token_id=d_vocab - 1,
        # No dropout, as HookedTransformer: activations are a function of the input alone.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    with seeded(seed):
        hf_model = GPT2LMHeadModel(hf_config)
    hf_model.eval()
    return build_bridge_from_module(
        hf_model,
        "GPT2LMHeadModel",
        hf_config=hf_config,
        tokenizer=tokenizer,
        model_name="gpt2_like",
    )


# ---------------------------------------------------------------------------------------- hub
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds.

    False at once when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ) not in ("", "0"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(name: str) -> bool:
    """Whether the hub cache already holds ``name``'s config (so loading works offline)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for repo in (name, f"openai-community/{name}"):
        with contextlib.suppress(Exception):
            if isinstance(try_to_load_from_cache(repo, "config.json"), str):
                return True
    return False


def load_pretrained(name: str = "gpt2", *, device: str | torch.device | None = None) -> Any:
    """A pretrained model from the hub, as the installed TransformerLens kind, in eval mode.

    ``HookedTransformer.from_pretrained(name)`` on TL < 4, ``TransformerBridge.boot_transformers``
    on TL 4 (raw Hugging Face weights: no LayerNorm folding). Raises ``BeliefLensError`` starting
    with ``"model hub unreachable"`` when the hub cannot be reached and the model is not cached.
    """
    if not _cached(name) and not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise BeliefLensError(
            f"model hub unreachable: cannot load {name!r} ({endpoint} does not answer and the "
            "model is not in the local cache); build a local model with "
            "belief_lens.pretrained.gpt2_like() instead"
        )
    try:
        if tl_compat.is_hooked_transformer_available() and tl_compat.tl_version() < (4, 0, 0):
            model_cls, _ = tl_compat.hooked_classes()
            model = model_cls.from_pretrained(name, device=device)
        else:
            bridge_cls, _ = tl_compat.bridge_classes()
            if getattr(bridge_cls, "boot_transformers", None) is None:
                import transformer_lens.model_bridge.sources.transformers  # noqa: F401
            model = bridge_cls.boot_transformers(name, device=device)
    except OSError as err:
        raise BeliefLensError(f"model hub unreachable or {name!r} unknown there: {err}") from err
    model.eval()
    return model
