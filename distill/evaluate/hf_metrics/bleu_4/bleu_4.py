"""`evaluate.load("distill/evaluate/hf_metrics/bleu_4")`: the toolkit's bleu_4 (see distill.evaluate.metrics)."""

from distill.evaluate import hf_metric


class Bleu4(hf_metric.ToolkitMetric):
    metric_name = "bleu_4"
