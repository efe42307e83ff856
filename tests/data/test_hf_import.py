"""``distill prepare-data hf``: save_to_disk folders and Parquet shards with an ``Audio`` column.

The datasets are built here, offline. ``datasets`` encodes Audio values through torchcodec, which
does not run on these machines, so the column is built as its Arrow storage (a {bytes, path}
struct) and cast to ``Audio()``: the same bytes on disk that ``Audio().encode_example`` writes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from distill.data import prepare
from distill.data.audio import load_audio


def run(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="distill")
    prepare.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def tone(seconds: float, rate: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype("float32")


def encoded(samples: np.ndarray, rate: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def clips(tmp_path: Path) -> dict:
    """Three clips: FLAC bytes at 8 kHz, WAV bytes at 16 kHz, and a file referenced by path."""
    on_disk = tmp_path / "external" / "c.wav"
    on_disk.parent.mkdir()
    soundfile.write(on_disk, tone(1.5, 16000, 300), 16000)
    return {
        "audio": [
            {"bytes": encoded(tone(1.0, 8000, 440), 8000, "FLAC"), "path": "a.flac"},
            {"bytes": encoded(tone(0.5, 16000, 660), 16000, "WAV"), "path": "b.wav"},
            {"bytes": None, "path": str(on_disk)},
        ],
        "text": ["the first one", "second", "a third clip"],
        "id": ["a", "b", "c"],
    }


def audio_dataset(columns: dict):
    from datasets import Audio, Dataset

    return Dataset.from_dict(columns).cast_column("audio", Audio())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_save_to_disk_dataset_dict_with_split(tmp_path: Path, clips: dict, capsys) -> None:
    from datasets import DatasetDict

    source = tmp_path / "corpus"
    other = {k: v[:1] for k, v in clips.items()}
    DatasetDict({"train": audio_dataset(clips), "test": audio_dataset(other)}).save_to_disk(source)
    out = tmp_path / "m" / "train.jsonl"
    assert run(["prepare-data", "hf", str(source), "--split", "train", "-o", str(out)]) == 0
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert [r["text"] for r in records] == clips["text"]
    assert {r["task"] for r in records} == {"asr"}
    assert records[0]["duration"] == pytest.approx(1.0) and records[1]["duration"] == pytest.approx(0.5)
    # save_to_disk embeds local files, so every clip was written next to the manifest
    audio_dir = tmp_path / "m" / "train_audio"
    assert sorted(p.name for p in audio_dir.iterdir()) == ["a.flac", "b.wav", "c.wav"]
    # decoded by the toolkit's loader: the same samples that went in (FLAC is lossless at 16 bit)
    clip = load_audio(records[0]["audio"], sample_rate=8000)
    np.testing.assert_allclose(clip.waveform.numpy(), tone(1.0, 8000, 440), atol=1e-4)
    assert "wrote 3 records" in capsys.readouterr().out


def test_parquet_shards_stream_paths_and_bytes(tmp_path: Path, clips: dict) -> None:
    source = tmp_path / "hub" / "data"
    source.mkdir(parents=True)
    ds = audio_dataset({k: v for k, v in clips.items() if k != "id"})
    ds.select([0, 1]).to_parquet(str(source / "train-00000-of-00002.parquet"))
    ds.select([2]).to_parquet(str(source / "train-00001-of-00002.parquet"))
    ds.select([0]).to_parquet(str(source / "test-00000-of-00001.parquet"))
    out = tmp_path / "train.jsonl"
    audio_dir = tmp_path / "wavs"
    code = run(["prepare-data", "hf", str(tmp_path / "hub"), "--split", "train", "--task",
                "audiocaption", "--audio-dir", str(audio_dir), "-o", str(out), "--no-duration"])
    assert code == 0
    records = read_jsonl(out)
    assert [r["id"] for r in records] == ["hub-train-00000000", "hub-train-00000001",
                                          "hub-train-00000002"]
    assert [r["task"] for r in records] == ["audiocaption"] * 3
    # to_parquet keeps a path that is a local file as a path: the record points at it
    assert records[2]["audio"] == clips["audio"][2]["path"]
    assert Path(records[1]["audio"]).read_bytes() == clips["audio"][1]["bytes"]
    assert "duration" not in records[0]


def test_caption_lists_become_references(tmp_path: Path, clips: dict) -> None:
    source = tmp_path / "caps"
    columns = {"audio": clips["audio"][:2], "captions": [["a dog", "dog barking"], ["rain"]]}
    audio_dataset(columns).save_to_disk(source)
    out = tmp_path / "caps.jsonl"
    assert run(["prepare-data", "hf", str(source), "--text-column", "captions", "--task",
                "audiocaption", "-o", str(out)]) == 0
    first, second = read_jsonl(out)
    assert first["text"] == "a dog" and first["references"] == ["a dog", "dog barking"]
    assert second["references"] == ["rain"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--split", "valid"], "no split 'valid' (found: train, test)"),
        ([], "several splits (train, test): choose one with --split"),
        (["--split", "train", "--text-column", "sentence"], "no column 'sentence'"),
        (["--split", "train", "--audio-column", "speech"], "no column 'speech'"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, clips: dict, capsys, argv, message) -> None:
    from datasets import DatasetDict

    source = tmp_path / "corpus"
    DatasetDict({"train": audio_dataset(clips), "test": audio_dataset(clips)}).save_to_disk(source)
    out = tmp_path / "x.jsonl"
    assert run(["prepare-data", "hf", str(source), *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(source) in err and "Traceback" not in err
    assert not out.exists()


def test_undecodable_bytes_name_the_row(tmp_path: Path, clips: dict, capsys) -> None:
    clips["audio"][1] = {"bytes": b"RIFF....not audio at all", "path": "b.wav"}
    source = tmp_path / "broken"
    audio_dataset(clips).save_to_disk(source)
    out = tmp_path / "x.jsonl"
    assert run(["prepare-data", "hf", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "cannot be decoded" in err
    assert not out.exists()  # the manifest is all or nothing


def test_no_dataset_here(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert run(["prepare-data", "hf", str(tmp_path / "empty"), "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "no save_to_disk dataset" in capsys.readouterr().err
