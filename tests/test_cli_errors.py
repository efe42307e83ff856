"""Every subcommand answers bad input with ``error:`` lines and a non-zero exit, never a traceback.

The sweep runs ``distill.cli.main`` in-process: an exception that escaped it would fail the test
(that is the traceback a user would see). Each case is one kind of bad input a user really gives:
a missing or malformed recipe, a folder that is not a cache or not a checkpoint, a missing corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.cli import main
from distill.errors import EXIT_BAD_INPUT, DistillError, DistillFailure

ROOT = Path(__file__).resolve().parents[1]


def _bad_recipe(tmp: Path) -> Path:
    path = tmp / "bad.yaml"
    path.write_text("name: x\nmodel:\n  llm:\n    lora:\n      rank: 8\n")
    return path


def _unparsable_recipe(tmp: Path) -> Path:
    path = tmp / "broken.yaml"
    path.write_text("name: [unclosed\n")
    return path


def _recipe_with_missing_manifest(tmp: Path) -> Path:
    path = tmp / "nomanifest.yaml"
    path.write_text(
        f"base: {ROOT / 'recipes/demo.yaml'}\n"
        "data:\n  train:\n    - manifest: does/not/exist.jsonl\n"
        f"  eval:\n    - name: x\n      manifest: {tmp / 'missing_eval.jsonl'}\n"
    )
    return path


def _cache_without_meta(tmp: Path) -> Path:
    folder = tmp / "cache_no_meta"
    folder.mkdir()
    (folder / "shard-00000.bin").write_bytes(b"\0" * 64)
    return folder


def _cache_with_bad_meta(tmp: Path) -> Path:
    folder = tmp / "cache_bad_meta"
    folder.mkdir()
    (folder / "meta.json").write_text("{not json")
    return folder


def _not_a_checkpoint(tmp: Path) -> Path:
    folder = tmp / "not_a_checkpoint"
    folder.mkdir()
    (folder / "student_config.json").write_text(json.dumps({"format_version": 999}))
    return folder


CASES = {
    "validate: missing file": lambda t: ["validate", str(t / "nope.yaml")],
    "validate: unknown key": lambda t: ["validate", str(_bad_recipe(t))],
    "validate: unparsable YAML": lambda t: ["validate", str(_unparsable_recipe(t))],
    "prepare-data: missing corpus": lambda t: [
        "prepare-data", "librispeech", str(t / "nope"), "--subset", "dev-clean",
        "-o", str(t / "m.jsonl")],
    "prepare-data: salmonn file that is not JSON": lambda t: [
        "prepare-data", "salmonn", str(_unparsable_recipe(t)), "-o", str(t / "m.jsonl")],
    "serve-teacher: missing recipe": lambda t: ["serve-teacher", str(t / "nope.yaml")],
    "generate-teacher: invalid recipe": lambda t: ["generate-teacher", str(_bad_recipe(t))],
    "generate-teacher: missing manifest": lambda t: [
        "generate-teacher", str(_recipe_with_missing_manifest(t))],
    "cache verify: not a folder": lambda t: ["cache", "verify", str(t / "nope")],
    "cache stats: folder without meta.json": lambda t: ["cache", "stats", str(_cache_without_meta(t))],
    "cache verify: folder without meta.json": lambda t: [
        "cache", "verify", str(_cache_without_meta(t))],
    "cache stats: unreadable meta.json": lambda t: ["cache", "stats", str(_cache_with_bad_meta(t))],
    "train-student: missing recipe": lambda t: ["train-student", str(t / "nope.yaml")],
    "train-student: missing manifest": lambda t: [
        "train-student", str(_recipe_with_missing_manifest(t)), "--no-eval"],
    "evaluate: missing checkpoint": lambda t: [
        "evaluate", str(ROOT / "recipes/demo.yaml"), "--checkpoint", str(t / "nope")],
    "evaluate: folder that is not a checkpoint": lambda t: [
        "evaluate", str(ROOT / "recipes/demo.yaml"), "--checkpoint", str(_not_a_checkpoint(t))],
    "app: missing checkpoint": lambda t: ["app", "--checkpoint", str(t / "nope")],
    "demo: missing recipe": lambda t: ["demo", "--recipe", str(t / "nope.yaml")],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_error_lines_not_a_traceback(case, tmp_path, capsys):
    status = main(CASES[case](tmp_path))
    captured = capsys.readouterr()
    assert status != 0, f"{case}: exit status 0 on bad input"
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), f"{case}: {captured.err!r}"
    assert "Traceback" not in captured.err and "Traceback" not in captured.out


def test_error_classes_share_one_base_with_exit_codes():
    from distill.config import RecipeError
    from distill.data.manifest import ManifestError
    from students.checkpoint import CheckpointMismatchError
    from teachers.cache.format import CacheFormatError
    from teachers.server import ServerStartError

    for bad_input in (RecipeError, ManifestError, CheckpointMismatchError, CacheFormatError):
        assert issubclass(bad_input, DistillError) and bad_input.exit_code == EXIT_BAD_INPUT
    assert issubclass(ServerStartError, DistillFailure) and ServerStartError.exit_code == 1


@pytest.fixture
def tiny_train_recipe(tmp_path, make_cfg, noise):
    """write(**data_or_train) -> a recipe file over one real clip and the tiny student."""
    import soundfile as sf
    import yaml

    sf.write(tmp_path / "clip.wav", noise(1.2).numpy(), 16000)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"id": "s0", "audio": "clip.wav", "task": "asr",
                                    "text": "hello world"}) + "\n")

    def write(*, data=None, train=None) -> Path:
        recipe = {
            "name": "tiny",
            "model": make_cfg(beats=False).model_dump(mode="json"),
            "data": {"train": [{"path": str(manifest)}], "augment": {"enabled": False},
                     "num_workers": 0, **(data or {})},
            "train": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 1,
                      "precision": "fp32", "evaluate_when_done": False, **(train or {})},
        }
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    return write


@pytest.mark.slow
def test_train_student_with_a_cache_folder_without_meta(tmp_path, tiny_train_recipe, capsys):
    recipe = tiny_train_recipe(data={"soft_targets": str(_cache_without_meta(tmp_path))})
    assert main(["train-student", str(recipe), "--no-eval"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "meta.json" in err and "Traceback" not in err


@pytest.mark.slow
def test_train_student_init_from_a_checkpoint_of_another_shape(tmp_path, tiny_train_recipe,
                                                               make_cfg, capsys):
    from students import SalmonnStudent

    other = SalmonnStudent.from_config(make_cfg(beats=False, qformer={"hidden_size": 48}))
    other.save_pretrained(tmp_path / "other")
    recipe = tiny_train_recipe(train={"init_from": str(tmp_path / "other")})
    assert main(["train-student", str(recipe), "--no-eval"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
