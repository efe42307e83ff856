"""The model card (``README.md``) written beside every saved student.

Why a card: a folder of safetensors does not say what it is. The card states the architecture
and its parameter counts, how the soft targets were made (teacher, mode, k, the cache meta's
digest, so two students can be told apart by their targets), the data, the recipe inlined, the
last evaluation and the licences of the parts. Its YAML front matter follows the Hugging Face
Hub's model-card metadata, written by ``huggingface_hub.ModelCardData`` (``library_name``,
``tags``, ``datasets``, ``base_model``, ``model-index`` with the evaluation's metrics).

What the student alone cannot know (the run: recipe, cache, data, report) travels as a
``CardContext``, saved as ``model_card.json`` beside the card so the card can be written again
with a newer report (after the run's evaluation, or by ``distill export``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from students.config import ModelConfig
    from students.model import SalmonnStudent

CARD_FILE = "README.md"
CONTEXT_FILE = "model_card.json"
LIBRARY_NAME = "distill"
TOOLKIT_LICENSE = "Apache-2.0"  # pyproject.toml [project] license

# Hub task types for the model-index, by our task names.
_HUB_TASKS = {"asr": ("automatic-speech-recognition", "Speech recognition"),
              "audiocaption": ("audio-captioning", "Audio captioning"),
              "audiocaption_v2": ("audio-captioning", "Audio captioning")}

# Licences of known pretrained parts, matched on a lower-cased model name or path; each from the
# model's own release: Whisper (github.com/openai/whisper LICENSE: MIT), BEATs
# (github.com/microsoft/unilm LICENSE: MIT), Llama 3.2 (its Community License Agreement),
# SmolLM2 (huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct: Apache-2.0), DeepSeek-R1-Distill
# (MIT, its Llama base under the Llama 3.1 licence).
_KNOWN_LICENSES = (
    ("whisper", "mit", "MIT"),
    ("beats", "mit", "MIT"),
    ("llama-3.2", "llama3.2", "Llama 3.2 Community License"),
    ("llama-3.1", "llama3.1", "Llama 3.1 Community License"),
    ("smollm2", "apache-2.0", "Apache-2.0"),
    ("deepseek-r1-distill-llama", "mit", "MIT (base model: Llama 3.1 Community License)"),
)


@dataclass
class CardContext:
    """The run behind a checkpoint; every field is optional (a bare ``save_pretrained`` has none).

    ``recipe``: ``Recipe.model_dump(mode="json")``. ``cache_meta``: the teacher cache's
    ``meta.json`` as a dict. ``data``: one ``{"split", "path", "records", "weight"?}`` per
    manifest. ``report``: ``report.json`` of the last evaluation. ``training``: step count and
    examples seen.
    """

    recipe: dict | None = None
    cache_meta: dict | None = None
    data: list[dict] = field(default_factory=list)
    report: dict | None = None
    training: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)  # distill export: source, merged_lora, dtype
    # Filled from the student by write_card, so the card can be rewritten without loading it.
    model: dict | None = None
    parameters: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, directory: str | Path) -> CardContext:
        """The context saved with a checkpoint, or an empty one when there is none."""
        path = Path(directory) / CONTEXT_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def cache_meta_digest(meta: dict) -> str:
    """sha256 of the cache meta record as the cache writes it (sorted keys, indent 2)."""
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------ counting
def _numel(param: torch.Tensor) -> int:
    """Elements of the weight a parameter stands for: a bitsandbytes 4-bit weight packs two
    values a byte, and its ``quant_state.shape`` is the original shape."""
    state = getattr(param, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return int(torch.Size(state.shape).numel())
    return param.numel()


def parameter_counts(student: SalmonnStudent) -> dict[str, int]:
    """``trainable`` (requires grad), ``quantised`` (4-bit weights, counted as the values they
    hold), ``frozen`` (the rest) and ``total``; tied weights are counted once."""
    counts = {"trainable": 0, "frozen": 0, "quantised": 0}
    for param in student.parameters():
        if getattr(param, "quant_state", None) is not None:
            counts["quantised"] += _numel(param)
        elif param.requires_grad:
            counts["trainable"] += param.numel()
        else:
            counts["frozen"] += param.numel()
    counts["total"] = sum(counts.values())
    return counts


def parameter_counts_by_part(student: SalmonnStudent) -> dict[str, int]:
    parts = {"whisper": student.whisper, "beats": student.beats, "fusion": student.fusion,
             "qformer": student.qformer, "projection": student.projection, "llm": student.llm}
    return {name: sum(_numel(p) for p in module.parameters())
            for name, module in parts.items() if module is not None}


# ------------------------------------------------------------------------------ rendering
def _license(name: str | None) -> tuple[str | None, str]:
    lowered = (name or "").lower()
    for needle, hub_id, text in _KNOWN_LICENSES:
        if needle in lowered:
            return hub_id, text
    return None, "unknown: see the model's own card"


def _eval_results(context: CardContext, model_name: str) -> list:
    from huggingface_hub import EvalResult

    results = []
    for result in (context.report or {}).get("sets", []):
        task_type, task_name = _HUB_TASKS.get(result["task"], (result["task"], result["task"]))
        for metric, entry in result["metrics"].items():
            if entry.get("value") is None:
                continue
            results.append(EvalResult(
                task_type=task_type, task_name=task_name, dataset_type=result["name"],
                dataset_name=result["name"], metric_type=metric, metric_name=metric,
                metric_value=round(float(entry["value"]), 4)))
    return results


def _front_matter(cfg: ModelConfig, context: CardContext, model_name: str) -> str:
    from huggingface_hub import ModelCardData

    tasks = sorted({s["task"] for s in (context.report or {}).get("sets", [])}
                   | set(cfg.prompt.instructions))
    tags = ["audio", "audio-language-model", "salmonn", "knowledge-distillation"]
    tags += [_HUB_TASKS[t][0] for t in tasks if t in _HUB_TASKS]
    if cfg.llm.lora.enabled:
        tags.append("lora")
    if cfg.llm.quantization.load_in_4bit:
        tags.append("4-bit")
    if cfg.moe.enabled:
        tags.append("mixture-of-experts")
    hub_license, _ = _license(cfg.llm.name_or_path)
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag="audio-text-to-text",
        license=hub_license or "other",
        base_model=context.export.get("base_model") or cfg.llm.name_or_path,
        tags=list(dict.fromkeys(tags)),
        datasets=[Path(d["path"]).stem for d in context.data if d.get("split") == "train"] or None,
        model_name=model_name,
        eval_results=_eval_results(context, model_name) or None,
    )
    return data.to_yaml()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_card(context: CardContext, *, disk_bytes: int | None = None) -> str:
    """The whole ``README.md`` from a context that ``write_card`` completed (``model``,
    ``parameters``, ``parts``): front matter, then the sections a reader needs, in order."""
    from students.config import ModelConfig

    cfg = ModelConfig.model_validate(context.model)
    recipe = context.recipe or {}
    model_name = recipe.get("name") or "salmonn-student"
    counts = context.parameters
    has_beats = "beats" in context.parts
    lines = ["---", _front_matter(cfg, context, model_name).rstrip(), "---", "",
             f"# {model_name}", ""]
    if recipe.get("description"):
        lines += [recipe["description"], ""]
    lines += ["A SALMONN-style audio language model (Whisper encoder"
              + (" + BEATs" if has_beats else "")
              + ", window-level Q-Former, projection, causal LM) trained with the `distill` "
              "toolkit. Load it with:", "", "```python", "from students import SalmonnStudent",
              "student = SalmonnStudent.from_pretrained(\"<this folder>\")",
              "print(student.transcribe([\"clip.wav\"]))", "```", ""]

    if context.export:
        export = context.export
        lines += [f"Exported from `{export['source']}` by `distill export` "
                  + ("with the LoRA adapters merged into the LLM" if export["merged_lora"]
                     else "with the base LLM and its adapters") + f", {export['dtype']}; "
                  f"base model `{export['base_model']}`. Scores and timings below were "
                  "measured on that checkpoint.", ""]
    lines += ["## Architecture", "", "| part | what | parameters |", "|---|---|---|"]
    by_part = context.parts
    llm_kind = cfg.llm.name_or_path + (" (4-bit " + cfg.llm.quantization.quant_type + ")"
                                       if cfg.llm.quantization.load_in_4bit else "")
    if cfg.llm.lora.enabled:
        llm_kind += f", LoRA r={cfg.llm.lora.r} alpha={cfg.llm.lora.alpha:g} on " \
                    f"{', '.join(cfg.llm.lora.target_modules)}"
    if cfg.moe.enabled:
        llm_kind += f", MoE {cfg.moe.top_k} of {cfg.moe.num_experts} experts"
    descriptions = {
        "whisper": f"{cfg.whisper.name_or_path} encoder" + (" (frozen)" if cfg.whisper.freeze else ""),
        "beats": f"BEATs {cfg.beats.checkpoint}" + (" (frozen)" if cfg.beats.freeze else ""),
        "fusion": "layer norms of the encoder outputs",
        "qformer": f"{cfg.qformer.num_layers} layer(s), {cfg.qformer.queries_per_window} query per "
                   f"{cfg.qformer.window_frames}-frame window, width {cfg.qformer.hidden_size}",
        "projection": "Q-Former width -> LLM width",
        "llm": llm_kind,
    }
    for part, count in by_part.items():
        lines.append(f"| {part} | {descriptions[part]} | {count:,} |")
    lines += ["", f"Parameters: {counts['total']:,} in all; {counts['trainable']:,} trainable, "
              f"{counts['frozen']:,} frozen, {counts['quantised']:,} quantised to 4 bits "
              "(counted as the values they hold). Compute dtype: " + cfg.compute_dtype + ".", ""]

    lines += ["## Teacher and soft targets", ""]
    meta = context.cache_meta
    if meta:
        lines += [
            "| teacher | mode | top-k | logprobs | temperature | cache meta sha256 |",
            "|---|---|---|---|---|---|",
            f"| {meta.get('teacher')} | {meta.get('mode')} | {meta.get('k')} | "
            f"{meta.get('logprob_mode')} | {meta.get('temperature')} | "
            f"`{cache_meta_digest(meta)}` |", "",
            "score mode: the teacher scores the reference text (one forward pass); generate "
            "mode: it writes its own answer (and rationale), which becomes the target.", ""]
        loss = recipe.get("loss") or {}
        if loss.get("divergence"):
            lines += [f"Loss: {loss.get('ce_weight')} x CE + {loss.get('kd_weight')} x "
                      f"{loss.get('divergence')} (temperature {loss.get('temperature')}, tail "
                      f"{loss.get('tail')}).", ""]
    else:
        lines += ["No teacher cache is recorded for this checkpoint (trained with CE only, or "
                  "saved outside `distill train-student`).", ""]

    lines += ["## Data", ""]
    if context.data:
        lines += ["| split | manifest | records | weight |", "|---|---|---|---|"]
        for entry in context.data:
            lines.append(f"| {entry['split']} | `{entry['path']}` | {entry['records']:,} | "
                         f"{_fmt(entry.get('weight'))} |")
        lines.append("")
    training = context.training
    if training:
        lines += [f"Training: {training.get('steps')} optimizer steps, "
                  f"{training.get('examples', 0):,} examples seen "
                  f"({training.get('ce_only', 0):,} without cached targets).", ""]
    if not context.data and not training:
        lines += ["Not recorded (saved outside `distill train-student`).", ""]

    lines += ["## Evaluation", ""]
    report = context.report
    if report and report.get("sets"):
        lines += [f"From the last report (checkpoint `{report.get('checkpoint')}`).", "",
                  "| set | task | samples | metric | value | what it is |",
                  "|---|---|---|---|---|---|"]
        for result in report["sets"]:
            for name, metric in result["metrics"].items():
                value = _fmt(metric.get("value")) if metric.get("value") is not None else \
                    f"unavailable: {metric.get('unavailable_reason')}"
                lines.append(f"| {result['name']} | {result['task']} | {result['samples']} | "
                             f"{name} | {value} | {metric.get('label', '')} |")
        lines.append("")
    else:
        lines += ["No evaluation report yet (`distill evaluate RECIPE --checkpoint DIR`).", ""]

    lines += ["## Efficiency", ""]
    eff = (report or {}).get("efficiency")
    if eff:
        lines += [f"Measured on {eff['device']} (batch 1, {eff['warmup_runs']} warm-up and "
                  f"{eff['timed_runs']} timed runs):", "",
                  "| measure | median | p90 |", "|---|---|---|",
                  f"| TTFT (s) | {_fmt(eff['ttft_s']['median'])} | {_fmt(eff['ttft_s']['p90'])} |",
                  f"| TPOT (s) | {_fmt(eff['tpot_s']['median'])} | {_fmt(eff['tpot_s']['p90'])} |",
                  f"| peak memory (GB, {eff['memory_kind']}) | {_fmt(eff['peak_memory_gb'])} | |",
                  ""]
    else:
        lines += ["Not measured yet.", ""]
    if disk_bytes is not None:
        lines += [f"This folder: {disk_bytes / 1e6:.1f} MB on disk.", ""]

    lines += ["## Licences", "", "| part | source | licence |", "|---|---|---|"]
    lines.append(f"| speech encoder | {cfg.whisper.name_or_path} | "
                 f"{_license(cfg.whisper.name_or_path)[1]} |")
    if has_beats:
        lines.append(f"| audio encoder | BEATs ({cfg.beats.checkpoint}) | {_license('beats')[1]} |")
    lines.append(f"| language model | {cfg.llm.name_or_path} | {_license(cfg.llm.name_or_path)[1]} |")
    if meta:
        lines.append(f"| teacher (targets only) | {meta.get('teacher')} | "
                     f"{_license(meta.get('teacher'))[1]} |")
    lines += [f"| Q-Former, projection, adapters | trained here | weights: the licences above "
              f"apply; code: {TOOLKIT_LICENSE} |", "",
              "Check the data's licences too: the manifests above name the corpora.", ""]

    if recipe:
        import yaml

        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(),
                  "```", ""]
    return "\n".join(lines)


def write_card(student: SalmonnStudent, directory: str | Path,
               context: CardContext | None = None) -> Path:
    """Write ``README.md`` (and ``model_card.json`` with the context) into ``directory``; the
    caller makes it atomic (``save_student`` writes into a staging folder)."""
    directory = Path(directory)
    context = dataclasses.replace(
        context or CardContext(), model=student.config.model_dump(mode="json"),
        parameters=parameter_counts(student), parts=parameter_counts_by_part(student))
    (directory / CONTEXT_FILE).write_text(context.to_json(), encoding="utf-8")
    path = directory / CARD_FILE
    path.write_text(render_card(context, disk_bytes=_size(directory)), encoding="utf-8")
    return path


def _size(directory: Path) -> int:
    """Bytes of the checkpoint's files, the card's own two left out."""
    return sum(p.stat().st_size for p in directory.rglob("*")
               if p.is_file() and p.name not in (CARD_FILE, CONTEXT_FILE))


def refresh_card(directory: str | Path, *, report: dict) -> Path:
    """Rewrite a saved checkpoint's card with a new evaluation report (``report.json``'s
    content), each file atomically; no model is loaded."""
    import os
    import tempfile

    directory = Path(directory)
    context = CardContext.read(directory)
    if context.model is None:
        raise FileNotFoundError(f"{directory}: no {CONTEXT_FILE} to rewrite the card from")
    context.report = report
    for name, text in ((CONTEXT_FILE, context.to_json()),
                       (CARD_FILE, render_card(context, disk_bytes=_size(directory)))):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, directory / name)
    return directory / CARD_FILE
