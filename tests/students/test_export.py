"""``distill export``: the folder loads alone, and answers as the checkpoint does.

Adapter exports must match the checkpoint exactly (same weights, same 4-bit rounding). Merged
exports are compared within stated tolerances: float32 merging only reorders the sums
(W + BA vs Wx + B(Ax)); bfloat16 rounds every weight to 8 significant bits.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from distill.cli import main
from students import SalmonnStudent
from students.checkpoint import read_config
from students.export import export_student


def perturbed(student, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in student.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return student.eval()


@pytest.fixture(scope="module")
def batch_of(noise):
    def make(student):
        return student.processor([noise(1.5, 4), noise(2, 5)], ["say it", "what is it"])

    return make


def logits_and_ids(student, batch):
    with torch.no_grad():
        logits = student(batch, return_logits=True).logits.float()
    ids = student.generate(batch, num_beams=1, max_new_tokens=8, repetition_penalty=1.0)
    return logits, ids


@pytest.fixture(scope="module")
def qlora_checkpoint(make_cfg, tmp_path_factory):
    torch.manual_seed(0)
    student = perturbed(SalmonnStudent.from_config(make_cfg(quant=True)))
    return student.save_pretrained(tmp_path_factory.mktemp("ckpt") / "qlora")


@pytest.fixture(scope="module")
def lora_checkpoint(make_cfg, tmp_path_factory):
    torch.manual_seed(0)
    student = perturbed(SalmonnStudent.from_config(make_cfg(quant=False)))
    return student.save_pretrained(tmp_path_factory.mktemp("ckpt") / "lora")


def test_adapter_export_is_self_contained_and_identical(qlora_checkpoint, batch_of, tmp_path):
    result = export_student(qlora_checkpoint, tmp_path / "export")
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(result.path, moved)  # the folder carries everything it needs
    meta = json.loads((moved / "student_config.json").read_text())
    assert meta["model"]["llm"]["name_or_path"] == "llm"
    assert meta["model"]["whisper"]["name_or_path"] == "whisper"
    assert meta["model"]["beats"]["checkpoint"] == "beats.pt"
    cfg = read_config(moved)
    for path in (cfg.llm.name_or_path, cfg.whisper.name_or_path, cfg.beats.checkpoint):
        assert path.startswith(str(moved.absolute()))

    original = SalmonnStudent.from_pretrained(qlora_checkpoint).eval()
    exported = SalmonnStudent.from_pretrained(moved).eval()
    assert exported.config.llm.quantization.load_in_4bit and exported.config.llm.lora.enabled
    want_logits, want_ids = logits_and_ids(original, batch_of(original))
    got_logits, got_ids = logits_and_ids(exported, batch_of(exported))
    torch.testing.assert_close(got_logits, want_logits, rtol=0, atol=1e-5)
    assert torch.equal(got_ids, want_ids)
    assert result.probe.greedy_equal_tokens == result.probe.greedy_tokens
    assert "Exported from" in (moved / "README.md").read_text()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_merged_export_matches_within_tolerance(lora_checkpoint, batch_of, tmp_path, dtype):
    result = export_student(lora_checkpoint, tmp_path / "merged", merge_lora=True, dtype=dtype)
    exported = SalmonnStudent.from_pretrained(result.path).eval()
    assert not exported.config.llm.lora.enabled
    assert not any("lora_" in name for name, _ in exported.named_parameters())
    original = SalmonnStudent.from_pretrained(lora_checkpoint).eval()
    want_logits, want_ids = logits_and_ids(original, batch_of(original))
    got_logits, got_ids = logits_and_ids(exported, batch_of(exported))
    error = (got_logits - want_logits).abs().max().item()
    if dtype == "fp32":  # merging only reorders the sums
        assert error <= 1e-4
        assert torch.equal(got_ids, want_ids)
    else:
        # Reference: the unmerged checkpoint run wholly in bf16 (the same rounding of every
        # weight and activation, adapters kept apart). Merging must not add more than that.
        cfg = read_config(lora_checkpoint).model_copy(update={"compute_dtype": "bfloat16"})
        in_bf16 = SalmonnStudent.from_pretrained(lora_checkpoint, config=cfg).eval()
        reference = (logits_and_ids(in_bf16, batch_of(in_bf16))[0] - want_logits).abs().max()
        assert error <= 2 * reference.item()
    assert result.probe.max_abs_logit_diff > 0 or dtype == "fp32"


def test_cli_exports_and_refuses_clearly(lora_checkpoint, make_cfg, tmp_path, capsys):
    assert main(["export", str(lora_checkpoint), "-o", str(tmp_path / "e"), "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "exported to" in out and "greedy: first 16 of 16 tokens equal" in out

    assert main(["export", str(tmp_path / "nothing"), "-o", str(tmp_path / "x")]) == 2
    assert "no such directory" in capsys.readouterr().err
    plain = SalmonnStudent.from_config(make_cfg(lora=False)).save_pretrained(tmp_path / "plain")
    assert main(["export", str(plain), "-o", str(tmp_path / "y"), "--merge-lora"]) == 2
    err = capsys.readouterr().err
    assert "no LoRA adapters to merge" in err and "Traceback" not in err
    assert not (tmp_path / "y").exists()
