"""What a recipe would run, in words, and which of its input files are missing.

Why: before a multi-day run a person wants to read, in one screen, which models, data and
settings the recipe resolves to; and a missing manifest should fail now, not at step 20000.
"""

from __future__ import annotations

from pathlib import Path

from distill.config import Recipe


def describe_plan(recipe: Recipe) -> str:
    model, teacher, data, loss, train, ev = (
        recipe.model, recipe.teacher, recipe.data, recipe.loss, recipe.train, recipe.eval
    )
    beats = f"BEATs ({model.beats.checkpoint})" if model.beats.enabled else "no BEATs"
    quant = model.llm.quantization
    llm_bits = f"4-bit {quant.quant_type}" if quant.load_in_4bit else "full precision"
    lora = model.llm.lora
    adapters = (
        f"LoRA r={lora.r} alpha={lora.alpha:g} on {', '.join(lora.target_modules)}"
        if lora.enabled
        else "no LoRA"
    )
    moe = (
        f"; MoE {model.moe.top_k}-of-{model.moe.num_experts} ({model.moe.split} split)"
        if model.moe.enabled
        else ""
    )
    servers = ", ".join(teacher.endpoints) or f"its own server ({teacher.server.python})"
    kd_weight = (
        f"{loss.kd_weight_schedule.start:g}->{loss.kd_weight_schedule.end:g}"
        if loss.kd_weight_schedule
        else f"{loss.kd_weight:g}"
    )
    steps = f"{train.max_steps} steps" if train.max_steps else f"{train.epochs} epoch(s)"
    lines = [
        f"plan for recipe {recipe.name!r} (stage {recipe.stage}):",
        f"  student   {model.whisper.name_or_path} + {beats} -> window Q-Former "
        f"({model.qformer.window_frames}-frame windows, {model.qformer.num_layers} layers) -> "
        f"{model.llm.name_or_path} ({llm_bits}, {adapters}{moe})",
        f"  teacher   {teacher.model} via {teacher.backend} ({servers}), {teacher.mode} mode"
        + "".join(f", {task}: {mode}" for task, mode in sorted(teacher.task_modes.items()))
        + (f" (CE on {teacher.generate_ce_target})"
           if "generate" in {teacher.mode, *teacher.task_modes.values()} else "") + ", "
        f"top-{teacher.top_k} -> {teacher.cache_dir}",
        "  data      " + _manifest_line(data.train, "train") + "; " + _manifest_line(data.valid, "valid"),
        f"  loss      {loss.ce_weight:g} x CE + {kd_weight} x {loss.divergence} "
        f"(T={loss.temperature:g}, tail={loss.tail})",
        f"  train     {steps}, batch {train.batch_size} x accumulation {train.grad_accumulation}, "
        f"{train.precision}, AdamW lr {train.optimizer.lr:g}{_group_lrs(train.optimizer)}, "
        f"clip={train.clip.mode} -> {train.output_dir}",
        "  evaluate  " + (", ".join(f"{s.name} ({'/'.join(s.metrics)})" for s in ev.sets) or "no sets")
        + (", efficiency" if ev.efficiency.enabled else "") + f" -> {ev.output_dir}",
    ]
    return "\n".join(lines)


def _manifest_line(specs: list, split: str) -> str:
    if not specs:
        return f"no {split} manifests"
    return f"{len(specs)} {split} manifest(s) (" + ", ".join(
        f"{Path(s.path).name} x{s.weight:g}" for s in specs
    ) + ")"


def missing_inputs(recipe: Recipe) -> list[str]:
    """Problems with the recipe's manifests: missing files, or records that fail validation."""
    from distill.data.manifest import ManifestError, validate_manifest

    problems = []
    named = [("data.train", s.path) for s in recipe.data.train]
    named += [("data.valid", s.path) for s in recipe.data.valid]
    named += [(f"eval.sets.{s.name}", s.manifest) for s in recipe.eval.sets]
    for key, path in named:
        if not Path(path).is_file():
            problems.append(f"{key}: manifest {path} does not exist")
            continue
        try:
            validate_manifest(path, check_audio=recipe.data.check_audio_files)
        except ManifestError as err:
            problems.append(f"{key}: {err}")
    return problems


def _group_lrs(optimizer) -> str:
    """The audio path's own lr and the LLM's start step, when the recipe sets them."""
    parts = []
    if optimizer.audio_lr is not None:
        parts.append(f"audio path {optimizer.audio_lr:g}")
    if optimizer.llm_start_step:
        parts.append(f"LLM from step {optimizer.llm_start_step}")
    return f" ({', '.join(parts)})" if parts else ""
