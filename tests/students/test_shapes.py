"""Random-weight students at real shapes: the public parameter counts, the same modules as a real
load (4-bit, LoRA, MoE), the vocabulary check and the bf16-on-CPU warning."""

from __future__ import annotations

import warnings

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.whisper.modeling_whisper import WhisperEncoder

import students.model as student_model
from distill.config import ModelConfig
from students import SalmonnStudent
from students.beats import BEATs, BeatsConfig
from students.llm import check_vocabulary
from students.shapes import BEATS_CONFIGS, UnknownShapeError, hf_config


def count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


# Published sizes: Meta's model cards give 1.23B and 3.21B parameters (tied embeddings); the
# Whisper encoder counts follow from the configs' arithmetic (32 x 19.7M layers + convs +
# 1500 x 1280 positions; v2's first conv takes 80 mel bins, not 128); BEATs iter3 is the
# 90M-parameter base model of the BEATs paper (Chen et al., 2022, Table 1).
@pytest.mark.parametrize(("name", "millions"), [
    ("meta-llama/Llama-3.2-1B-Instruct", 1235.8),
    ("meta-llama/Llama-3.2-3B-Instruct", 3212.7),
])
def test_llama_shapes_have_the_published_parameter_counts(name, millions):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(name, "k"))
    assert count(model) == pytest.approx(millions, abs=0.1)
    assert model.config.vocab_size == 128256 and model.config.tie_word_embeddings


@pytest.mark.parametrize(("name", "mels", "millions"), [
    ("openai/whisper-large-v3-turbo", 128, 637.0),
    ("openai/whisper-large-v2", 80, 636.8),
])
def test_whisper_encoder_shapes(name, mels, millions):
    config = hf_config(name, "k")
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    assert config.num_mel_bins == mels and config.d_model == 1280
    assert count(encoder) == pytest.approx(millions, abs=0.1)


def test_beats_shape():
    with torch.device("meta"):
        model = BEATs(BeatsConfig.from_dict(BEATS_CONFIGS[
            "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"]))
    assert count(model) == pytest.approx(90.3, abs=0.1) and model.output_dim == 768


def test_unknown_model_is_one_clear_error():
    with pytest.raises(UnknownShapeError, match="model.llm.name_or_path: model.random_init needs"):
        hf_config("someone/unknown-model", "model.llm.name_or_path")


def structure(student) -> dict:
    return {name: (tuple(p.shape), p.dtype, p.requires_grad, type(p).__name__)
            for name, p in student.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("moe", [None, {"enabled": True, "num_experts": 4, "top_k": 2}])
def test_random_init_builds_the_same_student_as_a_real_load(make_cfg, moe):
    """Same parameter names, shapes, dtypes, trainability and 4-bit layers; other values."""
    real = SalmonnStudent.from_config(make_cfg(quant=True, moe=moe))
    random = SalmonnStudent.from_config(make_cfg(quant=True, moe=moe, random_init=True))
    assert structure(random) == structure(real)
    kinds = [type(m).__name__ for m in random.modules()]
    assert kinds == [type(m).__name__ for m in real.modules()]
    assert kinds.count("Linear4bit") > 0 and any(isinstance(m, bnb.nn.Linear4bit)
                                                  for m in random.llm.modules())
    name = "whisper.layers.0.fc1.weight"
    assert not torch.equal(dict(random.named_parameters())[name],
                           dict(real.named_parameters())[name])


def test_a_tokenizer_larger_than_the_embedding_is_refused(tokenizer):
    small = LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match=r"'tiny': the tokenizer has 49152 token ids but the "
                                         r"LLM's embedding has 1000 rows"):
        check_vocabulary(tokenizer, small, "tiny")
    big = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16,
                                       intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2))
    check_vocabulary(tokenizer, big, "tiny")  # equal sizes (and larger embeddings) are fine


def test_the_student_checks_the_vocabulary_when_built(make_cfg, tiny_llama_factory, tokenizer,
                                                      tmp_path):
    path = tiny_llama_factory(tmp_path / "llm", tokenizer)
    cfg = make_cfg(llm={"name_or_path": str(path)})
    from transformers import AutoTokenizer

    bigger = AutoTokenizer.from_pretrained(path)
    bigger.add_tokens([f"<extra{i}>" for i in range(5)])
    with pytest.raises(ValueError, match="49157 token ids but the LLM's embedding has 49152"):
        SalmonnStudent.from_config(cfg, tokenizer=bigger)


@pytest.mark.parametrize("has_units", [False, True])
def test_bf16_on_a_cpu_without_matrix_units_is_warned(monkeypatch, has_units):
    monkeypatch.setattr(student_model, "cpu_has_bf16_matrix_units", lambda: has_units)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student_model.warn_slow_cpu_dtype(ModelConfig(compute_dtype="bfloat16"), "cpu")
        student_model.warn_slow_cpu_dtype(ModelConfig(compute_dtype="float32"), None)
    messages = [str(w.message) for w in caught]
    assert len(messages) == (0 if has_units else 1)
    if messages:
        assert "without bf16 matrix units" in messages[0] and "float32" in messages[0]
