"""Upstream SALMONN annotation files (training and test formats) as records.

Training format: ``{"annotation": [{"path", "text", "task", "Q"?}, ...]}``; test format: a list
(or the same ``{"annotation": [...]}``) of ``{"testset_id": "test0000", "path", "task", "text"?}``.
``path`` is relative to a data root (``audio_root``, default the annotation file's folder) unless
absolute; ``Q`` becomes ``question``; a test entry without ``text`` gets ``""`` (a blind test).
Other keys are ignored.

Ids: ``testset_id`` when present, since submissions are keyed by it. Otherwise ``<task>/<path>``,
which stays the same when the file is re-exported; the same (task, path) can appear several times
with different texts (e.g. several questions about one clip), so its second occurrence gets
``#1``, the third ``#2``, and so on, leaving the first occurrence's id unchanged.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from distill.data.importers.common import (
    CorpusError,
    audio_duration,
    read_json,
    require_file,
    required_string,
)

DEFAULT_SOURCE = "salmonn"


def import_salmonn(
    annotation_file: str | os.PathLike,
    *,
    audio_root: str | os.PathLike | None = None,
    source: str = DEFAULT_SOURCE,
    with_duration: bool = True,
) -> Iterator[dict]:
    """Yield one record per annotation entry, in file order."""
    annotation_file = require_file(Path(annotation_file).absolute(), "SALMONN annotation file")
    audio_root = Path(audio_root).absolute() if audio_root else annotation_file.parent
    entries, list_name = _entries(annotation_file)
    seen: Counter[tuple[str, str]] = Counter()
    for index, entry in enumerate(entries):
        where = f"{list_name}[{index}]"
        if not isinstance(entry, dict):
            raise CorpusError(annotation_file, where, "expected an object with 'path' and 'task'")
        path = required_string(entry, "path", annotation_file, where)
        task = required_string(entry, "task", annotation_file, where)
        audio = audio_root / path  # an absolute ``path`` replaces audio_root
        if not audio.is_file():
            raise CorpusError(annotation_file, where, f"audio file not found: {audio}")
        record = {
            "id": _record_id(entry, task, path, seen, annotation_file, where),
            "audio": str(audio),
            "task": task,
            "text": _text(entry, annotation_file, where),
        }
        if entry.get("Q") is not None:
            record["question"] = required_string(entry, "Q", annotation_file, where)
        record["source"] = source
        if with_duration:
            record["duration"] = audio_duration(audio, annotation_file, where)
        yield record


def _entries(annotation_file: Path) -> tuple[list, str]:
    """The entry list and how to name it in messages (``annotation[3]`` or ``[3]``)."""
    document = read_json(annotation_file)
    if isinstance(document, list):
        return document, ""
    if isinstance(document, dict) and isinstance(document.get("annotation"), list):
        return document["annotation"], "annotation"
    raise CorpusError(
        annotation_file, None, 'expected {"annotation": [...]} or a list of test entries'
    )


def _record_id(
    entry: dict, task: str, path: str, seen: Counter, annotation_file: Path, where: str
) -> str:
    if entry.get("testset_id") is not None:
        return required_string(entry, "testset_id", annotation_file, where)
    occurrence = seen[(task, path)]
    seen[(task, path)] += 1
    return f"{task}/{path}" + (f"#{occurrence}" if occurrence else "")


def _text(entry: dict, annotation_file: Path, where: str) -> str:
    """The reference; absent only in a blind test entry (one with a ``testset_id``)."""
    if entry.get("text") is None and entry.get("testset_id") is not None:
        return ""
    return required_string(entry, "text", annotation_file, where, allow_empty=True)
