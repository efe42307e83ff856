"""The distill command: every subcommand teaches with --help; validate reports with file:line."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import EXIT_BAD_INPUT, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = [
    "validate", "prepare-data", "serve-teacher", "generate-teacher", "train-student",
    "evaluate", "bench", "cache", "demo", "app",
]


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_subcommand(capsys):
    text = help_text(capsys)
    for name in SUBCOMMANDS:
        assert name in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_help_has_an_example(capsys, name):
    text = help_text(capsys, name)
    assert "example:" in text or "examples:" in text
    assert f"distill {name}" in text


def test_validate_accepts_shipped_recipes_and_prints_a_plan(capsys):
    assert main(["validate", str(ROOT / "recipes/demo.yaml"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "ok:" in out and "plan for recipe 'demo'" in out
    assert "teacher" in out and "evaluate" in out


def test_validate_reports_a_bad_recipe_with_its_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nloss:\n  divergence: kl\n")
    assert main(["validate", str(bad)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{bad}:3: loss.divergence: expected 'forward_kl'" in err


def test_validate_check_files_reports_missing_manifests(capsys):
    status = main(["validate", str(ROOT / "recipes/salmonn_1b.yaml"), "--check-files"])
    assert status == EXIT_BAD_INPUT
    assert "data/manifests/librispeech_train.jsonl does not exist" in capsys.readouterr().err


def test_parser_requires_a_subcommand():
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2


def test_console_script_is_installed_and_runs():
    script = Path(sys.executable).parent / "distill"
    assert script.exists(), "the distill console script is not installed in this environment"
    result = subprocess.run(
        [str(script), "validate", "recipes/demo.yaml"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ}, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ok: recipes/demo.yaml" in result.stdout


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    commands = [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]


def test_validate_check_files_accepts_present_valid_manifests(tmp_path, capsys):
    import soundfile as sf

    sf.write(tmp_path / "a.wav", [0.0] * 16000, 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "audio": "a.wav", "task": "asr", "text": "hi"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: r\ndata:\n  train: [{{path: {manifest}}}]\neval:\n  sets:\n"
        f"    - {{name: t, manifest: {manifest}, task: asr, metrics: [wer]}}\n"
    )
    assert main(["validate", str(recipe), "--check-files"]) == 0
    manifest.write_text('{"id": "a", "audio": "gone.wav", "task": "asr", "text": "hi"}\n')
    assert main(["validate", str(recipe), "--check-files"]) == EXIT_BAD_INPUT
    assert f"{manifest}:1:" in capsys.readouterr().err
