"""ASR scoring as the reference evaluator does it: cut at the end token, normalise, corpus WER.

Corpus WER = total edits / total reference words (not a mean of per-utterance rates), reported
in percent; CER likewise over characters. A per-source breakdown shows which corpus hurts.

An utterance whose reference normalises to nothing (only "uh", say) still counts: every word the
model says there is an insertion, and it adds no reference words. jiwer scores empty references
(jiwer >= 3.1). A set or group whose references are all empty has no defined rate: ``rate`` is
None and its edit counts are still given, never an exception that stops an evaluation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from distill.evaluate.normalize import normalize_english


@dataclass(frozen=True)
class ErrorRate:
    """Edit counts behind a rate, so rates of subsets can be summed exactly."""

    rate: float | None  # percent; None when there are no reference units (all references empty)
    substitutions: int
    deletions: int
    insertions: int
    reference_units: int  # words for WER, characters for CER
    utterances: int
    empty_references: int = 0  # utterances whose reference is empty after normalisation

    @property
    def unavailable_reason(self) -> str | None:
        """Why ``rate`` is None, in words for the report; None when it has a value."""
        if self.rate is not None:
            return None
        if not self.utterances:
            return "no utterances to score"
        return (
            f"every reference is empty after normalisation ({self.utterances} utterances, "
            f"{self.insertions} inserted units)"
        )

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

    hits = substitutions = deletions = insertions = 0
    if refs:
        process = jiwer.process_words if unit == "word" else jiwer.process_characters
        out = process(refs, hyps)
        hits, substitutions = out.hits, out.substitutions
        deletions, insertions = out.deletions, out.insertions
    units = hits + substitutions + deletions
    edits = substitutions + deletions + insertions
    return ErrorRate(
        rate=100.0 * edits / units if units else None,
        substitutions=substitutions,
        deletions=deletions,
        insertions=insertions,
        reference_units=units,
        utterances=len(refs),
        empty_references=sum(1 for r in refs if not r.strip()),
    )


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRate:
    """Corpus WER in percent, both sides through Whisper's English normaliser.

    Utterances whose reference normalises to nothing (e.g. only "uh") count: their hypothesis
    words are insertions. ``rate`` is None when no reference has a word.
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
