"""Per-task teacher modes in one recipe and one cache (score for ASR/captions, generate for QA),
and the explicit choice of what the student's CE trains on in generate mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.config import load_recipe
from distill.data.targets import encode_target
from teachers.cache import CacheMetaMismatch, open_cache
from teachers.generate import Job

pytestmark = pytest.mark.slow

RECORDS = [
    {"id": "a1", "task": "asr", "text": "the cat sat on the mat"},
    {"id": "c1", "task": "audiocaption", "text": "a dog barks near a road"},
    {"id": "q1", "task": "qa", "text": "a dog barks", "question": "Which animal is heard?"},
]
PROMPTS = {"asr": {"user": "Repeat: {text}"}, "audiocaption": {"user": "Describe: {text}"},
           "qa": {"user": "What is known: {context}\nQuestion: {question}\nAnswer in three words."}}


@pytest.fixture(scope="module")
def mixed_cache(tmp_path_factory, smollm2_dir, helpers):
    from teachers.backends.transformers_backend import TransformersBackend

    folder = tmp_path_factory.mktemp("modes")
    manifest = helpers.write_manifest(folder / "m.jsonl", RECORDS)
    path = helpers.write_recipe(folder / "r.yaml", smollm2_dir, manifest, folder / "cache",
                                backend="transformers", top_k=6, task_modes={"qa": "generate"},
                                temperature=0.0, max_new_tokens=40, prompts=PROMPTS)
    recipe = load_recipe(path)
    backend = TransformersBackend.load(str(smollm2_dir), dtype="float32", device="cpu")
    summary = Job(recipe, progress=False, backend=backend).run()
    assert summary.ok and summary.written == 3, summary.lines()
    return recipe, backend


def test_one_cache_holds_scored_and_generated_tasks(mixed_cache, tokenizer):
    recipe, _ = mixed_cache
    cache = open_cache(recipe.teacher.cache_dir)
    assert (cache.meta.mode, cache.meta.task_modes) == ("score", {"qa": "generate"})
    assert cache.meta.max_new_tokens == 40  # a generation setting, since one task generates
    for record in RECORDS[:2]:  # scored: the reference is the target
        assert cache.get(record["id"]).response_ids.tolist() == encode_target(tokenizer,
                                                                             record["text"])
    answer = cache.get("q1")  # generated: greedy, so the top-1 is the answer itself
    assert answer.response_ids.tolist() != encode_target(tokenizer, RECORDS[2]["text"])
    np.testing.assert_array_equal(answer.topk_ids[:, 0], answer.response_ids)
    assert answer.response_ids[-1] == tokenizer.eos_token_id
    assert answer.text == tokenizer.decode(answer.response_ids, skip_special_tokens=True).strip()


def test_changing_a_task_mode_is_refused_before_any_work(mixed_cache):
    recipe, backend = mixed_cache
    changed = recipe.model_copy(deep=True)
    changed.teacher.task_modes = {}
    with pytest.raises(CacheMetaMismatch, match="task_modes"):
        Job(changed, progress=False, backend=backend).run()


@pytest.mark.parametrize("choice", ["teacher_answer", "reference", "both"])
def test_generate_ce_target_decides_the_sequences_and_their_rows(mixed_cache, tokenizer, choice):
    from distill.config import PromptConfig
    from distill.train.data import Collator, Example, TrainingSet
    from students.processor import SalmonnProcessor

    recipe, _ = mixed_cache
    recipe = recipe.model_copy(deep=True)
    recipe.teacher.generate_ce_target = choice
    cache = open_cache(recipe.teacher.cache_dir)
    processor = SalmonnProcessor(tokenizer, prompt=PromptConfig(), beats=False)
    data = TrainingSet.__new__(TrainingSet)  # only the cache join, no audio files needed
    data.recipe, data.processor, data.cache = recipe, processor, cache
    data.meta, data.ce_target = cache.meta, choice
    wave = torch.zeros(16000)

    def join(record):
        out = data._with_targets(record, Example(record["id"], wave, "say", []))
        return out if isinstance(out, list) else [out]

    scored = join(RECORDS[0])
    assert len(scored) == 1 and scored[0].ce and scored[0].teacher_ids is not None
    qa = join(RECORDS[2])
    answer_ids = cache.get("q1").response_ids.tolist()
    reference_ids = encode_target(tokenizer, RECORDS[2]["text"])
    assert qa[0].target_ids == answer_ids and qa[0].teacher_ids is not None
    if choice == "teacher_answer":
        assert len(qa) == 1 and qa[0].ce
    else:
        assert len(qa) == 2 and qa[0].ce == (choice == "both")
        assert qa[1].target_ids == reference_ids and qa[1].teacher_ids is None and qa[1].ce
    batch = Collator(processor)([scored[0], qa if len(qa) > 1 else qa[0]])
    assert batch.num_read == 2 and batch.num_with_teacher == 2
    n_scored, n_answer = len(scored[0].target_ids), len(answer_ids)
    expected_ce = [True] * n_scored + [choice != "reference"] * n_answer
    expected_teacher = [True] * (n_scored + n_answer)
    if choice != "teacher_answer":
        expected_ce += [True] * len(reference_ids)
        expected_teacher += [False] * len(reference_ids)
    assert batch.has_ce.tolist() == expected_ce
    assert batch.has_teacher.tolist() == expected_teacher
    assert batch.teacher_ids.shape[0] == n_scored + n_answer
