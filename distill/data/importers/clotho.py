"""Clotho v2 (zenodo.org/record/4783391) as audio-captioning records.

Layout: ``ROOT/clotho_captions_<split>.csv`` with header ``file_name,caption_1,...,caption_5``
(captions are quoted when they hold commas) and the clips in ``ROOT/<split>/<file_name>``, split
being ``development``, ``validation`` or ``evaluation``.

Mode ``each`` gives one training record per caption (id ``clotho/<split>/<file>#<n>``, n = 1..5);
mode ``all`` gives one record per clip (id ``clotho/<split>/<file>``) with ``text`` = caption 1
and ``references`` = all five, which is what caption metrics score against.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from distill.data.importers.common import (
    CaptionMode,
    CorpusError,
    audio_duration,
    check_caption_mode,
    read_csv_rows,
    require_file,
    require_folder,
)

SOURCE = "clotho"
SPLITS = ("development", "validation", "evaluation")
CAPTION_COLUMNS = tuple(f"caption_{n}" for n in range(1, 6))


def import_clotho(
    root: str | os.PathLike,
    *,
    splits: Sequence[str] = ("development",),
    mode: CaptionMode = "each",
    task: str = "audiocaption",
    with_duration: bool = True,
) -> Iterator[dict]:
    """Yield Clotho records for the given splits (default: the training split only)."""
    check_caption_mode(mode)
    root = require_folder(Path(root).absolute(), "Clotho root folder")
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"Clotho split must be one of {SPLITS}, got {split!r}")
        captions = require_file(root / f"clotho_captions_{split}.csv", f"Clotho {split} captions")
        audio_folder = require_folder(root / split, f"Clotho {split} audio folder")
        for line_number, row in read_csv_rows(captions, ("file_name", *CAPTION_COLUMNS)):
            yield from _records_of_clip(
                row, split, captions, line_number, audio_folder, mode, task, with_duration
            )


def _records_of_clip(
    row: dict[str, str],
    split: str,
    captions_file: Path,
    line_number: int,
    audio_folder: Path,
    mode: CaptionMode,
    task: str,
    with_duration: bool,
) -> Iterator[dict]:
    file_name = row["file_name"]
    audio = audio_folder / file_name
    if not file_name or not audio.is_file():
        raise CorpusError(captions_file, line_number, f"audio file not found: {audio}")
    captions = [row[column].strip() for column in CAPTION_COLUMNS]
    for column, caption in zip(CAPTION_COLUMNS, captions, strict=True):
        if not caption:
            raise CorpusError(captions_file, line_number, f"{column} is empty")
    clip = {"audio": str(audio), "task": task, "source": SOURCE}
    if with_duration:
        clip["duration"] = audio_duration(audio, captions_file, line_number)
    clip_id = f"{SOURCE}/{split}/{file_name}"
    if mode == "all":
        yield {"id": clip_id, "text": captions[0], **clip, "references": captions}
        return
    for number, caption in enumerate(captions, start=1):
        yield {"id": f"{clip_id}#{number}", "text": caption, **clip}
