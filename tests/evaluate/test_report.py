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
