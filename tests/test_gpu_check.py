"""benchmarks/gpu_check.sh on the CPU path with tiny shapes: every step runs, tables land in
files. (No GPU here: the CUDA path is the same commands with --device cuda.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.config import Recipe

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def write_recipe(path: Path, name: str, model) -> str:
    recipe = Recipe.model_validate({
        "name": name, "model": model.model_dump(mode="json"),
        "train": {"batch_size": 2}, "teacher": {"top_k": 4},
        "eval": {"efficiency": {"clip_seconds": 2.0}},
    })
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    return str(path)


def test_gpu_check_runs_every_step_on_the_cpu_path(make_cfg, tmp_path):
    base = write_recipe(tmp_path / "base.yaml", "tiny_base", make_cfg(random_init=True))
    small = write_recipe(tmp_path / "q.yaml", "tiny_qlora", make_cfg(quant=True, random_init=True))
    out = tmp_path / "out"
    env = {
        **os.environ, "DEVICE": "cpu", "OUT": str(out), "PYTHON": sys.executable,
        "RECIPES": f"{base} {small}", "LEVER_RECIPE": small,
        "LEVER_NAMES": "lever_recipe lever_whisper_fp32 lever_static_cache",
        "BENCH_ARGS": "--warmup 0 --timed 1 --train-steps 1 --generate-tokens 2",
        "LEVER_ARGS": "--warmup 0 --timed 1 --train-steps 0 --generate-tokens 1",
        "LOSS_ARGS": "--tokens 64 --vocab 512 --hidden 32 --k 8 --chunk-size 16",
    }
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr + (out / "steps.log").read_text()
    summary = (out / "summary.md").read_text()
    comparison = (out / "comparison.md").read_text()
    rows = [line for line in comparison.splitlines() if line.startswith("| tiny_")]
    assert [r.split("|")[1].strip() for r in rows] == ["tiny_base", "tiny_qlora"]
    assert "| 1.00 | 1.00 |" in rows[0]  # the baseline against itself
    assert "--device cpu" in comparison.splitlines()[0]  # the command that made the table
    assert "levers: whisper_dtype=float32" in (out / "lever_whisper_fp32.md").read_text()
    assert "static_cache=True" in (out / "lever_static_cache.md").read_text()
    assert "| chunked |" in (out / "losses.md").read_text()
    assert "device=cpu" in (out / "losses.md").read_text()
    assert "torch" in (out / "environment.txt").read_text()
    for name in ("comparison", "lever_recipe", "lever_static_cache", "losses"):
        assert f"## {name}" in summary
