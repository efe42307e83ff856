"""The exact string map between two real vocabularies, and top-k rows through it."""

import numpy as np
import pytest

from distill.data.vocab_map import VocabMap, exact_string_map


@pytest.fixture(scope="module")
def smol_to_whisper(tokenizer, whisper_tokenizer):
    return exact_string_map(tokenizer, whisper_tokenizer)


def test_tokens_that_spell_the_same_bytes_map(tokenizer, whisper_tokenizer, smol_to_whisper):
    def student_token(teacher_token):
        target = smol_to_whisper.lookup[tokenizer.convert_tokens_to_ids(teacher_token)]
        return None if target < 0 else whisper_tokenizer.convert_ids_to_tokens(int(target))

    assert student_token("Ġtokens") == "Ġtokens"
    assert student_token("vable") == "vable"
    assert student_token("Ġ") == "Ġ"
    assert student_token("belie") is None  # Whisper has no "belie"
    # the teacher's end (<|im_end|>) is the student's end (<|endoftext|>)
    assert smol_to_whisper.lookup[tokenizer.eos_token_id] == whisper_tokenizer.eos_token_id


def test_the_same_tokenizer_maps_every_id_onto_itself(whisper_tokenizer):
    assert exact_string_map(whisper_tokenizer, whisper_tokenizer).is_identity()


def test_rows_keep_mass_move_unmapped_to_the_rest_and_merge_duplicates():
    # teacher ids 0..3 -> student 5, -, 5, 7 (0 and 2 spell the same bytes)
    vmap = VocabMap(np.array([5, -1, 5, 7]), student_vocab=8, fillers=(1,))
    lp = np.log(np.array([[0.4, 0.3, 0.2, 0.05]]))
    rest = np.log(np.array([0.05]))
    ids, logprobs, new_rest = vmap.apply_rows(np.array([[0, 1, 2, 3]]), lp, rest, floor=-40.0)
    assert ids.tolist() == [[5, 7, 1, 0]]  # merged 5, then 7, then fillers 1 and 0
    np.testing.assert_allclose(np.exp(logprobs[0, :2]), [0.6, 0.05], rtol=1e-6)
    assert logprobs[0, 2:].tolist() == [-40.0, -40.0]
    np.testing.assert_allclose(np.exp(new_rest), [0.35], rtol=1e-6)  # 0.05 + unmapped 0.3


def test_an_identity_map_leaves_rows_unchanged():
    vmap = VocabMap(np.arange(6), student_vocab=6, fillers=())
    ids = np.array([[3, 1, 0]])
    lp = np.log(np.array([[0.5, 0.3, 0.1]])).astype(np.float32)
    out = vmap.apply_rows(ids, lp, np.log(np.array([0.1])), floor=-40.0)
    assert out[0].tolist() == ids.tolist()
    np.testing.assert_array_equal(out[1], lp)
