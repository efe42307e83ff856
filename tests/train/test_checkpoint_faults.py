"""Checkpoints under faults: a malicious pickle, a full disk mid-save, a truncated checkpoint on
resume. Each fault leaves the previous state loadable and says what happened in one line."""

from __future__ import annotations

import errno
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.train import checkpoint as ckpt
from distill.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    UnsafeCheckpointError,
    capture_rng_state,
    load_trainer_state,
    restore_rng_state,
    save_trainer_state,
)
from distill.train.clipping import ZClip


def real_trainer_state(seed: int = 0) -> dict:
    """What the trainer saves, from a real AdamW + LambdaLR + ZClip after two steps."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    clipper = ZClip(alpha=0.97, z_threshold=2.5, warmup_steps=1)
    for _ in range(2):
        model(torch.randn(2, 4)).square().sum().backward()
        optimizer.step()
        scheduler.step()
        clipper.state_dict()
    return {
        "progress": {"step": 2, "epoch": 0, "position": 4, "best_metric": None},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "clipper": clipper.state_dict(),
        "rng": capture_rng_state(),
        "stats": {"examples": 4, "ce_only": 0, "skipped": {"empty": 1}},
    }


def test_trainer_state_round_trips_under_weights_only(tmp_path):
    state = real_trainer_state()
    save_trainer_state(state, tmp_path / "trainer_state.pt")
    expected = (random.random(), np.random.random(), torch.rand(2))

    loaded = load_trainer_state(tmp_path / "trainer_state.pt")

    assert loaded["progress"] == state["progress"] and loaded["stats"] == state["stats"]
    torch.testing.assert_close(loaded["optimizer"]["state"], state["optimizer"]["state"])
    assert loaded["scheduler"]["last_epoch"] == 2
    restore_rng_state(loaded["rng"])  # python, numpy and torch draws replay exactly
    assert (random.random(), np.random.random()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])


def test_a_trainer_state_written_before_the_plain_rng_form_still_loads(tmp_path):
    # Earlier versions saved np.random.get_state() as is: a numpy array inside.
    state = real_trainer_state()
    state["rng"]["numpy"] = np.random.get_state()
    torch.save(state, tmp_path / "trainer_state.pt")
    expected = np.random.random()

    restore_rng_state(load_trainer_state(tmp_path / "trainer_state.pt")["rng"])

    assert np.random.random() == expected


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): a plain pickle load runs it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_malicious_pickle_is_refused_with_a_clear_message(tmp_path, writer):
    marker = tmp_path / "code-ran"
    path = tmp_path / "trainer_state.pt"
    state = {"progress": {"step": 1}, "evil": Payload(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))

    with pytest.raises(UnsafeCheckpointError) as caught:
        load_trainer_state(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: refused to load") and "weights_only=True" in message
    if writer == "torch.save":
        assert "it refers to io.open" in message  # names the global it refused
    assert not marker.exists()
    if writer == "pickle.dump":  # the premise: without weights_only the payload does run
        pickle.loads(path.read_bytes())["evil"].close()
        assert marker.exists()


def save_step(manager: CheckpointManager, step: int) -> Path:
    def write(folder: Path) -> None:
        save_trainer_state(real_trainer_state(step), folder / "trainer_state.pt")

    return manager.save(step, write)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_full_disk_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=3)
    save_step(manager, 1)
    real_save = torch.save

    def save_until_the_disk_fills(obj, path):
        # Simulated: a real ENOSPC needs a full filesystem, which a test cannot make here. The
        # file gets half its bytes, then the write fails as write(2) does on a full disk.
        real_save(obj, path)
        truncate(Path(path))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", save_until_the_disk_fills)
    with pytest.raises(CheckpointError) as caught:
        save_step(manager, 2)
    monkeypatch.undo()

    assert "step-00000002: checkpoint not written (No space left on device)" in str(caught.value)
    assert "step-00000001" in str(caught.value) and "is kept" in str(caught.value)
    assert [p.name for p in manager.finished()] == ["step-00000001"]
    assert not [p for p in manager.root.iterdir() if p.name.startswith(".")]  # no torn folder
    folder, state = manager.load_latest(lambda f: load_trainer_state(f / "trainer_state.pt"))
    assert folder.name == "step-00000001" and state["progress"]["step"] == 2


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.99])
def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, keep):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        save_step(manager, step)
    truncate(manager.root / "step-00000003" / "trainer_state.pt", keep)

    folder, state = manager.load_latest(lambda f: load_trainer_state(f / "trainer_state.pt"))

    assert folder.name == "step-00000002"
    torch.testing.assert_close(state["optimizer"], real_trainer_state(2)["optimizer"])
    out = capsys.readouterr().out
    assert "resume: step-00000003 cannot be loaded" in out and "truncated or corrupt" in out
    assert "falling back to the checkpoint before it" in out


def test_no_loadable_checkpoint_is_one_clear_error(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2):
        save_step(manager, step)
        truncate(manager.root / f"step-{step:08d}" / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="no checkpoint can be loaded to resume from"):
        manager.load_latest(lambda f: load_trainer_state(f / "trainer_state.pt"))


def test_an_unsafe_latest_checkpoint_stops_the_resume(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    save_step(manager, 1)
    folder = save_step(manager, 2)
    torch.save({"evil": Payload(tmp_path / "code-ran")}, folder / "trainer_state.pt")
    with pytest.raises(UnsafeCheckpointError):
        manager.load_latest(lambda f: load_trainer_state(f / "trainer_state.pt"))
    assert not (tmp_path / "code-ran").exists()


# ------------------------------------------------------------- the real trainer, `--resume`
@pytest.mark.slow
def test_resume_with_a_truncated_checkpoint_continues_from_the_one_before(
    tmp_path, make_cfg, capsys
):
    from distill.config import Recipe
    from distill.train.loop import LOG_FILE, train_student

    generator = torch.Generator().manual_seed(0)
    lines = []
    for i, text in enumerate(["hello world", "a dog barks", "good morning", "birds sing"]):
        sf.write(tmp_path / f"c{i}.wav", (0.1 * torch.randn(16000, generator=generator)).numpy(),
                 16000)
        lines.append(json.dumps({"id": f"s{i}", "audio": f"c{i}.wav", "task": "asr", "text": text}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"

    def recipe(max_steps: int) -> Recipe:
        return Recipe.model_validate({
            "name": "faults", "model": make_cfg(beats=False).model_dump(mode="json"),
            "data": {"train": [{"path": str(tmp_path / "train.jsonl")}], "num_workers": 0,
                     "augment": {"enabled": False}},
            "train": {"output_dir": str(out), "max_steps": max_steps, "batch_size": 2,
                      "precision": "fp32", "clip": {"mode": "none"}, "eval_every_steps": 1000,
                      "checkpoint": {"every_steps": 1, "keep_last": 3},
                      "evaluate_when_done": False},
        })

    train_student(recipe(2), run_eval=False)
    truncate(out / "checkpoints" / "step-00000002" / "student" / "trainable.safetensors")
    capsys.readouterr()

    train_student(recipe(3), resume=True, run_eval=False)

    printed = capsys.readouterr().out
    assert "resume: step-00000002 cannot be loaded" in printed
    assert "resumed at step 1 from" in printed and printed.count("step-00000001") >= 1
    steps = [json.loads(line)["step"] for line in (out / LOG_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3]  # step 2 redone once, not doubled
