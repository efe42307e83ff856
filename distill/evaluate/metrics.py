"""The toolkit's metrics by name, as ``compute(predictions, references) -> {name: value, ...}``.

One definition of each metric for every entry point: ``distill evaluate`` scores with the same
public functions (``asr.word_error_rate``, ``asr.character_error_rate``,
``captions.caption_scores``) that these wrappers call, and the Hugging Face ``evaluate`` modules
in ``distill/evaluate/hf_metrics/`` call these wrappers. Nothing is recomputed here.

Units: WER and CER in percent (corpus rates, Whisper English normaliser on both sides);
caption metrics as aac-metrics gives them (CIDEr-D on its 0-10 scale, plus ``cider_d_x100``).
"""

from __future__ import annotations

from collections.abc import Sequence

from distill.evaluate.asr import character_error_rate, word_error_rate
from distill.evaluate.captions import caption_scores

ASR_METRICS = ("wer", "cer")
CAPTION_METRICS = ("cider_d", "bleu_4", "rouge_l")


def _reference_lists(references: Sequence) -> list[list[str]]:
    """One list of reference captions per prediction (a single string counts as a list of one)."""
    return [[refs] if isinstance(refs, str) else list(refs) for refs in references]


def _single_references(references: Sequence, name: str) -> list[str]:
    out = []
    for index, refs in enumerate(references):
        if isinstance(refs, str):
            out.append(refs)
        elif len(refs) == 1:
            out.append(refs[0])
        else:
            raise ValueError(f"references[{index}]: {name} takes one reference transcript per "
                             f"prediction, got {len(refs)}")
    return out


def compute_metric(name: str, predictions: Sequence[str], references: Sequence) -> dict:
    """``{name: value, ...}`` for one metric; ``references``: a string or a list of strings per
    prediction (ASR metrics take exactly one)."""
    if name in ASR_METRICS:
        function = word_error_rate if name == "wer" else character_error_rate
        rate = function(_single_references(references, name), list(predictions))
        counts = rate.as_dict()
        return {name: counts.pop("rate"), **counts}
    if name in CAPTION_METRICS:
        scores = caption_scores(list(predictions), _reference_lists(references), [name])
        return {score.name: score.value for score in scores}
    raise ValueError(f"unknown metric {name!r}: expected one of "
                     f"{', '.join(ASR_METRICS + CAPTION_METRICS)}")
