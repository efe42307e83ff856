"""`evaluate.load("distill/evaluate/hf_metrics/cer")`: the toolkit's cer (see distill.evaluate.metrics)."""

from distill.evaluate import hf_metric


class Cer(hf_metric.ToolkitMetric):
    metric_name = "cer"
