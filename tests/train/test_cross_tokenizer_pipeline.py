"""Cross-tokenizer plumbing end to end: a random-init teacher on SmolLM2's tokenizer, a student
LLM on Whisper tiny.en's, generate-teacher (transformers backend) and a few training steps.

Random weights, so this checks the plumbing (what is stored, what is aligned, what is logged),
not skill; benchmarks/bench_learning.py --cross-tokenizer checks learning.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.config import Recipe
from distill.data.char_spans import vocab_pieces
from distill.data.targets import encode_target
from teachers.backends.base import TeacherResult
from teachers.cache import open_cache, verify_cache
from teachers.generate import Job

pytestmark = pytest.mark.slow

TEXTS = ["unbelievable 12345 tokens", "a dog barks near the café", "rain on the roof",
         "good morning to you all", "the cat sat", "birds sing at 5 o'clock"]


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory, make_cfg, tiny_llm_dir, tiny_llama_factory, whisper_tokenizer):
    from teachers.backends.transformers_backend import TransformersBackend

    root = tmp_path_factory.mktemp("cross")
    student_llm = tiny_llama_factory(root / "student-llm", whisper_tokenizer, seed=5)
    generator = torch.Generator().manual_seed(0)
    records = []
    for i, text in enumerate(TEXTS):
        sf.write(root / f"c{i}.wav", (0.1 * torch.randn(16000, generator=generator)).numpy(),
                 16000)
        records.append({"id": f"s{i}", "audio": f"c{i}.wav", "task": "asr", "text": text})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    model = make_cfg(beats=False, llm={"name_or_path": str(student_llm)})
    recipe = Recipe.model_validate({
        "name": "cross",
        "model": model.model_dump(mode="json"),
        "teacher": {"model": str(tiny_llm_dir), "backend": "transformers", "top_k": 4,
                    "cache_dir": str(root / "cache"), "temperature": 0.0},
        "data": {"train": [{"path": str(root / "train.jsonl")}], "augment": {"enabled": False},
                 "soft_targets": str(root / "cache"), "num_workers": 0},
        "loss": {"chunk_size": 16, "cross_tokenizer": "auto"},
        "train": {"output_dir": str(root / "out"), "max_steps": 3, "batch_size": 6,
                  "precision": "fp32", "schedule": {"kind": "constant", "warmup_steps": 0},
                  "optimizer": {"lr": 5e-3, "min_lr": 5e-3, "warmup_start_lr": 5e-3},
                  "clip": {"mode": "none"}, "eval_every_steps": 1000,
                  "checkpoint": {"every_steps": 1000}, "evaluate_when_done": False},
    })
    backend = TransformersBackend.load(str(tiny_llm_dir), dtype="float32", device="cpu")
    summary = Job(recipe, progress=False, backend=backend).run()
    return recipe, summary, backend


def test_generate_teacher_stores_the_teachers_own_tokens_and_spans(cross_run, tokenizer):
    recipe, summary, _ = cross_run
    assert summary.ok and summary.written == len(TEXTS), summary.lines()
    assert any("different vocabularies: cross-tokenizer" in n for n in summary.notes)
    cache = open_cache(recipe.teacher.cache_dir)
    assert cache.meta.teacher_tokens and cache.meta.token_map == {}
    pieces = vocab_pieces(tokenizer)
    for i, text in enumerate(TEXTS):
        sample = cache.get(f"s{i}")
        assert sample.response_ids.tolist() == encode_target(tokenizer, text)  # teacher's tokens
        assert sample.text == text
        for token, (start, end) in zip(sample.response_ids[:-1], sample.spans[:-1], strict=True):
            try:  # a token of whole characters spans exactly them
                assert text[start:end] == pieces[token].decode("utf-8")
            except UnicodeDecodeError:  # part of a character: spans that whole character
                assert start < end <= len(text)
        assert sample.spans[-1].tolist() == [len(text), len(text)]  # the end token
    report = verify_cache(recipe.teacher.cache_dir)
    assert report.ok and report.samples == len(TEXTS), report.problems


def test_generate_mode_keeps_the_teachers_answer_with_its_spans(cross_run, tokenizer):
    recipe, _, backend = cross_run
    recipe = recipe.model_copy(deep=True)
    recipe.teacher.task_modes = {"asr": "generate"}
    recipe.teacher.cache_dir = str(Path(recipe.teacher.cache_dir).with_name("generated"))
    job = Job(recipe, progress=False, backend=backend)
    job.prepare()
    answer = tokenizer(" Paris, 東京!", add_special_tokens=False)["input_ids"]
    ids = [*answer, tokenizer.eos_token_id]
    top = np.tile(np.array(ids)[:, None], (1, 4))
    top[:, 1:] = [5, 6, 7]
    result = TeacherResult("q", np.array(ids), top, np.full((len(ids), 4), -1.5, np.float32),
                           "stop")
    sample = job._cross_sample(result, {"id": "q", "task": "asr", "text": "ref"})
    assert sample.text == "Paris, 東京!"  # the answer, stripped; the student re-tokenises it
    assert sample.response_ids.tolist() == ids
    assert sample.spans[0].tolist() == [0, 5]  # " Paris": its space is outside the text
    assert sample.spans[-1].tolist() == [len(sample.text)] * 2


def test_training_aligns_rows_and_logs_the_paths(cross_run, whisper_tokenizer):
    from distill.train.loop import LOG_FILE, Trainer

    recipe, _, _ = cross_run
    trainer = Trainer(recipe)
    batch, _, _ = next(trainer._micro_batches())
    assert batch.has_uld is not None
    # the student's target is its own tokenisation of the text
    mapped, uld = int(batch.has_teacher.sum()), int(batch.has_uld.sum())
    assert mapped > 0 and uld > 0 and not (batch.has_teacher & batch.has_uld).any()
    assert int(batch.teacher_ids.max()) < len(whisper_tokenizer)
    trainer.train()
    log = [json.loads(line) for line in (Path(recipe.train.output_dir) / LOG_FILE).open()]
    assert len(log) == 3
    for row in log:
        assert row["rows_map"] + row["rows_uld"] + row["rows_ce_only"] == pytest.approx(1.0)
        assert row["rows_map"] > 0 and row["rows_uld"] > 0
        assert np.isfinite(row["loss"]) and row["kd"] > 0 and row["kd_uld"] > 0
