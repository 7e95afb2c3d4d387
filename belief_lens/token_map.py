"""Token maps: HMM symbols written in a real model's vocabulary.

A pretrained language model reads HMM text through its own tokens: symbol ``x`` becomes token id
``ids[x]``, optionally followed by separator tokens (``" A, B, C,"``) and preceded by a BOS token.

Layout of one encoded sequence of ``L`` symbols (``k = len(separator)``, ``b = 1`` with BOS)::

    [BOS] s_0 sep.. s_1 sep.. ... s_{L-1} sep..          model_length(L) = b + L * (1 + k)

Every symbol is followed by the separator, the last one included, so that the model has made
its prediction of the next symbol after every symbol.

Alignment (DESIGN.md's rule, extended to separators and BOS):

- **beliefs**: ``beliefs[:, t]``, the belief after symbols ``0..t``, is read from the residual
  stream at ``symbol_positions(L)[t] = b + t * (1 + k)``, the position of symbol ``t`` itself,
  never a separator's.
- **predictions**: the model's distribution over symbol ``t + 1`` is read at
  ``prediction_positions(L)[t] = symbol_positions(L)[t] + k``, the last position before symbol
  ``t + 1`` appears (symbol ``t`` itself without separators, else its last separator). It should
  equal ``P(. | beliefs[:, t])``.
- **BOS**: position 0 holds BOS and has seen no symbol, so its prediction is the model's
  distribution over symbol 0, to compare with ``P(. | initial_state)``.
  ``predictions(..., include_initial=True)`` prepends it, aligned with
  ``[initial_state, beliefs[:, 0], ..., beliefs[:, L-1]]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from belief_lens.errors import BeliefLensError

__all__ = ["TokenMap"]


def _as_id_list(ids: Any, what: str) -> list[int]:
    """Integer token ids as a Python list, raising on floats, bools and non-1-D input."""
    if isinstance(ids, bool | np.bool_) or (
        isinstance(ids, list | tuple) and any(isinstance(i, bool | np.bool_) for i in ids)
    ):
        raise BeliefLensError(f"{what} must be integer token ids, got a bool in {ids!r}")
    t = torch.as_tensor(ids)
    if t.numel() == 0:
        return []
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise BeliefLensError(f"{what} must be integer token ids, got dtype {t.dtype}")
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1:
        raise BeliefLensError(f"{what} must be a 1-D list of token ids, got shape {tuple(t.shape)}")
    return [int(i) for i in t.tolist()]


def _tokenizer_of(model_or_tokenizer: Any) -> Any:
    """The Hugging Face tokenizer of a TransformerLens model, or the object itself if it is one."""
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None)
    if tokenizer is not None:
        return tokenizer
    if callable(getattr(model_or_tokenizer, "encode", None)) and not hasattr(
        model_or_tokenizer, "cfg"
    ):
        return model_or_tokenizer
    raise BeliefLensError(
        f"{type(model_or_tokenizer).__name__} has no tokenizer (model.tokenizer is None), so "
        "strings cannot be turned into token ids; build the map from ids instead: "
        "TokenMap([id_a, id_b, ...], separator=[...], bos=...)"
    )


def _encode_string(tokenizer: Any, string: str) -> list[int]:
    """Token ids of ``string`` without special tokens (no BOS/EOS added)."""
    try:
        ids = tokenizer.encode(string, add_special_tokens=False)
    except TypeError:  # a tokenizer-like object without the keyword
        ids = tokenizer.encode(string)
    return [int(i) for i in torch.as_tensor(ids).flatten().tolist()]


def _show_tokens(tokenizer: Any, ids: list[int]) -> str:
    """``[464 ' The', 318 ' is']``: ids with their strings, for error messages."""
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    pieces = convert(ids) if callable(convert) else [None] * len(ids)
    return (
        "["
        + ", ".join(
            f"{i} {p!r}" if p is not None else str(i) for i, p in zip(ids, pieces, strict=True)
        )
        + "]"
    )


class TokenMap:
    """Sends HMM symbols to model token ids, with optional separators and BOS.

    Args:
        ids: model token id of each HMM symbol, length ``n_symbols``; ids must be distinct.
        separator: token ids written after every symbol (e.g. the id of ``","``), or None.
        bos: a token id prepended to every sequence (pretrained models expect one), or None.

    See the module docstring for the position layout and the alignment of beliefs and
    predictions.

    >>> tm = TokenMap([317, 347, 327], separator=[11], bos=50256)
    >>> tm.encode(torch.tensor([[0, 2, 1]])).tolist()
    [[50256, 317, 11, 327, 11, 347, 11]]
    >>> tm.symbol_positions(3).tolist(), tm.prediction_positions(3).tolist()
    ([1, 3, 5], [2, 4, 6])
    """

    def __init__(
        self,
        ids: Sequence[int] | Tensor,
        *,
        separator: Sequence[int] | Tensor | int | None = None,
        bos: int | None = None,
    ) -> None:
        symbol_ids = _as_id_list(ids, "ids")
        if not symbol_ids:
            raise BeliefLensError("ids is empty: give one token id per HMM symbol")
        sep = [] if separator is None else _as_id_list(separator, "separator")
        if isinstance(bos, bool | np.bool_):
            raise BeliefLensError(
                f"bos must be a token id or None, got {bos!r}; for the tokenizer's own BOS use "
                "TokenMap.from_strings(model, ..., bos=True)"
            )
        if bos is not None and not isinstance(bos, int):
            bos_list = _as_id_list(bos, "bos")
            if len(bos_list) != 1:
                raise BeliefLensError(f"bos must be one token id, got {bos_list}")
            bos = bos_list[0]
        for what, values in (
            ("ids", symbol_ids),
            ("separator", sep),
            ("bos", [bos] * (bos is not None)),
        ):
            negative = [v for v in values if v < 0]
            if negative:
                raise BeliefLensError(f"{what} must be non-negative token ids, got {negative[0]}")
        first: dict[int, int] = {}
        for symbol, token in enumerate(symbol_ids):
            if token in first:
                raise BeliefLensError(
                    f"symbols {first[token]} and {symbol} share token {token}; each symbol needs "
                    "its own token, or the model cannot tell them apart"
                )
            first[token] = symbol
        for what, values in (("separator", sep), ("bos", [bos] * (bos is not None))):
            for token in values:
                if token in first:
                    raise BeliefLensError(
                        f"{what} token {token} is also the token of symbol {first[token]}; "
                        "separators and BOS must differ from every symbol's token"
                    )
        self.ids: Int[Tensor, " V"] = torch.tensor(symbol_ids, dtype=torch.long)
        self.separator: Int[Tensor, " k"] = torch.tensor(sep, dtype=torch.long)
        self.bos: int | None = bos

    # ------------------------------------------------------------------------- construction
    @classmethod
    def from_strings(
        cls,
        model: Any,
        strings: Sequence[str],
        *,
        separator: str | Sequence[int] | None = None,
        bos: int | str | bool | None = None,
    ) -> TokenMap:
        """Build a map from one string per symbol through the model's tokenizer.

        ``model`` is a TransformerLens model with a tokenizer (``model.tokenizer``) or a Hugging
        Face tokenizer itself. Each string must be exactly one token (mind the leading space of
        GPT-2-style vocabularies: ``" A"``, not ``"A"``); otherwise this raises, naming the string
        and its tokenization. ``separator`` is a string (any number of tokens) or token ids.
        ``bos=True`` uses the tokenizer's BOS token, a string or an id gives it explicitly.
        """
        tokenizer = _tokenizer_of(model)
        if isinstance(strings, str):
            raise BeliefLensError(
                f"strings must be a list with one string per symbol, got the string {strings!r}"
            )
        ids = []
        for symbol, string in enumerate(strings):
            tokens = _encode_string(tokenizer, string)
            if len(tokens) != 1:
                raise BeliefLensError(
                    f"symbol {symbol}: {string!r} is not a single token; the tokenizer splits it "
                    f"into {len(tokens)} tokens {_show_tokens(tokenizer, tokens)}"
                )
            ids.append(tokens[0])
        sep_ids = None
        if isinstance(separator, str):
            sep_ids = _encode_string(tokenizer, separator)
            if not sep_ids:
                raise BeliefLensError(f"separator {separator!r} tokenizes to no tokens")
        elif separator is not None:
            sep_ids = _as_id_list(separator, "separator")
        bos_id: int | None
        if bos is True:
            bos_id = getattr(tokenizer, "bos_token_id", None)
            if bos_id is None:
                raise BeliefLensError("bos=True but the tokenizer has no bos_token_id; pass an id")
        elif bos is None or bos is False:
            bos_id = None
        elif isinstance(bos, str):
            bos_tokens = _encode_string(tokenizer, bos)
            if len(bos_tokens) != 1:
                raise BeliefLensError(
                    f"bos {bos!r} is not a single token: {_show_tokens(tokenizer, bos_tokens)}"
                )
            bos_id = bos_tokens[0]
        else:
            bos_id = int(bos)
        return cls(ids, separator=sep_ids, bos=bos_id)

    # ------------------------------------------------------------------------- structure
    @property
    def n_symbols(self) -> int:
        """The number of HMM symbols mapped."""
        return int(self.ids.numel())

    @property
    def stride(self) -> int:
        """Model positions per symbol: the symbol plus its separator tokens."""
        return 1 + int(self.separator.numel())

    @property
    def offset(self) -> int:
        """Model positions before symbol 0: 1 with BOS, else 0."""
        return int(self.bos is not None)

    def model_length(self, length: int) -> int:
        """The number of model positions that ``length`` symbols take."""
        if length < 0:
            raise BeliefLensError(f"length must be >= 0, got {length}")
        return self.offset + length * self.stride

    def max_symbols(self, n_ctx: int) -> int:
        """The most symbols a model with context ``n_ctx`` can read through this map."""
        return max(0, (int(n_ctx) - self.offset) // self.stride)

    def symbol_positions(self, length: int) -> Int[Tensor, " length"]:
        """Model position of each symbol: where the belief after symbols ``0..t`` is read."""
        self.model_length(length)
        return self.offset + self.stride * torch.arange(length)

    def prediction_positions(self, length: int, include_initial: bool = False) -> Int[Tensor, " P"]:
        """Model position whose logits predict symbol ``t + 1``, for ``t = 0..length-1``.

        With ``include_initial``, position 0 (BOS, which predicts symbol 0) comes first; that
        needs a BOS token.
        """
        positions = self.symbol_positions(length) + (self.stride - 1)
        if include_initial:
            if self.bos is None:
                raise BeliefLensError(
                    "include_initial=True needs a BOS token: without one no model position has "
                    "seen zero symbols, so the prediction of symbol 0 is never made"
                )
            positions = torch.cat([torch.zeros(1, dtype=torch.long), positions])
        return positions

    # ------------------------------------------------------------------------- encoding
    def encode(self, symbols: Int[Tensor, "n L"]) -> Int[Tensor, "n L_model"]:
        """Model tokens for HMM symbol sequences: ``[BOS] s_0 sep s_1 sep ... s_{L-1} sep``."""
        symbols = torch.as_tensor(symbols)
        if symbols.dtype.is_floating_point or symbols.dtype == torch.bool:
            raise BeliefLensError(f"symbols must be integers, got dtype {symbols.dtype}")
        if symbols.ndim == 1:
            symbols = symbols[None]
        if symbols.ndim != 2:
            raise BeliefLensError(f"symbols must be [n, L], got shape {tuple(symbols.shape)}")
        symbols = symbols.long()
        if symbols.numel() and (symbols.min() < 0 or symbols.max() >= self.n_symbols):
            bad = int(symbols[(symbols < 0) | (symbols >= self.n_symbols)][0])
            raise BeliefLensError(
                f"symbol {bad} is out of range for a map of {self.n_symbols} symbols"
            )
        n, L = symbols.shape
        ids = self.ids.to(symbols.device)
        units = ids[symbols][..., None]  # [n, L, 1]
        if self.separator.numel():
            sep = self.separator.to(symbols.device).expand(n, L, -1)
            units = torch.cat([units, sep], dim=-1)  # [n, L, stride]
        tokens = units.reshape(n, L * self.stride)
        if self.bos is not None:
            bos = torch.full((n, 1), self.bos, dtype=torch.long, device=symbols.device)
            tokens = torch.cat([bos, tokens], dim=1)
        return tokens

    def decode(self, tokens: Int[Tensor, "n L_model"]) -> Int[Tensor, "n L"]:
        """HMM symbols back from model tokens laid out by ``encode``; raises on other layouts."""
        tokens = torch.as_tensor(tokens).long()
        if tokens.ndim == 1:
            tokens = tokens[None]
        L = self.max_symbols(tokens.shape[1])
        if tokens.shape[1] != self.model_length(L):
            raise BeliefLensError(
                f"{tokens.shape[1]} model tokens do not fit the layout of this map "
                f"(offset {self.offset} + stride {self.stride} per symbol)"
            )
        expected = self.encode(torch.zeros(1, L, dtype=torch.long))[0]
        at_symbols = tokens[:, self.symbol_positions(L)]
        matches = at_symbols[..., None] == self.ids.to(tokens.device)
        other = torch.ones(tokens.shape[1], dtype=torch.bool)
        other[self.symbol_positions(L)] = False
        if not matches.any(-1).all() or (tokens[:, other] != expected[other]).any():
            raise BeliefLensError(
                "tokens are not an encoding by this map (wrong ids at some positions)"
            )
        return matches.long().argmax(-1)

    def check_model(self, model: Any) -> TokenMap:
        """Raise unless every id lies inside ``model.cfg.d_vocab``; returns ``self``."""
        d_vocab = int(model.cfg.d_vocab)
        return self.check_vocab(d_vocab)

    def check_vocab(self, d_vocab: int) -> TokenMap:
        """Raise unless every id (symbols, separator, BOS) is below ``d_vocab``; returns self."""
        named = [(f"symbol {s}", int(i)) for s, i in enumerate(self.ids.tolist())]
        named += [("separator", int(i)) for i in self.separator.tolist()]
        if self.bos is not None:
            named.append(("bos", self.bos))
        for what, token in named:
            if token >= d_vocab:
                raise BeliefLensError(
                    f"{what} has token id {token}, outside the model's vocabulary of "
                    f"d_vocab={d_vocab}"
                )
        return self

    # ------------------------------------------------------------------------- reading logits
    def restrict(
        self, logits: Float[Tensor, "... d_vocab"]
    ) -> tuple[Float[Tensor, "... V"], Float[Tensor, "..."]]:
        """The model's distribution restricted to the mapped tokens, and the mass outside them.

        ``probs`` is the full-vocabulary softmax at the mapped ids, renormalised (float64);
        ``off_map_mass`` is ``1 - sum`` of the unrenormalised mapped probabilities.
        """
        logits = torch.as_tensor(logits)
        if logits.ndim < 1 or not logits.dtype.is_floating_point:
            raise BeliefLensError(
                f"logits must be a float tensor [..., d_vocab], got {tuple(logits.shape)} "
                f"{logits.dtype}"
            )
        self.check_vocab(logits.shape[-1])
        work = logits if logits.dtype == torch.float64 else logits.float()
        ids = self.ids.to(logits.device)
        lse_all = torch.logsumexp(work, dim=-1).double()
        probs = torch.softmax(work[..., ids].double(), dim=-1)
        # The off-map mass from its own log-sum-exp: exact even when it is far below float eps.
        lse_off = torch.logsumexp(work.index_fill(-1, ids, float("-inf")), dim=-1).double()
        off = torch.exp(lse_off - lse_all).clamp(0.0, 1.0)
        return probs, off

    def predictions(
        self,
        logits: Float[Tensor, "n L_model d_vocab"],
        length: int,
        include_initial: bool = False,
    ) -> tuple[Float[Tensor, "n P V"], Float[Tensor, "n P"]]:
        """The model's next-symbol distributions for sequences of ``length`` symbols.

        ``probs[:, t]`` is the model's distribution over symbol ``t + 1`` after symbols
        ``0..t`` (read at ``prediction_positions``), to compare with ``P(. | beliefs[:, t])``.
        With ``include_initial`` (BOS only) the BOS prediction of symbol 0 comes first, so
        ``P = length + 1`` and row 0 compares with ``P(. | initial_state)``.
        """
        logits = torch.as_tensor(logits)
        if logits.ndim != 3:
            raise BeliefLensError(
                f"logits must be [n, L_model, d_vocab], got shape {tuple(logits.shape)}"
            )
        need = self.model_length(length)
        if logits.shape[1] < need:
            raise BeliefLensError(
                f"{length} symbols need {need} model positions under this map, but logits "
                f"have {logits.shape[1]}"
            )
        positions = self.prediction_positions(length, include_initial).to(logits.device)
        return self.restrict(logits[:, positions])

    def __repr__(self) -> str:
        sep = self.separator.tolist() or None
        return f"TokenMap(ids={self.ids.tolist()}, separator={sep}, bos={self.bos})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenMap):
            return NotImplemented
        return (
            torch.equal(self.ids, other.ids)
            and torch.equal(self.separator, other.separator)
            and self.bos == other.bos
        )

    __hash__ = None  # type: ignore[assignment]
