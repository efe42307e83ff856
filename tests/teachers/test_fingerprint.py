"""Tokenizer fingerprints: same ids pass, a look-alike tokenizer is refused with both names."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from teachers.fingerprint import TokenizerMismatch, check_compatible, fingerprint


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
    assert check_compatible(tokenizer, AutoTokenizer.from_pretrained(smollm2_dir)) == []


def test_two_swapped_ids_are_refused_naming_both_tokenizers(tokenizer, swapped, smollm2_dir,
                                                           other_tokenizer_dir):
    assert fingerprint(swapped).digest != fingerprint(tokenizer).digest
    with pytest.raises(TokenizerMismatch) as info:
        check_compatible(swapped, tokenizer)
    message = str(info.value)
    assert str(other_tokenizer_dir) in message and str(smollm2_dir) in message
    assert "2 ordinary tokens map to different ids" in message
    assert "shares the student's tokenizer" in message


def test_allow_mismatch_returns_the_problems_instead(tokenizer, swapped):
    notes = check_compatible(swapped, tokenizer, allow_mismatch=True)
    assert any("different ids" in n for n in notes)


def test_a_different_end_token_is_refused(tokenizer, smollm2_dir):
    student = AutoTokenizer.from_pretrained(smollm2_dir)
    student.eos_token = "<|endoftext|>"  # id 0: the teacher reads id 0 as the same token...
    assert check_compatible(tokenizer, student)  # ...so only a note about the teacher's own end
    teacher = AutoTokenizer.from_pretrained(smollm2_dir)
    student.add_special_tokens({"eos_token": "<|my_end|>"})  # a new id the teacher lacks
    with pytest.raises(TokenizerMismatch, match="end-of-target id 49152"):
        check_compatible(teacher, student)
