"""The evaluation report: JSON for machines, Markdown and a PNG plot for people, and the CSV.

Every file is written to a temp file and renamed, so a crash never leaves a half report that
looks finished.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.evaluate.published import (
    AAC_SCORE_NOTE,
    DEVICE_TARGETS,
    PUBLISHED_DEVICE,
    PUBLISHED_RESULTS,
    PUBLISHED_SETS,
)

ASR_TASKS = ("asr",)
CAPTION_TASKS = ("audiocaption", "audiocaption_v2")


@dataclass
class SetResult:
    """One test set's scores; ``metrics`` maps a metric name to value, label and availability."""

    name: str
    task: str
    samples: int
    metrics: dict[str, dict]
    breakdown: dict[str, dict] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # the manifests' ``source`` values


@dataclass
class Timing:
    median: float
    p90: float


@dataclass
class EfficiencyResult:
    device: str
    warmup_runs: int
    timed_runs: int
    ttft_s: Timing
    tpot_s: Timing
    latency_s: Timing
    peak_memory_gb: float
    memory_kind: str  # "GPU max allocated" or "CPU peak RSS"


@dataclass
class EvaluationReport:
    recipe: str
    checkpoint: str
    sets: list[SetResult] = field(default_factory=list)
    efficiency: EfficiencyResult | None = None
    # Reference systems measured on the same clips and device as this run, e.g.
    # {"label": "Whisper tiny.en (same clips)", "asr_wer": 30.1}; headline keys, None = not run.
    anchors: list[dict] = field(default_factory=list)

    def headline(self) -> dict[str, float | None]:
        """The four numbers the published results give: ASR WER, AAC score, memory, latency."""
        asr = next((s for s in self.sets if s.task in ASR_TASKS and "wer" in s.metrics), None)
        aac = next(
            (s for s in self.sets if s.task in CAPTION_TASKS and "cider_d_x100" in s.metrics), None
        )
        eff = self.efficiency
        return {
            "asr_wer": asr.metrics["wer"]["value"] if asr else None,
            "aac_score": aac.metrics["cider_d_x100"]["value"] if aac else None,
            "memory_gb": eff.peak_memory_gb if eff else None,
            "latency_s": eff.latency_s.median if eff else None,
        }


def comparable_to_published(report: EvaluationReport) -> dict[str, str | None]:
    """Per headline key: None when the published figure was measured like this run, else why not.

    WER and AAC compare only on the published test sets (by source: LibriSpeech, AudioCaps);
    latency and memory only on a GPU. A synthetic CPU run beside GPU figures would read as a
    result it is not."""
    reasons: dict[str, str | None] = {}
    for key, tasks in (("asr_wer", ASR_TASKS), ("aac_score", CAPTION_TASKS)):
        sets = [s for s in report.sets if s.task in tasks]
        wanted = PUBLISHED_SETS[key]
        seen = sorted({src for s in sets for src in s.sources})
        reasons[key] = (None if sets and seen == [wanted] else
                        f"evaluated on {', '.join(seen) or 'no such set'}, published on {wanted}")
    eff = report.efficiency
    for key in ("memory_gb", "latency_s"):
        reasons[key] = (None if eff and eff.device.startswith(PUBLISHED_DEVICE) else
                        f"measured on {eff.device if eff else 'no device'}, published on a GPU")
    return reasons


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def report_to_json(report: EvaluationReport) -> dict:
    data = asdict(report)
    data["headline"] = report.headline()
    data["published"] = PUBLISHED_RESULTS
    data["published_comparable"] = comparable_to_published(report)
    data["device_targets"] = DEVICE_TARGETS
    data["notes"] = [AAC_SCORE_NOTE]
    return data


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report_to_markdown(report: EvaluationReport) -> str:
    lines = [f"# Evaluation: {report.recipe}", "", f"Checkpoint: `{report.checkpoint}`", ""]
    for result in report.sets:
        lines += [f"## {result.name} ({result.task}, {result.samples} samples)", "",
                  "| metric | value | what it is |", "|---|---|---|"]
        for name, metric in result.metrics.items():
            value = _fmt(metric["value"]) if metric["value"] is not None else (
                f"unavailable: {metric.get('unavailable_reason')}"
            )
            lines.append(f"| {name} | {value} | {metric.get('label', '')} |")
        if result.breakdown:
            lines += ["", "| source | WER % | words |", "|---|---|---|"]
            for source, rate in result.breakdown.items():
                lines.append(f"| {source} | {_fmt(rate['rate'])} | {rate['reference_units']} |")
        lines.append("")
    eff = report.efficiency
    if eff:
        lines += [
            f"## Efficiency ({eff.device}; {eff.warmup_runs} warm-up, {eff.timed_runs} timed runs)",
            "", "| measure | median | p90 | device target |", "|---|---|---|---|",
            f"| TTFT (s) | {_fmt(eff.ttft_s.median, 4)} | {_fmt(eff.ttft_s.p90, 4)} | "
            f"{DEVICE_TARGETS['ttft_s']} |",
            f"| TPOT (s) | {_fmt(eff.tpot_s.median, 4)} | {_fmt(eff.tpot_s.p90, 4)} | "
            f"{DEVICE_TARGETS['tpot_s']} |",
            f"| latency = TTFT + TPOT (s) | {_fmt(eff.latency_s.median, 4)} | "
            f"{_fmt(eff.latency_s.p90, 4)} | |",
            f"| peak memory (GB, {eff.memory_kind}) | {_fmt(eff.peak_memory_gb, 3)} | | "
            f"{DEVICE_TARGETS['memory_gb']} |",
            "",
        ]
    head = report.headline()
    keys = ("asr_wer", "aac_score", "memory_gb", "latency_s")
    digits = {"asr_wer": 2, "aac_score": 2, "memory_gb": 3, "latency_s": 4}
    reasons = comparable_to_published(report)
    comparable = [k for k in keys if reasons[k] is None]
    lines += ["## Against like-for-like references", "",
              "| system | ASR WER % | AAC score | memory GB | latency s |", "|---|---|---|---|---|"]
    for entry in PUBLISHED_RESULTS.values():
        if comparable:
            lines.append(f"| {entry['label']} | " + " | ".join(
                str(entry[k]) if k in comparable else "not comparable" for k in keys) + " |")
    for anchor in report.anchors:
        lines.append(f"| {anchor['label']} | " + " | ".join(
            _fmt(anchor.get(k), digits[k]) for k in keys) + " |")
    lines.append("| this run | " + " | ".join(_fmt(head[k], digits[k]) for k in keys) + " |")
    lines.append("")
    for key in keys:
        if reasons[key]:
            lines.append(f"- published {key} left out: {reasons[key]}")
    lines += ["", f"AAC score here is CIDEr-D x 100; {AAC_SCORE_NOTE}.", ""]
    return "\n".join(lines)


def plot_png(report: EvaluationReport) -> bytes:
    """Four panels: this run next to the published systems, device targets as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = report.headline()
    reasons = comparable_to_published(report)
    panels = [
        ("asr_wer", "ASR WER % (lower is better)", None),
        ("aac_score", "AAC: CIDEr-D x 100 (higher is better)", None),
        ("memory_gb", "peak memory GB", DEVICE_TARGETS["memory_gb"]),
        ("latency_s", "latency s (TTFT + TPOT)", None),
    ]
    figure, axes = plt.subplots(1, 4, figsize=(16, 4))
    for axis, (key, title, target) in zip(axes, panels, strict=True):
        # Published bars only where measured like this run; anchors (same clips) always.
        others = [(e["label"].replace(" (published)", "\n(published)"), e[key], "#9aa5b1")
                  for e in PUBLISHED_RESULTS.values() if reasons[key] is None]
        others += [(a["label"].replace(" (", "\n("), a.get(key), "#f0ad4e")
                   for a in report.anchors if a.get(key) is not None]
        systems = [label for label, _, _ in others] + ["this run"]
        values = [value for _, value, _ in others] + [head[key]]
        colors = [color for _, _, color in others] + ["#2f6fdf"]
        heights = [v if v is not None else 0.0 for v in values]
        bars = axis.bar(range(len(values)), heights, color=colors)
        for bar, value in zip(bars, values, strict=True):
            axis.annotate("n/a" if value is None else f"{value:.3g}",
                          (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                          ha="center", va="bottom", fontsize=9)
        if target is not None:
            axis.axhline(target, linestyle="--", color="#d9534f", label=f"device target {target}")
            axis.legend(fontsize=8)
        axis.set_xticks(range(len(values)), systems, fontsize=8)
        axis.set_title(title, fontsize=10)
        if reasons[key]:
            axis.set_xlabel(f"published figure left out:\n{reasons[key]}", fontsize=7)
    figure.suptitle(f"{report.recipe}: this run vs like-for-like references", fontsize=11)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def write_report(report: EvaluationReport, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "report.png"}
    _write_atomic(paths["json"], json.dumps(report_to_json(report), indent=2).encode())
    _write_atomic(paths["markdown"], report_to_markdown(report).encode())
    _write_atomic(paths["plot"], plot_png(report))
    return paths


def write_submission_csv(rows: Iterable[tuple[str, str]], path: str | Path) -> int:
    """The hackathon's submission format: a header ``testset_id,text`` then one row per clip."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["testset_id", "text"])
    count = 0
    for testset_id, text in rows:
        writer.writerow([testset_id, text])
        count += 1
    _write_atomic(Path(path), buffer.getvalue().encode())
    return count
