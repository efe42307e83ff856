"""Target ids: the text's tokens without BOS, then the tokenizer's own EOS (not LLaMA-2's 2)."""

import pytest

from distill.data.targets import encode_target, end_token_id


class WordTokenizer:
    """A tokenizer small enough to compute by hand: one id per word, 0 is BOS, 7 is EOS."""

    vocab = {"<s>": 0, "the": 1, "cat": 2, "sat": 3}
    eos_token_id = 7
    name_or_path = "words"

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab[w] for w in text.split()]
        return {"input_ids": ([0] if add_special_tokens else []) + ids}


def test_target_is_text_tokens_then_eos_without_bos():
    assert encode_target(WordTokenizer(), "the cat sat") == [1, 2, 3, 7]


def test_missing_eos_is_a_clear_error():
    tokenizer = WordTokenizer()
    tokenizer.eos_token_id = None
    with pytest.raises(ValueError, match="'words' has no eos_token_id"):
        end_token_id(tokenizer)


@pytest.mark.slow
def test_real_tokenizer_ends_on_its_own_eos():
    from transformers import AutoTokenizer

    from distill.local_models import smollm2_instruct

    tokenizer = AutoTokenizer.from_pretrained(smollm2_instruct())
    ids = encode_target(tokenizer, "Hello world")
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids[:-1]) == "Hello world"
