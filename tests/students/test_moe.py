"""LLaMA-MoE conversion: neuron splits, equivalence with the dense FFN, routing, balance loss."""

from __future__ import annotations

import math
import statistics

import bitsandbytes as bnb
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP

from distill.config import MoEConfig
from students import SalmonnStudent
from students.moe import (
    TopKNoisyGate,
    convert_to_moe,
    load_statistics,
    moe_layers,
    reset_load_statistics,
    split_neurons,
)
from students.moe.convert import mlp_to_moe


def dense_mlp(dtype=torch.float64, hidden=16, intermediate=32, seed=0) -> LlamaMLP:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=2)
    mlp = LlamaMLP(config).to(dtype)
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return mlp


@pytest.mark.parametrize("method", ["random", "clustered"])
def test_split_covers_every_neuron_once(method):
    weight = torch.randn(48, 8)
    index = split_neurons(weight, 4, method, seed=3)
    assert index.shape == (4, 12)
    assert sorted(index.flatten().tolist()) == list(range(48))
    assert torch.equal(index, split_neurons(weight, 4, method, seed=3))  # reproducible
    with pytest.raises(ValueError, match="divisible"):
        split_neurons(torch.randn(50, 8), 4, method)


def test_random_split_depends_on_seed():
    weight = torch.randn(48, 8)
    assert not torch.equal(
        split_neurons(weight, 4, "random", 0), split_neurons(weight, 4, "random", 1)
    )


def test_clustered_split_recovers_planted_clusters():
    torch.manual_seed(0)
    centres = torch.randn(4, 8) * 10
    members = torch.arange(4).repeat_interleave(6)[torch.randperm(24)]
    weight = centres[members] + 0.1 * torch.randn(24, 8)
    index = split_neurons(weight, 4, "clustered", seed=0)
    for group in index:
        assert len(set(members[group].tolist())) == 1  # one planted cluster per expert


def zero_gate(layer):
    with torch.no_grad():
        for p in layer.gate.parameters():
            p.zero_()


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_all_experts_with_equal_gates_reproduce_the_dense_ffn(dtype, tol):
    """k = E, gate logits constant: softmax gives every expert 1/E. The experts' outputs sum to
    the dense FFN, so the layer gives dense / E * score_scale: dense / E with the default
    scale E/k = 1, and exactly the dense FFN with score_scale = E. Tolerance: 1e-10 in float64,
    1e-5 in float32 (absolute, outputs of order 1)."""
    mlp = dense_mlp(dtype)
    cfg = MoEConfig(enabled=True, num_experts=4, top_k=4)
    x = torch.randn(3, 5, 16, dtype=dtype)
    layer = mlp_to_moe(mlp, cfg, "silu", seed=0)
    layer.gate.to(dtype)
    zero_gate(layer)
    layer.eval()
    with torch.no_grad():
        dense = mlp(x)
        torch.testing.assert_close(layer(x), dense / 4, rtol=0, atol=tol)
        layer.score_scale = 4.0
        torch.testing.assert_close(layer(x), dense, rtol=0, atol=tol)


def test_top_k_routing_matches_a_per_token_loop():
    mlp = dense_mlp(torch.float32)
    layer = mlp_to_moe(mlp, MoEConfig(enabled=True, num_experts=4, top_k=2), "silu", seed=1).eval()
    x = torch.randn(7, 16)
    with torch.no_grad():
        out = layer(x)
        for token, row in zip(x, out, strict=True):
            logits = layer.gate.gate_network(token)
            top = logits.topk(2)
            weights = torch.softmax(top.values, -1)
            expected = sum(
                w * layer.experts[int(e)](token) for w, e in zip(weights, top.indices, strict=True)
            )
            torch.testing.assert_close(row, expected * 4 / 2)


def test_balance_loss_by_hand():
    gate = TopKNoisyGate(4, 4, 2, balance_weight=0.01).eval()
    with torch.no_grad():  # logits = tanh(x): an identity router
        gate.gate_network[0].weight.copy_(torch.eye(4))
        gate.gate_network[2].weight.copy_(torch.eye(4))
    x = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.0], [1.0, 0.0, 0.0, 2.0]])
    routing = gate(x)

    def top2_softmax(row):
        (i, a), (j, b) = sorted(enumerate(math.tanh(v) for v in row), key=lambda p: -p[1])[:2]
        ea, eb = math.exp(a), math.exp(b)
        return {i: ea / (ea + eb), j: eb / (ea + eb)}

    picks = [top2_softmax(row) for row in x.tolist()]
    importance = [sum(p.get(e, 0.0) for p in picks) for e in range(4)]
    load = [sum(e in p for p in picks) for e in range(4)]
    assert load == [2, 2, 1, 1]

    def cv2(values):
        return statistics.variance(values) / statistics.mean(values) ** 2

    expected = 0.01 * (cv2(importance) + cv2(load))
    assert routing.load.tolist() == load
    torch.testing.assert_close(routing.importance, torch.tensor(importance))
    assert routing.balance_loss.item() == pytest.approx(expected, rel=1e-5)


def test_noisy_training_load_is_differentiable():
    torch.manual_seed(0)
    gate = TopKNoisyGate(8, 4, 2).train()
    routing = gate(torch.randn(32, 8))
    assert 0 < routing.load.sum() < 32 * 4  # smooth probabilities, not counts
    routing.balance_loss.backward()
    assert gate.gate_network[0].weight.grad.abs().sum() > 0
    assert gate.weight_noise.weight.grad is not None
    gate.eval()
    routing = gate(torch.randn(32, 8))
    assert routing.load.sum() == 32 * 2  # no noise in eval: hard counts


def test_load_statistics_count_routed_tokens(tiny_llm_dir):
    model = LlamaForCausalLM.from_pretrained(tiny_llm_dir)
    convert_to_moe(model, MoEConfig(enabled=True, num_experts=4, top_k=2))
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.randint(0, 100, (2, 5)))
    stats = load_statistics(model)
    assert stats.shape == (2, 4)
    assert torch.all(stats.sum(-1) == 2 * 5 * 2)
    reset_load_statistics(model)
    assert load_statistics(model).sum() == 0


def test_converted_model_with_equal_gates_equals_dense(tiny_llm_dir):
    dense = LlamaForCausalLM.from_pretrained(tiny_llm_dir).eval()
    moe = LlamaForCausalLM.from_pretrained(tiny_llm_dir)
    convert_to_moe(moe, MoEConfig(enabled=True, num_experts=4, top_k=4, split="clustered"))
    for layer in moe_layers(moe):
        zero_gate(layer)
        layer.score_scale = 4.0
    moe.eval()
    ids = torch.randint(0, 1000, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(moe(input_ids=ids).logits, dense(input_ids=ids).logits)


def test_moe_student_in_4bit_with_lora_trains(make_cfg, noise):
    torch.manual_seed(0)
    cfg = make_cfg(quant=True, beats=False, moe={"enabled": True, "num_experts": 4, "top_k": 2})
    student = SalmonnStudent.from_config(cfg).train()
    layer = moe_layers(student.llm)[0]
    assert isinstance(layer.experts[0].up_proj.base_layer, bnb.nn.Linear4bit)
    assert isinstance(
        student.causal_lm.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit
    )
    assert type(layer.gate.gate_network[0]) is torch.nn.Linear  # gates stay full precision
    assert all(p.requires_grad for p in layer.gate.parameters())
    batch = student.processor([noise(1)], ["a"], ["b c"])
    out = student(batch)
    assert out.balance_loss is not None and out.balance_loss.ndim == 0
    logits = out.hidden_states @ student.lm_head_weight.T
    loss = torch.nn.functional.cross_entropy(logits[0], out.labels[0], ignore_index=-100)
    (loss + out.balance_loss).backward()
    assert layer.gate.gate_network[0].weight.grad.abs().sum() > 0
    lora_b = layer.experts[0].up_proj.lora_B["default"].weight
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0
