"""Student checkpoints: the trainable parts and the config, never the frozen pretrained weights.

Layout of a checkpoint folder:
  ``student_config.json``   the ModelConfig, a format version and the architecture it describes
  ``trainable.safetensors`` fusion norms, Q-Former, projection, MoE gates (+ unfrozen encoders)
  ``adapter/``              the LLM's LoRA adapter in peft's own format (``save_pretrained``)

Why the architecture is stored: weights saved from one shape of student must never be poured
into another; loading compares both descriptions and names every difference. Frozen weights
(Whisper, BEATs, the base LLM) load from the paths in the config. Writes go to a temporary folder
renamed into place, so a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distill.errors import DistillError
from students.config import ModelConfig
from students.moe.layer import moe_layers

if TYPE_CHECKING:
    from students.card import CardContext
    from students.model import SalmonnStudent

FORMAT_VERSION = 1
CONFIG_FILE = "student_config.json"
WEIGHTS_FILE = "trainable.safetensors"
ADAPTER_DIR = "adapter"


class CheckpointMismatchError(DistillError, ValueError):
    """A checkpoint that does not fit the student it is loaded into; says what differs."""


class CheckpointCorruptError(DistillError, ValueError):
    """A weights file that cannot be read (truncated, corrupt); the message names it."""


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a cut or damaged file named in one line."""
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise CheckpointCorruptError(f"{path}: truncated or corrupt ({err})") from None


def architecture(student: SalmonnStudent) -> dict[str, Any]:
    """The shape-defining facts of ``student`` as a flat ``{key: value}`` mapping."""
    cfg = student.config
    lm_config = student.causal_lm.config.get_text_config()
    desc: dict[str, Any] = {
        "whisper.d_model": student.whisper.config.d_model,
        "whisper.num_mel_bins": student.whisper.config.num_mel_bins,
        "whisper.trainable": not cfg.whisper.freeze,
        "beats.enabled": student.beats is not None,
        "qformer.encoder_width": student.fusion.out_dim,
        "llm.model_type": lm_config.model_type,
        "llm.hidden_size": lm_config.hidden_size,
        "llm.num_hidden_layers": lm_config.num_hidden_layers,
        "llm.vocab_size": lm_config.vocab_size,
        "lora.enabled": cfg.llm.lora.enabled,
        "moe.enabled": cfg.moe.enabled,
    }
    if student.beats is not None:
        desc["beats.encoder_embed_dim"] = student.beats.output_dim
        desc["beats.trainable"] = not cfg.beats.freeze
    for key, value in cfg.qformer.model_dump().items():
        if key not in ("dropout", "initializer_range"):  # training settings, not shapes
            desc[f"qformer.{key}"] = value
    if cfg.llm.lora.enabled:
        desc["lora.r"] = cfg.llm.lora.r
        desc["lora.alpha"] = cfg.llm.lora.alpha
        desc["lora.target_modules"] = sorted(cfg.llm.lora.target_modules)
    if cfg.moe.enabled:
        for key in ("num_experts", "top_k", "split", "split_seed"):
            desc[f"moe.{key}"] = getattr(cfg.moe, key)
    return desc


def trainable_state(student: SalmonnStudent) -> dict[str, torch.Tensor]:
    """Everything trainable but LoRA, by module (not by ``requires_grad``, which a training
    stage may toggle), plus each MoE layer's neuron split for the load-time check."""
    modules: dict[str, torch.nn.Module] = {
        "fusion": student.fusion,
        "qformer": student.qformer,
        "projection": student.projection,
    }
    if not student.config.whisper.freeze:
        modules["whisper"] = student.whisper
    if student.beats is not None and not student.config.beats.freeze:
        modules["beats"] = student.beats
    state = {
        f"{prefix}.{name}": tensor
        for prefix, module in modules.items()
        for name, tensor in module.state_dict().items()
    }
    for i, layer in enumerate(moe_layers(student.llm)):
        for name, tensor in layer.gate.state_dict().items():
            state[f"moe.{i}.gate.{name}"] = tensor
        state[f"moe.{i}.neuron_index"] = layer.neuron_index
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_student(student: SalmonnStudent, directory: str | Path, *,
                 card: CardContext | None = None) -> Path:
    """Write the checkpoint, with its model card (``README.md``, see ``students.card``)."""
    from students.card import write_card

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write_student_files(student, staging)
        write_card(student, staging, card)
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_student_files(student: SalmonnStudent, folder: Path, *,
                        bundled: dict[str, str] | None = None) -> None:
    """The config, trainable weights and adapter into an existing ``folder`` (not atomic: the
    callers write into a staging folder). ``bundled`` maps config keys (``llm.name_or_path``)
    to files inside the folder that replace them (``distill export``)."""
    model = student.config.model_dump(mode="json")
    for key, relative in (bundled or {}).items():
        section, _, name = key.partition(".")
        model[section][name] = relative
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "architecture": architecture(student),
    }
    if bundled:
        meta["bundled"] = sorted(bundled)
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    save_file(trainable_state(student), str(folder / WEIGHTS_FILE))
    if student.config.llm.lora.enabled:
        student.llm.save_pretrained(str(folder / ADAPTER_DIR))


def _replace_dir(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first and removed
    only once the new one is in place."""
    if not target.exists():
        staging.rename(target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _read_meta(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a student checkpoint (no {CONFIG_FILE})")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"{path}: checkpoint format {meta.get('format_version')!r}, "
            f"this code reads {FORMAT_VERSION}"
        )
    return meta


def read_config(directory: str | Path) -> ModelConfig:
    """The saved ModelConfig; paths of parts bundled in the folder (an exported student) are
    resolved against it, so the folder loads wherever it is moved."""
    meta = _read_meta(directory)
    model = meta["model"]
    for key in meta.get("bundled", []):
        section, _, name = key.partition(".")
        model[section][name] = str(Path(directory).absolute() / model[section][name])
    return ModelConfig.model_validate(model)


def load_student_weights(student: SalmonnStudent, directory: str | Path) -> None:
    """Load a checkpoint's trainable weights into ``student``, refusing any mismatch."""
    directory = Path(directory)
    saved = _read_meta(directory)["architecture"]
    current = json.loads(json.dumps(architecture(student)))  # same types as read from JSON
    diffs = [
        f"{key}: checkpoint {saved.get(key, '(absent)')!r}, model {current.get(key, '(absent)')!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if diffs:
        raise CheckpointMismatchError(
            f"{directory}: checkpoint was saved from a different architecture:\n  "
            + "\n  ".join(diffs)
        )
    _load_trainable_state(student, _read_weights(directory / WEIGHTS_FILE), directory)
    if student.config.llm.lora.enabled:
        _load_adapter(student, directory / ADAPTER_DIR)


def _load_trainable_state(student, state: dict[str, torch.Tensor], directory: Path) -> None:
    expected = trainable_state(student)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{directory / WEIGHTS_FILE}: does not fit this student: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, shape differences {shapes[:8]}"
        )
    for i, layer in enumerate(moe_layers(student.llm)):
        if not torch.equal(state[f"moe.{i}.neuron_index"], layer.neuron_index.cpu()):
            raise CheckpointMismatchError(
                f"{directory}: MoE layer {i} splits the FFN neurons differently than the "
                "checkpoint (another base LLM, split method or seed?)"
            )
    by_name = {
        "fusion": student.fusion,
        "qformer": student.qformer,
        "projection": student.projection,
        "whisper": student.whisper,
        "beats": student.beats,
    }
    with torch.no_grad():
        for key, value in state.items():
            prefix, _, rest = key.partition(".")
            if prefix == "moe":
                index, _, rest = rest.partition(".")
                if rest == "neuron_index":
                    continue
                module = moe_layers(student.llm)[int(index)]
            else:
                module = by_name[prefix]
            _tensor(module, rest).copy_(value)


def _tensor(module: torch.nn.Module, name: str) -> torch.Tensor:
    try:
        return module.get_parameter(name)
    except AttributeError:
        return module.get_buffer(name)


def _load_adapter(student: SalmonnStudent, adapter_dir: Path) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        raise CheckpointMismatchError(f"{path}: LoRA adapter missing from the checkpoint")
    state = _read_weights(path)
    expected = get_peft_model_state_dict(student.llm)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{path}: LoRA weights do not fit this LLM: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    set_peft_model_state_dict(student.llm, state)
