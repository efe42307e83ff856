"""Character spans and their alignment, against hand-worked examples.

The real pair is SmolLM2's tokenizer and Whisper tiny.en's (both byte-level BPE, different
vocabularies); the token splits quoted in each test were read off those tokenizers and the
expected spans and groups worked out by hand from the characters.
"""

import pytest

from distill.data.char_spans import (
    BYTE_LEVEL,
    SENTENCEPIECE,
    SpanError,
    align_spans,
    char_spans,
    piece_bytes,
    spans_in_text,
    vocab_pieces,
)


def groups(pairs):
    return [(list(a), list(b)) for a, b in pairs]


def spans_of(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = vocab_pieces(tokenizer)
    return tokenizer.convert_ids_to_tokens(ids), spans_in_text([pieces[i] for i in ids], text)


def test_words_split_differently():
    # "unbelievable": un|belie|vable against un|bel|iev|able
    left = [(0, 2), (2, 7), (7, 12)]
    right = [(0, 2), (2, 5), (5, 8), (8, 12)]
    assert groups(align_spans(left, right)) == [([0], [0]), ([1, 2], [1, 2, 3])]


def test_real_tokenizers_numbers_and_words(tokenizer, whisper_tokenizer):
    text = "unbelievable 12345 tokens"
    smol_tokens, smol = spans_of(tokenizer, text)
    whisper_tokens, whisper = spans_of(whisper_tokenizer, text)
    assert smol_tokens == ["un", "belie", "vable", "Ġ", "1", "2", "3", "4", "5", "Ġtokens"]
    assert whisper_tokens == ["un", "bel", "iev", "able", "Ġ123", "45", "Ġtokens"]
    assert smol == [(0, 2), (2, 7), (7, 12), (12, 13), (13, 14), (14, 15), (15, 16), (16, 17),
                    (17, 18), (18, 25)]
    assert whisper == [(0, 2), (2, 5), (5, 8), (8, 12), (12, 16), (16, 18), (18, 25)]
    assert groups(align_spans(smol, whisper)) == [
        ([0], [0]), ([1, 2], [1, 2, 3]), ([3, 4, 5, 6], [4]), ([7, 8], [5]), ([9], [6])]


def test_leading_space_belongs_to_the_token_that_spells_it(tokenizer, whisper_tokenizer):
    # " Hello world": both spell ĠHello|Ġworld, the space inside each token's span
    for tok in (tokenizer, whisper_tokenizer):
        assert spans_of(tok, " Hello world")[1] == [(0, 6), (6, 12)]


def test_multibyte_characters_split_inside_a_character(tokenizer):
    # " 東京": 東 = e6 9d b1, 京 = e4 ba ac; SmolLM2 writes Ġæ (20 e6) | Ŀ (9d) | ± (b1) |
    # äº (e4 ba) | ¬ (ac). A token covers every character it holds a byte of.
    tokens, spans = spans_of(tokenizer, " 東京")
    assert tokens == ["Ġæ", "Ŀ", "±", "äº", "¬"]
    assert spans == [(0, 2), (1, 2), (1, 2), (2, 3), (2, 3)]
    whole = [(0, 2), (2, 3)]  # a tokenizer with Ġ東 and 京 as tokens
    assert groups(align_spans(spans, whole)) == [([0, 1, 2], [0]), ([3, 4], [1])]


def test_a_token_straddling_a_character_boundary_is_never_cut():
    # "x東y" as b"x\xe6" | b"\x9d\xb1y" against x | 東 | y: the only common cut is the end
    _, spans = char_spans([b"x\xe6", b"\x9d\xb1y"])
    assert spans == [(0, 2), (1, 3)]
    assert groups(align_spans(spans, [(0, 1), (1, 2), (2, 3)])) == [([0, 1], [0, 1, 2])]


def test_space_markers_byte_level_and_sentencepiece_spell_the_same_bytes():
    assert piece_bytes("Ġworld", BYTE_LEVEL) == b" world"
    assert piece_bytes("\u2581world", SENTENCEPIECE) == b" world"
    assert piece_bytes("<0xE6>", SENTENCEPIECE) == b"\xe6"
    assert piece_bytes("Ã©", BYTE_LEVEL) == "é".encode()
    # SentencePiece's leading space (its "dummy prefix") is outside the text: spans shift
    pieces = [piece_bytes(t, SENTENCEPIECE) for t in ["\u2581Hello", "\u2581wor", "ld"]]
    assert spans_in_text(pieces, "Hello world") == [(0, 5), (5, 9), (9, 11)]
    byte_level = [piece_bytes(t, BYTE_LEVEL) for t in ["Hello", "Ġworld"]]
    assert groups(align_spans(spans_in_text(byte_level, "Hello world"),
                              spans_in_text(pieces, "Hello world"))) == [([0], [0]),
                                                                         ([1], [1, 2])]


def test_end_tokens_pair_with_end_tokens():
    # zero-width specials at the end start their own group
    left = [(0, 5), (5, 5)]
    right = [(0, 2), (2, 5), (5, 5)]
    assert groups(align_spans(left, right)) == [([0], [0, 1]), ([1], [2])]


def test_leftover_tokens_form_a_last_group_without_partner():
    assert groups(align_spans([(0, 3)], [(0, 3), (3, 3)])) == [([0], [0]), ([], [1])]


def test_a_target_cut_at_a_maximum_length_spells_the_start_of_the_text():
    pieces = [b"Hello", b" wor"]
    assert spans_in_text(pieces, "Hello world", prefix=True) == [(0, 5), (5, 9)]
    with pytest.raises(SpanError):
        spans_in_text(pieces, "Hello world")
    with pytest.raises(SpanError):
        spans_in_text([b"Help"], "Hello world", prefix=True)


def test_tokens_that_do_not_spell_the_text_are_refused():
    with pytest.raises(SpanError, match="not the text"):
        spans_in_text([b"Hello"], "Help")
    with pytest.raises(SpanError, match="not UTF-8"):
        char_spans([b"\xe6"])
