"""`evaluate.load("distill/evaluate/hf_metrics/rouge_l")`: the toolkit's rouge_l (see distill.evaluate.metrics)."""

from distill.evaluate import hf_metric


class RougeL(hf_metric.ToolkitMetric):
    metric_name = "rouge_l"
