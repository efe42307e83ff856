"""``distill evaluate``: generate over every test manifest of the recipe, score, report.

The student is generated batch by batch with the recipe's decoding settings; hypotheses are kept
next to the report (``hypotheses/<set>.jsonl``) so a person can read what the model said, and a
submission CSV (``testset_id,text``) is written per set when the recipe asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from distill.config import Recipe
from distill.errors import DistillError
from distill.evaluate.asr import character_error_rate, error_rates_by_group, word_error_rate
from distill.evaluate.captions import caption_scores
from distill.evaluate.efficiency import measure_efficiency
from distill.evaluate.report import (
    EvaluationReport,
    SetResult,
    write_report,
    write_submission_csv,
)


class EvaluationError(DistillError, ValueError):
    """A checkpoint, manifest or recipe that cannot be evaluated, with what to fix."""


def check_checkpoint(checkpoint: str | Path) -> Path:
    from students.checkpoint import CONFIG_FILE

    path = Path(checkpoint)
    if not path.is_dir():
        raise EvaluationError(f"checkpoint {path}: no such directory")
    if (path / "student" / CONFIG_FILE).is_file():  # a trainer checkpoint (e.g. runs/x/best)
        path = path / "student"
    if not (path / CONFIG_FILE).is_file():
        raise EvaluationError(
            f"checkpoint {path}: not a student checkpoint (no {CONFIG_FILE}; expected a folder "
            "written by SalmonnStudent.save_pretrained, e.g. runs/<run>/student/best)"
        )
    return path


def _instruction(student, eval_set, record) -> str:
    return student.processor.instruction_for({**record, "task": eval_set.task},
                                             override=eval_set.instruction)


def generate_for_set(student, recipe: Recipe, eval_set, *, limit: int | None = None):
    """(records, hypotheses) for one test set, in manifest order."""
    from distill.data.audio import AudioLoader
    from distill.data.manifest import ManifestError, load_manifest

    try:
        dataset = load_manifest(eval_set.manifest)
    except (ManifestError, FileNotFoundError) as err:
        raise EvaluationError(f"eval set {eval_set.name!r}: {err}") from None
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    loader = AudioLoader.from_config(recipe.data.audio)
    size = recipe.eval.batch_size
    records, hypotheses = [], []
    for start in tqdm(range(0, len(dataset), size), desc=f"evaluate {eval_set.name}", unit="batch"):
        rows = dataset[start : start + size]
        batch_records = [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(),
                                                                                 strict=True)]
        clips = [loader.load(r["audio"]) for r in batch_records]
        kept = [(r, c) for r, c in zip(batch_records, clips, strict=True) if c is not None]
        if not kept:
            continue
        batch = student.processor([c.waveform for _, c in kept],
                                  [_instruction(student, eval_set, r) for r, _ in kept])
        ids = student.generate(batch, recipe.eval.decoding)
        records += [r for r, _ in kept]
        hypotheses += student.processor.decode(ids)
    if loader.stats.skipped:
        print(f"{eval_set.name}: {loader.summary()}")
    return records, hypotheses


def score_set(eval_set, records: list[dict], hypotheses: list[str]) -> SetResult:
    metrics: dict[str, dict] = {}
    breakdown: dict[str, dict] = {}
    references = [r["text"] for r in records]
    if "wer" in eval_set.metrics:
        wer = word_error_rate(references, hypotheses)
        metrics["wer"] = {"value": wer.rate, "label": "corpus WER % (Whisper English normaliser)",
                          "unavailable_reason": wer.unavailable_reason,
                          **{k: v for k, v in wer.as_dict().items() if k != "rate"}}
        groups = [r.get("source") or "unknown" for r in records]
        breakdown = {k: v.as_dict() for k, v in
                     error_rates_by_group(references, hypotheses, groups).items()}
    if "cer" in eval_set.metrics:
        cer = character_error_rate(references, hypotheses)
        metrics["cer"] = {"value": cer.rate, "label": "corpus CER % (Whisper English normaliser)",
                          "unavailable_reason": cer.unavailable_reason}
    caption_metrics = [m for m in eval_set.metrics if m not in ("wer", "cer")]
    if caption_metrics:
        refs = [r.get("references") or [r["text"]] for r in records]
        for score in caption_scores(hypotheses, refs, caption_metrics):
            metrics[score.name] = score.as_dict()
    sources = sorted({r.get("source") or "unknown" for r in records})
    return SetResult(eval_set.name, eval_set.task, len(records), metrics, breakdown, sources)


def _write_hypotheses(path: Path, records: list[dict], hypotheses: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record, text in zip(records, hypotheses, strict=True):
            handle.write(json.dumps({"id": record["id"], "reference": record["text"],
                                     "hypothesis": text}) + "\n")
    tmp.replace(path)


def efficiency_clip(recipe: Recipe, seconds: float) -> torch.Tensor:
    """The fixed clip: the first ASR test clip, cut or zero-padded to ``seconds``."""
    from distill.data.audio import load_audio
    from distill.data.manifest import load_manifest

    rate = recipe.data.audio.sample_rate
    length = int(seconds * rate)
    for eval_set in recipe.eval.sets:
        if eval_set.task == recipe.eval.efficiency.task:
            first = load_manifest(eval_set.manifest).select(range(1))[0]
            wave = load_audio(first["audio"], sample_rate=rate, max_seconds=seconds).waveform
            return torch.nn.functional.pad(wave, (0, max(0, length - wave.numel())))[:length]
    generator = torch.Generator().manual_seed(0)
    return 0.05 * torch.randn(length, generator=generator)  # no such set: a fixed noise clip


def evaluate(recipe: Recipe, checkpoint: str | Path, *, output_dir: str | Path | None = None,
             limit: int | None = None, device: str | None = None,
             efficiency: bool | None = None) -> tuple[EvaluationReport, dict[str, Path]]:
    from students.model import SalmonnStudent

    checkpoint = check_checkpoint(checkpoint)
    if not recipe.eval.sets:
        raise EvaluationError(f"recipe {recipe.name!r} has no eval.sets to evaluate")
    out = Path(output_dir or recipe.eval.output_dir)
    student = SalmonnStudent.from_pretrained(checkpoint, device=device).eval()
    report = EvaluationReport(recipe=recipe.name, checkpoint=str(checkpoint))
    for eval_set in recipe.eval.sets:
        records, hypotheses = generate_for_set(student, recipe, eval_set, limit=limit)
        _write_hypotheses(out / "hypotheses" / f"{eval_set.name}.jsonl", records, hypotheses)
        if recipe.eval.submission_csv:
            write_submission_csv(((r["id"], h) for r, h in zip(records, hypotheses, strict=True)),
                                 out / "submissions" / f"{eval_set.name}.csv")
        try:
            report.sets.append(score_set(eval_set, records, hypotheses))
        except Exception as err:
            # A scoring bug must not cost the sets already scored: write what exists, then fail.
            report.sets.append(SetResult(eval_set.name, eval_set.task, len(records), {"error": {
                "value": None, "label": "scoring failed",
                "unavailable_reason": f"{type(err).__name__}: {err}"}}))
            write_report(report, out)
            raise
    eff_cfg = recipe.eval.efficiency
    if eff_cfg.enabled if efficiency is None else efficiency:
        instruction = student.processor.instruction(eff_cfg.task)
        report.efficiency = measure_efficiency(
            student, efficiency_clip(recipe, eff_cfg.clip_seconds), instruction,
            warmup_runs=eff_cfg.warmup_runs, timed_runs=eff_cfg.timed_runs)
    paths = write_report(report, out)
    _update_model_card(checkpoint, report)
    return report, paths


def _update_model_card(checkpoint: Path, report: EvaluationReport) -> None:
    """The checkpoint's model card shows its last evaluation (students.card)."""
    from distill.evaluate.report import report_to_json
    from students.card import CONTEXT_FILE, refresh_card

    if not (checkpoint / CONTEXT_FILE).is_file():
        return
    try:
        refresh_card(checkpoint, report=report_to_json(report))
    except OSError as err:  # a read-only checkpoint keeps its card; the report is written
        print(f"note: model card of {checkpoint} not updated: {err}")
