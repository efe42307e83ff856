"""Checkpoint folders: atomic, the last K kept, the best kept apart, RNG states captured.

Layout under the run's output dir::

    checkpoints/step-00002000/   one finished checkpoint (whatever the trainer writes into it)
    checkpoints/latest -> step-00004000
    best -> checkpoints/step-00002000      (by the recipe's best metric)

A checkpoint is written into a hidden temp folder and renamed into place only when complete, so
a run killed mid-save (even by SIGKILL) or a full disk leaves the previous checkpoint as the latest
one. Resuming takes the newest checkpoint that loads, and says which it skipped and why.

Trainer state is loaded with ``torch.load(..., weights_only=True)``: a pickle from elsewhere
cannot run code on load. It holds only tensors, numbers, strings and containers (the numpy RNG
state is stored as a tensor and numbers for that reason). Only for trainer states written before
that, which hold numpy's RNG key array, are numpy's array-rebuilding types allow-listed (they
rebuild arrays, never call anything else).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from distill.errors import DistillFailure

STEP_PREFIX = "step-"
T = TypeVar("T")
logger = logging.getLogger(__name__)


class CheckpointError(DistillFailure, RuntimeError):
    """A checkpoint that cannot be written or loaded; the message names the file or folder."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding objects that could run code on load: refused, never skipped."""


def save_trainer_state(state: dict, path: Path) -> None:
    torch.save(state, path)


# What a numpy uint32 array (np.random.get_state()'s keys) needs to unpickle.
_LEGACY_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                         np.dtypes.UInt32DType]


def load_trainer_state(path: Path) -> dict:
    """``torch.load(path, weights_only=True)``, with each failure named in one line."""
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error:\s*(Unsupported global: GLOBAL (\S+)|.+)", str(err))
        if found is None:
            what = "not a weights-only pickle"
        else:
            what = f"it refers to {found.group(2)}" if found.group(2) else found.group(1).strip()
        raise UnsafeCheckpointError(
            f"{path}: refused to load: {what}; a trainer state holds only tensors, numbers and "
            "containers, and anything else could run code when unpickled (torch.load "
            "weights_only=True). Load only checkpoints you wrote or trust."
        ) from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of trainer state, found {type(state)}")
    return state


def capture_rng_state() -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        # Plain values, not numpy objects, so weights_only loading needs no allow-list.
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                       numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached"])
    np.random.set_state(numpy_state)  # a tuple: a trainer state written before the dict form
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

    def load_latest(self, load: Callable[[Path], T]) -> tuple[Path, T] | None:
        """``load`` the newest finished checkpoint that loads; None when there is none.

        A checkpoint whose ``load`` raises CheckpointError (truncated, corrupt, missing a file)
        is skipped with a warning naming it, and the one before it tried. An unsafe one
        (UnsafeCheckpointError) stops the resume: that is tampering, not a torn write.
        """
        skipped: list[str] = []
        for folder in reversed(self.finished()):
            try:
                loaded = load(folder)
            except UnsafeCheckpointError:
                raise
            except CheckpointError as err:
                skipped.append(str(err))
                logger.warning("resume: skipping %s: %s", folder.name, err)
                print(f"warning: resume: {folder.name} cannot be loaded ({err}); "
                      "falling back to the checkpoint before it")
                continue
            return folder, loaded
        if skipped:
            raise CheckpointError(
                f"{self.root}: no checkpoint can be loaded to resume from: " + "; ".join(skipped)
            )
        return None

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
        except OSError as err:  # ENOSPC, EDQUOT, EIO: the previous checkpoint stays the latest
            shutil.rmtree(staging, ignore_errors=True)
            kept = self.latest()
            raise CheckpointError(
                f"{final}: checkpoint not written ({err.strerror or err}); "
                + (f"the previous one, {kept}, is kept" if kept else "no earlier checkpoint")
            ) from err
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
