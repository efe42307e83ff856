"""Checkpoint folders: atomic, the last K kept, the best kept apart, every file weights-only.

Layout under the run's output dir::

    checkpoints/step-00002000/   one finished checkpoint: what ``Accelerator.save_state`` writes
                                 (optimizer, RNG states of each process, the registered objects,
                                 DeepSpeed's partitions) plus ``student/`` (the trainable weights)
    checkpoints/latest -> step-00004000
    best -> checkpoints/step-00002000      (by the recipe's best metric)

A checkpoint is written into a hidden staging folder and renamed into place only when complete,
so a run killed mid-save (even by SIGKILL) or a full disk leaves the previous checkpoint as the
latest one. Resuming takes the newest checkpoint that loads, and says which it skipped and why.

accelerate unpickles the registered objects' states with ``weights_only=False``, so before a
folder is handed to ``Accelerator.load_state`` every pickle in it is first read with
``torch.load(..., weights_only=True)`` (numpy's array types allowed, as accelerate allows them
for RNG states, and the few plain-data classes DeepSpeed's ZeRO files hold): a pickle from
elsewhere cannot run code on resume, and a truncated file is found before any state is touched.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from distill.errors import DistillFailure

STEP_PREFIX = "step-"
PICKLE_SUFFIXES = (".pkl", ".bin", ".pt")
T = TypeVar("T")
logger = logging.getLogger(__name__)


class CheckpointError(DistillFailure, RuntimeError):
    """A checkpoint that cannot be written or loaded; the message names the file or folder."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding objects that could run code on load: refused, never skipped."""


def _allowed_globals() -> list:
    """What a checkpoint's pickles may name: numpy's array rebuilding (accelerate's list, for the
    RNG states) and DeepSpeed's plain-data classes in ZeRO optimizer files (when installed)."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    allowed = list(TORCH_SAFE_GLOBALS)
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return allowed
    return allowed + [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def check_weights_only(path: Path) -> None:
    """Read ``path`` with ``torch.load(weights_only=True)``; each failure named in one line.

    Raises UnsafeCheckpointError (a global outside the allow-list: never loaded further) or
    CheckpointError (missing, truncated, corrupt).
    """
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error:\s*(Unsupported global: GLOBAL (\S+)|.+)", str(err))
        if found is None:
            what = "not a weights-only pickle"
        else:
            what = f"it refers to {found.group(2)}" if found.group(2) else found.group(1).strip()
        raise UnsafeCheckpointError(
            f"{path}: refused to load: {what}; a checkpoint holds only tensors, numbers and "
            "containers, and anything else could run code when unpickled (torch.load "
            "weights_only=True). Load only checkpoints you wrote or trust."
        ) from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt ({err})") from None


def check_folder_weights_only(folder: Path) -> None:
    """check_weights_only on every pickle in ``folder`` (recursively), in name order."""
    for path in sorted(folder.rglob("*")):
        if path.suffix in PICKLE_SUFFIXES and path.is_file():
            check_weights_only(path)


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
             higher_is_better: bool = True, is_main: bool = True,
             barrier: Callable[[], None] = lambda: None) -> Path:
        """Run ``write(folder)`` into a staging folder, then publish it as ``step-NNNNNNNN``.

        With several processes every one calls this (each writes its own files, e.g. its RNG
        state and its ZeRO partition): the main process makes the staging folder, ``barrier``
        (``Accelerator.wait_for_everyone``) lets the others write into it, and the main process
        publishes it once all are done. Raises CheckpointError when the disk refuses the write
        (the previous checkpoint stays the latest).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{STEP_PREFIX}{step:08d}"
        staging = self.root / f".{final.name}.partial"  # one name all processes agree on
        if is_main:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed mid-save
            staging.mkdir()
        barrier()
        try:
            write(staging)
            barrier()
            if is_main:
                if metric is not None:
                    (staging / "metric.json").write_text(json.dumps({"step": step,
                                                                     "metric": metric}))
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
        if is_main:
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
