"""Teacher prompts: privileged text per task, built as ids in the teacher's own chat template."""

from __future__ import annotations

import pytest

from distill.config import TeacherConfig, TeacherPromptConfig
from teachers.prompts import (
    PromptError,
    check_templates,
    messages_for,
    prompt_ids,
    record_fields,
    split_rationale,
    template_hash,
)

PROMPTS = TeacherConfig().prompts


def test_asr_prompt_carries_the_transcript():
    record = {"id": "a", "task": "asr", "text": "hello world"}
    assert messages_for(record, PROMPTS) == [
        {"role": "user", "content": "Repeat this transcript exactly.\nTranscript: hello world"}
    ]


def test_captions_with_several_references_show_all_of_them():
    record = {"id": "c", "task": "audiocaption", "text": "a dog", "references": ["a dog", "a hound"]}
    assert record_fields(record)["text"] == "a dog | a hound"
    assert "What is heard: a dog | a hound" in messages_for(record, PROMPTS)[0]["content"]


def test_qa_prompt_has_context_and_question_and_asks_for_reasoning():
    record = {"id": "q", "task": "qa", "text": "a dog barks twice", "question": "How many barks?"}
    content = messages_for(record, PROMPTS)[0]["content"]
    assert "What is known about it: a dog barks twice" in content
    assert "Question: How many barks?" in content
    assert "Think step by step" in content


def test_recipe_templates_for_other_tasks_and_a_system_message():
    prompts = {"gender": TeacherPromptConfig(system="You judge voices.", user="Speaker said: {text}")}
    record = {"id": "g", "task": "gender", "text": "hi there"}
    assert messages_for(record, prompts) == [
        {"role": "system", "content": "You judge voices."},
        {"role": "user", "content": "Speaker said: hi there"},
    ]


def test_braces_in_privileged_text_are_not_templates():
    record = {"id": "b", "task": "asr", "text": "set {x} to {y}"}
    assert messages_for(record, PROMPTS)[0]["content"].endswith("set {x} to {y}")


def test_missing_task_and_unknown_fields_fail_before_any_work():
    with pytest.raises(PromptError, match=r"no teacher prompt for task\(s\) gender, phone"):
        check_templates(PROMPTS, ["asr", "gender", "phone"])
    bad = {"asr": TeacherPromptConfig(user="Say {transcript}")}
    with pytest.raises(PromptError, match="teacher.prompts.asr.user: unknown field.*transcript"):
        check_templates(bad, ["asr"])
    check_templates(PROMPTS, ["asr", "qa"])


def test_prompt_ids_are_the_teachers_chat_template_with_generation_prompt(tokenizer):
    record = {"id": "a", "task": "asr", "text": "the cat sat"}
    ids = prompt_ids(tokenizer, record, PROMPTS)
    # Independent reference: render the template as text, then tokenise that text.
    text = tokenizer.apply_chat_template(
        messages_for(record, PROMPTS), tokenize=False, add_generation_prompt=True
    )
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert all(isinstance(i, int) for i in ids)


def test_template_hash_changes_with_prompts_and_chat_template():
    base = template_hash(PROMPTS, "tmpl")
    assert base == template_hash(dict(PROMPTS), "tmpl")
    changed = {**PROMPTS, "asr": TeacherPromptConfig(user="Transcript: {text}")}
    assert len({base, template_hash(changed, "tmpl"), template_hash(PROMPTS, "other")}) == 3


def test_split_rationale_finds_the_answer_ids(tokenizer):
    answer = tokenizer("The answer is two.", add_special_tokens=False)["input_ids"] + [2]
    thinking = tokenizer("<think>\nTwo barks are heard.\n</think>\n\n", add_special_tokens=False)["input_ids"]
    start, rationale = split_rationale(tokenizer, thinking + answer)
    assert rationale == "Two barks are heard."
    assert (thinking + answer)[start:] == answer


def test_split_rationale_without_think_tags_keeps_everything(tokenizer):
    ids = tokenizer("Just an answer.", add_special_tokens=False)["input_ids"]
    assert split_rationale(tokenizer, ids) == (0, None)
