"""The model card: Hub-parsable front matter, the right parameter counts, the run's facts.

References are independent of the card code: parameter counts from the unquantised tiny LLaMA
and from ``requires_grad``; the cache digest is sha256 of the ``meta.json`` the cache writer
wrote; metric values from the evaluation report the card was given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
import yaml

from distill.evaluate.report import (
    EfficiencyResult,
    EvaluationReport,
    SetResult,
    Timing,
    report_to_json,
)
from students import SalmonnStudent
from students.card import CONTEXT_FILE, CardContext, refresh_card


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


def linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


@pytest.fixture(scope="module")
def qlora_student(make_cfg):
    torch.manual_seed(0)
    return SalmonnStudent.from_config(make_cfg(quant=True)).eval()


def test_bare_save_has_a_card_with_the_right_counts(qlora_student, tiny_llm_dir, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    path = qlora_student.save_pretrained(tmp_path / "ckpt")
    text = (path / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "distill"
    assert meta["base_model"] == str(tiny_llm_dir)
    assert {"lora", "4-bit", "automatic-speech-recognition"} <= set(meta["tags"])
    assert ModelCard.load(path / "README.md").data.library_name == "distill"  # the Hub's parser

    trainable = sum(p.numel() for p in qlora_student.parameters() if p.requires_grad)
    dense = AutoModelForCausalLM.from_pretrained(tiny_llm_dir)
    quantised = linear_weights(dense.model.layers)  # bitsandbytes 4-bit: every decoder Linear
    context = json.loads((path / CONTEXT_FILE).read_text())
    assert context["parameters"]["trainable"] == trainable
    assert context["parameters"]["quantised"] == quantised
    assert f"{trainable:,} trainable" in text and f"{quantised:,} quantised to 4 bits" in text
    assert "No evaluation report yet" in text and "MIT" in text  # Whisper's licence


def test_run_context_is_in_the_card(student, tmp_path):
    from teachers.cache.format import CacheMeta
    from teachers.cache.writer import ensure_meta

    meta = CacheMeta(teacher="deepseek-ai/DeepSeek-R1-Distill-Llama-8B", teacher_revision=None,
                     tokenizer_fingerprint="a" * 32, target_tokenizer_fingerprint="a" * 32,
                     mode="score", k=20, logprob_mode="raw_logprobs", temperature=1.0,
                     prompt_template_hash="p", vocab_size=128256)
    ensure_meta(tmp_path / "cache", meta)
    digest = hashlib.sha256((tmp_path / "cache" / "meta.json").read_bytes()).hexdigest()
    report = EvaluationReport("tiny", "ckpt", [
        SetResult("ls_test_clean", "asr", 12, {"wer": {"value": 7.25, "label": "WER %"}}),
        SetResult("clotho_eval", "audiocaption", 5,
                  {"cider_d": {"value": 0.4125, "label": "CIDEr-D"},
                   "spice": {"value": None, "label": "SPICE", "unavailable_reason": "no Java"}}),
    ], EfficiencyResult("cpu", 1, 3, Timing(0.5, 0.6), Timing(0.0421, 0.05), Timing(0.54, 0.65),
                        1.25, "CPU peak RSS"))
    context = CardContext(
        recipe={"name": "tiny-run", "description": "a test run", "loss": {"ce_weight": 1.0}},
        cache_meta=dataclasses.asdict(meta),
        data=[{"split": "train", "path": "data/ls_train.jsonl", "records": 321, "weight": 1.0},
              {"split": "valid", "path": "data/ls_dev.jsonl", "records": 17, "weight": None}],
        training={"steps": 40, "examples": 640, "ce_only": 3},
        report=report_to_json(report),
    )
    path = student.save_pretrained(tmp_path / "ckpt", card=context)
    text = (path / "README.md").read_text()
    meta_yaml = front_matter(text)
    assert meta_yaml["datasets"] == ["ls_train"]
    assert meta_yaml["model-index"][0]["name"] == "tiny-run"
    results = {(r["dataset"]["name"], m["type"]): m["value"]
               for r in meta_yaml["model-index"][0]["results"] for m in r["metrics"]}
    assert results == {("ls_test_clean", "wer"): 7.25, ("clotho_eval", "cider_d"): 0.4125}
    assert digest in text and "| score | 20 |" in text
    assert "| train | `data/ls_train.jsonl` | 321 |" in text
    assert "40 optimizer steps, 640 examples seen (3 without cached targets)" in text
    assert "| TPOT (s) | 0.0421 | 0.05 |" in text
    assert "unavailable: no Java" in text
    assert "## Recipe" in text and "name: tiny-run" in text
    assert "MIT (base model: Llama 3.1 Community License)" in text  # the teacher's licence


def test_refresh_adds_the_report_without_touching_weights(student, tmp_path):
    path = student.save_pretrained(tmp_path / "ckpt")
    weights = (path / "trainable.safetensors").read_bytes()
    report = EvaluationReport("r", str(path), [
        SetResult("speech", "asr", 3, {"wer": {"value": 61.5, "label": "WER %"}})])
    refresh_card(path, report=report_to_json(report))
    text = (path / "README.md").read_text()
    metrics = front_matter(text)["model-index"][0]["results"][0]["metrics"]
    assert metrics == [{"type": "wer", "value": 61.5, "name": "wer"}]
    assert "| speech | asr | 3 | wer | 61.5 |" in text
    assert (path / "trainable.safetensors").read_bytes() == weights
    assert [p.name for p in path.iterdir() if p.name.startswith(".")] == []
