"""Run tracking through accelerate's trackers: TensorBoard (default), Weights & Biases, MLflow.

Why accelerate's: under ``accelerate launch`` only the main process may log, and its trackers
know that; one ``log`` call reaches every tracker the recipe names in ``train.report_to``.
TensorBoard keeps writing to ``<train.output_dir>/tensorboard``; W&B and MLflow name their
project / experiment after the recipe. The run's config is the resolved recipe and the teacher
cache's meta record (with its sha256), flattened to ``section.key`` entries, because TensorBoard's
hparams and MLflow's params take flat scalars only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from distill.config import Recipe, RecipeError

TENSORBOARD_DIR = "tensorboard"
_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


def trackers(recipe: Recipe) -> list:
    """What ``Accelerator(log_with=...)`` takes; a tracker whose package is missing is a
    RecipeError naming the key."""
    from accelerate.tracking import TensorBoardTracker
    from accelerate.utils import is_mlflow_available, is_wandb_available

    available = {"wandb": is_wandb_available, "mlflow": is_mlflow_available}
    out: list = []
    for name in dict.fromkeys(recipe.train.report_to):
        if name == "tensorboard":
            out.append(TensorBoardTracker(TENSORBOARD_DIR, recipe.train.output_dir))
        elif not available[name]():
            raise RecipeError(f"train.report_to: {name} is not installed (pip install "
                              f"{_PACKAGES[name]}), or remove it from the list")
        else:
            out.append(name)
    return out


def init_kwargs(recipe: Recipe) -> dict:
    """Per-tracker options: W&B writes under the run's output dir (``wandb/``)."""
    output = str(Path(recipe.train.output_dir).absolute())
    return {"wandb": {"dir": output, "name": Path(output).name},
            "mlflow": {"run_name": Path(output).name}}


def run_config(recipe: Recipe, cache_meta: Any | None) -> dict[str, str | int | float | bool]:
    """The recipe and the cache meta (plus its digest) as flat scalars."""
    from students.card import cache_meta_digest

    config: dict[str, Any] = {"recipe": recipe.model_dump(mode="json")}
    if cache_meta is not None:
        meta = dataclasses.asdict(cache_meta)
        config["teacher_cache"] = {**meta, "meta_sha256": cache_meta_digest(meta)}
    return flatten(config)


def flatten(value: Any, prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested dicts -> ``a.b.c`` keys; lists and None become JSON text (trackers take scalars)."""
    if isinstance(value, dict):
        out: dict = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, bool | int | float | str):
        return {prefix: value}
    return {prefix: json.dumps(value)}


def scalar_tag(name: str) -> str:
    """TensorBoard tags as before: ``valid/<name>`` for validation numbers, else ``train/``."""
    return f"valid/{name}" if name in ("valid_loss", "token_accuracy") else f"train/{name}"
