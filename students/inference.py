"""Answers from Python in two lines: ``transcribe``, ``caption`` and ``ask`` on audio files.

The same rules as ``distill evaluate`` (``distill.evaluate.runner``): audio decoded by the
toolkit's loader with the recipe schema's defaults (16 kHz, first channel, padded to 1 s, cut at
30 s), the task's configured instruction (the question itself for ``ask``), and the evaluation's
decoding settings: those of the recipe the student was trained with when its folder records one
(the model card's ``model_card.json``), else the recipe schema's defaults (``DecodingConfig()``).
Batches of ``DEFAULT_EVAL_BATCH_SIZE`` clips (``eval.batch_size``'s default), answers in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distill.data.config import AudioConfig
from students.config import DEFAULT_EVAL_BATCH_SIZE, DecodingConfig

if TYPE_CHECKING:
    from students.model import SalmonnStudent

AudioInput = str | Path
CAPTION_TASK = "audiocaption"


def saved_decoding(directory: str | Path) -> DecodingConfig:
    """The decoding section of the recipe recorded with a checkpoint, else the defaults."""
    from students.card import CardContext

    recipe = CardContext.read(directory).recipe or {}
    section = (recipe.get("eval") or {}).get("decoding")
    return DecodingConfig.model_validate(section) if section else DecodingConfig()


def answer(student: SalmonnStudent, audio: AudioInput | Sequence[AudioInput],
           instruction: str | Sequence[str], *, batch_size: int | None = None,
           audio_config: AudioConfig | None = None, **overrides) -> str | list[str]:
    """One answer per clip (a str for one path, a list for a list). ``instruction``: one for all
    clips or one per clip. ``overrides`` win over the decoding settings (e.g. ``num_beams=1``)."""
    from distill.data.audio import load_audio

    single = isinstance(audio, (str, Path))
    paths = [audio] if single else list(audio)
    instructions = [instruction] * len(paths) if isinstance(instruction, str) else list(instruction)
    if len(instructions) != len(paths):
        raise ValueError(f"{len(paths)} clips but {len(instructions)} instructions")
    audio_config = audio_config or AudioConfig()
    size = batch_size or DEFAULT_EVAL_BATCH_SIZE
    decoding = getattr(student, "decoding", None) or DecodingConfig()
    answers: list[str] = []
    for start in range(0, len(paths), size):
        chunk = paths[start : start + size]
        waves = [load_audio(p, sample_rate=audio_config.sample_rate,
                            min_seconds=audio_config.min_seconds,
                            max_seconds=audio_config.max_seconds).waveform for p in chunk]
        batch = {k: v.to(student.device)
                 for k, v in student.processor(waves, instructions[start : start + size]).items()}
        answers += student.processor.decode(student.generate(batch, decoding, **overrides))
    return answers[0] if single else answers


def transcribe(student: SalmonnStudent, audio, **options) -> str | list[str]:
    return answer(student, audio, student.processor.instruction("asr"), **options)


def caption(student: SalmonnStudent, audio, **options) -> str | list[str]:
    return answer(student, audio, student.processor.instruction(CAPTION_TASK), **options)


def ask(student: SalmonnStudent, audio, question: str | Sequence[str], **options) -> str | list[str]:
    if isinstance(question, str) and not question.strip():
        raise ValueError("the question is empty")
    return answer(student, audio, question, **options)
