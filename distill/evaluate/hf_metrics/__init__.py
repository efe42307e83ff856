"""Hugging Face ``evaluate`` metric modules, one folder each: ``evaluate.load(<folder path>)``.

``METRIC_DIRS`` maps each metric name to its folder, for ``evaluate.load(str(METRIC_DIRS[name]))``.
"""

from pathlib import Path

METRIC_DIRS = {name: Path(__file__).parent / name
               for name in ("wer", "cer", "cider_d", "bleu_4", "rouge_l")}
