"""Audio-caption metrics through aac-metrics, each labelled with exactly what it computes.

Why so careful with names: the hackathon evaluator called its number "SPIDEr", but version 1.0
computed CIDEr-D x 100 (whitespace tokens) while version 1.1 uses aac-metrics' SPIDEr =
(CIDEr-D + SPICE) / 2, which needs Java and the SPICE jar. We report every variant we can compute
under its real name, and a metric we cannot compute as unavailable with the reason, never as 0.

Tokenisation: the pure-Python metrics here see lower-cased text with punctuation removed, split on
whitespace (aac-metrics' Java PTB tokenizer is not used, so numbers can differ slightly from a
Java-preprocessed run; the label says so).
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

    def as_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "value": self.value,
                "unavailable_reason": self.unavailable_reason}


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


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (n=4, sigma=6, scale 10) as aac-metrics computes it."""
    from aac_metrics.functional.cider_d import cider_d as aac_cider_d

    _check_inputs(candidates, references)
    cands = [preprocess_caption(c) for c in candidates]
    refs = [[preprocess_caption(r) for r in rs] for rs in references]
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
    """Every requested metric (cider_d also gives its x100 hackathon variant)."""
    _check_inputs(candidates, references)
    cands = [preprocess_caption(c) for c in candidates]
    refs = [[preprocess_caption(r) for r in rs] for rs in references]
    scores: list[CaptionScore] = []
    for name in metrics:
        if name == "cider_d":
            value = cider_d(candidates, references)
            scores.append(CaptionScore("cider_d", _LABELS["cider_d"], value))
            scores.append(CaptionScore("cider_d_x100", _LABELS["cider_d_x100"], 100.0 * value))
        elif name == "bleu_4":
            scores.append(CaptionScore(name, _LABELS[name], _bleu_4(cands, refs)))
        elif name == "rouge_l":
            scores.append(CaptionScore(name, _LABELS[name], _rouge_l(cands, refs)))
        elif name in _JARS:
            reason = _java_metric_unavailable(_JARS[name])
            value = None if reason else _java_metric(name, cands, refs)
            scores.append(CaptionScore(name, _LABELS[name], value, reason))
        else:
            raise ValueError(f"unknown caption metric {name!r}: expected one of {sorted(_LABELS)}")
    return scores
