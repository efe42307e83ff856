"""ASR scoring as the reference evaluator does it: cut at the end token, normalise, corpus WER.

Corpus WER = total edits / total reference words (not a mean of per-utterance rates), reported
in percent; CER likewise over characters. A per-source breakdown shows which corpus hurts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from distill.evaluate.normalize import normalize_english


@dataclass(frozen=True)
class ErrorRate:
    """Edit counts behind a rate, so rates of subsets can be summed exactly."""

    rate: float  # percent
    substitutions: int
    deletions: int
    insertions: int
    reference_units: int  # words for WER, characters for CER
    utterances: int

    def as_dict(self) -> dict:
        return asdict(self)


def cut_at_end(text: str, end_tokens: Iterable[str]) -> str:
    """The hypothesis up to the first end token (models sometimes babble past it)."""
    cut = len(text)
    for token in end_tokens:
        if token and (found := text.find(token)) != -1:
            cut = min(cut, found)
    return text[:cut]


def _prepare(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} references but {len(hypotheses)} hypotheses: expected one each"
        )
    refs = [normalize_english(r) for r in references]
    hyps = [normalize_english(h.lower()) for h in hypotheses]
    return refs, hyps


def _score(refs: list[str], hyps: list[str], unit: str) -> ErrorRate:
    import jiwer

    kept = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    if not kept:
        raise ValueError("every reference is empty after normalisation: nothing to score")
    refs, hyps = [r for r, _ in kept], [h for _, h in kept]
    out = jiwer.process_words(refs, hyps) if unit == "word" else jiwer.process_characters(refs, hyps)
    units = out.hits + out.substitutions + out.deletions
    edits = out.substitutions + out.deletions + out.insertions
    return ErrorRate(
        rate=100.0 * edits / units,
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
        reference_units=units,
        utterances=len(refs),
    )


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRate:
    """Corpus WER in percent, both sides through Whisper's English normaliser.

    Utterances whose reference normalises to nothing (e.g. only "uh") are left out, as jiwer
    cannot score an empty reference.
    """
    return _score(*_prepare(references, hypotheses), unit="word")


def character_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRate:
    return _score(*_prepare(references, hypotheses), unit="char")


def error_rates_by_group(
    references: Sequence[str], hypotheses: Sequence[str], groups: Sequence[str]
) -> dict[str, ErrorRate]:
    """WER per group (e.g. the manifest's ``source``), each a corpus WER of its own."""
    if not len(groups) == len(references) == len(hypotheses):
        raise ValueError("references, hypotheses and groups must have the same length")
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group or "unknown"].append(index)
    return {
        group: word_error_rate([references[i] for i in idx], [hypotheses[i] for i in idx])
        for group, idx in sorted(members.items())
    }
