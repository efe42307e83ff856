"""Tokenizer fingerprints: same ids pass, a look-alike tokenizer is refused with both names."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from teachers.fingerprint import Relation, TokenizerMismatch, check_compatible, fingerprint


@pytest.fixture(scope="module")
def swapped(other_tokenizer_dir):
    return AutoTokenizer.from_pretrained(other_tokenizer_dir)


def test_fingerprint_is_stable_and_records_special_ids(tokenizer, smollm2_dir):
    again = AutoTokenizer.from_pretrained(smollm2_dir)
    assert fingerprint(tokenizer) == fingerprint(again)
    fp = fingerprint(tokenizer)
    assert fp.special["eos"] == ("<|im_end|>", 2)
    assert fp.vocab_size == 49152 and fp.ordinary_tokens == 49152 - 17
    assert len(fp.digest) == 32


def test_same_tokenizer_is_compatible(tokenizer, smollm2_dir):
    found = check_compatible(tokenizer, AutoTokenizer.from_pretrained(smollm2_dir))
    assert found.notes == [] and found.relation is Relation.SAME
    assert found.choice == ("teacher and student tokenizers: same vocabulary: teacher ids cross "
                            "as they are")


def test_two_swapped_ids_are_refused_naming_both_tokenizers(tokenizer, swapped, smollm2_dir,
                                                           other_tokenizer_dir):
    assert fingerprint(swapped).digest != fingerprint(tokenizer).digest
    with pytest.raises(TokenizerMismatch) as info:
        check_compatible(swapped, tokenizer)
    message = str(info.value)
    assert str(other_tokenizer_dir) in message and str(smollm2_dir) in message
    assert "2 ordinary tokens map to different ids" in message
    assert "shares the student's tokenizer" in message


def test_different_vocabularies_take_the_cross_tokenizer_path_unless_off(tokenizer, swapped,
                                                                         whisper_tokenizer):
    for teacher in (swapped, whisper_tokenizer):
        found = check_compatible(teacher, tokenizer, cross_tokenizer="auto")
        assert found.relation is Relation.DIFFERENT
        assert found.choice.startswith("teacher and student tokenizers: different vocabularies: "
                                       "cross-tokenizer")
        assert found.choice.endswith("(loss.cross_tokenizer: auto)")
    with pytest.raises(TokenizerMismatch, match="set loss.cross_tokenizer to auto, map or uld"):
        check_compatible(whisper_tokenizer, tokenizer, cross_tokenizer="off")


def test_a_student_end_the_teacher_lacks_is_same_ordinary_not_refused(tokenizer, smollm2_dir):
    """The teacher's end rows are mapped onto the student's end (token_map.py), so an end id the
    teacher lacks is no longer a reason to refuse; a student without any EOS still is."""
    student = AutoTokenizer.from_pretrained(smollm2_dir)
    student.add_special_tokens({"eos_token": "<|my_end|>"})  # a new id 49152 the teacher lacks
    found = check_compatible(tokenizer, student)
    assert found.relation is Relation.SAME_ORDINARY
    assert any("'<|my_end|>' (id 49152)" in n for n in found.notes)
    student.eos_token = None
    with pytest.raises(TokenizerMismatch, match="has no EOS token"):
        check_compatible(tokenizer, student)
