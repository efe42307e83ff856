"""The SALMONN-style student: Whisper (+ BEATs) -> window Q-Former -> projection -> LLM.

Why the forward returns hidden states, not logits: the loss (``distill.losses``) multiplies them
with the lm_head weight chunk by chunk, so [tokens x vocab] logits never exist in fp32 at once.
Logits are computed only when asked.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill.data.dtypes import torch_dtype
from distill.data.tokenizers import end_token_ids, pad_token_id
from students.beats import BEATs, load_beats, random_beats
from students.config import DecodingConfig, ModelConfig
from students.encoder_memo import EncoderMemo
from students.fusion import AudioFusion
from students.llm import (
    causal_lm,
    check_vocabulary,
    cpu_has_bf16_matrix_units,
    load_llm,
    load_tokenizer,
)
from students.moe.layer import moe_balance_loss
from students.processor import SalmonnProcessor
from students.prompting import assemble_inputs, shift_labels
from students.qformer import WindowQFormer
from students.whisper_encoder import load_whisper_encoder


@dataclass
class StudentOutput:
    """What ``SalmonnStudent.forward`` returns.

    ``hidden_states`` [B, T, H]: after the LLM's final norm, before lm_head. ``labels`` [B, T]:
    shifted, so ``hidden_states[:, t]`` is scored against ``labels[:, t]`` (-100 = no loss).
    With ``padding_free`` B = 1 and T = N, the batch's real tokens.
    ``logits`` [B, T, V] only with ``return_logits=True``. ``balance_loss``: the MoE balance
    loss summed over layers (already weighted), None without MoE.
    """

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None
    audio_embeds: torch.Tensor | None = None


def warn_slow_cpu_dtype(cfg: ModelConfig, device) -> None:
    """bf16 on a CPU without bf16 matrix units runs several times slower than float32 (autocast
    to bf16 from train.precision hits the same kernels): say so before minutes are lost."""
    on_cpu = device is None or torch.device(device).type == "cpu"
    if on_cpu and cfg.compute_dtype == "bfloat16" and not cpu_has_bf16_matrix_units():
        warnings.warn(
            "model.compute_dtype is bfloat16 on a CPU without bf16 matrix units (AMX): bf16 "
            "matrix products run about 5x slower than float32 here; set compute_dtype (and "
            "quantization.compute_dtype) to float32 for the CPU path (`distill bench` does so)",
            stacklevel=3,
        )


class SalmonnStudent(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        whisper: nn.Module,
        beats: BEATs | None,
        llm: nn.Module,
        tokenizer,
    ):
        super().__init__()
        self.config = cfg
        self.whisper = whisper
        self.beats = beats
        self.fusion = AudioFusion(whisper.config.d_model, beats.output_dim if beats else 0)
        self.qformer = WindowQFormer(cfg.qformer, self.fusion.out_dim)
        hidden = causal_lm(llm).config.get_text_config().hidden_size
        self.projection = nn.Linear(cfg.qformer.hidden_size, hidden)
        self.llm = llm
        self.tokenizer = tokenizer
        self.end_ids = end_token_ids(tokenizer, causal_lm(llm))
        self.pad_id = pad_token_id(tokenizer, self.end_ids)
        self.processor = SalmonnProcessor.from_config(cfg, tokenizer, end_ids=self.end_ids)
        self.decoding = DecodingConfig()  # what transcribe/caption/ask use; see from_pretrained
        # A frozen Whisper's outputs by clip, when the trainer keeps them (train.encoder_memo_mb)
        self.speech_memo: EncoderMemo | None = None

    # ------------------------------------------------------------------ building and io
    @classmethod
    def from_config(
        cls, cfg: ModelConfig, *, device: str | torch.device | None = None, tokenizer=None
    ) -> SalmonnStudent:
        """Build from the recipe's ``model`` section; pretrained parts load from their paths
        (``cfg.random_init``: random weights at their shapes, same code path otherwise)."""
        dtype = torch_dtype(cfg.compute_dtype)
        warn_slow_cpu_dtype(cfg, device)
        random_init = cfg.random_init
        whisper = load_whisper_encoder(cfg.whisper, dtype, random_init=random_init)
        beats = None
        if cfg.beats.enabled:
            options = dict(dtype=dtype, fbank_mean=cfg.beats.fbank_mean,
                           fbank_std=cfg.beats.fbank_std)
            beats = (random_beats(cfg.beats.checkpoint, **options) if random_init
                     else load_beats(cfg.beats.checkpoint, **options))
            if cfg.beats.freeze:
                beats.requires_grad_(False).eval()
        llm = load_llm(cfg.llm, dtype=dtype, moe=cfg.moe, device=device, random_init=random_init)
        if tokenizer is None:
            tokenizer = load_tokenizer(cfg.llm, random_init=random_init)
        check_vocabulary(tokenizer, causal_lm(llm), cfg.llm.name_or_path)
        student = cls(cfg, whisper, beats, llm, tokenizer)
        if device is not None:
            for module in (student.whisper, student.beats, student.fusion, student.qformer):
                if module is not None:
                    module.to(device)
            student.projection.to(device)
        return student

    def save_pretrained(self, directory: str | Path, *, card=None) -> Path:
        """Trainable weights (LoRA in peft format, the rest in safetensors), the config and a
        model card ``README.md``; ``card`` (a ``students.card.CardContext``) adds the run."""
        from students.checkpoint import save_student

        return save_student(self, directory, card=card)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        config: ModelConfig | None = None,
        device: str | torch.device | None = None,
        tokenizer=None,
    ) -> SalmonnStudent:
        """Rebuild from the saved config (or ``config``, which must describe the same
        architecture) and load the saved trainable weights. ``directory`` may also be a trainer
        checkpoint (``runs/<run>/best``), whose ``student/`` folder is loaded."""
        from students.checkpoint import CONFIG_FILE, read_config

        if not (Path(directory) / CONFIG_FILE).is_file() and (
                Path(directory) / "student" / CONFIG_FILE).is_file():
            directory = Path(directory) / "student"

        student = cls.from_config(
            config if config is not None else read_config(directory),
            device=device,
            tokenizer=tokenizer,
        )
        student.load_trainable(directory)
        from students.inference import saved_decoding

        student.decoding = saved_decoding(directory)  # the evaluation's, when the run is known
        return student

    def load_trainable(self, directory: str | Path) -> None:
        from students.checkpoint import load_student_weights

        load_student_weights(self, directory)

    # ------------------------------------------------------------------ answers
    def transcribe(self, audio, **options):
        """Transcript of an audio file (str) or of each file in a list (list of str); decoding
        as ``distill evaluate`` does it (``students.inference``)."""
        from students.inference import transcribe

        return transcribe(self, audio, **options)

    def caption(self, audio, **options):
        """A caption of the sound in each file, as ``transcribe``."""
        from students.inference import caption

        return caption(self, audio, **options)

    def ask(self, audio, question, **options):
        """An answer to ``question`` (one for all files, or one per file) about each file."""
        from students.inference import ask

        return ask(self, audio, question, **options)

    # ------------------------------------------------------------------ parts
    @property
    def causal_lm(self) -> nn.Module:
        return causal_lm(self.llm)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """[V, H] weight that maps ``hidden_states`` to logits (tied or not)."""
        return self.causal_lm.get_output_embeddings().weight

    @property
    def lm_head_bias(self) -> torch.Tensor | None:
        return getattr(self.causal_lm.get_output_embeddings(), "bias", None)

    @property
    def device(self) -> torch.device:
        return self.projection.weight.device

    @property
    def num_audio_tokens(self) -> int:
        return self.processor.num_audio_tokens

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings()(ids)

    def train(self, mode: bool = True) -> SalmonnStudent:
        """Frozen encoders stay in eval mode (no dropout) while the rest trains."""
        super().train(mode)
        if self.config.whisper.freeze:
            self.whisper.eval()
        if self.beats is not None and self.config.beats.freeze:
            self.beats.eval()
        return self

    # ------------------------------------------------------------------ forward
    def encode_audio(self, batch: dict) -> torch.Tensor:
        """Batch audio -> [B, audio tokens, LLM hidden] embeddings for the prompt."""
        device = self.device
        features = batch["whisper_features"].to(device, self.whisper.dtype)
        with torch.no_grad() if self.config.whisper.freeze else nullcontext():
            speech = self._encode_speech(features, batch.get("whisper_frames"))
        audio = audio_mask = None
        if self.beats is not None:
            with torch.no_grad() if self.config.beats.freeze else nullcontext():
                audio, audio_mask = self.beats(
                    batch["beats_waveform"].to(device), batch["beats_padding_mask"].to(device)
                )
        tokens = self.qformer(self.fusion(speech, audio, audio_mask))
        return self.projection(tokens.to(self.projection.weight.dtype))

    def _encode_speech(self, features: torch.Tensor, frames: torch.Tensor | None) -> torch.Tensor:
        """[B, mels, F] -> [B, F / 2, width]. With ``frames`` [B] (``pad_to_30s: false``) each
        clip is encoded alone at its own length, grouped by length, and zero beyond it: the
        encoder has no padding mask, so a clip must not see another clip's padding (the result
        does not depend on the batch)."""
        if frames is None:
            return self._run_whisper(features)
        speech = features.new_zeros(features.size(0), features.size(-1) // 2,
                                    self.whisper.config.d_model)
        for length in frames.unique().tolist():
            rows = (frames == length).nonzero().squeeze(1).to(features.device)
            encoded = self._run_whisper(features[rows, :, :length])
            speech[rows, : length // 2] = encoded.to(speech.dtype)
        return speech

    def _run_whisper(self, features: torch.Tensor) -> torch.Tensor:
        """[B, mels, F] -> [B, F / 2, width]; clips seen before come from ``speech_memo``."""
        def encode(x: torch.Tensor) -> torch.Tensor:
            return self.whisper(x).last_hidden_state

        if self.speech_memo is None or torch.is_grad_enabled():
            return encode(features)
        return self.speech_memo.encode(encode, features)

    def forward(self, batch: dict, *, return_logits: bool = False,
                audio_embeds: torch.Tensor | None = None,
                padding_free: bool = False) -> StudentOutput:
        """``audio_embeds`` [B, A, H]: audio tokens to use in place of ``encode_audio(batch)``
        (the trainer passes other clips' to measure how much the answers depend on the audio).

        ``padding_free``: the B sequences go to the LLM as one row of their N real tokens, each
        with its own positions from 0, so no token attends across samples (transformers builds
        the block-causal mask from the positions; FlashAttention-2 runs them varlen). Outputs
        are then [1, N, ...]; the target tokens come in the same order as from [B, T]. This is
        TRL's ``padding_free``: the same loss without computing padding."""
        audio = self.encode_audio(batch) if audio_embeds is None else audio_embeds
        with_targets = "target_ids" in batch
        inputs = assemble_inputs(
            self.embed_tokens,
            audio,
            batch,
            padding_side="right" if with_targets else "left",
            with_targets=with_targets,
        )
        embeds, mask, positions = inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids
        labels = shift_labels(inputs.labels) if inputs.labels is not None else None
        if padding_free:
            real = mask.bool()
            embeds, positions = embeds[real][None], positions[real][None]
            labels = labels[real][None] if labels is not None else None
            mask = None  # the output's mask: all ones, below
        hidden = self.causal_lm.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state
        logits = None
        if return_logits:
            logits = self.causal_lm.get_output_embeddings()(hidden)
        return StudentOutput(
            hidden_states=hidden,
            attention_mask=mask if mask is not None else positions.new_ones(positions.shape),
            labels=labels,
            logits=logits,
            balance_loss=moe_balance_loss(self.llm) if self.config.moe.enabled else None,
            audio_embeds=audio,
        )

    def generate(
        self, batch: dict, decoding: DecodingConfig | None = None, **overrides
    ) -> torch.Tensor:
        """Generated ids [B, new tokens] (KV cache; greedy, beams or sampling; stops on the
        tokenizer's real end ids). Keyword overrides win over ``decoding``."""
        from students.generation import generate

        return generate(self, batch, decoding, **overrides)
