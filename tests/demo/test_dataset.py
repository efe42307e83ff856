"""The demo data set: valid manifests, disjoint splits, stable ids, all-or-nothing builds."""

import json

import pytest
import soundfile as sf

from distill.data.manifest import load_manifest
from distill.demo import dataset
from distill.demo.dataset import BUILD_FILE, DemoSizes, build_demo_data, is_built, sentences

SMALL = DemoSizes(speech_train=4, speech_test=2, sounds_train=4, sounds_test=2)
NAMES = ("speech_train", "speech_test", "sounds_train", "sounds_test")


def rows(root, name):
    return [json.loads(line) for line in (root / f"{name}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_demo_data(tmp_path_factory.mktemp("demo") / "data", SMALL)


def test_manifests_load_and_every_clip_is_16khz_mono(built):
    for name, count in zip(NAMES, (4, 2, 4, 2), strict=True):
        records = load_manifest(built / f"{name}.jsonl")
        assert len(records) == count
        for record in records:
            info = sf.info(record["audio"])
            assert (info.samplerate, info.channels) == (16000, 1)
            assert info.duration == pytest.approx(record["duration"], abs=1e-3)


def test_tasks_texts_and_references(built):
    assert {r["task"] for r in rows(built, "speech_train")} == {"asr"}
    assert {r["task"] for r in rows(built, "sounds_test")} == {"audiocaption"}
    for record in rows(built, "sounds_test"):
        assert record["references"][0] == record["text"] and len(record["references"]) == 3
    assert all("references" not in r for r in rows(built, "sounds_train"))


def test_splits_are_disjoint():
    texts = list(sentences())
    assert len(texts) == len(set(texts)) == 6000
    train, test = dataset._split_sentences(DemoSizes(speech_train=500, speech_test=100))
    assert not set(train) & set(test)


def test_a_clip_id_names_the_same_content_whatever_the_sizes(built, tmp_path):
    bigger = build_demo_data(tmp_path / "data", DemoSizes(speech_train=6, speech_test=3,
                                                          sounds_train=5, sounds_test=3))
    for name in NAMES:
        small = {r["id"]: r for r in rows(built, name)}
        for record in rows(bigger, name):
            if record["id"] in small:
                assert record["text"] == small[record["id"]]["text"]
                same = (bigger / record["audio"]).read_bytes() == (built / record["audio"]).read_bytes()
                assert same, record["id"]


def test_a_finished_build_is_reused_and_another_size_rebuilds(built):
    assert is_built(built, SMALL) and not is_built(built, DemoSizes())
    stamp = (built / BUILD_FILE).stat().st_mtime_ns
    assert build_demo_data(built, SMALL) == built
    assert (built / BUILD_FILE).stat().st_mtime_ns == stamp


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    # Fault injection: the sound synthesiser fails half way through the build.
    def broken(seed):
        raise RuntimeError("synthesiser crashed")

    monkeypatch.setattr(dataset, "make_sound", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        build_demo_data(tmp_path / "data", SMALL)
    assert list(tmp_path.iterdir()) == []
