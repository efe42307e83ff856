"""The demo's data set: spoken sentences (ASR) and synthetic sound events (captioning).

Built offline and deterministically into ``<root>/{speech,sounds}/`` with the manifests
``speech_{train,test}.jsonl`` and ``sounds_{train,test}.jsonl`` that ``recipes/demo.yaml``
names. Sentences come from a small grammar (so any number of distinct, natural sentences exist
without shipping a corpus) and are spoken by several eSpeak NG voices; test sentences and test
sound seeds never occur in training, and each clip id always names the same content.

The build is all or nothing: it happens in a staging folder renamed into place, and a finished
folder carries ``build.json`` with the sizes, so a rerun with the same sizes reuses it and
another size rebuilds it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from distill.data.manifest import write_manifest
from distill.demo.sounds import make_sound
from distill.demo.speech import Voice, speak_all

BUILD_FILE = "build.json"
BUILD_VERSION = 2  # 2: breathy voices seeded (reproducible)
SAMPLE_RATE = 16000

VOICES = (
    Voice("en-us", 150, 50), Voice("en", 165, 45), Voice("en-us+f3", 155, 60),
    Voice("en-gb-scotland", 160, 40), Voice("en-us+m3", 175, 35), Voice("en+f2", 145, 55),
)

SUBJECTS = ("the old man", "a small bird", "my sister", "the black dog", "a young girl",
            "the tired farmer", "our teacher", "the red fox", "a tall woman", "the little boy")
VERBS = ("walks", "runs", "sings", "waits", "sleeps", "reads", "works", "plays", "sits", "looks")
PLACES = ("near the river", "in the garden", "by the window", "under the bridge",
          "at the station", "on the hill", "behind the house", "in the kitchen",
          "across the street", "along the road")
TIMES = ("every morning", "at night", "after lunch", "in the rain", "all day")


@dataclass(frozen=True)
class DemoSizes:
    """How many clips of each kind to build."""

    speech_train: int = 96
    speech_test: int = 16
    sounds_train: int = 96
    sounds_test: int = 16


def sentences() -> Iterator[str]:
    """Every sentence of the grammar once, in a fixed shuffled order (1,000 without a time
    phrase, then 5,000 with one)."""
    plain = [f"{s} {v} {p}" for s, v, p in itertools.product(SUBJECTS, VERBS, PLACES)]
    timed = [f"{s} {v} {p} {t}" for s, v, p, t in
             itertools.product(SUBJECTS, VERBS, PLACES, TIMES)]
    rng = np.random.default_rng(1234)
    for group in (plain, timed):
        yield from (group[i] for i in rng.permutation(len(group)))


TEST_SENTENCES = 100  # the first sentences of the order are reserved for the test split


def _split_sentences(sizes: DemoSizes) -> tuple[list[str], list[str]]:
    """Train and test sentences. Clip ``i`` of a split is the same sentence (and voice) whatever
    the sizes, so a cache keyed by clip id stays right when the sizes change."""
    if sizes.speech_test > TEST_SENTENCES:
        raise ValueError(f"at most {TEST_SENTENCES} test sentences (asked for {sizes.speech_test})")
    pool = list(itertools.islice(sentences(), TEST_SENTENCES + sizes.speech_train))
    if len(pool) < TEST_SENTENCES + sizes.speech_train:
        raise ValueError(f"the demo grammar has {len(pool) - TEST_SENTENCES} training sentences; "
                         f"{sizes.speech_train} were asked for")
    return pool[TEST_SENTENCES:], pool[: sizes.speech_test]


def _write(path: Path, samples: np.ndarray) -> float:
    sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
    return round(len(samples) / SAMPLE_RATE, 3)


def _speech(folder: Path, split: str, texts: list[str]) -> list[dict]:
    voices = [VOICES[i % len(VOICES)] for i in range(len(texts))]
    waves = speak_all(list(zip(texts, voices, strict=True)))
    records = []
    for i, (text, voice, wave) in enumerate(zip(texts, voices, waves, strict=True)):
        clip_id = f"speech_{split}_{i:04d}"
        audio = Path("speech") / f"{clip_id}.wav"
        duration = _write(folder / audio, wave)
        records.append({"id": clip_id, "audio": audio.as_posix(), "task": "asr", "text": text,
                        "source": f"espeak:{voice.name}", "duration": duration})
    return records


def _sounds(folder: Path, split: str, count: int, seed_offset: int) -> list[dict]:
    records = []
    for i in range(count):
        clip = make_sound(seed_offset + i)
        clip_id = f"sounds_{split}_{i:04d}"
        audio = Path("sounds") / f"{clip_id}.wav"
        duration = _write(folder / audio, clip.waveform)
        record = {"id": clip_id, "audio": audio.as_posix(), "task": "audiocaption",
                  "text": clip.captions[0], "source": f"synthetic:{clip.kind}",
                  "duration": duration}
        if split == "test":
            record["references"] = list(clip.captions)
        records.append(record)
    return records


def is_built(root: Path, sizes: DemoSizes) -> bool:
    """True when ``root`` holds a finished build of exactly these sizes."""
    try:
        recorded = json.loads((Path(root) / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return False
    return recorded == {"version": BUILD_VERSION, **asdict(sizes)}


def build_demo_data(root: str | Path, sizes: DemoSizes = DemoSizes(),
                    progress: Callable[[int], None] | None = None) -> Path:
    """Synthesise the data set into ``root`` (reused when already built with these sizes).

    ``progress(n)`` is called after every n clips written, for a progress bar.
    """
    root = Path(root)
    if is_built(root, sizes):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        (staging / "speech").mkdir()
        (staging / "sounds").mkdir()
        train_texts, test_texts = _split_sentences(sizes)
        # Test sound seeds start far beyond any training seed, so no clip is in both splits.
        parts = {
            "speech_train": lambda: _speech(staging, "train", train_texts),
            "speech_test": lambda: _speech(staging, "test", test_texts),
            "sounds_train": lambda: _sounds(staging, "train", sizes.sounds_train, 0),
            "sounds_test": lambda: _sounds(staging, "test", sizes.sounds_test, 1_000_000),
        }
        for name, build in parts.items():
            records = build()
            write_manifest(records, staging / f"{name}.jsonl")
            if progress:
                progress(len(records))
        (staging / BUILD_FILE).write_text(json.dumps({"version": BUILD_VERSION, **asdict(sizes)}))
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
