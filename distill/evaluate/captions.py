"""Audio-caption metrics through aac-metrics, each labelled with exactly what it computes.

Why so careful with names: the hackathon evaluator called its number "SPIDEr", but version 1.0
computed CIDEr-D x 100 (whitespace tokens) while version 1.1 uses aac-metrics' SPIDEr =
(CIDEr-D + SPICE) / 2, which needs Java and the SPICE jar. We report every variant we can compute
under its real name, and a metric we cannot compute as unavailable with the reason, never as 0.

Tokenisation: the pure-Python metrics here see lower-cased text with punctuation removed, split on
whitespace (aac-metrics' Java PTB tokenizer is not used, so numbers can differ slightly from a
Java-preprocessed run; the label says so).

Small or odd sets never end the evaluation: a metric that cannot be computed on them is reported
unavailable with the reason (CIDEr-D needs at least 2 clips: aac-metrics refuses fewer, since its
IDF weights come from the set's own references). A reference caption that is empty after
preprocessing is ignored and counted (ROUGE-L would divide by its zero length), and a clip left
without references is left out and counted; manifests already refuse empty references.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TOKENIZATION = "lower-cased, punctuation removed, whitespace tokens"
_PUNCTUATION = re.compile(r"[^\w\s']|_")


@dataclass(frozen=True)
class CaptionScore:
    name: str
    label: str  # what exactly was computed
    value: float | None  # None when unavailable
    unavailable_reason: str | None = None
    note: str | None = None  # e.g. empty references ignored

    def as_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "value": self.value,
                "unavailable_reason": self.unavailable_reason, "note": self.note}


def preprocess_caption(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _check_inputs(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(
            f"{len(candidates)} candidates but {len(references)} reference lists: expected one each"
        )
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{index}]: expected a non-empty list of reference captions")


@dataclass(frozen=True)
class _Prepared:
    """Preprocessed candidates and references, and what was left out to get them."""

    cands: list[str]
    refs: list[list[str]]
    empty_references: int  # empty reference captions ignored
    clips_without_references: int  # clips left out: every reference was empty

    @property
    def note(self) -> str | None:
        if not self.empty_references:
            return None
        return (
            f"{self.empty_references} empty reference caption(s) ignored; "
            f"{self.clips_without_references} clip(s) left without references not scored"
        )


def _prepare(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> _Prepared:
    _check_inputs(candidates, references)
    cands, refs, empty, dropped = [], [], 0, 0
    for candidate, captions in zip(candidates, references, strict=True):
        kept = [text for text in map(preprocess_caption, captions) if text]
        empty += len(captions) - len(kept)
        if not kept:
            dropped += 1
            continue
        cands.append(preprocess_caption(candidate))
        refs.append(kept)
    return _Prepared(cands, refs, empty, dropped)


# The fewest clips each metric can be computed on (aac-metrics' CIDEr-D refuses fewer than 2).
_MIN_CLIPS = {"cider_d": 2, "spider": 2}


def _too_few_clips(name: str, clips: int) -> str | None:
    needed = _MIN_CLIPS.get(name, 1)
    if clips >= needed:
        return None
    if name in ("cider_d", "spider"):
        return (
            f"CIDEr-D needs at least {needed} clips (its IDF weights come from the set's "
            f"references); {clips} to score"
        )
    return f"no clip to score ({clips})"


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (n=4, sigma=6, scale 10) as aac-metrics computes it.

    Raises ValueError (naming the count) for fewer than 2 scorable clips."""
    prepared = _prepare(candidates, references)
    reason = _too_few_clips("cider_d", len(prepared.cands))
    if reason:
        raise ValueError(reason)
    return _cider_d(prepared.cands, prepared.refs)


def _cider_d(cands: list[str], refs: list[list[str]]) -> float:
    from aac_metrics.functional.cider_d import cider_d as aac_cider_d

    corpus, _ = aac_cider_d(cands, refs, n=4, sigma=6.0, scale=10.0)
    return float(corpus["cider_d"])


def _bleu_4(cands: list[str], refs: list[list[str]]) -> float:
    from aac_metrics.functional.bleu import bleu_4

    corpus, _ = bleu_4(cands, refs)
    return float(corpus["bleu_4"])


def _rouge_l(cands: list[str], refs: list[list[str]]) -> float:
    from aac_metrics.functional.rouge_l import rouge_l

    corpus, _ = rouge_l(cands, refs)
    return float(corpus["rouge_l"])


def _java_metric_unavailable(jar_name: str) -> str | None:
    """Why a Java-based aac-metrics metric cannot run here, or None if it can."""
    if shutil.which("java") is None:
        return "needs Java (a `java` executable on PATH), none found"
    from aac_metrics.utils.globals import _get_cache_path

    cache = Path(_get_cache_path())  # honours aac_metrics.set_default_cache_path
    if not any(cache.rglob(jar_name)):
        return (
            f"needs {jar_name} in {cache}; run `aac-metrics-download` once on a machine with "
            "internet access"
        )
    return None


def _java_metric(name: str, cands: list[str], refs: list[list[str]]) -> float:
    from aac_metrics.functional import meteor, spice, spider

    function = {"meteor": meteor, "spice": spice, "spider": spider}[name]
    corpus, _ = function(cands, refs)
    return float(corpus[name])


_JARS = {"meteor": "meteor-1.5.jar", "spice": "spice-1.0.jar", "spider": "spice-1.0.jar"}
_LABELS = {
    "cider_d": f"CIDEr-D (aac-metrics, n=4, sigma=6, scale 10; {TOKENIZATION})",
    "cider_d_x100": "CIDEr-D x 100: what hackathon evaluator v1.0 reported as 'SPIDEr'",
    "bleu_4": f"BLEU-4 (aac-metrics; {TOKENIZATION})",
    "rouge_l": f"ROUGE-L (aac-metrics; {TOKENIZATION})",
    "meteor": "METEOR 1.5 (aac-metrics, Java)",
    "spice": "SPICE (aac-metrics, Java)",
    "spider": "SPIDEr = (CIDEr-D + SPICE) / 2 (aac-metrics, Java): evaluator v1.1",
}


def caption_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], metrics: Sequence[str]
) -> list[CaptionScore]:
    """Every requested metric (cider_d also gives its x100 hackathon variant); a metric that
    cannot be computed on this set is unavailable with its reason, never an exception."""
    unknown = [name for name in metrics if name not in _LABELS or name == "cider_d_x100"]
    if unknown:
        raise ValueError(
            f"unknown caption metric {unknown[0]!r}: expected one of "
            f"{sorted(set(_LABELS) - {'cider_d_x100'})}"
        )
    prepared = _prepare(candidates, references)
    cands, refs = prepared.cands, prepared.refs
    scores: list[CaptionScore] = []
    for name in metrics:
        reason = _too_few_clips(name, len(cands))
        if reason is None and name in _JARS:
            reason = _java_metric_unavailable(_JARS[name])
        value = None
        if reason is None:
            if name == "cider_d":
                value = _cider_d(cands, refs)
            elif name == "bleu_4":
                value = _bleu_4(cands, refs)
            elif name == "rouge_l":
                value = _rouge_l(cands, refs)
            else:
                value = _java_metric(name, cands, refs)
        scores.append(CaptionScore(name, _LABELS[name], value, reason, prepared.note))
        if name == "cider_d":
            scaled = None if value is None else 100.0 * value
            scores.append(
                CaptionScore("cider_d_x100", _LABELS["cider_d_x100"], scaled, reason, prepared.note)
            )
    return scores
