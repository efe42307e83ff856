"""``transcribe`` / ``caption`` / ``ask``: the answers ``distill evaluate`` would give.

Reference: the evaluation's own generation loop (``runner.generate_for_set``) over a manifest of
the same clips, with the same decoding settings.
"""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from distill.config import DecodingConfig, EvalConfig, Recipe
from distill.data.audio import AudioError
from distill.evaluate.runner import generate_for_set
from students import SalmonnStudent
from students.card import CardContext

DECODING = {"num_beams": 2, "max_new_tokens": 6, "repetition_penalty": 1.3}


@pytest.fixture(scope="module")
def clips(tmp_path_factory, noise):
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for i, seconds in enumerate((1.2, 2.5, 0.7)):
        path = folder / f"c{i}.wav"
        sf.write(path, noise(seconds, 10 + i).numpy(), 16000)
        paths.append(str(path))
    return paths


def recipe_for(student, manifest, task) -> Recipe:
    return Recipe.model_validate({
        "name": "infer", "model": student.config.model_dump(mode="json"),
        "eval": {"sets": [{"name": "s", "manifest": str(manifest), "task": task,
                           "metrics": ["wer"]}], "decoding": DECODING, "batch_size": 2},
    })


def evaluate_answers(student, clips, task, tmp_path) -> list[str]:
    manifest = tmp_path / f"{task}.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"c{i}", "audio": p, "task": task, "text": "x"})
                                + "\n" for i, p in enumerate(clips)))
    recipe = recipe_for(student, manifest, task)
    _, hypotheses = generate_for_set(student, recipe, recipe.eval.sets[0])
    return hypotheses


def test_defaults_are_the_evaluations(student):
    assert student.decoding == EvalConfig().decoding == DecodingConfig()


@pytest.mark.parametrize(("method", "task"), [("transcribe", "asr"), ("caption", "audiocaption")])
def test_answers_equal_distill_evaluate(student, clips, tmp_path, method, task):
    student.decoding = DecodingConfig(**DECODING)
    try:
        want = evaluate_answers(student, clips, task, tmp_path)
        got = getattr(student, method)(clips, batch_size=2)  # batches of 2, 1: order kept
        assert got == want
        assert getattr(student, method)(clips[1]) == want[1]  # one path -> one string
    finally:
        student.decoding = DecodingConfig()


def test_ask_uses_the_question_as_the_instruction(student, clips):
    from students.inference import answer

    got = student.ask(clips[:2], "what is this?", max_new_tokens=5, num_beams=1)
    assert got == answer(student, clips[:2], "what is this?", max_new_tokens=5, num_beams=1)
    per_clip = student.ask(clips[:2], ["is it loud?", "what is this?"], max_new_tokens=5,
                           num_beams=1)
    assert per_clip[1] == got[1]
    with pytest.raises(ValueError, match="2 clips but 3 instructions"):
        student.ask(clips[:2], ["a", "b", "c"])


def test_saved_recipe_decoding_is_used(student, tmp_path, clips):
    recipe = {"name": "r", "eval": {"decoding": {"num_beams": 1, "max_new_tokens": 3}}}
    path = student.save_pretrained(tmp_path / "ckpt", card=CardContext(recipe=recipe))
    loaded = SalmonnStudent.from_pretrained(path).eval()
    assert loaded.decoding == DecodingConfig(num_beams=1, max_new_tokens=3)
    ids = loaded.tokenizer(loaded.transcribe(clips[0]), add_special_tokens=False)["input_ids"]
    assert len(ids) <= 3


def test_unreadable_audio_names_the_file(student, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    with pytest.raises(AudioError, match="bad.wav"):
        student.transcribe([str(bad)])


def test_from_pretrained_takes_a_trainer_checkpoint(student, tmp_path, clips):
    student.save_pretrained(tmp_path / "step-00000010" / "student")
    loaded = SalmonnStudent.from_pretrained(tmp_path / "step-00000010").eval()
    assert loaded.transcribe(clips[0], max_new_tokens=4) == student.transcribe(clips[0],
                                                                                max_new_tokens=4)
