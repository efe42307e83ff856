"""save_pretrained / from_pretrained: same outputs after a round trip, clear mismatch errors,
atomic writes, no frozen weights copied."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import students.checkpoint as checkpoint
from students import SalmonnStudent
from students.checkpoint import CheckpointMismatchError
from students.moe import moe_layers


def perturb_trainables(student, seed=0):
    """Move every trainable weight off its init (LoRA B starts at zero, gates at their init),
    so a round trip that dropped any of them would show in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in student.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def outputs(student, batch):
    with torch.no_grad():
        return student(batch, return_logits=True)


@pytest.mark.parametrize(
    "options",
    [
        {"quant": True},
        {
            "beats": False,
            "moe": {"enabled": True, "num_experts": 4, "top_k": 2, "split": "clustered"},
        },
    ],
    ids=["qlora", "moe"],
)
def test_round_trip_gives_identical_outputs(make_cfg, tmp_path, noise, options):
    torch.manual_seed(0)
    student = SalmonnStudent.from_config(make_cfg(**options))
    perturb_trainables(student)
    student.eval()
    batch = student.processor([noise(1), noise(2, 1)], ["a", "b c"], ["hello", "dog barks"])
    before = outputs(student, batch)
    path = student.save_pretrained(tmp_path / "ckpt")

    torch.manual_seed(123)  # fresh inits must all be overwritten
    loaded = SalmonnStudent.from_pretrained(path).eval()
    after = outputs(loaded, batch)
    torch.testing.assert_close(after.hidden_states, before.hidden_states, rtol=0, atol=1e-6)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=1e-5)
    if options.get("moe"):
        torch.testing.assert_close(after.balance_loss, before.balance_loss)
        assert torch.equal(
            moe_layers(loaded.llm)[1].neuron_index, moe_layers(student.llm)[1].neuron_index
        )
    assert loaded.config == student.config


def test_checkpoint_holds_only_trainable_parts(student, tmp_path):
    path = student.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert "student_config.json" in files and "trainable.safetensors" in files
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(files)
    weights = load_file(path / "trainable.safetensors")
    assert {k.split(".")[0] for k in weights} == {"fusion", "qformer", "projection"}
    adapter = load_file(path / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    adapter_config = json.loads((path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and sorted(adapter_config["target_modules"]) == sorted(
        student.config.llm.lora.target_modules
    )
    meta = json.loads((path / "student_config.json").read_text())
    assert meta["model"]["llm"]["name_or_path"] == student.config.llm.name_or_path
    assert meta["architecture"]["qformer.hidden_size"] == 32
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folders left


def test_overwrite_is_atomic(student, tmp_path, monkeypatch):
    path = student.save_pretrained(tmp_path / "ckpt")
    first = (path / "trainable.safetensors").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        student.save_pretrained(path)
    assert (path / "trainable.safetensors").read_bytes() == first  # old checkpoint intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    monkeypatch.undo()
    student.save_pretrained(path)  # replacing an existing checkpoint works
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.fixture(scope="module")
def saved(student, tmp_path_factory):
    return student.save_pretrained(tmp_path_factory.mktemp("saved") / "ckpt")


def test_other_qformer_width_is_refused(make_cfg, saved):
    other = SalmonnStudent.from_config(make_cfg(qformer={"hidden_size": 16}))
    with pytest.raises(
        CheckpointMismatchError, match=r"qformer.hidden_size: checkpoint 32, model 16"
    ):
        other.load_trainable(saved)


def test_settings_that_only_train_do_not_refuse_a_checkpoint(make_cfg, student, saved):
    """Dropout and the init std shape nothing: a checkpoint loads whatever they are, including
    one saved before ``initializer_range`` existed (its architecture has no such key)."""
    other = SalmonnStudent.from_config(make_cfg(qformer={"dropout": 0.3,
                                                         "initializer_range": 0.5}))
    other.load_trainable(saved)
    for name, tensor in student.qformer.state_dict().items():
        assert torch.equal(other.qformer.state_dict()[name], tensor), name
    meta = json.loads((saved / "student_config.json").read_text())
    assert "qformer.initializer_range" not in meta["architecture"]


def test_moe_on_versus_off_is_refused(make_cfg, saved):
    cfg = make_cfg(moe={"enabled": True, "num_experts": 4, "top_k": 2})
    with pytest.raises(CheckpointMismatchError, match=r"moe.enabled: checkpoint False, model True"):
        SalmonnStudent.from_pretrained(saved, config=cfg)


def test_other_llm_hidden_size_is_refused(make_cfg, saved, models_dir, tokenizer, tiny_llama_factory):

    wide = tiny_llama_factory(models_dir / "wide", tokenizer, hidden=128)
    other = SalmonnStudent.from_config(make_cfg(llm={"name_or_path": str(wide)}))
    with pytest.raises(CheckpointMismatchError, match=r"llm.hidden_size: checkpoint 64, model 128"):
        other.load_trainable(saved)


def test_missing_checkpoint_names_the_folder(student, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        student.load_trainable(tmp_path / "nowhere")


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_a_truncated_weights_file_is_one_clear_error(student, tmp_path, keep):
    from students.checkpoint import WEIGHTS_FILE, CheckpointCorruptError, load_student_weights

    folder = student.save_pretrained(tmp_path / "ckpt")
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointCorruptError, match=f"{weights}: truncated or corrupt"):
        load_student_weights(student, folder)
