"""ASR scoring against hand-computed edit counts, normaliser cases included."""

import pytest

from distill.evaluate.asr import (
    character_error_rate,
    cut_at_end,
    error_rates_by_group,
    word_error_rate,
)


def test_wer_counts_substitution_and_deletion_by_hand():
    # "sat" -> "sit" is one substitution, the second "the" is deleted: 2 edits / 6 words.
    result = word_error_rate(["the cat sat on the mat"], ["the cat sit on mat"])
    assert (result.substitutions, result.deletions, result.insertions) == (1, 1, 0)
    assert result.reference_units == 6
    assert result.rate == pytest.approx(100 * 2 / 6)


def test_corpus_wer_is_total_edits_over_total_words_not_a_mean():
    refs = ["hello", "a quick brown fox jumps over the lazy dog"]
    hyps = ["goodbye", "a quick brown fox jumps over the lazy dog"]
    # per-utterance mean would be (100 + 0) / 2 = 50; corpus WER is 1 / 10.
    assert word_error_rate(refs, hyps).rate == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("reference", "hypothesis"),
    [
        ("The colour of the theatre", "the color of the theater"),  # British spellings
        ("I'm sure they won't go", "I am sure they will not go"),  # contractions
        ("He paid twenty five dollars", "he paid $25"),  # numbers and currency
        ("Hello, world!", "hello world"),  # case and punctuation
        ("It is Mr. Smith", "it is mister smith"),  # titles
    ],
)
def test_normaliser_makes_equivalent_spellings_equal(reference, hypothesis):
    assert word_error_rate([reference], [hypothesis]).rate == 0.0


def test_normaliser_does_not_hide_real_errors():
    assert word_error_rate(["twenty five"], ["twenty six"]).rate > 0


def test_cer_counts_characters():
    result = character_error_rate(["abcd"], ["abxd"])
    assert result.substitutions == 1 and result.reference_units == 4
    assert result.rate == pytest.approx(25.0)


def test_hypothesis_is_cut_at_the_first_end_token():
    text = "hello world<|eot_id|> and then babble<|end_of_text|>"
    assert cut_at_end(text, ["<|end_of_text|>", "<|eot_id|>"]) == "hello world"
    assert cut_at_end("no end here", ["</s>"]) == "no end here"


def test_breakdown_by_source_is_a_corpus_wer_per_group():
    refs = ["a b", "c d e f", "g h"]
    hyps = ["a x", "c d e f", "g h"]
    rates = error_rates_by_group(refs, hyps, ["libri", "giga", "libri"])
    assert rates["libri"].rate == pytest.approx(100 * 1 / 4)
    assert rates["giga"].rate == 0.0


def test_mismatched_lengths_are_a_clear_error():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


# --------------------------------------------------------- references empty after normalisation
def test_an_empty_reference_counts_its_insertions():
    # "uh" normalises to nothing; the protocol: total edits / total reference words =
    # (0 + 3 insertions) / (2 + 0 words) = 150 %.
    result = word_error_rate(["hello world", "uh"], ["hello world", "the cat sat"])
    assert (result.insertions, result.reference_units, result.utterances) == (3, 2, 2)
    assert result.empty_references == 1
    assert result.rate == pytest.approx(150.0)


@pytest.mark.parametrize(
    ("refs", "hyps", "edits", "words"),
    [
        (["", "a b"], ["", "a b"], 0, 2),  # empty reference, empty hypothesis: no edit
        (["hmm", "a b c"], ["x", "a c"], 2, 3),  # one insertion, one deletion
        (["um", "uh", "a"], ["b c", "", "a"], 2, 1),  # several empty references
    ],
)
def test_empty_references_follow_the_protocol(refs, hyps, edits, words):
    result = word_error_rate(refs, hyps)
    assert result.reference_units == words
    assert result.rate == pytest.approx(100 * edits / words)


def test_cer_counts_insertions_against_an_empty_reference():
    result = character_error_rate(["ab", "uh"], ["ab", "xyz"])
    assert (result.insertions, result.reference_units) == (3, 2)
    assert result.rate == pytest.approx(150.0)


def test_a_set_whose_references_are_all_empty_is_reported_as_such():
    result = word_error_rate(["uh", "hmm"], ["the cat", ""])
    assert result.rate is None and result.insertions == 2 and result.reference_units == 0
    assert "every reference is empty" in result.unavailable_reason
    assert word_error_rate([], []).unavailable_reason == "no utterances to score"


def test_a_group_of_empty_references_does_not_stop_the_breakdown():
    rates = error_rates_by_group(["uh", "a b"], ["x", "a b"], ["noise", "libri"])
    assert rates["noise"].rate is None and rates["noise"].insertions == 1
    assert rates["libri"].rate == 0.0
