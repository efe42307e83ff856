"""Schema of the recipe's ``model`` section and of decoding: everything that builds a student.

Owned by ``students`` so that a student can be built, saved and loaded from these classes alone,
without the rest of the recipe (``distill.config`` composes this section into a recipe).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from distill.errors import DistillError
from distill.schema import (
    Dtype,
    NonNegFloat,
    PositiveFloat,
    PositiveInt,
    Probability,
    Strict,
)


class WhisperEncoderConfig(Strict):
    """Speech encoder: the encoder half of a Whisper checkpoint (docs/reference.md §1)."""

    name_or_path: str = "openai/whisper-large-v3-turbo"
    num_mel_bins: Literal[80, 128] = 128
    # Upstream keeps Whisper in fp32 under autocast; we keep it in the compute dtype by default.
    dtype: Literal["compute", "float32"] = "compute"
    freeze: bool = True
    # true: every clip is padded to 30 s, as Whisper was trained. false: each clip's log-mel is
    # cut after its last Q-Former window and encoded alone with the first positional embeddings
    # (variable-length Whisper features, as SLAM-LLM's encoders): a 3 s clip costs about a tenth
    # of 30 s, and its features differ from the padded ones (docs/reference.md §1: mean cosine
    # 0.96 on speech, 0.91 on sounds), so train and evaluate a student one way. Needs
    # qformer.audio_tokens: clip.
    pad_to_30s: bool = True


class BeatsEncoderConfig(Strict):
    """Audio-event encoder (our BEATs implementation, loading the official pickled checkpoint)."""

    enabled: bool = True
    checkpoint: str | None = "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
    freeze: bool = True
    fbank_mean: float = 15.41663
    fbank_std: float = 6.55582

    @model_validator(mode="after")
    def _needs_checkpoint(self) -> BeatsEncoderConfig:
        if self.enabled and not self.checkpoint:
            raise ValueError("beats.enabled is true but beats.checkpoint is empty")
        return self


class QFormerConfig(Strict):
    """Window-level Q-Former: one query per 17-frame window gives 88 tokens for 30 s."""

    window_frames: PositiveInt = 17
    window_stride: PositiveInt = 17
    queries_per_window: PositiveInt = 1
    num_layers: PositiveInt = 2
    hidden_size: PositiveInt = 768
    num_attention_heads: PositiveInt = 12
    intermediate_size: PositiveInt = 3072
    cross_attention_frequency: PositiveInt = 1
    dropout: Probability = 0.1
    # Std of the normal init of every weight (query tokens, attention, FFN).
    initializer_range: PositiveFloat = 0.02
    # "all": every window of the 30 s Whisper input reaches the LLM (88 tokens, as SALMONN);
    # "clip": only the windows that start inside the clip (ceil(seconds * 50 / stride) of them),
    # so a 2 s clip brings 6 tokens, not 88, and the LLM does not attend to encoded padding.
    audio_tokens: Literal["all", "clip"] = "all"

    @model_validator(mode="after")
    def _heads_divide(self) -> QFormerConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        return self


class QuantizationConfig(Strict):
    """bitsandbytes 4-bit loading of the LLM (QLoRA)."""

    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Dtype = "bfloat16"


ALL_LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Strict):
    """peft LoRA on the LLM; the reference student adapts all seven projections."""

    enabled: bool = True
    r: PositiveInt = 8
    alpha: PositiveFloat = 32
    dropout: Probability = 0.1
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LLAMA_PROJECTIONS), min_length=1)


class LLMConfig(Strict):
    """The student's language model: any causal LM by hub name or local path."""

    name_or_path: str = "meta-llama/Llama-3.2-1B-Instruct"
    revision: str | None = None
    gguf_file: str | None = None
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    gradient_checkpointing: bool = False


class MoEConfig(Strict):
    """LLaMA-MoE: the dense FFNs split into experts by intermediate neurons."""

    enabled: bool = False
    num_experts: PositiveInt = 8
    top_k: PositiveInt = 2
    split: Literal["random", "clustered"] = "random"
    gate_noise: bool = True
    balance_weight: NonNegFloat = 0.01
    split_seed: int = 0
    # Expert outputs are multiplied by this; None means E/k as in LLaMA-MoE. (With k = E and
    # equal gates a scale of E reproduces the dense FFN exactly; E/k = 1 gives dense / E.)
    score_scale: PositiveFloat | None = None

    @model_validator(mode="after")
    def _top_k_fits(self) -> MoEConfig:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        return self


DEFAULT_INSTRUCTIONS = {
    "asr": ["Recognize the speech and give me the transcription."],
    "audiocaption": ["Please describe the audio."],
    "audiocaption_v2": ["Please write down what your hear in the audio."],
}


class PromptConfig(Strict):
    """The student's prompt; ``<SpeechHere>`` is where the audio embeddings are spliced."""

    template: str = "USER: <Speech><SpeechHere></Speech> {instruction}\nASSISTANT:"
    max_text_length: PositiveInt = 300
    instructions: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_INSTRUCTIONS))

    @model_validator(mode="after")
    def _has_placeholders(self) -> PromptConfig:
        for needed in ("<SpeechHere>", "{instruction}"):
            if needed not in self.template:
                raise ValueError(f"prompt template must contain {needed!r}")
        return self


class ModelConfig(Strict):
    whisper: WhisperEncoderConfig = Field(default_factory=WhisperEncoderConfig)
    beats: BeatsEncoderConfig = Field(default_factory=BeatsEncoderConfig)
    qformer: QFormerConfig = Field(default_factory=QFormerConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    moe: MoEConfig = Field(default_factory=MoEConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    compute_dtype: Dtype = "bfloat16"
    # Random weights at the named models' real shapes (students.shapes), built through the same
    # 4-bit / MoE / LoRA steps as a real load: for measuring memory and speed without a model hub.
    random_init: bool = False

    @model_validator(mode="after")
    def _short_whisper_input_keeps_clip_tokens(self) -> ModelConfig:
        if not self.whisper.pad_to_30s and self.qformer.audio_tokens != "clip":
            raise ValueError(
                "whisper.pad_to_30s: false needs qformer.audio_tokens: clip (a clip encoded "
                "alone has only its own windows, not the 88 of a 30 s input)"
            )
        return self


class StudentConfigError(DistillError, ValueError):
    """A model section that cannot build a student (a tokenizer larger than the LLM's embedding,
    a random-init shape that is not known); the message names the key."""


# The one audio rate the student takes: Whisper's and BEATs' front ends are defined at 16 kHz.
SAMPLE_RATE = 16000

# Clips per generation batch, in `distill evaluate` (eval.batch_size) and student.transcribe.
DEFAULT_EVAL_BATCH_SIZE = 8


class DecodingConfig(Strict):
    """Generation settings of the reference evaluation (docs/reference.md §1)."""

    num_beams: PositiveInt = 4
    max_new_tokens: PositiveInt = 200
    repetition_penalty: PositiveFloat = 1.5
    length_penalty: float = 1.0
    do_sample: bool = False
    temperature: PositiveFloat = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
