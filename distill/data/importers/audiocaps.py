"""AudioCaps (audiocaps.github.io) as audio-captioning records.

Layout: ``ROOT/<split>.csv`` (split ``train``, ``val`` or ``test``) with header
``audiocap_id,youtube_id,start_time,caption``; the clips, cut from YouTube by whoever downloaded
them, sit in an audio folder (default ``ROOT/<split>/``) under a name built from the row. Download
tools disagree on that name, so it is a list of patterns tried in order, each with the extensions
.wav, .flac and .ogg unless the pattern already ends with one.

val and test hold five rows (captions) per clip: mode ``each`` gives one record per row (id
``audiocaps/<split>/<audiocap_id>``), mode ``all`` one record per clip (id
``audiocaps/<split>/<youtube_id>_<start_time>``, ``text`` = its first caption, ``references`` =
all of them).

The task defaults to ``audiocaption``; the reference AudioCaps test set uses ``audiocaption_v2``
(prompt "Please write down what your hear in the audio."), so pass ``task="audiocaption_v2"`` to
build that test manifest. Clips often vanish from YouTube, so ``skip_missing_audio`` lets an
incomplete download import (with a warning counting what was skipped) instead of failing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distill.data.importers.common import (
    AUDIO_EXTENSIONS,
    CaptionMode,
    CorpusError,
    audio_duration,
    check_caption_mode,
    list_folder,
    read_csv_rows,
    require_file,
)

logger = logging.getLogger(__name__)

SOURCE = "audiocaps"
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
DEFAULT_NAME_PATTERNS = ("{youtube_id}_{start_time}", "Y{youtube_id}", "{audiocap_id}")


def import_audiocaps(
    root: str | os.PathLike,
    *,
    splits: Sequence[str] = ("train",),
    mode: CaptionMode = "each",
    task: str = "audiocaption",
    audio_dir: str | os.PathLike | None = None,
    name_patterns: Sequence[str] = DEFAULT_NAME_PATTERNS,
    skip_missing_audio: bool = False,
    with_duration: bool = True,
) -> Iterator[dict]:
    """Yield AudioCaps records; ``audio_dir`` (one folder for every split) overrides ROOT/<split>."""
    check_caption_mode(mode)
    _check_patterns(name_patterns)
    root = Path(root).absolute()
    for split in splits:
        captions_file = require_file(root / f"{split}.csv", f"AudioCaps {split} CSV")
        folder = Path(audio_dir).absolute() if audio_dir is not None else root / split
        clips = _clips(captions_file, folder, list_folder(folder), name_patterns)
        skipped = 0
        for clip in clips:
            if clip.audio is None:
                if not skip_missing_audio:
                    raise CorpusError(
                        captions_file,
                        clip.line_number,
                        f"no audio file for this row in {folder} (tried "
                        f"{', '.join(clip.tried)}); --skip-missing-audio skips such rows",
                    )
                skipped += len(clip.rows)
                continue
            yield from _records_of_clip(clip, split, captions_file, mode, task, with_duration)
        if skipped:
            logger.warning(
                "%s: skipped %d row(s) with no audio file in %s", captions_file, skipped, folder
            )


@dataclass
class _Clip:
    """One audio clip and its caption rows (line number, row), in the order the CSV lists them."""

    line_number: int
    audio: Path | None
    tried: list[str]
    rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)


def _clips(
    captions_file: Path, folder: Path, names: frozenset[str], patterns: Sequence[str]
) -> list[_Clip]:
    """Group the rows by clip (youtube_id, start_time); the CSV is small enough to hold."""
    clips: dict[tuple[str, str], _Clip] = {}
    for line_number, row in read_csv_rows(captions_file, COLUMNS):
        for column in COLUMNS:
            if not row[column].strip():
                raise CorpusError(captions_file, line_number, f"{column} is empty")
        key = (row["youtube_id"], row["start_time"])
        if key not in clips:
            tried = _candidate_names(row, patterns)
            found = next((name for name in tried if name in names), None)
            clips[key] = _Clip(line_number, folder / found if found else None, tried)
        clips[key].rows.append((line_number, row))
    return list(clips.values())


def _candidate_names(row: dict[str, str], patterns: Sequence[str]) -> list[str]:
    names = []
    for pattern in patterns:
        name = pattern.format(**row)
        if Path(name).suffix.lower() in AUDIO_EXTENSIONS:
            names.append(name)
        else:
            names.extend(name + extension for extension in AUDIO_EXTENSIONS)
    return names


def _check_patterns(patterns: Sequence[str]) -> None:
    """Reject a misspelt placeholder before reading anything, not at the first row."""
    if not patterns:
        raise ValueError("at least one audio name pattern is needed")
    sample = dict.fromkeys(COLUMNS, "x")
    for pattern in patterns:
        try:
            pattern.format(**sample)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"bad audio name pattern {pattern!r} ({err}); placeholders allowed: "
                + ", ".join("{" + column + "}" for column in COLUMNS)
            ) from err


def _records_of_clip(
    clip: _Clip,
    split: str,
    captions_file: Path,
    mode: CaptionMode,
    task: str,
    with_duration: bool,
) -> Iterator[dict]:
    assert clip.audio is not None
    common = {"audio": str(clip.audio), "task": task, "source": SOURCE}
    if with_duration:
        common["duration"] = audio_duration(clip.audio, captions_file, clip.line_number)
    captions = [row["caption"].strip() for _, row in clip.rows]
    if mode == "all":
        first = clip.rows[0][1]
        clip_id = f"{SOURCE}/{split}/{first['youtube_id']}_{first['start_time']}"
        yield {"id": clip_id, "text": captions[0], **common, "references": captions}
        return
    for (_, row), caption in zip(clip.rows, captions, strict=True):
        yield {"id": f"{SOURCE}/{split}/{row['audiocap_id']}", "text": caption, **common}
