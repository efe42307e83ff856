"""The manifest: one JSON object per line describing one training or test sample (docs/architecture.md).

Every later stage (teacher, cache, student, evaluation) joins on the record ``id`` and opens the
``audio`` path, so a bad record must fail here, before any work, with the manifest's name and the
line to fix. Hence a strict schema: unknown keys are errors (a typo such as ``"questoin"`` would
otherwise silently drop the question), and every problem is a ``ManifestError`` whose message
reads ``"{manifest}:{line}: {what is wrong and what was expected}"`` like a compiler's.

Record fields:
  required  ``id`` (unique str), ``audio`` (path, relative to the manifest's folder or absolute),
            ``task`` (``asr``, ``audiocaption``, ``audiocaption_v2``, ``qa``, ...), ``text``
            (reference or target; ``""`` only for a blind test set that has no reference)
  optional  ``question``, ``instruction``, ``source`` (corpus name), ``duration`` (seconds),
            ``references`` (several reference texts for evaluation, e.g. Clotho's five captions);
            ``null`` counts as absent.

Heavy libraries (``datasets``) are imported inside ``load_manifest`` only, so that importing this
module (the CLI, ``distill validate``) stays fast.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.errors import DistillError

if TYPE_CHECKING:
    import datasets

REQUIRED_FIELDS = ("id", "audio", "task", "text")
OPTIONAL_FIELDS = ("question", "instruction", "source", "duration", "references")
ALL_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
_STRING_FIELDS = ("id", "audio", "task", "text", "question", "instruction", "source")
_NON_EMPTY_FIELDS = ("id", "audio", "task")


class ManifestError(DistillError, ValueError):
    """A manifest (or corpus file) problem, located as ``path:line:`` so editors can jump there.

    ``line`` is a 1-based line number, another location such as ``"data[12]"``, or None when the
    whole file is at fault.
    """

    def __init__(self, path: str | os.PathLike, line: int | str | None, what: str):
        where = f"{path}:{line}:" if line is not None else f"{path}:"
        super().__init__(f"{where} {what}")
        self.path = str(path)
        self.line = line
        self.what = what

    def __reduce__(self):
        # Rebuild from our three arguments, so the error survives pickling (DataLoader workers).
        return (type(self), (self.path, self.line, self.what))


@dataclass
class ManifestSummary:
    """What a validated manifest holds: enough to print a report and to plan a run."""

    path: str
    records: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    total_duration: float | None = None  # seconds, summed over the records that have a duration
    records_with_duration: int = 0
    records_without_text: int = 0  # blind test records (text == "")
    relative_audio_paths: int = 0

    @property
    def total_hours(self) -> float | None:
        return None if self.total_duration is None else self.total_duration / 3600.0


# --------------------------------------------------------------------------------- the schema
def record_problem(record: Any) -> str | None:
    """Describe the first schema problem of one decoded record, or return None when it is valid."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {_json_type(record)}"
    unknown = sorted(set(record) - set(ALL_FIELDS))
    if unknown:
        return (
            f"unknown key(s) {', '.join(map(repr, unknown))}; allowed keys: {', '.join(ALL_FIELDS)}"
        )
    missing = [name for name in REQUIRED_FIELDS if record.get(name) is None]
    if missing:
        return f"missing required key(s) {', '.join(map(repr, missing))}"
    for name in _STRING_FIELDS:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name!r} must be a string, got {_json_type(value)}"
    for name in _NON_EMPTY_FIELDS:
        if not record[name].strip():
            return f"{name!r} must be a non-empty string"
    return _duration_problem(record.get("duration")) or _references_problem(
        record.get("references")
    )


def _duration_problem(duration: Any) -> str | None:
    if duration is None:
        return None
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        return f"'duration' must be a number of seconds, got {_json_type(duration)}"
    if not math.isfinite(duration) or duration < 0:
        return f"'duration' must be a finite number >= 0, got {duration!r}"
    return None


def _references_problem(references: Any) -> str | None:
    if references is None:
        return None
    if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
        return "'references' must be a list of strings"
    # An empty caption is no reference: ROUGE-L divides by its length, CIDEr-D scores against it.
    empty = [index for index, text in enumerate(references) if not text.strip()]
    if empty:
        return f"'references' must be non-empty strings; references[{empty[0]}] is empty"
    return None


def _json_type(value: Any) -> str:
    """Name a Python value by its JSON type, the vocabulary of whoever wrote the manifest."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return names.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------ paths
def resolve_audio_path(manifest_path: str | os.PathLike, audio: str) -> Path:
    """Where a record's audio lives: absolute paths as they are, others from the manifest's folder.

    Relative to the manifest rather than the working directory, so a data folder can be moved or
    mounted elsewhere together with its manifest.
    """
    audio_path = Path(audio)
    if audio_path.is_absolute():
        return audio_path
    return Path(manifest_path).absolute().parent / audio_path


# ------------------------------------------------------------------------------- validation
def validate_manifest(path: str | os.PathLike, *, check_audio: bool = True) -> ManifestSummary:
    """Check every line of a manifest in one streaming pass; raise ManifestError at the first fault.

    Memory stays flat for millions of lines: only the ids (with their line numbers, so that a
    duplicate can name both lines) are kept.
    """
    summary = ManifestSummary(path=str(path))
    tasks: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    first_line_of_id: dict[str, int] = {}
    total_duration = 0.0
    for line_number, record in _read_records(path):
        problem = record_problem(record)
        if problem:
            raise ManifestError(path, line_number, problem)
        record_id = record["id"]
        if record_id in first_line_of_id:
            raise ManifestError(
                path,
                line_number,
                f"duplicate id {record_id!r} (first used on line {first_line_of_id[record_id]});"
                " ids must be unique",
            )
        first_line_of_id[record_id] = line_number
        if not Path(record["audio"]).is_absolute():
            summary.relative_audio_paths += 1
        if check_audio:
            audio_path = resolve_audio_path(path, record["audio"])
            if not audio_path.is_file():
                raise ManifestError(path, line_number, f"audio file not found: {audio_path}")
        tasks[record["task"]] += 1
        if record.get("source") is not None:
            sources[record["source"]] += 1
        if record.get("duration") is not None:
            total_duration += record["duration"]
            summary.records_with_duration += 1
        if record["text"] == "":
            summary.records_without_text += 1
        summary.records += 1
    summary.tasks = dict(sorted(tasks.items()))
    summary.sources = dict(sorted(sources.items()))
    summary.total_duration = total_duration if summary.records_with_duration else None
    return summary


def _read_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (line number, decoded JSON) for each line; undecodable or blank lines are errors."""
    try:
        manifest = open(path, "rb")  # noqa: SIM115 - closed by the with below, errors named first
    except OSError as err:
        raise ManifestError(path, None, f"cannot open the manifest: {err.strerror}") from err
    with manifest:
        for line_number, raw in enumerate(manifest, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ManifestError(path, line_number, f"not valid UTF-8 ({err.reason})") from err
            if not line.strip():
                raise ManifestError(
                    path, line_number, "blank line; expected one JSON object per line"
                )
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(
                    path, line_number, f"invalid JSON ({err.msg} at column {err.colno})"
                ) from err


# ---------------------------------------------------------------------------------- loading
def manifest_features() -> datasets.Features:
    """The Arrow schema of a loaded manifest: every field always present, absent ones None."""
    from datasets import Features, List, Value

    string = Value("string")
    return Features(
        {
            "id": string,
            "audio": string,
            "task": string,
            "text": string,
            "question": string,
            "instruction": string,
            "source": string,
            "duration": Value("float64"),
            "references": List(string),
        }
    )


def load_manifest(
    path: str | os.PathLike,
    *,
    check_audio: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Validate a manifest, then load it as a memory-mapped Arrow ``datasets.Dataset``.

    Arrow rather than a Python list, so that millions of records cost disk cache, not RAM, and
    DataLoader workers share them. Relative ``audio`` paths come back absolute (resolved from the
    manifest's folder), because the Dataset no longer knows where its manifest was. Loading never
    touches the network: the JSON builder is local, and the Hub is switched off while it runs.
    """
    from datasets import Dataset

    summary = validate_manifest(path, check_audio=check_audio)
    features = manifest_features()
    if summary.records == 0:
        return Dataset.from_dict({name: [] for name in features}, features=features)
    with _datasets_offline():
        dataset = Dataset.from_json(
            str(path),
            features=features,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
        if summary.relative_audio_paths:
            dataset = dataset.map(
                _AbsoluteAudioPaths(str(Path(path).absolute())),
                batched=True,
                desc="resolving audio paths",
            )
    return dataset


class _AbsoluteAudioPaths:
    """A picklable batch function for ``Dataset.map`` (its fingerprint keys the map cache)."""

    def __init__(self, manifest_path: str):
        self.manifest_path = manifest_path

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {"audio": [str(resolve_audio_path(self.manifest_path, a)) for a in batch["audio"]]}


@contextlib.contextmanager
def _datasets_offline() -> Iterator[None]:
    """Forbid ``datasets`` the network while it loads a local file; restore the user's setting.

    Its flags are read from the environment at import time, so setting HF_DATASETS_OFFLINE now
    would come too late: we flip the module's own flags and put them back afterwards.
    """
    from datasets import config

    saved = {name: getattr(config, name) for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    try:
        for name in saved:
            setattr(config, name, True)
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


# ---------------------------------------------------------------------------------- writing
def write_manifest(records: Iterable[dict], path: str | os.PathLike) -> int:
    """Write records as a manifest atomically; return how many were written.

    Each record is schema-checked as it is written and ids must be unique. The lines go to a
    temporary file in the same folder, which replaces ``path`` only once every record is written
    and flushed to disk: a crash or an invalid record leaves the previous manifest (or none),
    never a half-written one that a later stage would take for complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = tempfile.NamedTemporaryFile(  # noqa: SIM115 - must outlive the with for os.replace
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with temporary:
            count = _write_records(records, temporary, path)
            temporary.flush()
            os.fsync(temporary.fileno())
        os.replace(temporary.name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary.name)
        raise
    return count


def _write_records(records: Iterable[dict], out, path: Path) -> int:
    """Check and write each record; errors name the line the record would have had."""
    first_line_of_id: dict[str, int] = {}
    line_number = 0
    for line_number, record in enumerate(records, start=1):
        problem = record_problem(record)
        if problem:
            raise ManifestError(path, line_number, f"refusing to write record: {problem}")
        record_id = record["id"]
        if record_id in first_line_of_id:
            raise ManifestError(
                path,
                line_number,
                f"refusing to write duplicate id {record_id!r} (already on line "
                f"{first_line_of_id[record_id]})",
            )
        first_line_of_id[record_id] = line_number
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return line_number
