"""`evaluate.load("distill/evaluate/hf_metrics/wer")`: the toolkit's wer (see distill.evaluate.metrics)."""

from distill.evaluate import hf_metric


class Wer(hf_metric.ToolkitMetric):
    metric_name = "wer"
