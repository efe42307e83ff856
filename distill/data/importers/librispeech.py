"""LibriSpeech (openslr.org/12) as ASR records.

Layout: ``ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``, one line per
utterance ``"<utterance-id> <UPPER CASE TRANSCRIPT>"``, and ``<utterance-id>.flac`` beside it.
ROOT is the ``LibriSpeech`` folder the archives extract to (it holds ``train-clean-100/`` ...).
The utterance id is already unique across the corpus, so it is the record id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from distill.data.importers.common import CorpusError, audio_duration, require_folder

SOURCE = "librispeech"
TRANSCRIPT_GLOB = "*/*/*.trans.txt"


def import_librispeech(
    root: str | os.PathLike,
    *,
    subsets: Sequence[str] | None = None,
    lowercase: bool = False,
    with_duration: bool = True,
) -> Iterator[dict]:
    """Yield one ``asr`` record per utterance of the chosen subset folders (default: all found).

    ``lowercase`` writes the transcripts in lower case (the corpus is all upper case, which
    tokenizes into many more pieces); WER scoring normalises case either way.
    """
    root = require_folder(Path(root).absolute(), "LibriSpeech root folder")
    for subset in subsets or _subsets_found(root):
        subset_folder = root / subset
        if not subset_folder.is_dir():
            found = ", ".join(_subsets_found(root)) or "none"
            raise CorpusError(root, None, f"subset folder {subset!r} not found (found: {found})")
        for transcript in sorted(subset_folder.glob(TRANSCRIPT_GLOB)):
            yield from _records_of_chapter(transcript, lowercase, with_duration)


def _subsets_found(root: Path) -> list[str]:
    """Subset folders are those holding ``<speaker>/<chapter>/*.trans.txt``."""
    subsets = [
        folder.name
        for folder in sorted(root.iterdir())
        if folder.is_dir() and next(folder.glob(TRANSCRIPT_GLOB), None) is not None
    ]
    if not subsets:
        raise CorpusError(
            root,
            None,
            f"no <subset>/{TRANSCRIPT_GLOB} found; ROOT should be the LibriSpeech folder that "
            "holds train-clean-100/, test-other/, ...",
        )
    return subsets


def _records_of_chapter(transcript: Path, lowercase: bool, with_duration: bool) -> Iterator[dict]:
    chapter_folder = transcript.parent
    expected_prefix = f"{chapter_folder.parent.name}-{chapter_folder.name}-"
    with open(transcript, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            if not text.strip():
                raise CorpusError(transcript, line_number, "expected '<utterance-id> <TRANSCRIPT>'")
            if not utterance_id.startswith(expected_prefix):
                raise CorpusError(
                    transcript,
                    line_number,
                    f"utterance id {utterance_id!r} does not start with {expected_prefix!r} "
                    "(<speaker>-<chapter>- of the folders holding this file)",
                )
            audio = chapter_folder / f"{utterance_id}.flac"
            if not audio.is_file():
                raise CorpusError(transcript, line_number, f"audio file not found: {audio}")
            record = {
                "id": utterance_id,
                "audio": str(audio),
                "task": "asr",
                "text": text.strip().lower() if lowercase else text.strip(),
                "source": SOURCE,
            }
            if with_duration:
                record["duration"] = audio_duration(audio, transcript, line_number)
            yield record
