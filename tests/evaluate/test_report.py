"""Report files are produced, well formed, and say what they compare."""

import csv
import json

from distill.evaluate.report import (
    EfficiencyResult,
    EvaluationReport,
    SetResult,
    Timing,
    write_report,
    write_submission_csv,
)


def sample_report() -> EvaluationReport:
    return EvaluationReport(
        recipe="demo",
        checkpoint="runs/demo/student/best",
        sets=[
            SetResult("speech", "asr", 3, {"wer": {"value": 12.5, "label": "corpus WER %"}},
                      breakdown={"libri": {"rate": 12.5, "reference_units": 8}}),
            SetResult("sounds", "audiocaption", 2, {
                "cider_d": {"value": 0.31, "label": "CIDEr-D"},
                "cider_d_x100": {"value": 31.0, "label": "x100"},
                "spice": {"value": None, "label": "SPICE", "unavailable_reason": "needs Java"},
            }),
        ],
        efficiency=EfficiencyResult("cpu", 2, 10, Timing(0.8, 0.9), Timing(0.05, 0.06),
                                    Timing(0.85, 0.96), 1.25, "CPU peak RSS"),
    )


def test_report_files_are_written_and_well_formed(tmp_path):
    paths = write_report(sample_report(), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["headline"] == {"asr_wer": 12.5, "aac_score": 31.0, "memory_gb": 1.25,
                                "latency_s": 0.85}
    assert data["published"]["team_1b_qlora"]["asr_wer"] == 5.30
    markdown = paths["markdown"].read_text()
    assert "| this run | 12.50 | 31.00 | 1.250 | 0.8500 |" in markdown
    assert "unavailable: needs Java" in markdown
    png = paths["plot"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_headline_is_empty_without_sets():
    assert EvaluationReport("r", "c").headline() == {
        "asr_wer": None, "aac_score": None, "memory_gb": None, "latency_s": None,
    }


def test_submission_csv_round_trips_with_commas_and_quotes(tmp_path):
    rows = [("test0000", 'a dog barks, "loudly"'), ("test0001", "rain")]
    path = tmp_path / "submission.csv"
    assert write_submission_csv(rows, path) == 2
    with path.open(newline="") as handle:
        read = list(csv.reader(handle))
    assert read == [["testset_id", "text"], ["test0000", 'a dog barks, "loudly"'],
                    ["test0001", "rain"]]


def test_published_figures_only_beside_runs_measured_like_them(tmp_path):
    """A synthetic CPU run gets its anchors, not the published GPU figures; a GPU run on
    LibriSpeech and AudioCaps gets the published figures."""
    demo = sample_report()
    demo.sets[0].sources, demo.sets[1].sources = ["espeak:en-us"], ["synthetic:beeps"]
    demo.anchors = [{"label": "Whisper tiny.en (same clips)", "asr_wer": 30.25}]
    markdown = (write_report(demo, tmp_path / "demo")["markdown"]).read_text()
    assert "team 1B QLoRA" not in markdown and "5.3" not in markdown
    assert "| Whisper tiny.en (same clips) | 30.25 | n/a | n/a | n/a |" in markdown
    assert "published asr_wer left out: evaluated on espeak:en-us, published on librispeech" \
        in markdown
    assert "published latency_s left out: measured on cpu, published on a GPU" in markdown

    real = sample_report()
    real.sets[0].sources, real.sets[1].sources = ["librispeech"], ["audiocaps"]
    real.efficiency.device = "cuda:0"
    paths = write_report(real, tmp_path / "real")
    assert "| team 1B QLoRA (published) | 5.3 | 35.49 | 4.09 | 0.36 |" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["published_comparable"] == {
        "asr_wer": None, "aac_score": None, "memory_gb": None, "latency_s": None}

    half = sample_report()
    half.sets[0].sources, half.sets[1].sources = ["librispeech"], ["clotho"]
    markdown = write_report(half, tmp_path / "half")["markdown"].read_text()
    assert "| team 1B QLoRA (published) | 5.3 | not comparable | not comparable | " \
           "not comparable |" in markdown
