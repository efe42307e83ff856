"""The transformers backend against independent computations on the same real model (SmolLM2)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from distill.config import TeacherConfig
from distill.data.targets import encode_target
from teachers.backends.base import GenerationSettings, TeacherRequest
from teachers.backends.transformers_backend import TransformersBackend
from teachers.prompts import prompt_ids

pytestmark = pytest.mark.slow
K = 10


@pytest.fixture(scope="module")
def backend(smollm2_dir):
    return TransformersBackend.load(str(smollm2_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def request_(tokenizer):
    record = {"id": "a", "task": "asr", "text": "the cat sat on the mat"}
    prompt = prompt_ids(tokenizer, record, TeacherConfig().prompts)
    return TeacherRequest("a", prompt, encode_target(tokenizer, record["text"]))


def test_score_row_t_is_the_distribution_that_predicts_response_token_t(backend, request_):
    result = asyncio.run(backend.score(request_, K))
    assert result.topk_ids.shape == (len(request_.response_ids), K)
    model = backend.model
    # Independent reference: one forward pass per prefix, last position only.
    for t, _token in enumerate(request_.response_ids):
        prefix = torch.tensor([request_.prompt_ids + request_.response_ids[:t]])
        with torch.inference_mode():
            logits = model(input_ids=prefix).logits[0, -1].float()
        values, ids = torch.topk(torch.log_softmax(logits, -1), K)
        np.testing.assert_array_equal(result.topk_ids[t], ids.numpy())
        np.testing.assert_allclose(result.topk_logprobs[t], values.numpy(), atol=1e-4)
    # The teacher saw the transcript: it predicts the target well.
    hits = (result.topk_ids[:, 0] == np.asarray(request_.response_ids)).mean()
    assert hits >= 0.8
    assert np.all(np.diff(result.topk_logprobs, axis=1) <= 0)  # best first


def test_greedy_generation_matches_transformers_and_its_own_scoring(backend, request_):
    settings = GenerationSettings(max_new_tokens=8, temperature=0.0, stop_ids=[2])
    generated = asyncio.run(backend.generate(TeacherRequest("g", request_.prompt_ids), K, settings))
    tokens = generated.response_ids.tolist()
    with torch.inference_mode():
        reference = backend.model.generate(
            torch.tensor([request_.prompt_ids]), max_new_tokens=8, do_sample=False,
            eos_token_id=[2], pad_token_id=2,
        )[0, len(request_.prompt_ids):].tolist()
    assert tokens == reference
    np.testing.assert_array_equal(generated.topk_ids[:, 0], tokens)  # greedy = top-1
    scored = asyncio.run(backend.score(TeacherRequest("s", request_.prompt_ids, tokens), K))
    np.testing.assert_array_equal(scored.topk_ids[:, :3], generated.topk_ids[:, :3])
    np.testing.assert_allclose(scored.topk_logprobs, generated.topk_logprobs, atol=1e-3)
    assert generated.finish_reason == ("stop" if tokens[-1] == 2 else "length")


def test_sampling_is_reproducible_per_sample_seed(backend, request_):
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, stop_ids=[2])
    first = asyncio.run(backend.generate(TeacherRequest("x", request_.prompt_ids), 4, settings))
    again = asyncio.run(backend.generate(TeacherRequest("x", request_.prompt_ids), 4, settings))
    np.testing.assert_array_equal(first.response_ids, again.response_ids)


def test_score_without_response_fails_only_that_request(backend, request_):
    result = asyncio.run(backend.handle(TeacherRequest("e", request_.prompt_ids, []), K, None))
    assert not result.ok and "needs response ids" in result.error
