"""WavCaps (huggingface.co/datasets/cvssp/WavCaps) as audio-captioning records.

Layout: one JSON file per subset, ``json_files/<Subset>/<x>_final.json``
(``AudioSet_SL/as_final.json``, ``BBC_Sound_Effects/bbc_final.json``, ``FreeSound/fsd_final.json``,
``SoundBible/sb_final.json``), each ``{"data": [{"id", "caption", "duration"?, ...}]}``, and the
subset's audio extracted into one folder, a file per entry named by its id. The extra keys differ
by subset (``description``, ``author``, ``file_name``, ``href``, ``tags``, ...) and are not needed.
The ``audio`` key in the released files is a placeholder (``"wav_path"``), so files are found by
id: AudioSet_SL ids carry an extension (``"Yb0RFKhbpFJA.wav"``) while the extracted files are
often ``.flac``, so the id is tried as it is, then with its stem plus ``.flac`` and ``.wav``.

One subset per call; the record id is ``wavcaps/<subset>/<id without extension>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from distill.data.importers.common import (
    AUDIO_EXTENSIONS,
    CorpusError,
    audio_duration,
    list_folder,
    read_json,
    require_file,
    required_string,
)

logger = logging.getLogger(__name__)

SOURCE = "wavcaps"


def import_wavcaps(
    json_file: str | os.PathLike,
    *,
    audio_dir: str | os.PathLike,
    subset: str | None = None,
    task: str = "audiocaption",
    skip_missing_audio: bool = False,
    with_duration: bool = True,
) -> Iterator[dict]:
    """Yield one record per entry of a WavCaps JSON file.

    ``subset`` defaults to the JSON file's folder name, which the official layout makes the
    subset name (``json_files/FreeSound/fsd_final.json`` -> ``FreeSound``). Without
    ``with_duration`` the JSON's own ``duration`` is kept when it has one.
    """
    json_file = require_file(Path(json_file).absolute(), "WavCaps JSON file")
    audio_dir = Path(audio_dir).absolute()
    subset = subset or json_file.parent.name
    names = list_folder(audio_dir)
    skipped = 0
    for index, entry in enumerate(_entries(json_file)):
        where = f"data[{index}]"
        if not isinstance(entry, dict):
            raise CorpusError(json_file, where, "expected an object with 'id' and 'caption'")
        entry_id = _entry_id(entry, json_file, where)
        caption = required_string(entry, "caption", json_file, where).strip()
        candidates = _candidate_names(entry_id)
        found = next((name for name in candidates if name in names), None)
        if found is None:
            if skip_missing_audio:
                skipped += 1
                continue
            raise CorpusError(
                json_file,
                where,
                f"no audio file for id {entry_id!r} in {audio_dir} (tried {', '.join(candidates)});"
                " --skip-missing-audio skips such entries",
            )
        audio = audio_dir / found
        record = {
            "id": f"{SOURCE}/{subset}/{_stem(entry_id)}",
            "audio": str(audio),
            "task": task,
            "text": caption,
            "source": f"{SOURCE}/{subset}",
        }
        duration = _json_duration(entry)
        if with_duration:
            duration = audio_duration(audio, json_file, where)
        if duration is not None:
            record["duration"] = duration
        yield record
    if skipped:
        logger.warning(
            "%s: skipped %d entries with no audio file in %s", json_file, skipped, audio_dir
        )


def _entries(json_file: Path) -> list:
    document = read_json(json_file)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise CorpusError(json_file, None, 'expected a JSON object {"data": [...]}')
    return document["data"]


def _entry_id(entry: dict, json_file: Path, where: str) -> str:
    """Ids are strings in the released files; a bare number is accepted as its digits."""
    if isinstance(entry.get("id"), int) and not isinstance(entry["id"], bool):
        return str(entry["id"])
    return required_string(entry, "id", json_file, where).strip()


def _stem(entry_id: str) -> str:
    path = Path(entry_id)
    return path.stem if path.suffix.lower() in AUDIO_EXTENSIONS else entry_id


def _candidate_names(entry_id: str) -> list[str]:
    names = [entry_id] if _stem(entry_id) != entry_id else []
    names += [_stem(entry_id) + extension for extension in (".flac", ".wav")]
    return names


def _json_duration(entry: dict) -> float | None:
    duration = entry.get("duration")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration >= 0:
        return float(duration)
    return None
