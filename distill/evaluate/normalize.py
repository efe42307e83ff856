"""Whisper's English text normaliser, with the spelling map transformers does not ship.

Why: the evaluation protocol (docs/reference.md §3) runs both hypothesis and reference through
Whisper's ``EnglishTextNormalizer`` before WER. transformers ships the class but not its
British-to-American spelling map (``english.json``); the ``whisper-normalizer`` package carries
that map, so we hand it to transformers' class. Without the map, "colour" vs "color" would count
as an error that the published numbers do not count.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def english_spelling_map() -> dict[str, str]:
    source = resources.files("whisper_normalizer") / "normalizers" / "english.json"
    return json.loads(source.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def english_normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(english_spelling_map())


def normalize_english(text: str) -> str:
    """Lower-cased, spelled-out-number-aware, punctuation-free text as Whisper's scorer sees it."""
    return english_normalizer()(text)
