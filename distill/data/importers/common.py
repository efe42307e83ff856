"""What every corpus importer needs: located errors, CSV/JSON reading, audio lookup, durations.

Corpus files are written by others and downloaded in pieces, so every problem is reported as a
``CorpusError`` naming the corpus file and the line (CSV, text) or entry (JSON) to look at.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from distill.data.manifest import ManifestError

CaptionMode = Literal["each", "all"]
CAPTION_MODES: tuple[str, ...] = ("each", "all")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class CorpusError(ManifestError):
    """A problem in a corpus file being imported: ``"{file}:{line or entry}: {what}"``.

    A ManifestError too, so callers that write manifests catch one kind of error.
    """


def check_caption_mode(mode: str) -> None:
    if mode not in CAPTION_MODES:
        raise ValueError(f"caption mode must be one of {CAPTION_MODES}, got {mode!r}")


def require_file(path: Path, what: str) -> Path:
    """Fail early, naming the file the layout says should be there."""
    if not path.is_file():
        raise CorpusError(path, None, f"{what} not found")
    return path


def require_folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise CorpusError(path, None, f"{what} not found (expected a folder)")
    return path


def read_csv_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number where the row starts, row) from a CSV whose header holds ``columns``.

    Quoted fields may contain commas and newlines, so line numbers come from the csv reader, not
    from counting rows. Rows with too few or too many fields are errors rather than guesses.
    """
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise CorpusError(path, 1, f"empty file; expected a header {','.join(columns)}")
            missing = [name for name in columns if name not in header]
            if missing:
                raise CorpusError(
                    path,
                    1,
                    f"header lacks column(s) {', '.join(missing)}; expected {','.join(columns)}, "
                    f"found {','.join(header)}",
                )
            while True:
                line_number = reader.line_num + 1
                fields = next(reader, None)
                if fields is None:
                    return
                if not fields:
                    continue  # a blank line carries no row
                if len(fields) != len(header):
                    raise CorpusError(
                        path,
                        line_number,
                        f"row has {len(fields)} fields, the header has {len(header)}",
                    )
                yield line_number, dict(zip(header, fields, strict=True))
        except csv.Error as err:
            raise CorpusError(path, reader.line_num, f"unreadable CSV ({err})") from err
        except UnicodeDecodeError as err:
            raise CorpusError(path, None, f"not valid UTF-8 ({err.reason})") from err


def read_json(path: Path) -> Any:
    """Parse a whole JSON file; a syntax error names its line."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise CorpusError(
            path, err.lineno, f"invalid JSON ({err.msg} at column {err.colno})"
        ) from err
    except UnicodeDecodeError as err:
        raise CorpusError(path, None, f"not valid UTF-8 ({err.reason})") from err


def required_string(
    entry: dict, key: str, source: Path, where: str, *, allow_empty: bool = False
) -> str:
    """One string field of a JSON entry; a missing key or wrong type is a located error."""
    if key not in entry or entry[key] is None:
        raise CorpusError(source, where, f"missing key {key!r}")
    value = entry[key]
    if not isinstance(value, str):
        raise CorpusError(source, where, f"{key!r} must be a string, got {value!r}")
    if not allow_empty and not value.strip():
        raise CorpusError(source, where, f"{key!r} is empty")
    return value


def list_folder(folder: Path) -> frozenset[str]:
    """The file names in a folder, read once: one listing beats a stat per candidate name."""
    require_folder(folder, "audio folder")
    with os.scandir(folder) as entries:
        return frozenset(entry.name for entry in entries if entry.is_file())


def audio_duration(path: Path, source: Path, where: int | str) -> float:
    """The clip's length in seconds from its header; an unreadable file is a located error."""
    import soundfile

    try:
        return float(soundfile.info(str(path)).duration)
    except (RuntimeError, OSError) as err:  # soundfile's errors are RuntimeErrors
        raise CorpusError(source, where, f"cannot read audio file {path}: {err}") from err
