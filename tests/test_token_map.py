"""TokenMap: validation, layout, alignment of beliefs and predictions, restricted distributions."""

from __future__ import annotations

import pytest
import torch

from belief_lens.errors import BeliefLensError
from belief_lens.token_map import TokenMap

IDS = [317, 347, 327]  # GPT-2's " A", " B", " C"
COMMA, PERIOD, EOT = 11, 13, 50256
D_VOCAB = 50257


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ids": [464, 5, 464]}, "symbols 0 and 2 share token 464"),
        ({"ids": [3, -1]}, "non-negative.*-1"),
        ({"ids": [1, 2], "separator": [-4]}, "separator must be non-negative"),
        ({"ids": [1, 2], "bos": -1}, "bos must be non-negative"),
        ({"ids": [1, 2], "separator": [2]}, "separator token 2 is also the token of symbol 1"),
        ({"ids": [1, 2], "bos": 1}, "bos token 1 is also the token of symbol 0"),
        ({"ids": [1.0, 2.0]}, "integer token ids"),
        ({"ids": []}, "ids is empty"),
        ({"ids": [[1, 2]]}, "1-D"),
    ],
)
def test_constructor_errors(kwargs, match):
    ids = kwargs.pop("ids")
    with pytest.raises(BeliefLensError, match=match):
        TokenMap(ids, **kwargs)


def test_check_vocab_names_the_offending_id():
    tm = TokenMap([1, 2], separator=[60000])
    with pytest.raises(BeliefLensError, match="separator has token id 60000.*d_vocab=50257"):
        tm.check_vocab(D_VOCAB)
    with pytest.raises(BeliefLensError, match="symbol 1 has token id 2.*d_vocab=2"):
        TokenMap([0, 2]).check_vocab(2)

    class Model:
        class cfg:  # noqa: N801 (mimics model.cfg)
            d_vocab = 100

    with pytest.raises(BeliefLensError, match="bos has token id 100"):
        TokenMap([1, 2], bos=100).check_model(Model())
    assert TokenMap([1, 2], bos=99).check_model(Model()).bos == 99


def test_encode_rejects_bad_symbols():
    tm = TokenMap(IDS)
    with pytest.raises(BeliefLensError, match="symbol 3 is out of range for a map of 3"):
        tm.encode(torch.tensor([[0, 3]]))
    with pytest.raises(BeliefLensError, match="integers"):
        tm.encode(torch.tensor([[0.0, 1.0]]))


# ------------------------------------------------------------------------------ layout
@pytest.mark.parametrize(
    ("separator", "bos", "expected", "symbol_pos", "prediction_pos"),
    [
        (None, None, [317, 327, 347], [0, 1, 2], [0, 1, 2]),
        (None, EOT, [EOT, 317, 327, 347], [1, 2, 3], [1, 2, 3]),
        ([COMMA], None, [317, COMMA, 327, COMMA, 347, COMMA], [0, 2, 4], [1, 3, 5]),
        (
            [COMMA, PERIOD],
            EOT,
            [EOT, 317, COMMA, PERIOD, 327, COMMA, PERIOD, 347, COMMA, PERIOD],
            [1, 4, 7],
            [3, 6, 9],
        ),
    ],
)
def test_layout(separator, bos, expected, symbol_pos, prediction_pos):
    tm = TokenMap(IDS, separator=separator, bos=bos)
    symbols = torch.tensor([[0, 2, 1], [1, 1, 0]])
    tokens = tm.encode(symbols)
    assert tokens[0].tolist() == expected
    assert tokens.shape == (2, tm.model_length(3))
    assert tm.symbol_positions(3).tolist() == symbol_pos
    assert tm.prediction_positions(3).tolist() == prediction_pos
    # The symbol positions hold exactly the mapped symbols.
    assert torch.equal(tokens[:, tm.symbol_positions(3)], torch.tensor(IDS)[symbols])
    assert torch.equal(tm.decode(tokens), symbols)
    assert tm.max_symbols(tm.model_length(3)) == 3
    assert tm.max_symbols(tm.model_length(3) - 1) == 2


def test_initial_prediction_needs_bos():
    positions = TokenMap(IDS, bos=EOT).prediction_positions(2, include_initial=True)
    assert positions.tolist() == [0, 1, 2]
    with pytest.raises(BeliefLensError, match="include_initial=True needs a BOS token"):
        TokenMap(IDS).prediction_positions(2, include_initial=True)


def test_decode_rejects_foreign_layouts():
    tm = TokenMap(IDS, separator=[COMMA])
    with pytest.raises(BeliefLensError, match="not an encoding"):
        tm.decode(torch.tensor([[317, 5, 327, COMMA]]))
    with pytest.raises(BeliefLensError, match="do not fit the layout"):
        tm.decode(torch.tensor([[317, COMMA, 327]]))


# ------------------------------------------------------------------------------ restriction
def test_restrict_matches_a_manual_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, D_VOCAB, generator=gen, dtype=torch.float64) * 3
    tm = TokenMap(IDS)
    probs, off = tm.restrict(logits)
    full = torch.softmax(logits, dim=-1)
    mapped = full[..., IDS]
    assert probs.shape == (4, 5, 3) and off.shape == (4, 5)
    torch.testing.assert_close(probs, mapped / mapped.sum(-1, keepdim=True), rtol=1e-12, atol=0)
    torch.testing.assert_close(off, 1 - mapped.sum(-1), rtol=1e-9, atol=1e-15)
    # float32 logits give the same answer to float32 precision
    probs32, off32 = tm.restrict(logits.float())
    torch.testing.assert_close(probs32, probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(off32, off, rtol=1e-4, atol=1e-6)


def test_off_map_mass_is_accurate_when_tiny():
    """Almost all mass on the mapped tokens: 1 - sum would cancel; the map's figure does not."""
    logits = torch.full((1, D_VOCAB), -60.0, dtype=torch.float64)
    logits[0, IDS] = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    _, off = TokenMap(IDS).restrict(logits)
    rest = (D_VOCAB - 3) * torch.exp(torch.tensor(-60.0, dtype=torch.float64))
    expected = rest / (rest + torch.exp(torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)).sum())
    torch.testing.assert_close(off[0], expected, rtol=1e-9, atol=0)
    assert 0 < off[0] < 1e-20


@pytest.mark.parametrize(
    ("separator", "bos"), [(None, None), ([COMMA], None), ([COMMA, PERIOD], EOT), (None, EOT)]
)
def test_predictions_read_the_last_position_before_the_next_symbol(separator, bos):
    """Plant, at every model position p, a distribution over the mapped tokens that encodes p;
    ``predictions`` must return the ones planted at ``prediction_positions``."""
    tm = TokenMap(IDS, separator=separator, bos=bos)
    L = 4
    n_pos = tm.model_length(L)
    logits = torch.full((2, n_pos, D_VOCAB), -30.0, dtype=torch.float64)
    for p in range(n_pos):
        logits[:, p, IDS[0]] = 0.1 * p
    probs, off = tm.predictions(logits, L)
    assert probs.shape == (2, L, 3) and off.shape == (2, L)
    planted = torch.softmax(logits[0, :, IDS], -1)  # [n_pos, 3]
    for t in range(L):
        # the last position before symbol t + 1: symbol t itself, or its last separator
        p = (1 if bos else 0) + t * (1 + len(separator or [])) + len(separator or [])
        torch.testing.assert_close(probs[:, t], planted[p].expand(2, -1))
    if bos is not None:
        with_initial, _ = tm.predictions(logits, L, include_initial=True)
        assert with_initial.shape == (2, L + 1, 3)
        torch.testing.assert_close(with_initial[:, 0], planted[0].expand(2, -1))
        torch.testing.assert_close(with_initial[:, 1:], probs)


def test_predictions_check_shapes():
    tm = TokenMap(IDS, separator=[COMMA])
    with pytest.raises(BeliefLensError, match="3 symbols need 6 model positions.*have 5"):
        tm.predictions(torch.zeros(1, 5, 400), 3)
    with pytest.raises(BeliefLensError, match=r"\[n, L_model, d_vocab\]"):
        tm.predictions(torch.zeros(5, 400), 3)
    with pytest.raises(BeliefLensError, match="symbol 0 has token id 317.*d_vocab=300"):
        tm.predictions(torch.zeros(1, 6, 300), 3)


# ------------------------------------------------------------------------------ from strings
@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("tokenizers")
    from belief_lens.pretrained import word_tokenizer

    return word_tokenizer()


def test_from_strings_through_a_tokenizer(tokenizer):
    tm = TokenMap.from_strings(tokenizer, [" A", " B", " C"], separator=",", bos=True)
    assert tm == TokenMap(IDS, separator=[COMMA], bos=EOT)
    assert TokenMap.from_strings(tokenizer, [" 0", " 1"], bos=EOT).ids.tolist() == [657, 352]


def test_from_strings_names_a_string_that_is_not_one_token(tokenizer):
    with pytest.raises(
        BeliefLensError, match=r"symbol 1: ' B C' is not a single token.*2 tokens.*347.*327"
    ):
        TokenMap.from_strings(tokenizer, [" A", " B C", " D"])
    with pytest.raises(BeliefLensError, match="symbols 0 and 1 share token"):
        TokenMap.from_strings(tokenizer, [" A", " A"])
    with pytest.raises(BeliefLensError, match="one string per symbol"):
        TokenMap.from_strings(tokenizer, " A")


def test_from_strings_needs_a_tokenizer():
    class NoTokenizer:
        tokenizer = None

        class cfg:  # noqa: N801
            d_vocab = 10

    with pytest.raises(BeliefLensError, match="has no tokenizer.*TokenMap\\(\\[id_a"):
        TokenMap.from_strings(NoTokenizer(), [" A", " B"])


@pytest.mark.slow
def test_from_strings_on_a_transformer_lens_model(tokenizer):
    from belief_lens.pretrained import gpt2_like

    model = gpt2_like(n_ctx=16, d_model=16, n_heads=1, tokenizer=tokenizer)
    tm = TokenMap.from_strings(model, [" A", " B", " C"], separator=",", bos=True)
    assert tm.ids.tolist() == [model.to_single_token(s) for s in (" A", " B", " C")]
    assert tm.check_model(model) is tm
    # The model's own tokenizer writes the same text the map encodes.
    text = tokenizer.decode(tm.encode(torch.tensor([[0, 2, 1]]))[0, 1:])
    assert text == " A, C, B,"
