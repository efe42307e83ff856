"""A Hugging Face ``datasets`` corpus (an ``Audio`` column and a text column) as records.

Layout: a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (it holds
``state.json`` or ``dataset_dict.json``), or a folder of Parquet or Arrow shards, e.g. the Hub's
``data/train-00000-of-00004.parquet`` (``--split train`` keeps files named ``train*`` or under a
``train/`` folder). Rows are read one at a time (memory-mapped Arrow, or streamed Parquet), never
the whole set at once.

The audio column is read with ``Audio(decode=False)``: each row holds the encoded file's bytes
and/or its path, so nothing needs torchcodec (which ``datasets`` uses to decode, and which does
not run on every machine). Bytes are checked with soundfile (the toolkit's audio library) and
written unchanged as ``<audio-dir>/<id>.<wav|flac|ogg|mp3>`` (temp file + rename); rows with a
path only point at that file (relative paths from the dataset folder). A column that holds a
decoded ``{"array", "sampling_rate"}`` is written as FLAC.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distill.data.importers.common import CorpusError, audio_duration, require_folder
from distill.data.manifest import _datasets_offline

SHARD_SUFFIXES = (".parquet", ".arrow")
_FORMAT_EXTENSIONS = {"WAV": ".wav", "FLAC": ".flac", "OGG": ".ogg", "MP3": ".mp3"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def import_hf_dataset(
    source: str | os.PathLike,
    *,
    audio_dir: str | os.PathLike,
    split: str | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    id_column: str | None = None,
    task: str = "asr",
    with_duration: bool = True,
) -> Iterator[dict]:
    """Yield one ``task`` record per row; audio bytes are written under ``audio_dir``.

    ``id_column`` names a column of unique ids (default: ``id`` when the set has one, else
    ``<dataset>-<split>-<row>``). A text column of lists gives ``text`` = the first entry and
    ``references`` = all of them (several captions per clip).
    """
    root = require_folder(Path(source).absolute(), "dataset folder")
    rows, name, where = _open_rows(root, split, audio_column)
    audio_dir = Path(audio_dir).absolute()
    audio_dir.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        entry = f"{where} row {index}"
        for column in (audio_column, text_column):
            if column not in row:
                raise CorpusError(root, entry, f"no column {column!r}; columns: {', '.join(row)}")
        if id_column is None:
            sample_id = str(row["id"]) if "id" in row else f"{name}-{index:08d}"
        elif id_column not in row:
            raise CorpusError(root, entry, f"no id column {id_column!r}; columns: {', '.join(row)}")
        else:
            sample_id = str(row[id_column])
        text, references = _text(row[text_column], root, entry, text_column)
        audio = _audio_file(row[audio_column], root, entry, audio_dir, sample_id)
        record = {"id": sample_id, "audio": str(audio), "task": task, "text": text,
                  "source": name}
        if references is not None:
            record["references"] = references
        if with_duration:
            record["duration"] = audio_duration(audio, root, entry)
        yield record


def _open_rows(root: Path, split: str | None, audio_column: str):
    """(row iterator, dataset name for ids and ``source``, where rows come from for errors)."""
    import datasets

    if (root / "state.json").is_file() or (root / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(root))  # memory-mapped: rows are read on demand
        if isinstance(loaded, datasets.DatasetDict):
            if split is None:
                if len(loaded) != 1:
                    raise CorpusError(root, None, f"several splits ({', '.join(loaded)}): "
                                                  "choose one with --split")
                split = next(iter(loaded))
            if split not in loaded:
                raise CorpusError(root, None, f"no split {split!r} (found: {', '.join(loaded)})")
            loaded = loaded[split]
        elif split is not None and loaded.split is not None and str(loaded.split) != split:
            raise CorpusError(root, None, f"this dataset is split {loaded.split!r}, not {split!r}")
    else:
        files = _shards(root, split)
        builder = "parquet" if files[0].suffix == ".parquet" else "arrow"
        with _datasets_offline():  # local files: the Hub is never asked
            loaded = datasets.load_dataset(builder, data_files=[str(f) for f in files],
                                           split="train", streaming=True)  # row by row, no copy
    features = loaded.features or {}
    if audio_column not in features:
        raise CorpusError(root, None, f"no column {audio_column!r} (columns: "
                                      f"{', '.join(features) or 'none'}); use --audio-column")
    if isinstance(features[audio_column], datasets.Audio):
        loaded = loaded.cast_column(audio_column, datasets.Audio(decode=False))
    name = _UNSAFE.sub("_", root.name + (f"-{split}" if split else ""))
    return iter(loaded), name, f"split {split}" if split else "dataset"


def _shards(root: Path, split: str | None) -> list[Path]:
    found = sorted(p for p in root.rglob("*") if p.suffix in SHARD_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if split is not None:
        found = [p for p in found if p.name.startswith(split) or split in p.relative_to(root).parts[:-1]]
    if not found:
        which = f" for split {split!r}" if split else ""
        raise CorpusError(root, None, f"no save_to_disk dataset (state.json) and no *.parquet or "
                                      f"*.arrow files{which}")
    kinds = {p.suffix for p in found}
    if len(kinds) > 1:
        raise CorpusError(root, None, "both Parquet and Arrow files found: point at one kind")
    return found


def _text(value: Any, root: Path, entry: str, column: str) -> tuple[str, list[str] | None]:
    if isinstance(value, str) and value.strip():
        return value.strip(), None
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return value[0].strip(), [v.strip() for v in value]
    raise CorpusError(root, entry, f"column {column!r} must be a non-empty string (or a list of "
                                   f"them), got {value!r}")


def _audio_file(value: Any, root: Path, entry: str, audio_dir: Path, sample_id: str) -> Path:
    """The row's audio as a file on disk: written from bytes or an array, or the existing path."""
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise CorpusError(root, entry, f"audio must be an Audio value ({{bytes, path}}), a path or "
                                       f"{{array, sampling_rate}}, got {type(value).__name__}")
    stem = audio_dir / _file_stem(sample_id)
    if value.get("bytes"):
        return _write_bytes(bytes(value["bytes"]), stem, root, entry)
    if value.get("array") is not None:
        return _write_array(value, stem, root, entry)
    if value.get("path"):
        path = Path(value["path"])
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise CorpusError(root, entry, f"audio has no bytes and its path {path} is not a file")
        return path
    raise CorpusError(root, entry, "audio holds neither bytes, an array nor a path")


def _file_stem(sample_id: str) -> str:
    """A file name for an id; ids that need cleaning get a hash so two never share a file."""
    safe = _UNSAFE.sub("_", sample_id)
    if safe == sample_id:
        return safe
    import hashlib

    return f"{safe}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"


def _write_bytes(data: bytes, stem: Path, root: Path, entry: str) -> Path:
    import soundfile

    try:
        kind = soundfile.info(io.BytesIO(data)).format
    except (RuntimeError, soundfile.SoundFileError) as err:
        raise CorpusError(root, entry, f"audio bytes cannot be decoded: {err}") from None
    if kind not in _FORMAT_EXTENSIONS:
        raise CorpusError(root, entry, f"audio format {kind} is not one of "
                                       f"{', '.join(_FORMAT_EXTENSIONS)}")
    target = stem.with_suffix(_FORMAT_EXTENSIONS[kind])
    _atomic_write(target, lambda handle: handle.write(data))
    return target


def _write_array(value: dict, stem: Path, root: Path, entry: str) -> Path:
    import numpy as np
    import soundfile

    rate = value.get("sampling_rate")
    if not isinstance(rate, int) or rate <= 0:
        raise CorpusError(root, entry, f"audio array needs a positive sampling_rate, got {rate!r}")
    samples = np.asarray(value["array"], dtype="float32")
    target = stem.with_suffix(".flac")
    _atomic_write(target, lambda handle: soundfile.write(handle, samples, rate, format="FLAC",
                                                          subtype="PCM_24"))
    return target


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
