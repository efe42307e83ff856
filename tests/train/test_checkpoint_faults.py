"""Checkpoints under faults: a malicious pickle, a full disk mid-save, a truncated checkpoint on
resume. Each fault leaves the previous state loadable and says what happened in one line.

The checkpoints are real ``Accelerator.save_state`` folders (optimizer, RNG states, registered
objects), as the trainer writes them, from a small model trained for two steps."""

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

from distill.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    UnsafeCheckpointError,
    check_folder_weights_only,
    check_weights_only,
)
from distill.train.clipping import ZClip


def trained_state(seed: int = 0):
    """(accelerator, model, optimizer, scheduler, clipper) after two real steps, with the
    scheduler and clipper registered for checkpointing as the trainer registers its objects."""
    from accelerate import Accelerator

    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    clipper = ZClip(alpha=0.97, z_threshold=2.5, warmup_steps=1)
    model, optimizer = accelerator.prepare(model, optimizer)
    for _ in range(2):
        model(torch.randn(2, 4)).square().sum().backward()
        clipper.decide(float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    accelerator.register_for_checkpointing(scheduler, clipper)
    return accelerator, model, optimizer, scheduler, clipper


def test_a_saved_state_passes_the_weights_only_check_and_restores_exactly(tmp_path):
    accelerator, model, optimizer, scheduler, clipper = trained_state()
    accelerator.save_state(str(tmp_path))
    expected = (random.random(), np.random.random(), torch.rand(2))
    want = ({k: v.clone() for k, v in model.state_dict().items()}, optimizer.state_dict(),
            scheduler.state_dict(), clipper.state_dict())

    check_folder_weights_only(tmp_path)  # every pickle accelerate wrote, RNG states included
    fresh, model2, optimizer2, scheduler2, clipper2 = trained_state(seed=1)  # other values
    fresh.load_state(str(tmp_path))

    # python, numpy and torch draws replay exactly; the registered objects are restored
    assert (random.random(), np.random.random()) == expected[:2]
    assert torch.equal(torch.rand(2), expected[2])
    torch.testing.assert_close(model2.state_dict(), want[0])
    torch.testing.assert_close(optimizer2.state_dict()["state"], want[1]["state"])
    assert scheduler2.state_dict()["last_epoch"] == want[2]["last_epoch"] == 2
    assert clipper2.state_dict() == want[3]


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): a plain pickle load runs it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_malicious_pickle_is_refused_with_a_clear_message(tmp_path, writer):
    marker = tmp_path / "code-ran"
    path = tmp_path / "custom_checkpoint_0.pkl"
    state = {"last_epoch": 1, "evil": Payload(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))

    with pytest.raises(UnsafeCheckpointError) as caught:
        check_weights_only(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: refused to load") and "weights_only=True" in message
    if writer == "torch.save":
        assert "it refers to io.open" in message  # names the global it refused
    assert not marker.exists()
    if writer == "pickle.dump":  # the premise: without weights_only the payload does run
        pickle.loads(path.read_bytes())["evil"].close()
        assert marker.exists()


def test_accelerate_alone_would_run_a_planted_registered_state(tmp_path):
    """Why the folder is checked first: accelerate unpickles registered objects' states with
    weights_only=False, so a planted custom_checkpoint runs code in load_state."""
    accelerator, *_ = trained_state()
    accelerator.save_state(str(tmp_path))
    marker = tmp_path / "code-ran"
    torch.save(Payload(marker), tmp_path / "custom_checkpoint_1.pkl")

    with pytest.raises(UnsafeCheckpointError, match="custom_checkpoint_1.pkl: refused to load"):
        check_folder_weights_only(tmp_path)
    assert not marker.exists()
    with pytest.raises(TypeError):  # the clipper is handed the file object the payload made
        trained_state()[0].load_state(str(tmp_path))
    assert marker.exists()


def save_step(manager: CheckpointManager, step: int) -> Path:
    accelerator, *_ = trained_state(step)
    return manager.save(step, lambda folder: accelerator.save_state(str(folder)))


def load_step(folder: Path) -> dict:
    """What the trainer does before load_state: every pickle checked; returns the optimizer."""
    check_folder_weights_only(folder)
    return torch.load(folder / "optimizer.bin", weights_only=True)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_full_disk_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=3)
    save_step(manager, 1)
    real_save = torch.save

    def save_until_the_disk_fills(obj, path, *args, **kwargs):
        # Simulated: a real ENOSPC needs a full filesystem, which a test cannot make here. The
        # file gets half its bytes, then the write fails as write(2) does on a full disk.
        real_save(obj, path, *args, **kwargs)
        truncate(Path(path))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)  # accelerate saves with it
    with pytest.raises(CheckpointError) as caught:
        save_step(manager, 2)
    monkeypatch.undo()

    assert "step-00000002: checkpoint not written (No space left on device)" in str(caught.value)
    assert "step-00000001" in str(caught.value) and "is kept" in str(caught.value)
    assert [p.name for p in manager.finished()] == ["step-00000001"]
    assert not [p for p in manager.root.iterdir() if p.name.startswith(".")]  # no torn folder
    folder, optimizer = manager.load_latest(load_step)
    assert folder.name == "step-00000001"
    torch.testing.assert_close(optimizer["state"], trained_state(1)[2].state_dict()["state"])


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl",
                                  "custom_checkpoint_1.pkl"])
@pytest.mark.parametrize("keep", [0.0, 0.3, 0.99])
def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, keep,
                                                                      name):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2, 3):
        save_step(manager, step)
    truncate(manager.root / "step-00000003" / name, keep)

    folder, optimizer = manager.load_latest(load_step)

    assert folder.name == "step-00000002"
    torch.testing.assert_close(optimizer["state"], trained_state(2)[2].state_dict()["state"])
    out = capsys.readouterr().out
    assert "resume: step-00000003 cannot be loaded" in out and "truncated or corrupt" in out
    assert name in out and "falling back to the checkpoint before it" in out


def test_no_loadable_checkpoint_is_one_clear_error(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2):
        save_step(manager, step)
        truncate(manager.root / f"step-{step:08d}" / "optimizer.bin")
    with pytest.raises(CheckpointError, match="no checkpoint can be loaded to resume from"):
        manager.load_latest(load_step)


def test_an_unsafe_latest_checkpoint_stops_the_resume(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    save_step(manager, 1)
    folder = save_step(manager, 2)
    torch.save({"evil": Payload(tmp_path / "code-ran")}, folder / "custom_checkpoint_0.pkl")
    with pytest.raises(UnsafeCheckpointError):
        manager.load_latest(load_step)
    assert not (tmp_path / "code-ran").exists()


# ------------------------------------------------------------- the real trainer, `--resume`
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["truncated", "earlier_layout"])
def test_resume_with_a_truncated_checkpoint_continues_from_the_one_before(
    tmp_path, make_cfg, capsys, fault
):
    """A torn student file, or a checkpoint in the layout before Accelerator.save_state
    (trainer_state.pt), is skipped with its reason and the one before it resumed."""
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
    latest = out / "checkpoints" / "step-00000002"
    if fault == "truncated":
        truncate(latest / "student" / "trainable.safetensors")
        reason = "trainable.safetensors: truncated or corrupt"
    else:
        for path in latest.iterdir():
            if path.is_file():
                path.unlink()
        torch.save({"progress": {"step": 2}}, latest / "trainer_state.pt")
        reason = "written by an earlier distill (trainer_state.pt)"
    capsys.readouterr()

    train_student(recipe(3), resume=True, run_eval=False)

    printed = capsys.readouterr().out
    assert "resume: step-00000002 cannot be loaded" in printed and reason in printed
    assert "resumed at step 1 from" in printed and printed.count("step-00000001") >= 1
    steps = [json.loads(line)["step"] for line in (out / LOG_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3]  # step 2 redone once, not doubled
