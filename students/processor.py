"""One entry point from raw inputs to a student batch: waveforms, instructions, targets.

Why one: the trainer, the evaluator and the app must build identical batches (features, prompt
split, target ids, labels); two hand-written collators would drift. Target ids come from
``distill.data.targets.encode_target``, the definition the teacher cache shares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from distill.data.config import AudioConfig
from distill.data.targets import encode_target
from distill.data.tokenizers import end_token_ids, pad_token_id
from students.config import SAMPLE_RATE, ModelConfig, PromptConfig
from students.llm import load_tokenizer
from students.prompting import (
    build_attention_mask,
    build_labels,
    encode_prompt,
    pad_ids,
    sample_layout,
)
from students.qformer import num_windows
from students.whisper_encoder import encoder_frames, mel_frames_for, whisper_feature_extractor

Waveform = torch.Tensor | np.ndarray | Sequence[float]


class SalmonnProcessor:
    """(16 kHz mono waveforms, instructions, optional targets) -> batch dict of tensors.

    Keys: ``whisper_features`` [B, mels, 3000] (with ``pad_to_30s=False`` [B, mels, F], F the
    longest clip's ``whisper_frames``); ``whisper_frames`` [B] (only with ``pad_to_30s=False``:
    the mel frames each clip is encoded with, ``mel_frames_for`` its windows); ``audio_lengths``
    [B] (audio tokens each sample gives the LLM, ``audio_token_count``); ``beats_waveform`` [B, S] and
    ``beats_padding_mask`` [B, S] (True = padding; only with BEATs); ``prefix_ids`` [B, P] and
    ``prefix_lengths`` [B] (BOS + text before the audio); ``suffix_ids`` / ``suffix_lengths``
    (text after it); with targets also ``target_ids`` / ``target_lengths`` (ending with the end
    id unless truncated) and ``labels`` [B, L] (unshifted, -100 but on the target); always
    ``attention_mask`` [B, L] of the assembled sequence (right padded with targets, left padded
    without, as generation needs).
    """

    def __init__(
        self,
        tokenizer,
        *,
        prompt: PromptConfig,
        num_mel_bins: int = 128,
        beats: bool = True,
        window_frames: int = 17,
        window_stride: int = 17,
        queries_per_window: int = 1,
        audio_tokens: str = "all",
        pad_to_30s: bool = True,
        end_ids: list[int] | None = None,
        min_seconds: float = 1.0,
        max_seconds: float = 30.0,
    ):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.beats = beats
        self.feature_extractor = whisper_feature_extractor(num_mel_bins)
        frames = encoder_frames(self.feature_extractor)
        self.num_audio_tokens = (
            num_windows(frames, window_frames, window_stride) * queries_per_window
        )
        if audio_tokens not in ("all", "clip"):
            raise ValueError(f"audio_tokens must be 'all' or 'clip', got {audio_tokens!r}")
        self.audio_tokens = audio_tokens
        if not pad_to_30s and audio_tokens != "clip":
            raise ValueError("pad_to_30s=False needs audio_tokens='clip'")
        self.pad_to_30s = pad_to_30s
        self.window_frames = window_frames
        self.window_stride, self.queries_per_window = window_stride, queries_per_window
        self.end_ids = end_ids if end_ids is not None else end_token_ids(tokenizer)
        self.min_samples = int(round(min_seconds * SAMPLE_RATE))
        self.max_samples = int(round(max_seconds * SAMPLE_RATE))
        self.pad_id = pad_token_id(tokenizer, self.end_ids)

    @classmethod
    def from_config(
        cls,
        cfg: ModelConfig,
        tokenizer=None,
        *,
        end_ids: list[int] | None = None,
        audio: AudioConfig | None = None,
    ):
        """``audio`` (the recipe's ``data.audio``) may tighten the 1 s / 30 s rules; more than
        30 s cannot reach Whisper anyway."""
        lengths = {}
        if audio is not None:
            lengths = {
                "min_seconds": audio.min_seconds,
                "max_seconds": min(audio.max_seconds, 30.0),
            }
        return cls(
            tokenizer if tokenizer is not None else load_tokenizer(cfg.llm),
            prompt=cfg.prompt,
            num_mel_bins=cfg.whisper.num_mel_bins,
            beats=cfg.beats.enabled,
            window_frames=cfg.qformer.window_frames,
            window_stride=cfg.qformer.window_stride,
            queries_per_window=cfg.qformer.queries_per_window,
            audio_tokens=cfg.qformer.audio_tokens,
            pad_to_30s=cfg.whisper.pad_to_30s,
            end_ids=end_ids,
            **lengths,
        )

    def instruction_for(self, record: dict, *, override: str | None = None, index: int = 0) -> str:
        """The instruction a record is prompted with: one rule for training, evaluation and the app.

        In order: ``override`` (an eval set's fixed instruction), the record's own
        ``instruction``, a QA record's ``question``, else the task's configured instruction
        ``index`` (training draws it per sample and epoch; evaluation and the app take the first).
        KeyError when the task has no configured instruction.
        """
        if override:
            return override
        if record.get("instruction"):
            return record["instruction"]
        if record.get("task") == "qa" and record.get("question"):
            return record["question"]
        return self.instruction(record["task"], index)

    def instruction(self, task: str, index: int = 0) -> str:
        """The configured instruction ``index`` (modulo their number) for ``task``."""
        choices = self.prompt.instructions.get(task)
        if not choices:
            raise KeyError(
                f"no instruction configured for task {task!r} (model.prompt.instructions)"
            )
        return choices[index % len(choices)]

    def prepare_waveform(self, waveform: Waveform) -> torch.Tensor:
        """1-D float32, cut at 30 s, zero-padded to at least 1 s (docs/reference.md §1)."""
        wav = torch.as_tensor(np.asarray(waveform, dtype=np.float32))
        if wav.dim() == 2:  # [channels, samples]: the first channel, as upstream
            wav = wav[0]
        if wav.dim() != 1:
            raise ValueError(f"expected a 1-D waveform, got shape {tuple(wav.shape)}")
        wav = wav[: self.max_samples]
        if wav.numel() < self.min_samples:
            wav = torch.nn.functional.pad(wav, (0, self.min_samples - wav.numel()))
        return wav

    def mel_input_samples(self, waves: Sequence[torch.Tensor], frames: int) -> int:
        """Samples of zero-padded input whose first ``frames`` log-mel frames equal those of the
        30 s input: every frame touching the clip is there (so is the spectrogram's maximum,
        which sets Whisper's clamp), and the last kept frame's window (n_fft / 2 past its centre)
        ends before the STFT's reflection padding begins. Costs a batch of 1.5-4 s clips a tenth
        of the 30 s spectrogram."""
        hop, n_fft = self.feature_extractor.hop_length, self.feature_extractor.n_fft
        return max(frames * hop, max(w.numel() for w in waves)) + 2 * n_fft

    def audio_token_count(self, samples: int) -> int:
        """Audio tokens the LLM gets for a clip of ``samples`` (after ``prepare_waveform``).

        "all": every window of the 30 s input. "clip": the windows that start before the clip
        ends. An encoder frame covers hop_length x 2 samples (160 x conv stride 2 = 320, 20 ms),
        so the clip spans ceil(samples / 320) frames and ceil(frames / window_stride) windows
        start inside it (the last one partly covers padding), each bringing its queries."""
        if self.audio_tokens == "all":
            return self.num_audio_tokens
        frames = math.ceil(samples / (2 * self.feature_extractor.hop_length))
        windows = math.ceil(frames / self.window_stride)
        return min(windows * self.queries_per_window, self.num_audio_tokens)

    def encode_targets(
        self, targets: Sequence[str] | None, target_ids: Sequence[Sequence[int]] | None
    ) -> list[list[int]] | None:
        """Target ids (text through ``encode_target``, or ids as given), cut at max_text_length."""
        if targets is not None and target_ids is not None:
            raise ValueError("give targets (text) or target_ids, not both")
        if targets is not None:
            target_ids = [encode_target(self.tokenizer, text) for text in targets]
        if target_ids is None:
            return None
        return [list(ids)[: self.prompt.max_text_length] for ids in target_ids]

    def __call__(
        self,
        waveforms: Sequence[Waveform],
        instructions: Sequence[str],
        targets: Sequence[str] | None = None,
        *,
        target_ids: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        if len(waveforms) != len(instructions):
            raise ValueError(f"{len(waveforms)} waveforms but {len(instructions)} instructions")
        waves = [self.prepare_waveform(w) for w in waveforms]
        audio_lengths = [self.audio_token_count(w.numel()) for w in waves]
        frames = None
        padded_samples = None  # the extractor's default: the 30 s input
        if not self.pad_to_30s:
            # Each clip's log-mel frames are those of its 30 s input up to its last window.
            limit = self.feature_extractor.nb_max_frames
            frames = [mel_frames_for(n // self.queries_per_window, self.window_frames,
                                     self.window_stride, limit) for n in audio_lengths]
            padded_samples = min(self.mel_input_samples(waves, max(frames)),
                                 self.feature_extractor.n_samples)
        batch: dict[str, torch.Tensor] = {
            "whisper_features": self.feature_extractor(
                [w.numpy() for w in waves], sampling_rate=SAMPLE_RATE, return_tensors="pt",
                max_length=padded_samples,
            )["input_features"]
        }
        if self.beats:
            length = max(w.numel() for w in waves)
            batch["beats_waveform"] = torch.stack(
                [torch.nn.functional.pad(w, (0, length - w.numel())) for w in waves]
            )
            batch["beats_padding_mask"] = torch.stack(
                [torch.arange(length) >= w.numel() for w in waves]
            )
        batch["audio_lengths"] = torch.tensor(audio_lengths)
        if frames is not None:
            batch["whisper_frames"] = torch.tensor(frames)
            batch["whisper_features"] = batch["whisper_features"][:, :, : max(frames)]
        prompts = [encode_prompt(self.tokenizer, self.prompt.template, i) for i in instructions]
        batch["prefix_ids"], batch["prefix_lengths"] = pad_ids([p for p, _ in prompts], self.pad_id)
        batch["suffix_ids"], batch["suffix_lengths"] = pad_ids([s for _, s in prompts], self.pad_id)
        ids = self.encode_targets(targets, target_ids)
        if ids is not None:
            if len(ids) != len(waves):
                raise ValueError(f"{len(waves)} waveforms but {len(ids)} targets")
            batch["target_ids"], batch["target_lengths"] = pad_ids(ids, self.pad_id)
        layouts, total = sample_layout(
            batch["prefix_lengths"],
            batch["audio_lengths"],
            batch["suffix_lengths"],
            batch.get("target_lengths"),
            "right" if ids is not None else "left",
        )
        batch["attention_mask"] = build_attention_mask(layouts, total)
        if ids is not None:
            batch["labels"] = build_labels(layouts, total, batch["target_ids"])
        return batch

    def decode(self, sequences: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Generated ids -> text, cut at the first end id (the evaluator's rule)."""
        texts = []
        for seq in sequences:
            ids = [int(i) for i in seq]
            cut = next((n for n, i in enumerate(ids) if i in self.end_ids), len(ids))
            texts.append(self.tokenizer.decode(ids[:cut], skip_special_tokens=True))
        return texts
