"""The manifest contract: validation errors name file and line, loading, atomic writing."""

from __future__ import annotations

import json
import pickle
import socket
from pathlib import Path

import pytest

from distill.data.manifest import (
    ManifestError,
    load_manifest,
    resolve_audio_path,
    validate_manifest,
    write_manifest,
)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def touch_audio(folder: Path, *names: str) -> None:
    """Validation only checks that audio files exist, so empty files will do here."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


def record(**fields) -> str:
    base = {"id": "a", "audio": "a.wav", "task": "asr", "text": "hello"}
    return json.dumps({**base, **fields})


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    touch_audio(tmp_path, "a.wav", "b.wav", "clips/c.flac")
    return tmp_path


# ------------------------------------------------------------------------------ validation
def test_summary_counts_tasks_sources_and_duration(manifest_dir: Path) -> None:
    path = write_lines(
        manifest_dir / "m.jsonl",
        [
            record(id="a", source="librispeech", duration=1.5),
            record(id="b", audio="b.wav", task="audiocaption", source="clotho", duration=2),
            record(id="c", audio="clips/c.flac", text="", question="what?"),
        ],
    )
    summary = validate_manifest(path)
    assert summary.records == 3
    assert summary.tasks == {"asr": 2, "audiocaption": 1}
    assert summary.sources == {"clotho": 1, "librispeech": 1}
    assert summary.total_duration == pytest.approx(3.5)
    assert summary.total_hours == pytest.approx(3.5 / 3600)
    assert summary.records_with_duration == 2
    assert summary.records_without_text == 1
    assert summary.relative_audio_paths == 3


def test_summary_without_durations_has_no_total(manifest_dir: Path) -> None:
    path = write_lines(manifest_dir / "m.jsonl", [record()])
    assert validate_manifest(path).total_duration is None


def test_absolute_audio_path_is_accepted(manifest_dir: Path) -> None:
    (manifest_dir / "sub").mkdir()
    path = write_lines(
        manifest_dir / "sub" / "m.jsonl", [record(audio=str(manifest_dir / "a.wav"))]
    )
    assert validate_manifest(path).relative_audio_paths == 0


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{not json", "invalid JSON"),
        ("", "blank line"),
        ("   ", "blank line"),
        ("[1, 2]", "expected a JSON object, got an array"),
        (record(speaker="x"), "unknown key(s) 'speaker'"),
        (
            json.dumps({"id": "z", "audio": "a.wav", "task": "asr"}),
            "missing required key(s) 'text'",
        ),
        (json.dumps({"audio": "a.wav", "text": "t"}), "missing required key(s) 'id', 'task'"),
        (record(id=7), "'id' must be a string, got a number (7)"),
        (record(id=""), "'id' must be a non-empty string"),
        (record(text=None), "missing required key(s) 'text'"),
        (record(question=["q"]), "'question' must be a string, got an array"),
        (record(duration="1.0"), "'duration' must be a number of seconds, got a string"),
        (record(duration=True), "'duration' must be a number of seconds, got a boolean"),
        (record(duration=-1), "'duration' must be a finite number >= 0, got -1"),
        ('{"id": "z", "audio": "a.wav", "task": "asr", "text": "", "duration": NaN}', "finite"),
        (record(references=["ok", 3]), "'references' must be a list of strings"),
        (record(references=["a dog barks", ""]), "references[1] is empty"),
        (record(references=[" \t"]), "'references' must be non-empty strings; references[0]"),
        (record(audio="missing.wav"), "audio file not found: "),
    ],
)
def test_each_fault_names_manifest_and_line(manifest_dir: Path, bad_line: str, expected: str):
    path = write_lines(manifest_dir / "bad.jsonl", [record(id="ok1"), bad_line, record(id="ok2")])
    with pytest.raises(ManifestError) as caught:
        validate_manifest(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:2: ")
    assert expected in message
    assert caught.value.line == 2


def test_duplicate_id_names_both_lines(manifest_dir: Path) -> None:
    path = write_lines(
        manifest_dir / "dup.jsonl",
        [record(id="x"), record(id="y"), record(id="z"), record(id="y")],
    )
    with pytest.raises(ManifestError) as caught:
        validate_manifest(path)
    assert str(caught.value) == (
        f"{path}:4: duplicate id 'y' (first used on line 2); ids must be unique"
    )


def test_missing_audio_is_ignored_without_check_audio(manifest_dir: Path) -> None:
    path = write_lines(manifest_dir / "m.jsonl", [record(audio="nowhere.wav")])
    assert validate_manifest(path, check_audio=False).records == 1


def test_invalid_utf8_names_the_line(manifest_dir: Path) -> None:
    path = manifest_dir / "m.jsonl"
    path.write_bytes(record().encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: not valid UTF-8"):
        validate_manifest(path)


def test_missing_manifest_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nothing\.jsonl: cannot open the manifest"):
        validate_manifest(tmp_path / "nothing.jsonl")


def test_last_line_without_newline_is_fine(manifest_dir: Path) -> None:
    path = manifest_dir / "m.jsonl"
    path.write_text(record(id="a") + "\n" + record(id="b"), encoding="utf-8")
    assert validate_manifest(path).records == 2


def test_error_survives_pickling() -> None:
    error = ManifestError("m.jsonl", 3, "bad")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.line, copy.what) == ("m.jsonl:3: bad", "m.jsonl", 3, "bad")


# ----------------------------------------------------------------------------------- paths
def test_resolve_audio_path_relative_and_absolute(tmp_path: Path) -> None:
    manifest = tmp_path / "sets" / "m.jsonl"
    assert resolve_audio_path(manifest, "clips/a.wav") == tmp_path / "sets" / "clips" / "a.wav"
    assert resolve_audio_path(manifest, "/data/a.wav") == Path("/data/a.wav")


def test_resolve_audio_path_of_relative_manifest_is_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_audio_path("sets/m.jsonl", "a.wav") == tmp_path / "sets" / "a.wav"


# --------------------------------------------------------------------------------- loading
def test_load_manifest_fills_absent_fields_with_none(manifest_dir: Path) -> None:
    path = write_lines(
        manifest_dir / "m.jsonl",
        [
            record(id="a", source="librispeech", duration=1),
            json.dumps(
                {
                    "id": "b",
                    "audio": str(manifest_dir / "b.wav"),
                    "task": "qa",
                    "text": "yes",
                    "question": "is it raining?",
                    "instruction": "Answer briefly.",
                    "references": ["yes", "yes it is"],
                }
            ),
            record(id="c", audio="clips/c.flac", text="", duration=0.25),
        ],
    )
    dataset = load_manifest(path, cache_dir=manifest_dir / "cache")
    assert len(dataset) == 3
    assert dataset[0] == {
        "id": "a",
        "audio": str(manifest_dir / "a.wav"),
        "task": "asr",
        "text": "hello",
        "question": None,
        "instruction": None,
        "source": "librispeech",
        "duration": 1.0,
        "references": None,
    }
    assert dataset[1] == {
        "id": "b",
        "audio": str(manifest_dir / "b.wav"),
        "task": "qa",
        "text": "yes",
        "question": "is it raining?",
        "instruction": "Answer briefly.",
        "source": None,
        "duration": None,
        "references": ["yes", "yes it is"],
    }
    assert dataset[2]["audio"] == str(manifest_dir / "clips" / "c.flac")
    assert dataset[2]["text"] == ""
    assert dataset[2]["duration"] == 0.25
    assert str(dataset.features["duration"].dtype) == "float64"
    assert set(dataset.column_names) == {
        "id",
        "audio",
        "task",
        "text",
        "question",
        "instruction",
        "source",
        "duration",
        "references",
    }


def test_load_manifest_is_memory_mapped_arrow(manifest_dir: Path) -> None:
    path = write_lines(manifest_dir / "m.jsonl", [record(id=f"r{i}") for i in range(5)])
    dataset = load_manifest(path, cache_dir=manifest_dir / "cache")
    assert dataset.cache_files, "expected an on-disk Arrow cache, not an in-memory table"
    assert dataset["id"] == ["r0", "r1", "r2", "r3", "r4"]


def test_load_manifest_validates_first(manifest_dir: Path) -> None:
    path = write_lines(manifest_dir / "m.jsonl", [record(id="a"), record(id="a")])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: duplicate id 'a'"):
        load_manifest(path, cache_dir=manifest_dir / "cache")


def test_load_manifest_of_empty_file_has_the_schema(manifest_dir: Path) -> None:
    path = write_lines(manifest_dir / "m.jsonl", [])
    dataset = load_manifest(path, cache_dir=manifest_dir / "cache")
    assert len(dataset) == 0
    assert "references" in dataset.column_names


def test_load_manifest_sees_a_rewritten_manifest(manifest_dir: Path) -> None:
    """The Arrow cache must follow the file, not serve the previous content."""
    path = write_lines(manifest_dir / "m.jsonl", [record(id="old")])
    assert load_manifest(path, cache_dir=manifest_dir / "cache")["id"] == ["old"]
    write_lines(path, [record(id="new1"), record(id="new2")])
    assert load_manifest(path, cache_dir=manifest_dir / "cache")["id"] == ["new1", "new2"]


def test_load_manifest_never_touches_the_network(manifest_dir: Path, monkeypatch) -> None:
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)  # recorded: a library may swallow the error we raise
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    path = write_lines(manifest_dir / "m.jsonl", [record(id="a", audio="clips/c.flac")])
    assert load_manifest(path, cache_dir=manifest_dir / "cache")["id"] == ["a"]
    assert attempts == []


def test_load_manifest_restores_the_offline_flags(manifest_dir: Path) -> None:
    from datasets import config

    before = (config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE)
    load_manifest(write_lines(manifest_dir / "m.jsonl", [record()]), cache_dir=manifest_dir / "c")
    assert before == (config.HF_HUB_OFFLINE, config.HF_DATASETS_OFFLINE)


# --------------------------------------------------------------------------------- writing
RECORDS = [
    {"id": "a", "audio": "a.wav", "task": "asr", "text": "hello", "duration": 1.0},
    {"id": "b", "audio": "b.wav", "task": "audiocaption", "text": "rain", "references": ["r"]},
]


def test_write_manifest_writes_one_json_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "out" / "m.jsonl"
    assert write_manifest(iter(RECORDS), path) == 2
    assert path.read_text(encoding="utf-8") == (
        '{"id": "a", "audio": "a.wav", "task": "asr", "text": "hello", "duration": 1.0}\n'
        '{"id": "b", "audio": "b.wav", "task": "audiocaption", "text": "rain", '
        '"references": ["r"]}\n'
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.jsonl"]


def test_write_manifest_keeps_unicode_readable(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest([{**RECORDS[0], "text": "café naïve"}], path)
    assert "café naïve" in path.read_text(encoding="utf-8")


def test_write_manifest_refuses_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with pytest.raises(ManifestError) as caught:
        write_manifest([RECORDS[0], RECORDS[1], {**RECORDS[1], "text": "x"}], path)
    assert str(caught.value) == (
        f"{path}:3: refusing to write duplicate id 'b' (already on line 2)"
    )
    assert list(tmp_path.iterdir()) == []


def test_write_manifest_refuses_an_invalid_record(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: refusing to write record: unknown key"):
        write_manifest([RECORDS[0], {**RECORDS[1], "caption": "x"}], path)
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_leaves_the_old_manifest_intact(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("previous content\n", encoding="utf-8")

    def records_then_crash():
        yield RECORDS[0]
        yield RECORDS[1]
        raise RuntimeError("importer crashed")

    with pytest.raises(RuntimeError, match="importer crashed"):
        write_manifest(records_then_crash(), path)
    assert path.read_text(encoding="utf-8") == "previous content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"], "temporary file left behind"


def test_interrupt_mid_write_leaves_no_file(tmp_path: Path) -> None:
    def records_then_interrupt():
        yield RECORDS[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_manifest(records_then_interrupt(), tmp_path / "m.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_written_manifest_round_trips_through_load(tmp_path: Path) -> None:
    touch_audio(tmp_path, "a.wav", "b.wav")
    path = tmp_path / "m.jsonl"
    write_manifest(RECORDS, path)
    dataset = load_manifest(path, cache_dir=tmp_path / "cache")
    assert dataset["id"] == ["a", "b"]
    assert dataset["audio"] == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    assert dataset["references"] == [None, ["r"]]
    assert dataset["duration"] == [1.0, None]
