"""Base of the toolkit's Hugging Face ``evaluate`` metric modules (``hf_metrics/<name>/``).

Why: people who use ``evaluate`` call ``evaluate.load(...).compute(predictions=...,
references=...)``; its Hub-hosted WER and CIDEr need the network and do not apply Whisper's
normaliser. Each module here is a two-line subclass naming a metric of ``distill.evaluate.metrics``,
so it returns exactly what ``distill evaluate`` reports, and loads offline from a local path.
"""

from __future__ import annotations

import datasets
import evaluate

from distill.evaluate.metrics import ASR_METRICS, compute_metric

_DESCRIPTIONS = {
    "wer": "Corpus word error rate in percent (total edits / total reference words), both sides "
           "through Whisper's English normaliser, as `distill evaluate` reports it.",
    "cer": "Corpus character error rate in percent, both sides through Whisper's English "
           "normaliser, as `distill evaluate` reports it.",
    "cider_d": "Corpus CIDEr-D (aac-metrics: n=4, sigma=6, scale 10) on lower-cased, "
               "punctuation-free whitespace tokens; also cider_d_x100.",
    "bleu_4": "Corpus BLEU-4 (aac-metrics) on lower-cased, punctuation-free whitespace tokens.",
    "rouge_l": "ROUGE-L (aac-metrics) on lower-cased, punctuation-free whitespace tokens.",
}

_INPUTS = """
Args:
    predictions: list of str, one hypothesis per sample.
    references: list of str (one reference per sample) or, for caption metrics, list of list
        of str (every reference caption of the sample).
Returns:
    dict: the metric's value under its name, plus the counts behind it (WER/CER) or its x100
    variant (CIDEr-D).
"""


class ToolkitMetric(evaluate.Metric):
    """An ``evaluate.Metric`` computing ``distill.evaluate.metrics.compute_metric(metric_name)``."""

    metric_name: str = ""

    def _info(self) -> evaluate.MetricInfo:
        one = datasets.Features({"predictions": datasets.Value("string"),
                                 "references": datasets.Value("string")})
        many = datasets.Features({"predictions": datasets.Value("string"),
                                  "references": datasets.Sequence(datasets.Value("string"))})
        return evaluate.MetricInfo(
            description=_DESCRIPTIONS[self.metric_name],
            citation="",
            inputs_description=_INPUTS,
            features=one if self.metric_name in ASR_METRICS else [many, one],
        )

    def _compute(self, predictions, references) -> dict:
        return compute_metric(self.metric_name, predictions, references)
