"""Export a trained student as one self-contained folder for inference (``distill export``).

A checkpoint holds only what training changed: its config names the frozen parts (Whisper,
BEATs, the base LLM) by path or hub id, so it loads only where those are. An export bundles
them: ``whisper/`` (the encoder alone, safetensors), ``beats.pt`` (the official checkpoint
file, copied), ``llm/`` (the base LLM and tokenizer), next to the usual config, trainable weights
and model card. ``student_config.json`` lists the bundled parts, and ``read_config`` resolves
them against the folder, so ``SalmonnStudent.from_pretrained(folder)`` works wherever the folder
is moved, with no recipe.

``merge_lora``: the adapters are folded into a dense copy of the LLM (merged in float32, then
cast once to the export dtype, bf16 by default), so inference runs no adapter matmuls and needs
no bitsandbytes. A student trained on a 4-bit base learnt its adapters against the NF4-rounded
weights; the merged copy uses the unrounded ones, so its outputs differ by that rounding (plus
the export dtype's). The export measures this on a fixed probe clip and reports it. Merging into
4-bit weights is not offered: it would round the merged weights to NF4 a second time.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from students.card import CardContext, write_card
from students.checkpoint import (
    ADAPTER_DIR,
    _load_adapter,
    _load_trainable_state,
    _replace_dir,
    read_config,
    trainable_state,
    write_student_files,
)

EXPORT_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
WHISPER_DIR, BEATS_FILE, LLM_DIR = "whisper", "beats.pt", "llm"
PROBE_SECONDS, PROBE_TOKENS = 3.0, 16


class ExportError(ValueError):
    """An export that cannot be made; the message says why and what to do."""


@dataclass
class ProbeComparison:
    """Exported vs source student on one fixed clip: teacher-forced prompt logits and greedy ids."""

    max_abs_logit_diff: float
    logit_scale: float  # max |logit| of the source, to read the difference against
    greedy_equal_tokens: int
    greedy_tokens: int


@dataclass
class ExportResult:
    path: Path
    merged: bool
    dtype: str
    probe: ProbeComparison


def export_student(checkpoint: str | Path, output: str | Path, *, merge_lora: bool = False,
                   dtype: str | None = None) -> ExportResult:
    """Write the export of ``checkpoint`` (a student folder) to ``output``, atomically.

    ``dtype``: a key of ``EXPORT_DTYPES``; default bf16 when merging, else the checkpoint's own
    compute dtype. Raises ExportError for a checkpoint that cannot be exported so.
    """
    from students.model import SalmonnStudent

    source = Path(checkpoint)
    cfg = read_config(source)
    if dtype is not None and dtype not in EXPORT_DTYPES:
        raise ExportError(f"--dtype {dtype!r}: expected one of {', '.join(EXPORT_DTYPES)}")
    if merge_lora and not cfg.llm.lora.enabled:
        raise ExportError(f"{source}: this student has no LoRA adapters to merge")
    if merge_lora and cfg.moe.enabled:
        raise ExportError(f"{source}: --merge-lora is not supported for MoE students (the "
                          "adapters sit on expert slices of the converted FFNs); export without it")
    dtype_name = EXPORT_DTYPES[dtype] if dtype else ("bfloat16" if merge_lora else cfg.compute_dtype)
    out = Path(output)
    if out.resolve() == source.resolve():
        raise ExportError(f"{out}: the export must go to another folder than the checkpoint")
    student = SalmonnStudent.from_pretrained(source).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_whisper_encoder(student.whisper, staging / WHISPER_DIR)
        bundled = {"whisper.name_or_path": WHISPER_DIR, "llm.name_or_path": LLM_DIR}
        if cfg.beats.enabled:
            shutil.copy2(cfg.beats.checkpoint, staging / BEATS_FILE)
            bundled["beats.checkpoint"] = BEATS_FILE
        if merge_lora:
            _write_merged_llm(cfg, source / ADAPTER_DIR, dtype_name, staging / LLM_DIR)
        else:
            _write_base_llm(cfg, staging / LLM_DIR)
        student.tokenizer.save_pretrained(staging / LLM_DIR)

        llm = cfg.llm.model_copy(update={"revision": None, "gguf_file": None}, deep=True)
        if merge_lora:
            llm.quantization.load_in_4bit = False
            llm.lora.enabled = False
        exported_cfg = cfg.model_copy(update={"llm": llm, "compute_dtype": dtype_name}, deep=True)
        here = _with_paths(exported_cfg, {k: str(staging / v) for k, v in bundled.items()})
        exported = SalmonnStudent.from_config(here).eval()
        _load_trainable_state(exported, trainable_state(student), source)
        if not merge_lora and cfg.llm.lora.enabled:
            _load_adapter(exported, source / ADAPTER_DIR)
        exported.config = _with_paths(exported_cfg, bundled)  # what the folder's config says
        write_student_files(exported, staging, bundled=bundled)
        context = CardContext.read(source)
        context.export = {"source": str(source), "merged_lora": merge_lora, "dtype": dtype_name,
                          "base_model": cfg.llm.name_or_path}
        write_card(exported, staging, context)
        probe = compare_on_probe(student, exported)
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, merge_lora, dtype_name, probe)


def _with_paths(cfg, paths: dict[str, str]):
    data = cfg.model_dump()
    for key, value in paths.items():
        section, _, name = key.partition(".")
        data[section][name] = value
    return type(cfg).model_validate(data)


def _write_whisper_encoder(encoder, folder: Path) -> None:
    """The encoder's weights under a full Whisper checkpoint's names (``model.encoder.*``) and
    its config: the layout ``load_whisper_encoder`` reads, without the decoder."""
    from safetensors.torch import save_file

    folder.mkdir()
    encoder.config.save_pretrained(folder)
    state = {f"model.encoder.{k}": v.detach().contiguous().cpu()
             for k, v in encoder.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _load_base(cfg, dtype):
    from transformers import AutoModelForCausalLM

    kwargs = {"revision": cfg.llm.revision, "dtype": dtype}
    if cfg.llm.gguf_file:
        kwargs["gguf_file"] = cfg.llm.gguf_file
    return AutoModelForCausalLM.from_pretrained(cfg.llm.name_or_path, **kwargs)


def _write_base_llm(cfg, folder: Path) -> None:
    """The base LLM as it is stored ("auto" dtype: the same weights, so the same 4-bit rounding
    at load time)."""
    _load_base(cfg, "auto").save_pretrained(folder)


def _write_merged_llm(cfg, adapter_dir: Path, dtype_name: str, folder: Path) -> None:
    from peft import PeftModel

    from distill.data.dtypes import torch_dtype

    base = _load_base(cfg, torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.to(torch_dtype(dtype_name)).save_pretrained(folder)


@torch.no_grad()
def compare_on_probe(source, exported) -> ProbeComparison:
    """Both students on one fixed noise clip and the ASR prompt: prompt logits and greedy ids."""
    generator = torch.Generator().manual_seed(0)
    clip = 0.05 * torch.randn(int(PROBE_SECONDS * 16000), generator=generator)
    instruction = source.processor.instruction("asr")
    logits, ids = [], []
    for student in (source, exported):
        batch = {k: v.to(student.device) for k, v in
                 student.processor([clip], [instruction]).items()}
        logits.append(student(batch, return_logits=True).logits.float().cpu())
        ids.append(student.generate(batch, num_beams=1, max_new_tokens=PROBE_TOKENS,
                                    repetition_penalty=1.0)[0].cpu())
    diff = (logits[0] - logits[1]).abs()  # batch of one: no padding positions
    length = min(len(ids[0]), len(ids[1]))
    equal = int((ids[0][:length] == ids[1][:length]).cumprod(0).sum())
    return ProbeComparison(float(diff.max()), float(logits[0].abs().max()), equal,
                           max(len(ids[0]), len(ids[1])))


def describe(result: ExportResult) -> str:
    probe = result.probe
    kind = "adapters merged into a dense" if result.merged else "base LLM and adapters,"
    return "\n".join([
        f"exported to {result.path} ({kind} {result.dtype})",
        f"  check on a fixed {PROBE_SECONDS:g} s probe clip against the checkpoint: "
        f"max |logit difference| {probe.max_abs_logit_diff:.3g} (logits up to "
        f"{probe.logit_scale:.3g}); greedy: first {probe.greedy_equal_tokens} of "
        f"{probe.greedy_tokens} tokens equal",
        f"  load it with: SalmonnStudent.from_pretrained({str(result.path)!r})",
    ])
