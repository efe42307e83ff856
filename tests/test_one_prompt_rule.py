"""Training, evaluation and the app prompt the same record with the same instruction and ids.

One rule (``SalmonnProcessor.instruction_for``) decides the instruction everywhere; this test
goes through each caller's own entry point (the trainer's dataset, the evaluation runner, the
app's preset) rather than the rule itself, so a caller that grows its own precedence fails here.
"""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.app.inference import Responder
from distill.config import EvalSetConfig, Recipe
from distill.evaluate.runner import _instruction
from distill.train.data import TrainingSet

SR = 16000


@pytest.fixture(scope="module")
def recipe_and_records(tmp_path_factory, make_cfg):
    root = tmp_path_factory.mktemp("one_rule")
    sf.write(root / "clip.wav", (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(
        np.float32), SR)
    records = [
        {"id": "a", "audio": "clip.wav", "task": "asr", "text": "hello world"},
        {"id": "q", "audio": "clip.wav", "task": "qa", "text": "a dog",
         "question": "What animal is it?"},
        {"id": "i", "audio": "clip.wav", "task": "asr", "text": "hi", "instruction": "Write it."},
    ]
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    recipe = Recipe.model_validate({
        "name": "one-rule", "model": make_cfg(beats=False).model_dump(mode="json"),
        "data": {"train": [{"path": str(root / "m.jsonl")}], "augment": {"enabled": False},
                 "num_workers": 0},
    })
    return recipe, records


def test_training_evaluation_and_app_build_the_same_prompt(recipe_and_records, student):
    recipe, records = recipe_and_records
    training = TrainingSet(recipe, student.processor)
    app = Responder(student, "test")
    for index, record in enumerate(records):
        trained = training[(0, index)].instruction
        eval_set = EvalSetConfig(name="t", manifest="m.jsonl", task=record["task"], metrics=["wer"])
        evaluated = _instruction(student, eval_set, record)
        assert trained == evaluated, record["id"]
        wave = torch.zeros(SR)
        built, built_again = (student.processor([wave], [text]) for text in (trained, evaluated))
        for key in ("prefix_ids", "suffix_ids"):
            assert torch.equal(built[key], built_again[key])
    # The app's presets prompt as evaluation does for a record of that task alone.
    bare_asr = _instruction(student, EvalSetConfig(name="t", manifest="m", task="asr",
                                                   metrics=["wer"]), {"task": "asr"})
    assert app.instruction_for("Transcribe") == bare_asr
    assert training[(0, 1)].instruction == "What animal is it?"  # QA: the question itself
    assert training[(0, 2)].instruction == "Write it."  # the record's own instruction first
