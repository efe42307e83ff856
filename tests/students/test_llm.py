"""LLM loading: attention choice, end ids, 4-bit NF4 + LoRA training on CPU."""

from __future__ import annotations

import types

import bitsandbytes as bnb
import pytest
import torch
import torch.nn.functional as F

from distill.data.tokenizers import end_token_ids
from students import SalmonnStudent
from students.llm import resolve_attn_implementation


def test_attention_auto_is_sdpa_without_gpu():
    if not torch.cuda.is_available():
        assert resolve_attn_implementation("auto") == "sdpa"
    assert resolve_attn_implementation("eager") == "eager"


def test_end_ids_are_the_tokenizers_not_llama2s(tokenizer):
    assert end_token_ids(tokenizer) == [tokenizer.eos_token_id]
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=[7, 2, 9]))
    assert end_token_ids(tokenizer, model) == [tokenizer.eos_token_id, 7, 9]
    other = types.SimpleNamespace(eos_token_id=128009, name_or_path="llama3")
    model = types.SimpleNamespace(generation_config=types.SimpleNamespace(eos_token_id=128001))
    assert end_token_ids(other, model) == [128009, 128001]  # no 2 anywhere


def ce_loss(student, out):
    logits = out.hidden_states @ student.lm_head_weight.T
    return F.cross_entropy(logits.flatten(0, 1).float(), out.labels.flatten(), ignore_index=-100)


def train_steps(student, batch, steps, lr):
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = ce_loss(student, student(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def trainable_names(student):
    return {n for n, p in student.named_parameters() if p.requires_grad}


def test_qlora_trains_on_cpu(make_cfg, noise):
    torch.manual_seed(0)
    student = SalmonnStudent.from_config(make_cfg(quant=True)).train()
    layer = student.causal_lm.model.layers[0]
    assert isinstance(layer.self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    assert isinstance(layer.mlp.down_proj.base_layer, bnb.nn.Linear4bit)
    assert layer.self_attn.q_proj.base_layer.weight.quant_type == "nf4"
    assert not isinstance(student.causal_lm.lm_head, bnb.nn.Linear4bit)
    names = trainable_names(student)
    lora = {n for n in names if "lora_" in n}
    assert len(lora) == 2 * 7 * 2  # A and B, seven projections, two layers
    assert names - lora == {
        n for n in names if n.split(".")[0] in ("fusion", "qformer", "projection")
    }

    base = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    batch = student.processor([noise(2), noise(1, 1)], ["a", "b"], ["hello world", "good dog"])
    losses = train_steps(student, batch, steps=8, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0], losses
    after = dict(student.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base.items())  # 4-bit base, encoders frozen
    changed = {n for n, p in before.items() if not torch.equal(after[n], p)}
    assert {n for n in before if "lora_B" in n} <= changed
    assert any(n.startswith("qformer.") for n in changed) and "projection.weight" in changed


def test_gradient_checkpointing_option(make_cfg, noise):
    student = SalmonnStudent.from_config(make_cfg(llm={"gradient_checkpointing": True})).train()
    assert student.causal_lm.is_gradient_checkpointing
    batch = student.processor([noise(1)], ["a"], ["b c"])

    def grads():
        student.zero_grad()
        ce_loss(student, student(batch)).backward()
        return {n: p.grad.clone() for n, p in student.named_parameters() if "lora_B" in n}

    checkpointed = grads()
    student.causal_lm.gradient_checkpointing_disable()
    plain = grads()
    assert all(g.abs().sum() > 0 for g in checkpointed.values())
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad)


@pytest.mark.slow
def test_smollm2_qlora_learns_and_generation_stops_at_its_end_id(make_cfg, smollm2_dir, noise):
    """The real SmolLM2 in 4-bit: overfit one sample, then greedy decoding must reproduce the
    target and stop on the tokenizer's end id well before max_new_tokens."""
    torch.manual_seed(0)
    cfg = make_cfg(quant=True, beats=False, llm={"name_or_path": str(smollm2_dir)})
    student = SalmonnStudent.from_config(cfg).train()
    batch = student.processor([noise(1)], ["Recognize the speech."], ["hello there"])
    losses = train_steps(student, batch, steps=12, lr=3e-3)
    assert losses[-1] < 0.2 * losses[0], losses
    student.eval()
    prompt = student.processor([noise(1)], ["Recognize the speech."])
    generated = student.generate(prompt, max_new_tokens=20)[0].tolist()
    target = batch["target_ids"][0].tolist()
    assert target[-1] == student.tokenizer.eos_token_id
    assert generated == target
    assert student.processor.decode([generated]) == ["hello there"]


@pytest.mark.slow
def test_llm_loads_from_a_gguf_file():
    from distill.config import LLMConfig
    from distill.local_models import smollm2_gguf_path
    from students.llm import load_llm, load_tokenizer

    gguf = smollm2_gguf_path()
    cfg = LLMConfig(
        name_or_path=str(gguf.parent),
        gguf_file=gguf.name,
        quantization={"load_in_4bit": False},
        lora={"target_modules": ["q_proj", "v_proj"]},
    )
    tokenizer = load_tokenizer(cfg)
    model = load_llm(cfg, dtype=torch.float32)
    assert model.config.hidden_size == 576 and model.peft_config["default"].r == 8
    ids = torch.tensor([tokenizer("Hello", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, ids.size(1), len(tokenizer))
