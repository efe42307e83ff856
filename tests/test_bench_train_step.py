"""benchmarks/bench_train_step.py: recipe overrides and the checks made before any timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("bench_train_step")


def test_overrides_set_nested_values_and_leave_the_rest(bench):
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")
    changed = bench.apply_overrides(recipe, ["train.optimizer.lr=5.0e-4",
                                             "model.qformer.queries_per_window=2"])
    assert changed.train.optimizer.lr == 5.0e-4
    assert changed.model.qformer.queries_per_window == 2
    assert changed.train.optimizer.audio_lr == recipe.train.optimizer.audio_lr
    assert recipe.train.optimizer.lr == 1.0e-3  # the input is not modified


def test_a_compare_configuration_keeps_the_commas_of_its_list_values(bench):
    assert bench.split_assignments("a.b=1,c.d=[q_proj, v_proj],e={x: 1, y: 2},") == [
        "a.b=1", "c.d=[q_proj, v_proj]", "e={x: 1, y: 2}"]
    recipe = bench.apply_overrides(load_recipe(ROOT / "recipes" / "demo.yaml"), bench.split_assignments(
        "model.llm.lora.dropout=0.05,model.llm.lora.target_modules=[q_proj,k_proj,v_proj]"))
    assert recipe.model.llm.lora.target_modules == ["q_proj", "k_proj", "v_proj"]
    assert recipe.model.llm.lora.dropout == 0.05


@pytest.mark.parametrize("argv, expected", [
    (["--set", "train.no_such_key=1"],
     "train.no_such_key=1: expected KEY=VALUE with a recipe key, e.g. train.batch_size=8"),
    (["--set", "nosection.lr=1"], "nosection.lr=1: the recipe has no section nosection"),
    (["--set", "train.nosub.lr=1"], "train.nosub.lr=1: the recipe has no section train.nosub"),
    (["--set", "train.batch_size.x=1"], "train.batch_size.x=1: the recipe has no section train.batch_size"),
    (["--set", "train.batch_size=many"], "train.batch_size=many: train.batch_size: Input should be a "
                                         "valid integer, unable to parse string as an integer"),
    (["--set", "model.llm.lora.target_modules=[q_proj"],
     "model.llm.lora.target_modules=[q_proj: the value is not YAML (expected ',' or ']', but got "
     "'<stream end>')"),
    (["--compare", "train.precision=fp32", "train.precision=bf16"],
     "--compare: train.precision differs (bf16, fp32); accelerate sets the mixed precision once "
     "per process: time each in its own command"),
])
def test_bad_configurations_get_one_line_before_any_work(bench, argv, expected, capsys, monkeypatch):
    monkeypatch.setattr(bench, "time_steps", lambda *a: pytest.fail("timed a refused configuration"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main([str(ROOT / "recipes" / "demo.yaml"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(": error: " + expected) and "Traceback" not in "\n".join(err)
