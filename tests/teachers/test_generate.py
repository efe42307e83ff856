"""The generate-teacher job end to end with the in-process transformers teacher (no vLLM)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from distill.config import load_recipe
from distill.data.targets import encode_target
from teachers.backends.base import TeacherRequest
from teachers.backends.transformers_backend import TransformersBackend
from teachers.cache import CacheMetaMismatch, open_cache, verify_cache
from teachers.generate import Job
from teachers.prompts import prompt_ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backend(smollm2_dir):
    return TransformersBackend.load(str(smollm2_dir), dtype="float32", device="cpu")


@pytest.fixture
def recipe_for(tmp_path, smollm2_dir, helpers):
    def make(records, **teacher):
        manifest = helpers.write_manifest(tmp_path / "m.jsonl", records)
        path = helpers.write_recipe(tmp_path / "r.yaml", smollm2_dir, manifest, tmp_path / "cache",
                                    backend="transformers", **teacher)
        return load_recipe(path)

    return make


def test_score_job_stores_exactly_what_the_backend_computes_and_resumes(
    recipe_for, backend, tokenizer, helpers
):
    records = helpers.sample_records(4)
    recipe = recipe_for(records, top_k=8, shard_size=3)
    summary = Job(recipe, progress=False, backend=backend).run()
    assert summary.ok and summary.written == 4, summary.lines()
    cache = open_cache(recipe.teacher.cache_dir)
    assert cache.ids() == {r["id"] for r in records}
    for record in records[:2]:
        target = encode_target(tokenizer, record["text"])
        request = TeacherRequest(record["id"], prompt_ids(tokenizer, record, recipe.teacher.prompts),
                                 target)
        expected = asyncio.run(backend.score(request, 8))
        stored = cache.get(record["id"])
        assert stored.response_ids.tolist() == target and stored.text == record["text"]
        np.testing.assert_array_equal(stored.topk_ids, expected.topk_ids)
        np.testing.assert_allclose(stored.topk_logprobs, expected.topk_logprobs,
                                   atol=cache.meta.max_logprob_error + 1e-5)
    assert summary.tokens == cache.total_tokens()
    again = Job(recipe, progress=False, backend=backend).run()
    assert (again.already_cached, again.written) == (4, 0)
    assert verify_cache(recipe.teacher.cache_dir).samples == 4


def test_changed_settings_are_refused_before_any_work(recipe_for, backend, helpers):
    records = helpers.sample_records(1)
    Job(recipe_for(records, top_k=8), progress=False, backend=backend).run()
    with pytest.raises(CacheMetaMismatch, match="k: 8 != 4"):
        Job(recipe_for(records, top_k=4), progress=False, backend=backend).run()


def test_records_without_text_or_too_long_are_reported_not_fatal(recipe_for, backend, helpers):
    records = helpers.sample_records(2) + [{"id": "blank", "task": "asr", "text": ""},
                                           {"id": "long", "task": "asr", "text": "word " * 300}]
    recipe = recipe_for(records, top_k=4)
    backend._max_len = 200
    try:
        summary = Job(recipe, progress=False, backend=backend).run()
    finally:
        backend._max_len = None
    assert summary.written == 2
    assert summary.failures == {
        "blank": "no target text to score",
        "long": "longer than the teacher's max_model_len (200)",
    }
    assert any("1 x no target text to score (e.g. blank)" in line for line in summary.lines())


def test_generate_mode_stores_the_teachers_answer_and_its_top_k(recipe_for, backend, tokenizer):
    records = [{"id": "g1", "task": "asr", "text": "hello there"}]
    recipe = recipe_for(records, top_k=5, mode="generate", max_new_tokens=32, temperature=0.0,
                        prompts={"asr": {"user": "Say only: {text}"}})
    summary = Job(recipe, progress=False, backend=backend).run()
    assert summary.ok, summary.lines()
    stored = open_cache(recipe.teacher.cache_dir).get("g1")
    assert stored.response_ids[-1] == tokenizer.eos_token_id  # it finished its answer
    np.testing.assert_array_equal(stored.topk_ids[:, 0], stored.response_ids)  # greedy = top-1
    assert stored.text == tokenizer.decode(stored.response_ids, skip_special_tokens=True).strip()
    assert stored.text.lower().startswith("hello there")
    assert stored.rationale is None  # SmolLM2 writes no <think> block


def test_generate_mode_refuses_an_unfinished_answer(recipe_for, backend):
    records = [{"id": "g2", "task": "asr", "text": "hello there"}]
    recipe = recipe_for(records, top_k=5, mode="generate", max_new_tokens=4, temperature=0.0,
                        prompts={"asr": {"user": "Say only: {text}"}})
    summary = Job(recipe, progress=False, backend=backend).run()
    assert summary.failures == {"g2": "the teacher stopped at max_new_tokens (4)"}
    assert "g2" not in open_cache(recipe.teacher.cache_dir)
