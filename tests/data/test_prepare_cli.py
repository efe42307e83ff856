"""``distill prepare-data`` end to end: parse, import, write, summarise, fail clearly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from distill.data import prepare


def build_parser() -> argparse.ArgumentParser:
    """The parser the lead's ``distill/cli.py`` builds, reduced to our sub-command."""
    parser = argparse.ArgumentParser(prog="distill")
    prepare.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def write_audio(path: Path, frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.zeros(frames, dtype="float32"), 16000)


@pytest.fixture
def librispeech(tmp_path: Path) -> Path:
    root = tmp_path / "LibriSpeech"
    chapter = root / "dev-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 GO\n84-121123-0001 DO YOU\n")
    write_audio(chapter / "84-121123-0000.flac", 7200)  # 0.45 s
    write_audio(chapter / "84-121123-0001.flac", 10800)  # 0.675 s
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_help_teaches_every_format(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["prepare-data", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in ("librispeech", "clotho", "audiocaps", "wavcaps", "salmonn"):
        assert f"distill prepare-data {name} " in text, f"no example for {name}"
    assert "clotho_captions_<split>.csv" in text


def test_format_help_describes_its_layout(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare-data", "wavcaps", "--help"])
    text = capsys.readouterr().out
    assert "--audio-dir" in text and "--skip-missing-audio" in text
    assert "json_files/<Subset>/<x>_final.json" in text


def test_output_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["prepare-data", "librispeech", "root"])
    assert exit_.value.code == 2
    assert "-o/--output" in capsys.readouterr().err


def test_options_reach_the_importer() -> None:
    args = build_parser().parse_args(
        [
            "prepare-data",
            "audiocaps",
            "root",
            "-o",
            "out.jsonl",
            "--split",
            "val",
            "--split",
            "test",
            "--mode",
            "all",
            "--task",
            "audiocaption_v2",
            "--name-pattern",
            "{youtube_id}",
            "--skip-missing-audio",
            "--no-duration",
        ]
    )
    assert (args.command, args.format, args.source, args.output) == (
        "prepare-data",
        "audiocaps",
        "root",
        Path("out.jsonl"),
    )
    assert prepare._audiocaps_options(args) == {
        "splits": ["val", "test"],
        "mode": "all",
        "task": "audiocaption_v2",
        "audio_dir": None,
        "name_patterns": ["{youtube_id}"],
        "skip_missing_audio": True,
    }
    assert args.no_duration is True


def test_librispeech_end_to_end(librispeech: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "manifests" / "libri.jsonl"
    assert run(["prepare-data", "librispeech", str(librispeech), "-o", str(out)]) == 0
    chapter = librispeech / "dev-clean" / "84" / "121123"
    assert read_jsonl(out) == [
        {
            "id": "84-121123-0000",
            "audio": str(chapter / "84-121123-0000.flac"),
            "task": "asr",
            "text": "GO",
            "source": "librispeech",
            "duration": 0.45,
        },
        {
            "id": "84-121123-0001",
            "audio": str(chapter / "84-121123-0001.flac"),
            "task": "asr",
            "text": "DO YOU",
            "source": "librispeech",
            "duration": 0.675,
        },
    ]
    assert capsys.readouterr().out == (
        f"wrote 2 records to {out}\n"
        "  task asr: 2\n"
        "  source librispeech: 2\n"
        "  audio: 0.00 h (2 records with a duration)\n"
    )


def test_relative_paths_and_lowercase(librispeech: Path, tmp_path: Path) -> None:
    out = tmp_path / "libri.jsonl"
    argv = [
        "prepare-data",
        "librispeech",
        str(librispeech),
        "-o",
        str(out),
        "--relative-paths",
        "--lowercase",
        "--no-duration",
        "--subset",
        "dev-clean",
    ]
    assert run(argv) == 0
    assert read_jsonl(out)[1] == {
        "id": "84-121123-0001",
        "audio": "LibriSpeech/dev-clean/84/121123/84-121123-0001.flac",
        "task": "asr",
        "text": "do you",
        "source": "librispeech",
    }


def test_salmonn_end_to_end(tmp_path: Path, capsys) -> None:
    write_audio(tmp_path / "data" / "x.wav", 1600)
    annotation = tmp_path / "test.json"
    annotation.write_text(
        json.dumps({"annotation": [{"testset_id": "test0000", "path": "x.wav", "task": "asr"}]})
    )
    out = tmp_path / "test.jsonl"
    argv = [
        "prepare-data",
        "salmonn",
        str(annotation),
        "--audio-root",
        str(tmp_path / "data"),
        "--source",
        "hackathon",
        "-o",
        str(out),
    ]
    assert run(argv) == 0
    assert read_jsonl(out) == [
        {
            "id": "test0000",
            "audio": str(tmp_path / "data" / "x.wav"),
            "task": "asr",
            "text": "",
            "source": "hackathon",
            "duration": 0.1,
        }
    ]
    assert "wrote 1 records" in capsys.readouterr().out


def test_error_goes_to_stderr_with_exit_code_2(librispeech: Path, tmp_path: Path, capsys):
    (librispeech / "dev-clean/84/121123/84-121123-0001.flac").unlink()
    out = tmp_path / "libri.jsonl"
    assert run(["prepare-data", "librispeech", str(librispeech), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    transcript = librispeech / "dev-clean/84/121123/84-121123.trans.txt"
    assert captured.err.startswith(f"error: {transcript}:2: audio file not found")
    assert captured.out == ""
    assert not out.exists()
    assert list(tmp_path.glob(".libri.jsonl.*")) == []


def test_no_records_is_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "clotho" / "development").mkdir(parents=True)
    (tmp_path / "clotho" / "clotho_captions_development.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    )
    out = tmp_path / "clotho.jsonl"
    assert run(["prepare-data", "clotho", str(tmp_path / "clotho"), "-o", str(out)]) == 2
    assert "no clotho records found" in capsys.readouterr().err
    assert not out.exists()


def test_bad_pattern_is_a_clean_error(tmp_path: Path, capsys) -> None:
    argv = [
        "prepare-data",
        "audiocaps",
        str(tmp_path),
        "-o",
        str(tmp_path / "o.jsonl"),
        "--name-pattern",
        "{nope}",
    ]
    assert run(argv) == 2
    assert capsys.readouterr().err.startswith("error: bad audio name pattern '{nope}'")


def test_parser_building_imports_no_heavy_library() -> None:
    import subprocess
    import sys

    code = (
        "import argparse, sys\n"
        "from distill.data import prepare\n"
        "prepare.add_parser(argparse.ArgumentParser().add_subparsers())\n"
        "heavy = [m for m in ('datasets', 'soundfile', 'torch', 'pyarrow') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True
    )
    assert result.stdout.strip() == "[]"
