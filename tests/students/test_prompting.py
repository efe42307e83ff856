"""Prompt split, sequence layout, label masking and the processor's batch."""

from __future__ import annotations

import pytest
import torch

from distill.config import ModelConfig
from distill.data.targets import encode_target
from students import SalmonnProcessor
from students.prompting import IGNORE_INDEX, assemble_inputs, split_prompt

TEMPLATE = "USER: <Speech><SpeechHere></Speech> {instruction}\nASSISTANT:"


def test_split_prompt_by_hand():
    before, after = split_prompt(TEMPLATE, "Recognize the speech.")
    assert before == "USER: <Speech>"
    assert after == "</Speech> Recognize the speech.\nASSISTANT:"
    assert split_prompt(TEMPLATE, "say {x}")[1] == "</Speech> say {x}\nASSISTANT:"
    with pytest.raises(ValueError, match="SpeechHere"):
        split_prompt("no placeholder {instruction}", "x")


@pytest.fixture(scope="module")
def processor(tokenizer):
    return SalmonnProcessor.from_config(ModelConfig(beats={"enabled": True}), tokenizer)


def test_processor_batch_and_labels_by_hand(processor, tokenizer, noise):
    batch = processor([noise(2), noise(1.5, 1)], ["Recognize it.", "Hi"], ["hello world", "yes"])
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prefix = [bos, *tokenizer("USER: <Speech>", add_special_tokens=False)["input_ids"]]
    suffix0 = tokenizer("</Speech> Recognize it.\nASSISTANT:", add_special_tokens=False)[
        "input_ids"
    ]
    suffix1 = tokenizer("</Speech> Hi\nASSISTANT:", add_special_tokens=False)["input_ids"]
    target0 = tokenizer("hello world", add_special_tokens=False)["input_ids"] + [eos]
    target1 = tokenizer("yes", add_special_tokens=False)["input_ids"] + [eos]
    assert target0 == encode_target(tokenizer, "hello world")
    assert (
        batch["prefix_ids"][0].tolist() == prefix
        and batch["prefix_lengths"].tolist() == [len(prefix)] * 2
    )
    assert batch["suffix_ids"][0, : len(suffix0)].tolist() == suffix0
    assert batch["suffix_lengths"].tolist() == [len(suffix0), len(suffix1)]
    assert batch["target_lengths"].tolist() == [len(target0), len(target1)]

    labels = batch["labels"]
    start0 = len(prefix) + 88 + len(suffix0)
    start1 = len(prefix) + 88 + len(suffix1)
    total = max(start0 + len(target0), start1 + len(target1))
    assert labels.shape == batch["attention_mask"].shape == (2, total)
    expected = torch.full((2, total), IGNORE_INDEX)
    expected[0, start0 : start0 + len(target0)] = torch.tensor(target0)
    expected[1, start1 : start1 + len(target1)] = torch.tensor(target1)
    assert torch.equal(labels, expected)
    assert labels[0, start0 + len(target0) - 1] == eos  # the end id carries loss
    assert batch["attention_mask"][1].tolist() == [1] * (start1 + len(target1)) + [0] * (
        total - start1 - len(target1)
    )
    # BEATs input: padded to the longest clip, mask True on the padding.
    assert batch["beats_waveform"].shape == (2, 32000)
    assert batch["beats_padding_mask"][1].sum() == 32000 - 24000
    assert not batch["beats_padding_mask"][0].any()


def test_waveform_rules_and_target_ids(processor, tokenizer, noise):
    batch = processor([noise(0.5), noise(40)], ["a", "b"], target_ids=[[5, 6, 7], [8]])
    assert batch["beats_waveform"].shape == (2, 480000)  # cut at 30 s
    assert batch["beats_padding_mask"][0].sum() == 480000 - 16000  # padded to 1 s
    assert batch["target_ids"][0].tolist() == [5, 6, 7]
    short = processor.prompt.model_copy(update={"max_text_length": 3})
    cut = SalmonnProcessor(tokenizer, prompt=short)([noise(1)], ["a"], ["a much longer reference"])
    assert cut["target_ids"][0].tolist() == encode_target(tokenizer, "a much longer reference")[:3]
    with pytest.raises(ValueError, match="not both"):
        processor([noise(1)], ["a"], ["x"], target_ids=[[1]])


def test_layout_bos_first_audio_at_placeholder():
    """Fake embeddings (value = token id) and audio (negative sentinels) show every position."""
    batch = {
        "prefix_ids": torch.tensor([[1, 11, 12], [1, 11, 0]]),
        "prefix_lengths": torch.tensor([3, 2]),
        "suffix_ids": torch.tensor([[21, 22], [23, 0]]),
        "suffix_lengths": torch.tensor([2, 1]),
        "target_ids": torch.tensor([[31, 2, 0], [32, 33, 2]]),
        "target_lengths": torch.tensor([2, 3]),
    }
    audio = -torch.arange(1, 5, dtype=torch.float).repeat(2, 1).unsqueeze(-1)  # 4 tokens

    def embed(ids):
        return ids.float().unsqueeze(-1)

    right = assemble_inputs(embed, audio, batch, padding_side="right", with_targets=True)
    seq = right.inputs_embeds[..., 0].tolist()
    assert seq[0] == [1, 11, 12, -1, -2, -3, -4, 21, 22, 31, 2]
    assert seq[1] == [1, 11, -1, -2, -3, -4, 23, 32, 33, 2, 0]
    assert right.labels[0].tolist() == [-100] * 9 + [31, 2]
    assert right.labels[1].tolist() == [-100] * 7 + [32, 33, 2, -100]
    assert right.position_ids[1].tolist()[:10] == list(range(10))

    left = assemble_inputs(embed, audio, batch, padding_side="left", with_targets=False)
    seq = left.inputs_embeds[..., 0].tolist()
    assert seq[0] == [1, 11, 12, -1, -2, -3, -4, 21, 22]
    assert seq[1] == [0, 0, 1, 11, -1, -2, -3, -4, 23]
    assert left.attention_mask[1].tolist() == [0, 0] + [1] * 7
    assert left.position_ids[1].tolist()[2:] == list(range(7))
    assert left.labels is None


def test_student_output_labels_are_shifted(student, tokenizer, noise):
    batch = student.processor([noise(1), noise(1, 1)], ["a", "b c d"], ["one two", "three"])
    with torch.no_grad():
        out = student(batch)
    labels = batch["labels"]
    assert out.hidden_states.shape[:2] == labels.shape
    assert out.hidden_states.shape[2] == student.lm_head_weight.shape[1]
    assert torch.equal(out.labels[:, :-1], labels[:, 1:])
    assert torch.all(out.labels[:, -1] == IGNORE_INDEX)
    assert (out.labels != IGNORE_INDEX).sum() == batch["target_lengths"].sum()
    # The hidden state just before the first target token predicts it.
    start = int(batch["prefix_lengths"][0] + 88 + batch["suffix_lengths"][0])
    assert out.labels[0, start - 1] == batch["target_ids"][0, 0]
    assert out.logits is None and out.balance_loss is None


def test_real_embeddings_at_their_positions(student, noise):
    batch = student.processor([noise(1)], ["a"], ["b"])
    with torch.no_grad():
        audio = student.encode_audio(batch)
        inputs = assemble_inputs(
            student.embed_tokens, audio, batch, padding_side="right", with_targets=True
        )
    bos = student.tokenizer.bos_token_id
    emb = inputs.inputs_embeds[0]
    torch.testing.assert_close(emb[0], student.embed_tokens(torch.tensor(bos)))
    p = int(batch["prefix_lengths"][0])
    torch.testing.assert_close(emb[p : p + 88], audio[0])
