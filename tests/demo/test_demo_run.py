"""``distill demo`` end to end at the smoke size, its resume, and its choices and refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.config import load_recipe
from distill.demo.run import (
    STUDENT_SECTIONS,
    DemoError,
    DemoLayout,
    _start_over_if_changed,
    choose_teacher,
    student_fingerprint,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo.yaml"
DISTILL = Path(sys.executable).parent / "distill"
# The smoke size: 6 + 6 training clips, 3 + 3 test clips; speech_test is also the valid set.
CACHED_SAMPLES = 6 + 6 + 3


def run_distill(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(DISTILL), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=1200, check=False)


def check_finished_demo(workdir: Path, result: subprocess.CompletedProcess, backend: str) -> None:
    assert result.returncode == 0, result.stderr[-4000:]
    demo = workdir / "runs" / "demo"
    summary = json.loads((demo / "demo_summary.json").read_text())
    assert summary["teacher_backend"] == backend and summary["size"] == "smoke"
    for name in ("report.md", "report.json", "report.png"):
        assert (demo / "eval" / name).stat().st_size > 0
    report = json.loads((demo / "eval" / "report.json").read_text())
    assert [s["samples"] for s in report["sets"]] == [3, 3]
    assert report["efficiency"]["timed_runs"] == 2
    log = [json.loads(line) for line in (demo / "student" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4]
    assert all(row["kd"] > 0 for row in log)  # the teacher's targets were used
    verify = run_distill(workdir, "cache", "verify", "runs/demo/teacher_cache")
    assert verify.returncode == 0 and f"ok: {CACHED_SAMPLES} samples" in verify.stdout
    # The closing summary says where everything went and what to run next.
    assert "distill demo: done" in result.stdout
    for path in ("runs/demo/data", "runs/demo/teacher_cache", "runs/demo/eval/report.md"):
        assert path in result.stdout
    assert "distill train-student recipes/salmonn_1b.yaml" in result.stdout
    # The anchor: tiny.en's own WER on the same spoken clips, beside the student's, also in the
    # report (which leaves out the published GPU figures for this synthetic CPU run).
    anchor = json.loads((demo / "eval" / "anchor_tiny_en.json").read_text())
    assert anchor["utterances"] == 3 and 0 <= anchor["wer"] < 100
    assert f"WER {anchor['wer']:.3g} %" in result.stdout and "anchor: Whisper tiny.en" in result.stdout
    assert "captions: " in result.stdout
    gain = [row["audio_gain"] for row in log if "audio_gain" in row][-1]
    assert f"hearing: another clip's audio raises the student's validation loss by {gain:.2f}" \
        in result.stdout
    markdown = (demo / "eval" / "report.md").read_text()
    assert "| Whisper tiny.en (same clips, greedy) |" in markdown and "(published)" not in markdown


@pytest.mark.slow
def test_smoke_demo_runs_every_stage_and_resumes(tmp_path):
    first = run_distill(tmp_path, "demo", "--recipe", str(DEMO), "--size", "smoke",
                        "--teacher", "transformers")
    check_finished_demo(tmp_path, first, "transformers")
    assert "teacher: the transformers backend" in first.stderr
    hypotheses = (tmp_path / "runs/demo/eval/hypotheses/demo_speech_test.jsonl").read_text()

    again = run_distill(tmp_path, "demo", "--recipe", str(DEMO), "--size", "smoke",
                        "--teacher", "transformers")
    check_finished_demo(tmp_path, again, "transformers")
    assert "reusing runs/demo/data" in again.stderr
    assert "reusing the models already there" in again.stderr
    assert f"{CACHED_SAMPLES} already cached, 0 written" in again.stderr
    assert "resumed at step 4" in again.stdout
    # Same checkpoint, greedy decoding: the evaluation gives the same answers again.
    assert (tmp_path / "runs/demo/eval/hypotheses/demo_speech_test.jsonl").read_text() == hypotheses


@pytest.mark.slow
@pytest.mark.vllm
def test_smoke_demo_with_the_vllm_teacher(tmp_path):
    result = run_distill(tmp_path, "demo", "--recipe", str(DEMO), "--size", "smoke",
                         "--teacher", "vllm")
    check_finished_demo(tmp_path, result, "vllm_server")
    assert "teacher: a vLLM server" in result.stderr


def test_auto_teacher_is_vllm_only_when_its_python_is_there(tmp_path):
    recipe = load_recipe(DEMO)
    recipe.teacher.server.python = str(tmp_path / "no-such-venv" / "bin" / "python")
    line = choose_teacher(recipe, "auto")
    assert recipe.teacher.backend == "transformers" and "transformers backend" in line
    recipe.teacher.server.python = sys.executable  # an interpreter that exists
    line = choose_teacher(recipe, "auto")
    assert recipe.teacher.backend == "vllm_server" and sys.executable in line
    choose_teacher(recipe, "transformers")
    assert recipe.teacher.backend == "transformers"


def test_a_recipe_with_other_manifests_is_refused(tmp_path):
    recipe = load_recipe(DEMO)
    recipe.data.train[0].path = "elsewhere/librispeech_train.jsonl"
    with pytest.raises(DemoError, match="librispeech_train.jsonl"):
        DemoLayout.from_recipe(recipe, DEMO)


def layout_in(root):
    return DemoLayout(root, *(root / name for name in ("data", "cache", "student", "eval")))


def test_another_size_restarts_training_and_fresh_restarts_everything(tmp_path):
    layout = layout_in(tmp_path)
    folders = (layout.data, layout.teacher_cache, layout.student, layout.eval)
    recipe = load_recipe(DEMO)
    for folder in folders:
        folder.mkdir()
    _start_over_if_changed(layout, "smoke", recipe, fresh=False)  # no record: another size
    assert [f.exists() for f in folders] == [True, True, False, False]
    layout.student.mkdir()
    _start_over_if_changed(layout, "smoke", recipe, fresh=False)  # same size: everything kept
    assert layout.student.exists()
    _start_over_if_changed(layout, "standard", recipe, fresh=False)
    assert [f.exists() for f in folders] == [True, True, False, False]
    state = json.loads((tmp_path / "demo_state.json").read_text())
    assert state["size"] == "standard" and sorted(state["recipe"]) == sorted(STUDENT_SECTIONS)
    _start_over_if_changed(layout, "standard", recipe, fresh=True)
    assert not any(f.exists() for f in folders)


@pytest.mark.parametrize("change", [
    lambda r: setattr(r.train.optimizer, "lr", 5e-4),
    lambda r: setattr(r.train, "seed", 7),
    lambda r: setattr(r.train, "max_steps", 900),  # the cosine schedule spans max_steps
    lambda r: setattr(r.model.prompt, "template", "Audio: <SpeechHere> {instruction}:"),
    lambda r: setattr(r.loss, "kd_weight", 2.0),
    lambda r: setattr(r.data.train[1], "weight", 1.0),
])
def test_a_changed_student_recipe_restarts_training(tmp_path, change, capsys):
    """The demo resumes its student only from a checkpoint of the same recipe: before, a
    changed learning rate resumed the old run's finished checkpoint and reported its scores."""
    layout = layout_in(tmp_path)
    recipe = load_recipe(DEMO)
    _start_over_if_changed(layout, "standard", recipe, fresh=False)
    for folder in (layout.data, layout.teacher_cache, layout.student, layout.eval):
        folder.mkdir()
    same = load_recipe(DEMO)
    same.eval.decoding.num_beams = 4  # evaluation reruns every time: not a reason
    same.teacher.backend = "transformers"  # the teacher cache checks its own fingerprint
    _start_over_if_changed(layout, "standard", same, fresh=False)
    assert layout.student.exists() and "starting over" not in capsys.readouterr().err
    change(same)
    _start_over_if_changed(layout, "standard", same, fresh=False)
    assert not layout.student.exists() and not layout.eval.exists()
    assert layout.data.exists() and layout.teacher_cache.exists()
    section = next(name for name in STUDENT_SECTIONS
                   if student_fingerprint(same)[name] != student_fingerprint(recipe)[name])
    assert f"the recipe's {section} changed" in capsys.readouterr().err


def test_a_student_from_before_the_recipe_record_is_retrained(tmp_path, capsys):
    layout = layout_in(tmp_path)
    layout.student.mkdir()
    (tmp_path / "demo_state.json").write_text('{"size": "standard"}\n')
    _start_over_if_changed(layout, "standard", load_recipe(DEMO), fresh=False)
    assert not layout.student.exists()
    assert "no record of the recipe" in capsys.readouterr().err
