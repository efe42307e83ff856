"""Self-distillation check: a student identical to the teacher pays ~0 KD from the cache.

SmolLM2's top-k is cached for demo samples (the demo's transcripts and sound captions) by the
real job, through the transformers backend and through a vLLM server. The same model's logits
are then computed here on the very token sequences the teacher saw (its prompt + the response)
and fed, with the cached rows, through the trainer's loss path (``build_mixed_loss`` on the chunked
hidden-state path, per-term counts, the stored rest). KD must be ~0 for every divergence, both
tails and T = 1, 2: what is left is the 12-bit rounding of the cache (and, for vLLM, its
slightly different float order). This guards the alignment of rows and positions, the rest mass,
the end-token handling and the normalisation together. ``-s`` prints the numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.config import Recipe, load_recipe
from distill.losses import HiddenStates, TopKTargets
from teachers.cache import open_cache
from teachers.cache.coding import DEFAULT_CODEC
from teachers.generate import Job
from teachers.prompts import prompt_ids

pytestmark = pytest.mark.slow

K = 20
DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl", "uld"]
TAILS = ["bucket", "renorm"]
TEMPERATURES = [1.0, 2.0]
KL_FLOOR = 2e-3  # nats/token: KL-type losses are second order in the rounding (measured ~1e-5)
FIRST_ORDER = ("tvd", "uld")  # L1-type: first order, bounded by the rounding's half step
HALF_STEP = DEFAULT_CODEC["logprob_step"] / 2  # the cache's (format version 3) top-k rounding


def floor(divergence: str, temperature: float) -> float:
    if divergence in FIRST_ORDER:
        return 2 * HALF_STEP * temperature**2
    return KL_FLOOR


def demo_records(speech: int = 6, sounds: int = 4) -> list[dict]:
    """Demo samples' texts (the teacher reads text only): transcripts and canonical captions."""
    from itertools import islice

    from distill.demo.dataset import sentences
    from distill.demo.sounds import make_sound

    records = [{"id": f"speech_{i}", "task": "asr", "text": text}
               for i, text in enumerate(islice(sentences(), speech))]
    records += [{"id": f"sound_{i}", "task": "audiocaption", "text": make_sound(i).captions[0]}
                for i in range(sounds)]
    return records


def student_rows(recipe: Recipe, model, tokenizer, cache, records):
    """The same model's final hidden states at the response rows of the sequences the teacher
    saw (prompt + response), the response ids, and the cached rows (as the collator joins them)."""
    hidden_rows, labels, ids, logprobs, rests = [], [], [], [], []
    for record in records:
        stored = cache.get(record["id"])
        prompt = prompt_ids(tokenizer, record, recipe.teacher.prompts, recipe.teacher.reasoning)
        response = stored.response_ids.tolist()
        with torch.no_grad():
            hidden = model.model(torch.tensor([prompt + response])).last_hidden_state[0]
        hidden_rows.append(hidden[len(prompt) - 1 : len(prompt) - 1 + len(response)])
        labels.append(torch.tensor(response))
        ids.append(stored.topk_ids)
        logprobs.append(stored.topk_logprobs)
        rests.append(stored.rest_logprobs)
    teacher = TopKTargets(torch.from_numpy(np.concatenate(ids)),
                          torch.from_numpy(np.concatenate(logprobs)),
                          torch.from_numpy(np.concatenate(rests)))
    return torch.cat(hidden_rows), torch.cat(labels), teacher


def kd_per_token(recipe: Recipe, model, rows, *, divergence: str, tail: str,
                 temperature: float, use_rest: bool = True) -> float:
    """Mean KD per teacher token, through the trainer's loss (build_mixed_loss, hidden-state path)."""
    from distill.train.loop import build_mixed_loss

    recipe = recipe.model_copy(deep=True)
    recipe.loss.divergence, recipe.loss.tail = divergence, tail
    recipe.loss.temperature, recipe.loss.chunk_size = temperature, 64
    hidden, labels, teacher = rows
    if not use_rest:
        teacher = TopKTargets(teacher.ids, teacher.logprobs)
    n = float(hidden.shape[0])
    out = build_mixed_loss(recipe)(HiddenStates(hidden, model.lm_head.weight.detach()), teacher, labels,
                             step=0, num_items={"ce": n, "kd": n})
    return float(out.parts["kd"])


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


def fill_cache(folder, smollm2_dir, helpers, endpoint: str | None):
    records = demo_records()
    manifest = helpers.write_manifest(folder / "m.jsonl", records)
    backend = "vllm_server" if endpoint else "transformers"
    recipe = load_recipe(helpers.write_recipe(folder / "r.yaml", smollm2_dir, manifest,
                                              folder / "cache", backend=backend, top_k=K))
    job_backend = None
    if endpoint is None:
        from teachers.backends.transformers_backend import TransformersBackend

        job_backend = TransformersBackend.load(str(smollm2_dir), dtype="float32", device="cpu")
    summary = Job(recipe, endpoints=[endpoint] if endpoint else None, progress=False,
                  backend=job_backend).run()
    assert summary.ok and summary.written == len(records), summary.lines()
    return recipe, records, open_cache(recipe.teacher.cache_dir)


def check(recipe, rows, smollm2, label: str) -> dict:
    numbers = {}
    for divergence in DIVERGENCES:
        for tail in TAILS:
            for temperature in TEMPERATURES:
                numbers[f"{divergence}/{tail}/T={temperature:g}"] = kd_per_token(
                    recipe, smollm2, rows, divergence=divergence, tail=tail,
                    temperature=temperature)
    print(f"\nself-distillation KD per token ({label}, {rows[0].shape[0]} tokens, top-{K}):\n"
          + json.dumps(numbers, indent=1))
    for key, value in numbers.items():
        divergence, _, temperature = key.split("/")
        assert abs(value) < floor(divergence, float(temperature[2:])), f"{label} {key}: {value}"
    return numbers


def test_self_distillation_is_about_zero_with_the_transformers_teacher(
    tmp_path, smollm2_dir, smollm2, tokenizer, helpers
):
    recipe, records, cache = fill_cache(tmp_path, smollm2_dir, helpers, endpoint=None)
    assert cache.meta.token_map["mapped"] == [] and cache.meta.version == 3
    rows = student_rows(recipe, smollm2, tokenizer, cache, records)
    check(recipe, rows, smollm2, "transformers")
    # The guard can fail: without the stored rest (1 - sum of the rounded top-k instead), the
    # same perfect student pays for the rounding in the bucket tail.
    without = kd_per_token(recipe, smollm2, rows, divergence="reverse_kl", tail="bucket",
                           temperature=2.0, use_rest=False)
    print(f"reverse_kl/bucket/T=2 without the stored rest: {without:.5f}")
    assert without > KL_FLOOR


@pytest.mark.vllm
def test_self_distillation_is_about_zero_with_the_vllm_server(
    tmp_path, smollm2_dir, smollm2, tokenizer, helpers, vllm_server
):
    recipe, records, cache = fill_cache(tmp_path, smollm2_dir, helpers, endpoint=vllm_server)
    check(recipe, student_rows(recipe, smollm2, tokenizer, cache, records), smollm2, "vLLM server")
