"""``distill bench`` on tiny shapes: tables, per-component counts, ratios, the CPU notes."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.bench import BenchOptions, component_sizes
from distill.cli import main
from distill.config import Recipe
from students import SalmonnStudent


@pytest.fixture()
def recipe_file(make_cfg, tmp_path):
    def write(name: str, **model) -> str:
        cfg = make_cfg(quant=True, **model).model_dump(mode="json")
        recipe = Recipe.model_validate({
            "name": name, "model": cfg,
            "train": {"batch_size": 2, "clip": {"mode": "zclip", "zclip_warmup_steps": 1}},
            "teacher": {"top_k": 4},
            "eval": {"efficiency": {"clip_seconds": 2.0, "warmup_runs": 1, "timed_runs": 2}},
        })
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
        return str(path)

    return write


def test_component_sizes_add_up_to_the_student(make_cfg):
    student = SalmonnStudent.from_config(make_cfg(quant=True))
    sizes = {c.name: c for c in component_sizes(student)}
    params = list(student.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    assert sum(c.trainable for c in sizes.values()) == trainable
    packed = [p for p in student.llm.parameters() if type(p).__name__ == "Params4bit"]
    assert packed and sizes["llm"].quantised == 2 * sum(p.numel() for p in packed)
    assert sizes["llm"].trainable == sum(p.numel() for p in student.llm.parameters()
                                         if p.requires_grad)
    assert sizes["whisper"].frozen == sum(p.numel() for p in student.whisper.parameters())
    assert sizes["whisper"].trainable == 0  # frozen encoder
    assert sizes["whisper"].bytes == 4 * sizes["whisper"].frozen  # float32


@pytest.mark.slow
def test_bench_cli_runs_two_recipes_and_gives_ratios(recipe_file, tmp_path, capsys):
    base = recipe_file("base")
    # 2 experts: each keeps 64 of the tiny FFN's 128 neurons (bitsandbytes' one-token 4-bit path
    # needs whole 64-value blocks; real experts hold 1024)
    moe = recipe_file("moe", moe={"enabled": True, "num_experts": 2, "top_k": 1},
                      random_init=True)
    out = tmp_path / "out"
    code = main(["bench", base, moe, "--train-steps", "2", "--generate-tokens", "3",
                 "--output-dir", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    results = json.loads((out / "bench.json").read_text())
    assert [r["recipe"] for r in results] == ["base", "moe"]
    assert (out / "bench.md").read_text() == text.rstrip("\n") + "\n"
    for r in results:
        e, t = r["efficiency"], r["train"]
        assert e["timed_runs"] == 3 and e["warmup_runs"] == 1  # the CPU default, not the recipe's
        assert e["ttft_s"]["median"] > 0 and e["tpot_s"]["median"] > 0
        assert t["batch_size"] == 2 and len(t["step_s"]) == 2 and t["target_tokens"] == 64
        assert r["generated_tokens"] == 3
        assert any("CPU: 1 warm-up + 3 timed runs" in n for n in r["notes"])
    # zclip with a one-step warm-up: step 1 only collects (no limit), step 2 has a threshold
    assert results[0]["train"]["clip_thresholds"][0] is None
    assert results[0]["train"]["clip_thresholds"][1] is not None
    base_row = next(line for line in text.splitlines() if line.startswith("| base |"))
    assert "| 1.00 | 1.00 |" in base_row  # the baseline is 1.00x itself
    moe_row = next(line for line in text.splitlines() if line.startswith("| moe |"))
    memory = results[1]["efficiency"]["peak_memory_gb"] / results[0]["efficiency"]["peak_memory_gb"]
    assert f"| {memory:.2f} |" in moe_row
    assert "distill bench" in text and "| **total** |" in text


def test_bf16_on_a_cpu_without_units_runs_float32_and_says_so(recipe_file, monkeypatch):
    import students.llm

    monkeypatch.setattr(students.llm, "cpu_has_bf16_matrix_units", lambda: False)
    from distill.bench import prepare_recipe
    from distill.config import load_recipe

    recipe = load_recipe(recipe_file("r"))
    recipe.model.compute_dtype = "bfloat16"
    notes: list[str] = []
    prepared = prepare_recipe(recipe, BenchOptions(device="cpu"), notes)
    assert prepared.model.compute_dtype == "float32"
    assert prepared.model.llm.quantization.compute_dtype == "float32"
    assert notes and "no bf16 matrix units" in notes[0]
    kept = prepare_recipe(recipe, BenchOptions(device="cpu", dtype="bfloat16"), [])
    assert kept.model.compute_dtype == "bfloat16"  # asked for explicitly


def test_static_cache_lever_gives_the_same_next_token(make_cfg):
    """The decode step on a preallocated cache predicts what the growing cache predicts."""
    import torch

    from distill.bench import fixed_clip
    from distill.evaluate.efficiency import _Decoder
    from students.prompting import assemble_inputs

    student = SalmonnStudent.from_config(make_cfg()).eval()
    clip = fixed_clip(2.0)
    batch = student.processor([clip], ["Describe it."])
    with torch.no_grad():
        inputs = assemble_inputs(student.embed_tokens, student.encode_audio(batch), batch,
                                 padding_side="left", with_targets=False)
        logits = []
        for static in (False, True):
            decoder = _Decoder(student, static_cache=static, compile_decode=False)
            out = decoder.prefill(inputs)
            next_id = out.logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([inputs.attention_mask, inputs.attention_mask.new_ones(1, 1)], 1)
            logits.append(decoder.step(next_id, mask, out.past_key_values).logits[:, -1])
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)
