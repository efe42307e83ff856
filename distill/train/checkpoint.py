"""Checkpoint folders: atomic, the last K kept, the best kept apart, RNG states captured.

Layout under the run's output dir::

    checkpoints/step-00002000/   one finished checkpoint (whatever the trainer writes into it)
    checkpoints/latest -> step-00004000
    best -> checkpoints/step-00002000      (by the recipe's best metric)

A checkpoint is written into a hidden temp folder and renamed into place only when complete, so
a run killed mid-save (even by SIGKILL) leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

STEP_PREFIX = "step-"


def capture_rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target``, replacing it atomically."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


class CheckpointManager:
    def __init__(self, output_dir: str | Path, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / "checkpoints"
        self.keep_last = keep_last

    def finished(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir()
                 if p.is_dir() and not p.is_symlink() and p.name.startswith(STEP_PREFIX)]
        return sorted(found, key=lambda p: int(p.name.removeprefix(STEP_PREFIX)))

    def latest(self) -> Path | None:
        finished = self.finished()
        return finished[-1] if finished else None

    def best(self) -> Path | None:
        link = self.output_dir / "best"
        return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None

    def save(self, step: int, write: Callable[[Path], None], *, metric: float | None = None,
             higher_is_better: bool = True) -> Path:
        """Run ``write(folder)`` into a temp folder, then publish it as ``step-NNNNNNNN``."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{STEP_PREFIX}{step:08d}"
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        try:
            write(staging)
            if metric is not None:
                (staging / "metric.json").write_text(json.dumps({"step": step, "metric": metric}))
            if final.exists():  # re-saving the same step (e.g. the end of a resumed run)
                shutil.rmtree(final)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _point(self.root / "latest", final)
        if metric is not None and self._improves(metric, higher_is_better):
            _point(self.output_dir / "best", final)
        self._prune()
        return final

    def _improves(self, metric: float, higher_is_better: bool) -> bool:
        best = self.best()
        if best is None or not (best / "metric.json").is_file():
            return True
        previous = json.loads((best / "metric.json").read_text())["metric"]
        return metric > previous if higher_is_better else metric < previous

    def _prune(self) -> None:
        best = self.best()
        for old in self.finished()[: -self.keep_last]:
            if best is None or old.resolve() != best:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(f".{STEP_PREFIX}*"):  # temp folders of killed saves
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
