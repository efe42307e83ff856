"""SmolLM2 from PyPI becomes a plain transformers folder that matches the GGUF it came from."""

import pytest
import torch

from distill.local_models import smollm2_gguf_path, smollm2_instruct

pytestmark = pytest.mark.slow


def test_converted_smollm2_matches_the_gguf_model_and_answers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_instruct()
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    gguf = smollm2_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    converted = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    with torch.no_grad():
        assert torch.equal(reference(ids).logits, converted(ids).logits)
        answer = converted.generate(ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(answer[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text


def test_second_call_reuses_the_cached_folder():
    first = smollm2_instruct()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert smollm2_instruct() == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_converted_config_is_plain_so_4bit_loading_is_allowed():
    import json

    config = json.loads((smollm2_instruct() / "config.json").read_text())
    assert "quantization_config" not in config
