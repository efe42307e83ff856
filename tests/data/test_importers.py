"""Each importer on a tiny corpus in its exact on-disk layout, written and reloaded as a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from distill.data.importers import (
    IMPORTERS,
    CorpusError,
    import_audiocaps,
    import_clotho,
    import_hf_dataset,
    import_librispeech,
    import_salmonn,
    import_wavcaps,
)
from distill.data.manifest import ManifestError, load_manifest, write_manifest

RATE = 16000


def write_audio(path: Path, frames: int) -> Path:
    """A short real audio file: its duration is frames / 16000 s, which the tests check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.zeros(frames, dtype="float32"), RATE)
    return path


def reload(records, tmp_path: Path) -> list[dict]:
    """Write records as a manifest, load it back through ``datasets``, return plain rows."""
    manifest = tmp_path / "out" / "manifest.jsonl"
    write_manifest(records, manifest)
    return load_manifest(manifest, cache_dir=tmp_path / "cache").to_list()


def row(**fields) -> dict:
    """A loaded manifest row: every optional field present, None unless given."""
    optional = dict.fromkeys(("question", "instruction", "source", "duration", "references"))
    return {**optional, **fields}


def test_registry_names_every_importer() -> None:
    expected = {
        "librispeech": import_librispeech,
        "clotho": import_clotho,
        "audiocaps": import_audiocaps,
        "wavcaps": import_wavcaps,
        "salmonn": import_salmonn,
        "hf": import_hf_dataset,
    }
    assert expected == IMPORTERS


def test_corpus_error_is_a_manifest_error() -> None:
    assert issubclass(CorpusError, ManifestError)


# ----------------------------------------------------------------------------- LibriSpeech
@pytest.fixture
def librispeech(tmp_path: Path) -> Path:
    root = tmp_path / "LibriSpeech"
    chapter = root / "dev-clean" / "84" / "121123"
    (chapter / "84-121123.trans.txt").parent.mkdir(parents=True)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
    )
    write_audio(chapter / "84-121123-0000.flac", 1600)
    write_audio(chapter / "84-121123-0001.flac", 3200)
    other = root / "test-other" / "1688" / "142285"
    other.mkdir(parents=True)
    (other / "1688-142285.trans.txt").write_text("1688-142285-0000 THERE'S IRON THEY SAY\n")
    write_audio(other / "1688-142285-0000.flac", 800)
    (root / "README.TXT").write_text("not a subset")
    return root


def test_librispeech_all_subsets(librispeech: Path, tmp_path: Path) -> None:
    chapter = librispeech / "dev-clean" / "84" / "121123"
    other = librispeech / "test-other" / "1688" / "142285"
    assert reload(import_librispeech(librispeech), tmp_path) == [
        row(
            id="84-121123-0000",
            audio=str(chapter / "84-121123-0000.flac"),
            task="asr",
            text="GO DO YOU HEAR",
            source="librispeech",
            duration=0.1,
        ),
        row(
            id="84-121123-0001",
            audio=str(chapter / "84-121123-0001.flac"),
            task="asr",
            text="BUT IN LESS THAN FIVE MINUTES",
            source="librispeech",
            duration=0.2,
        ),
        row(
            id="1688-142285-0000",
            audio=str(other / "1688-142285-0000.flac"),
            task="asr",
            text="THERE'S IRON THEY SAY",
            source="librispeech",
            duration=0.05,
        ),
    ]


def test_librispeech_one_subset_lowercase_no_duration(librispeech: Path) -> None:
    records = list(
        import_librispeech(librispeech, subsets=["test-other"], lowercase=True, with_duration=False)
    )
    assert records == [
        {
            "id": "1688-142285-0000",
            "audio": str(librispeech / "test-other/1688/142285/1688-142285-0000.flac"),
            "task": "asr",
            "text": "there's iron they say",
            "source": "librispeech",
        }
    ]


def test_librispeech_unknown_subset(librispeech: Path) -> None:
    with pytest.raises(CorpusError, match="subset folder 'train-clean-100' not found"):
        list(import_librispeech(librispeech, subsets=["train-clean-100"]))


def test_librispeech_wrong_root(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="ROOT should be the LibriSpeech folder"):
        list(import_librispeech(tmp_path / "empty"))


def test_librispeech_missing_flac_names_transcript_line(librispeech: Path) -> None:
    chapter = librispeech / "dev-clean" / "84" / "121123"
    (chapter / "84-121123-0001.flac").unlink()
    with pytest.raises(CorpusError) as caught:
        list(import_librispeech(librispeech))
    assert str(caught.value).startswith(
        f"{chapter / '84-121123.trans.txt'}:2: audio file not found"
    )


def test_librispeech_malformed_line(librispeech: Path) -> None:
    transcript = librispeech / "dev-clean/84/121123/84-121123.trans.txt"
    transcript.write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001\n")
    with pytest.raises(CorpusError, match=r"84-121123\.trans\.txt:2: expected '<utterance-id>"):
        list(import_librispeech(librispeech))


def test_librispeech_utterance_of_another_chapter(librispeech: Path) -> None:
    transcript = librispeech / "dev-clean/84/121123/84-121123.trans.txt"
    transcript.write_text("84-999999-0000 GO DO YOU HEAR\n")
    with pytest.raises(CorpusError, match=r"trans\.txt:1: utterance id '84-999999-0000'"):
        list(import_librispeech(librispeech))


def test_librispeech_unreadable_audio(librispeech: Path) -> None:
    (librispeech / "dev-clean/84/121123/84-121123-0000.flac").write_bytes(b"not audio")
    with pytest.raises(CorpusError, match=r"trans\.txt:1: cannot read audio file"):
        list(import_librispeech(librispeech))


# ---------------------------------------------------------------------------------- Clotho
CLOTHO_CSV = (
    "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    'rain.wav,Rain falls.,"Rain, and wind.",Drops hit a roof.,It rains.,Water drips.\n'
    '"a, b.wav",A dog barks.,Barking.,"A dog, barking.",A dog.,Woof.\n'
)


@pytest.fixture
def clotho(tmp_path: Path) -> Path:
    root = tmp_path / "clotho"
    root.mkdir()
    (root / "clotho_captions_development.csv").write_text(CLOTHO_CSV, encoding="utf-8")
    write_audio(root / "development" / "rain.wav", 1600)
    write_audio(root / "development" / "a, b.wav", 4000)
    return root


def test_clotho_each_caption_is_a_record(clotho: Path, tmp_path: Path) -> None:
    rows = reload(import_clotho(clotho), tmp_path)
    rain = str(clotho / "development" / "rain.wav")
    dog = str(clotho / "development" / "a, b.wav")
    assert [r["id"] for r in rows] == [
        *(f"clotho/development/rain.wav#{n}" for n in range(1, 6)),
        *(f"clotho/development/a, b.wav#{n}" for n in range(1, 6)),
    ]
    assert [r["text"] for r in rows] == [
        "Rain falls.",
        "Rain, and wind.",
        "Drops hit a roof.",
        "It rains.",
        "Water drips.",
        "A dog barks.",
        "Barking.",
        "A dog, barking.",
        "A dog.",
        "Woof.",
    ]
    assert rows[1] == row(
        id="clotho/development/rain.wav#2",
        audio=rain,
        task="audiocaption",
        text="Rain, and wind.",
        source="clotho",
        duration=0.1,
    )
    assert {r["audio"] for r in rows[5:]} == {dog}
    assert {r["duration"] for r in rows[5:]} == {0.25}


def test_clotho_all_captions_as_references(clotho: Path, tmp_path: Path) -> None:
    rows = reload(import_clotho(clotho, mode="all", task="audiocaption_v2"), tmp_path)
    assert rows == [
        row(
            id="clotho/development/rain.wav",
            audio=str(clotho / "development" / "rain.wav"),
            task="audiocaption_v2",
            text="Rain falls.",
            source="clotho",
            duration=0.1,
            references=[
                "Rain falls.",
                "Rain, and wind.",
                "Drops hit a roof.",
                "It rains.",
                "Water drips.",
            ],
        ),
        row(
            id="clotho/development/a, b.wav",
            audio=str(clotho / "development" / "a, b.wav"),
            task="audiocaption_v2",
            text="A dog barks.",
            source="clotho",
            duration=0.25,
            references=["A dog barks.", "Barking.", "A dog, barking.", "A dog.", "Woof."],
        ),
    ]


def test_clotho_missing_audio_names_csv_line(clotho: Path) -> None:
    (clotho / "development" / "a, b.wav").unlink()
    csv_path = clotho / "clotho_captions_development.csv"
    with pytest.raises(CorpusError) as caught:
        list(import_clotho(clotho))
    assert str(caught.value).startswith(f"{csv_path}:3: audio file not found")


def test_clotho_missing_column(clotho: Path) -> None:
    (clotho / "clotho_captions_development.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4\nrain.wav,a,b,c,d\n"
    )
    with pytest.raises(
        CorpusError, match=r"development\.csv:1: header lacks column\(s\) caption_5"
    ):
        list(import_clotho(clotho))


def test_clotho_short_row(clotho: Path) -> None:
    (clotho / "clotho_captions_development.csv").write_text(
        CLOTHO_CSV.splitlines()[0] + "\nrain.wav,a,b\n"
    )
    with pytest.raises(
        CorpusError, match=r"development\.csv:2: row has 3 fields, the header has 6"
    ):
        list(import_clotho(clotho))


def test_clotho_empty_caption(clotho: Path) -> None:
    (clotho / "clotho_captions_development.csv").write_text(
        CLOTHO_CSV.splitlines()[0] + "\nrain.wav,a,b,,d,e\n"
    )
    with pytest.raises(CorpusError, match=r"development\.csv:2: caption_3 is empty"):
        list(import_clotho(clotho))


def test_clotho_missing_split_csv(clotho: Path) -> None:
    with pytest.raises(CorpusError, match=r"clotho_captions_validation\.csv: Clotho validation"):
        list(import_clotho(clotho, splits=["validation"]))


def test_clotho_line_numbers_count_multiline_captions(clotho: Path) -> None:
    header = CLOTHO_CSV.splitlines()[0]
    (clotho / "clotho_captions_development.csv").write_text(
        f'{header}\nrain.wav,"two\nlines",b,c,d,e\nmissing.wav,a,b,c,d,e\n'
    )
    with pytest.raises(CorpusError, match=r"development\.csv:4: audio file not found"):
        list(import_clotho(clotho))


def test_clotho_rejects_unknown_mode(clotho: Path) -> None:
    with pytest.raises(ValueError, match="caption mode must be one of"):
        list(import_clotho(clotho, mode="some"))


# ------------------------------------------------------------------------------- AudioCaps
AUDIOCAPS_TEST_CSV = (
    "audiocap_id,youtube_id,start_time,caption\n"
    "103549,--0w1YA1Hm4,30,A vehicle driving as a man speaks\n"
    '103548,--0w1YA1Hm4,30,"High pitched engine, then a man talks"\n'
    "97151,-AheI8Epim4,0,Birds chirp\n"
    "99999,zzzzzzzzzzz,10,Nobody downloaded this clip\n"
)


@pytest.fixture
def audiocaps(tmp_path: Path) -> Path:
    root = tmp_path / "audiocaps"
    (root / "test").mkdir(parents=True)
    (root / "test.csv").write_text(AUDIOCAPS_TEST_CSV)
    write_audio(root / "test" / "--0w1YA1Hm4_30.wav", 1600)
    write_audio(root / "test" / "Y-AheI8Epim4.flac", 800)
    return root


def test_audiocaps_each_row_skipping_missing(audiocaps: Path, tmp_path: Path, caplog) -> None:
    records = import_audiocaps(audiocaps, splits=["test"], skip_missing_audio=True)
    rows = reload(records, tmp_path)
    engine = str(audiocaps / "test" / "--0w1YA1Hm4_30.wav")
    assert rows == [
        row(
            id="audiocaps/test/103549",
            audio=engine,
            task="audiocaption",
            text="A vehicle driving as a man speaks",
            source="audiocaps",
            duration=0.1,
        ),
        row(
            id="audiocaps/test/103548",
            audio=engine,
            task="audiocaption",
            text="High pitched engine, then a man talks",
            source="audiocaps",
            duration=0.1,
        ),
        row(
            id="audiocaps/test/97151",
            audio=str(audiocaps / "test" / "Y-AheI8Epim4.flac"),
            task="audiocaption",
            text="Birds chirp",
            source="audiocaps",
            duration=0.05,
        ),
    ]
    assert "skipped 1 row(s) with no audio file" in caplog.text


def test_audiocaps_all_groups_captions_per_clip(audiocaps: Path, tmp_path: Path) -> None:
    records = import_audiocaps(
        audiocaps,
        splits=["test"],
        mode="all",
        task="audiocaption_v2",
        skip_missing_audio=True,
        with_duration=False,
    )
    assert reload(records, tmp_path) == [
        row(
            id="audiocaps/test/--0w1YA1Hm4_30",
            audio=str(audiocaps / "test" / "--0w1YA1Hm4_30.wav"),
            task="audiocaption_v2",
            text="A vehicle driving as a man speaks",
            source="audiocaps",
            references=[
                "A vehicle driving as a man speaks",
                "High pitched engine, then a man talks",
            ],
        ),
        row(
            id="audiocaps/test/-AheI8Epim4_0",
            audio=str(audiocaps / "test" / "Y-AheI8Epim4.flac"),
            task="audiocaption_v2",
            text="Birds chirp",
            source="audiocaps",
            references=["Birds chirp"],
        ),
    ]


def test_audiocaps_missing_audio_names_csv_line(audiocaps: Path) -> None:
    with pytest.raises(CorpusError) as caught:
        list(import_audiocaps(audiocaps, splits=["test"], with_duration=False))
    message = str(caught.value)
    assert message.startswith(f"{audiocaps / 'test.csv'}:5: no audio file for this row")
    assert "zzzzzzzzzzz_10.wav" in message and "99999.ogg" in message


def test_audiocaps_custom_pattern_and_audio_dir(audiocaps: Path, tmp_path: Path) -> None:
    (audiocaps / "test.csv").write_text(AUDIOCAPS_TEST_CSV.splitlines()[0] + "\n1,abc,30,Wind\n")
    write_audio(tmp_path / "clips" / "1_abc.ogg", 1600)
    records = list(
        import_audiocaps(
            audiocaps,
            splits=["test"],
            audio_dir=tmp_path / "clips",
            name_patterns=["{audiocap_id}_{youtube_id}.ogg"],
        )
    )
    assert records == [
        {
            "id": "audiocaps/test/1",
            "audio": str(tmp_path / "clips" / "1_abc.ogg"),
            "task": "audiocaption",
            "text": "Wind",
            "source": "audiocaps",
            "duration": pytest.approx(0.1),
        }
    ]


def test_audiocaps_bad_pattern(audiocaps: Path) -> None:
    with pytest.raises(ValueError, match=r"bad audio name pattern '\{ytid\}'"):
        list(import_audiocaps(audiocaps, splits=["test"], name_patterns=["{ytid}"]))


def test_audiocaps_missing_column(audiocaps: Path) -> None:
    (audiocaps / "test.csv").write_text("audiocap_id,youtube_id,caption\n1,abc,Wind\n")
    with pytest.raises(CorpusError, match=r"test\.csv:1: header lacks column\(s\) start_time"):
        list(import_audiocaps(audiocaps, splits=["test"]))


def test_audiocaps_missing_audio_folder(audiocaps: Path) -> None:
    (audiocaps / "train.csv").write_text(AUDIOCAPS_TEST_CSV)
    with pytest.raises(CorpusError, match=r"train: audio folder not found"):
        list(import_audiocaps(audiocaps))


# --------------------------------------------------------------------------------- WavCaps
def write_json(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.fixture
def wavcaps(tmp_path: Path) -> tuple[Path, Path]:
    """AudioSet_SL-style entries: ids with '.wav', placeholder 'audio', audio extracted as flac."""
    json_file = write_json(
        tmp_path / "WavCaps" / "json_files" / "AudioSet_SL" / "as_final.json",
        {
            "num_captions_per_audio": 1,
            "data": [
                {
                    "id": "Yb0RFKhbpFJA.wav",
                    "caption": "Wind and a man speaking are heard.",
                    "audio": "wav_path",
                    "duration": 10.0,
                },
                {"id": "Yxyz.wav", "caption": " A door slams. ", "audio": "wav_path"},
            ],
        },
    )
    audio_dir = tmp_path / "WavCaps" / "AudioSet_SL_flac"
    write_audio(audio_dir / "Yb0RFKhbpFJA.flac", 1600)
    write_audio(audio_dir / "Yxyz.wav", 800)
    return json_file, audio_dir


def test_wavcaps_audioset(wavcaps: tuple[Path, Path], tmp_path: Path) -> None:
    json_file, audio_dir = wavcaps
    assert reload(import_wavcaps(json_file, audio_dir=audio_dir), tmp_path) == [
        row(
            id="wavcaps/AudioSet_SL/Yb0RFKhbpFJA",
            audio=str(audio_dir / "Yb0RFKhbpFJA.flac"),
            task="audiocaption",
            text="Wind and a man speaking are heard.",
            source="wavcaps/AudioSet_SL",
            duration=0.1,  # measured from the file, not the JSON's 10.0
        ),
        row(
            id="wavcaps/AudioSet_SL/Yxyz",
            audio=str(audio_dir / "Yxyz.wav"),
            task="audiocaption",
            text="A door slams.",
            source="wavcaps/AudioSet_SL",
            duration=0.05,
        ),
    ]


def test_wavcaps_freesound_numeric_ids_and_json_duration(tmp_path: Path) -> None:
    json_file = write_json(
        tmp_path / "fsd_final.json",
        {
            "data": [
                {
                    "id": "180913",
                    "file_name": "UK Mello.wav",
                    "href": "/people/Tempouser/sounds/180913/",
                    "tags": ["ringtone"],
                    "description": "Standard traditional basic ringtone.",
                    "author": "Tempouser",
                    "duration": 3.204375,
                    "download_link": "https://freesound.org/x.wav",
                    "caption": "A traditional ringtone is playing.",
                    "audio": "wav_path",
                },
                {"id": 7, "caption": "Birds."},
            ]
        },
    )
    write_audio(tmp_path / "audio" / "180913.flac", 1600)
    write_audio(tmp_path / "audio" / "7.wav", 1600)
    records = list(
        import_wavcaps(
            json_file, audio_dir=tmp_path / "audio", subset="FreeSound", with_duration=False
        )
    )
    assert records == [
        {
            "id": "wavcaps/FreeSound/180913",
            "audio": str(tmp_path / "audio" / "180913.flac"),
            "task": "audiocaption",
            "text": "A traditional ringtone is playing.",
            "source": "wavcaps/FreeSound",
            "duration": 3.204375,
        },
        {
            "id": "wavcaps/FreeSound/7",
            "audio": str(tmp_path / "audio" / "7.wav"),
            "task": "audiocaption",
            "text": "Birds.",
            "source": "wavcaps/FreeSound",
        },
    ]


def test_wavcaps_missing_audio_names_the_entry(wavcaps: tuple[Path, Path]) -> None:
    json_file, audio_dir = wavcaps
    (audio_dir / "Yxyz.wav").unlink()
    with pytest.raises(CorpusError) as caught:
        list(import_wavcaps(json_file, audio_dir=audio_dir))
    assert str(caught.value).startswith(
        f"{json_file}:data[1]: no audio file for id 'Yxyz.wav' in {audio_dir} "
        "(tried Yxyz.wav, Yxyz.flac, Yxyz.wav)"
    )
    kept = list(import_wavcaps(json_file, audio_dir=audio_dir, skip_missing_audio=True))
    assert [r["id"] for r in kept] == ["wavcaps/AudioSet_SL/Yb0RFKhbpFJA"]


def test_wavcaps_missing_caption(wavcaps: tuple[Path, Path]) -> None:
    json_file, audio_dir = wavcaps
    write_json(json_file, {"data": [{"id": "Yxyz.wav", "caption": "ok"}, {"id": "Yxyz.wav"}]})
    with pytest.raises(CorpusError, match=r"as_final\.json:data\[1\]: missing key 'caption'"):
        list(import_wavcaps(json_file, audio_dir=audio_dir))


def test_wavcaps_wrong_top_level(wavcaps: tuple[Path, Path]) -> None:
    json_file, audio_dir = wavcaps
    write_json(json_file, [{"id": "Yxyz.wav", "caption": "ok"}])
    with pytest.raises(CorpusError, match=r'as_final\.json: expected a JSON object \{"data"'):
        list(import_wavcaps(json_file, audio_dir=audio_dir))


def test_wavcaps_invalid_json_names_the_line(wavcaps: tuple[Path, Path]) -> None:
    json_file, audio_dir = wavcaps
    json_file.write_text('{"data": [\n  {"id": "a",\n   "caption": }\n]}\n')
    with pytest.raises(CorpusError, match=r"as_final\.json:3: invalid JSON"):
        list(import_wavcaps(json_file, audio_dir=audio_dir))


# --------------------------------------------------------------------------------- SALMONN
@pytest.fixture
def salmonn_root(tmp_path: Path) -> Path:
    root = tmp_path / "salmonn_data"
    write_audio(root / "LibriSpeech" / "a.flac", 1600)
    write_audio(root / "clips" / "b.wav", 800)
    return root


def test_salmonn_training_annotation(salmonn_root: Path, tmp_path: Path) -> None:
    annotation = write_json(
        tmp_path / "ann" / "stage2.json",
        {
            "annotation": [
                {"path": "LibriSpeech/a.flac", "text": "hello world", "task": "asr"},
                {"path": "clips/b.wav", "text": "yes", "task": "QA", "Q": "Is it raining?"},
                {"path": "clips/b.wav", "text": "no", "task": "QA", "Q": "Is it sunny?"},
                {"path": "clips/b.wav", "text": "maybe", "task": "QA", "Q": "Is it day?"},
                {"path": "clips/b.wav", "text": "rain on a roof", "task": "audiocaption"},
            ]
        },
    )
    rows = reload(import_salmonn(annotation, audio_root=salmonn_root), tmp_path)
    b = str(salmonn_root / "clips" / "b.wav")
    assert rows == [
        row(
            id="asr/LibriSpeech/a.flac",
            audio=str(salmonn_root / "LibriSpeech" / "a.flac"),
            task="asr",
            text="hello world",
            source="salmonn",
            duration=0.1,
        ),
        row(
            id="QA/clips/b.wav",
            audio=b,
            task="QA",
            text="yes",
            question="Is it raining?",
            source="salmonn",
            duration=0.05,
        ),
        row(
            id="QA/clips/b.wav#1",
            audio=b,
            task="QA",
            text="no",
            question="Is it sunny?",
            source="salmonn",
            duration=0.05,
        ),
        row(
            id="QA/clips/b.wav#2",
            audio=b,
            task="QA",
            text="maybe",
            question="Is it day?",
            source="salmonn",
            duration=0.05,
        ),
        row(
            id="audiocaption/clips/b.wav",
            audio=b,
            task="audiocaption",
            text="rain on a roof",
            source="salmonn",
            duration=0.05,
        ),
    ]


def test_salmonn_test_list_with_and_without_text(salmonn_root: Path, tmp_path: Path) -> None:
    annotation = write_json(
        salmonn_root / "test.json",
        [
            {"testset_id": "test0000", "path": "LibriSpeech/a.flac", "task": "asr"},
            {
                "testset_id": "test0001",
                "path": str(salmonn_root / "clips" / "b.wav"),
                "task": "audiocaption_v2",
                "text": "rain",
            },
        ],
    )
    records = list(import_salmonn(annotation, source="hackathon_test", with_duration=False))
    assert records == [
        {
            "id": "test0000",
            "audio": str(salmonn_root / "LibriSpeech" / "a.flac"),
            "task": "asr",
            "text": "",
            "source": "hackathon_test",
        },
        {
            "id": "test0001",
            "audio": str(salmonn_root / "clips" / "b.wav"),
            "task": "audiocaption_v2",
            "text": "rain",
            "source": "hackathon_test",
        },
    ]


def test_salmonn_missing_text_in_training_entry(salmonn_root: Path) -> None:
    annotation = write_json(
        salmonn_root / "train.json",
        {
            "annotation": [
                {"path": "clips/b.wav", "text": "x", "task": "asr"},
                {"path": "clips/b.wav", "task": "asr"},
            ]
        },
    )
    with pytest.raises(CorpusError, match=r"train\.json:annotation\[1\]: missing key 'text'"):
        list(import_salmonn(annotation))


def test_salmonn_missing_audio_names_the_entry(salmonn_root: Path) -> None:
    annotation = write_json(
        salmonn_root / "test.json",
        [{"testset_id": "test0000", "path": "gone.wav", "task": "asr"}],
    )
    with pytest.raises(CorpusError) as caught:
        list(import_salmonn(annotation))
    assert str(caught.value) == (
        f"{annotation}:[0]: audio file not found: {salmonn_root / 'gone.wav'}"
    )


def test_salmonn_duplicate_testset_id_is_refused_when_written(salmonn_root, tmp_path) -> None:
    annotation = write_json(
        salmonn_root / "test.json",
        [
            {"testset_id": "test0000", "path": "clips/b.wav", "task": "asr"},
            {"testset_id": "test0000", "path": "LibriSpeech/a.flac", "task": "asr"},
        ],
    )
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:2: refusing to write duplicate id"):
        write_manifest(import_salmonn(annotation), tmp_path / "manifest.jsonl")
    assert not (tmp_path / "manifest.jsonl").exists()


def test_salmonn_wrong_top_level(salmonn_root: Path) -> None:
    annotation = write_json(salmonn_root / "x.json", {"data": []})
    with pytest.raises(CorpusError, match=r'x\.json: expected \{"annotation": \[\.\.\.\]\}'):
        list(import_salmonn(annotation))
