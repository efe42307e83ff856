"""`evaluate.load("distill/evaluate/hf_metrics/cider_d")`: the toolkit's cider_d (see distill.evaluate.metrics)."""

from distill.evaluate import hf_metric


class CiderD(hf_metric.ToolkitMetric):
    metric_name = "cider_d"
