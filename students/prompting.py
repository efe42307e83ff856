"""The prompt, where the audio goes in it, and which positions carry loss (docs/reference.md §1).

Sequence of one sample: ``BOS + ids(text before <SpeechHere>) + audio embeddings + ids(text
after) [+ target ids, ending with the end id]``. Only the target (end id included) carries
labels; everything else is -100. Samples are padded on the right for training (positions start
at 0 for every sample) and on the left for generation (every sample ends where decoding begins).

The processor (labels for the trainer) and the model (embeddings) both use ``sample_layout`` so
the two can never disagree on where a token sits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

PLACEHOLDER = "<SpeechHere>"
IGNORE_INDEX = -100


def split_prompt(template: str, instruction: str) -> tuple[str, str]:
    """The text before and after the audio placeholder, instruction filled in.

    ``str.replace``, not ``str.format``: instructions may contain braces."""
    if PLACEHOLDER not in template:
        raise ValueError(f"prompt template has no {PLACEHOLDER}: {template!r}")
    before, _, after = template.replace("{instruction}", instruction).partition(PLACEHOLDER)
    return before, after


def encode_prompt(tokenizer, template: str, instruction: str) -> tuple[list[int], list[int]]:
    """(prefix ids with BOS first, suffix ids): each side tokenised without special tokens."""
    before, after = split_prompt(template, instruction)
    prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
    suffix = tokenizer(after, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(prefix), list(suffix)


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, max_len] ids and their lengths [B]."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = torch.full(
        (len(sequences), max(map(len, sequences), default=0)), pad_id, dtype=torch.long
    )
    for row, seq in zip(ids, sequences, strict=True):
        row[: len(seq)] = torch.tensor(seq, dtype=torch.long)
    return ids, lengths


@dataclass(frozen=True)
class SampleLayout:
    """Where one sample's pieces start in the padded batch sequence."""

    offset: int  # padding before the sample (left padding)
    prefix: int
    audio: int
    suffix: int
    target: int

    @property
    def audio_start(self) -> int:
        return self.offset + self.prefix

    @property
    def target_start(self) -> int:
        return self.audio_start + self.audio + self.suffix

    @property
    def end(self) -> int:
        return self.target_start + self.target


def sample_layout(
    prefix_lengths: torch.Tensor,
    num_audio: int | Sequence[int] | torch.Tensor,
    suffix_lengths: torch.Tensor,
    target_lengths: torch.Tensor | None,
    padding_side: str,
) -> tuple[list[SampleLayout], int]:
    """Each sample's layout and the padded length of the batch.

    ``num_audio``: audio tokens of every sample (int) or of each one ([B]; the processor's
    ``audio_lengths``, which with ``model.qformer.audio_tokens: clip`` follow each clip's length).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    batch = len(prefix_lengths)
    targets = target_lengths if target_lengths is not None else torch.zeros(batch, dtype=torch.long)
    audio = [int(num_audio)] * batch if isinstance(num_audio, int) else [int(a) for a in num_audio]
    lengths = [
        int(p) + a + int(s) + int(t)
        for p, a, s, t in zip(prefix_lengths, audio, suffix_lengths, targets, strict=True)
    ]
    total = max(lengths, default=0)
    layouts = [
        SampleLayout(
            offset=total - n if padding_side == "left" else 0,
            prefix=int(p),
            audio=a,
            suffix=int(s),
            target=int(t),
        )
        for n, p, a, s, t in zip(lengths, prefix_lengths, audio, suffix_lengths, targets,
                                 strict=True)
    ]
    return layouts, total


def build_attention_mask(layouts: list[SampleLayout], total: int) -> torch.Tensor:
    mask = torch.zeros(len(layouts), total, dtype=torch.long)
    for row, lay in zip(mask, layouts, strict=True):
        row[lay.offset : lay.end] = 1
    return mask


def build_labels(layouts: list[SampleLayout], total: int, target_ids: torch.Tensor) -> torch.Tensor:
    """[B, total] labels aligned with the input positions: target ids, -100 elsewhere."""
    labels = torch.full((len(layouts), total), IGNORE_INDEX, dtype=torch.long)
    for row, lay, ids in zip(labels, layouts, target_ids, strict=True):
        row[lay.target_start : lay.end] = ids[: lay.target]
    return labels


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels moved one step left, so the hidden state at t is scored against labels[t]."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.size(0), 1), IGNORE_INDEX)], dim=1)


@dataclass
class AssembledInputs:
    inputs_embeds: torch.Tensor  # [B, L, H]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    labels: torch.Tensor | None  # [B, L] unshifted, None without targets
    layouts: list[SampleLayout]


def assemble_inputs(
    embed: Callable[[torch.Tensor], torch.Tensor],
    audio_embeds: torch.Tensor,
    batch: dict,
    *,
    padding_side: str,
    with_targets: bool,
) -> AssembledInputs:
    """Token embeddings and audio embeddings spliced into one padded sequence per sample.

    ``audio_embeds`` [B, A, H]; with ``batch["audio_lengths"]`` [B] sample i keeps its first
    ``audio_lengths[i]`` audio tokens (the rest encode padding), else all A."""
    device = audio_embeds.device
    num_audio = batch.get("audio_lengths")
    if num_audio is None:
        num_audio = audio_embeds.size(1)
    elif int(num_audio.max()) > audio_embeds.size(1):
        raise ValueError(f"audio_lengths up to {int(num_audio.max())} but only "
                         f"{audio_embeds.size(1)} audio tokens were encoded")
    target_lengths = batch["target_lengths"] if with_targets else None
    layouts, total = sample_layout(
        batch["prefix_lengths"], num_audio, batch["suffix_lengths"], target_lengths, padding_side
    )
    pieces = [batch["prefix_ids"], batch["suffix_ids"]]
    if with_targets:
        pieces.append(batch["target_ids"])
    embedded = [embed(ids.to(device)) for ids in pieces]
    hidden = embedded[0].size(-1)
    inputs = audio_embeds.new_zeros(len(layouts), total, hidden, dtype=embedded[0].dtype)
    for i, lay in enumerate(layouts):
        start = lay.offset
        inputs[i, start : start + lay.prefix] = embedded[0][i, : lay.prefix]
        inputs[i, lay.audio_start : lay.audio_start + lay.audio] = (
            audio_embeds[i, : lay.audio].to(inputs.dtype))
        after = lay.audio_start + lay.audio
        inputs[i, after : after + lay.suffix] = embedded[1][i, : lay.suffix]
        if with_targets:
            inputs[i, lay.target_start : lay.end] = embedded[2][i, : lay.target]
    attention_mask = build_attention_mask(layouts, total).to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    labels = None
    if with_targets:
        labels = batch.get("labels")
        if labels is None:
            labels = build_labels(layouts, total, batch["target_ids"].cpu())
        elif tuple(labels.shape) != (len(layouts), total):
            raise ValueError(
                f"batch labels have shape {tuple(labels.shape)} but the assembled sequence is "
                f"{(len(layouts), total)}: were they made by another processor or padding side?"
            )
        labels = labels.to(device)
    return AssembledInputs(inputs, attention_mask, position_ids, labels, layouts)
