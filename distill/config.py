"""Recipe schema: one YAML file with sections model, teacher, data, loss, train, eval.

Why strict: a typo in a 3000-step run's recipe should fail in a second, not after an hour. Every
model forbids unknown keys, and every error names the file, the line, the key path and what was
expected. A recipe may inherit from another with ``base:`` (resolved relative to the file); mappings
merge key by key, everything else (lists, scalars) is replaced by the child.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from distill.data.config import (
    AudioConfig,
    AugmentConfig,
    GainAugmentConfig,
    NoiseAugmentConfig,
)
from distill.errors import DistillError
from distill.losses.modules import LOSSES, check_divergence_options
from distill.losses.reduction import DEFAULT_CHUNK_SIZE
from distill.schema import (
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Strict,
)
from students.config import (
    ALL_LLAMA_PROJECTIONS,
    DEFAULT_EVAL_BATCH_SIZE,
    DEFAULT_INSTRUCTIONS,
    BeatsEncoderConfig,
    DecodingConfig,
    LLMConfig,
    LoraConfig,
    ModelConfig,
    MoEConfig,
    PromptConfig,
    QFormerConfig,
    QuantizationConfig,
    WhisperEncoderConfig,
)
from students.config import SAMPLE_RATE as ENCODER_SAMPLE_RATE
from teachers.config import (
    DEFAULT_TEACHER_PROMPTS,
    TeacherConfig,
    TeacherPromptConfig,
    TeacherServerConfig,
)

# The sections owned by the parts, re-exported: ``from distill.config import ModelConfig`` works.
__all__ = [
    "ALL_LLAMA_PROJECTIONS", "DEFAULT_INSTRUCTIONS", "DEFAULT_TEACHER_PROMPTS", "AudioConfig",
    "AugmentConfig", "BeatsEncoderConfig", "DecodingConfig", "GainAugmentConfig", "LLMConfig",
    "LoraConfig", "ModelConfig", "MoEConfig", "NoiseAugmentConfig", "PromptConfig",
    "QFormerConfig", "QuantizationConfig", "Recipe", "RecipeError", "TeacherConfig",
    "TeacherPromptConfig", "TeacherServerConfig", "WhisperEncoderConfig", "dump_recipe",
    "load_recipe",
]

# ---------------------------------------------------------------------------------------- data
class ManifestSpec(Strict):
    """One JSONL manifest (docs/architecture.md, manifest record) and how often to draw from it."""

    path: str
    weight: PositiveFloat = 1.0
    tasks: list[str] | None = None


class DataConfig(Strict):
    train: list[ManifestSpec] = Field(default_factory=list)
    valid: list[ManifestSpec] = Field(default_factory=list)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    soft_targets: str | None = None
    missing_targets: Literal["error", "ce_only"] = "error"
    num_workers: NonNegInt = 2
    check_audio_files: bool = True


# ---------------------------------------------------------------------------------------- loss
class WeightScheduleConfig(Strict):
    """A weight that moves linearly from ``start`` to ``end`` over ``steps`` (then stays)."""

    start: NonNegFloat
    end: NonNegFloat
    steps: PositiveInt


class LossConfig(Strict):
    """CE on the reference plus KD to the cached teacher (docs/architecture.md, loss API)."""

    ce_weight: NonNegFloat = 1.0
    kd_weight: NonNegFloat = 1.0
    kd_weight_schedule: WeightScheduleConfig | None = None
    # The registered losses (distill.losses.LOSSES), and the options of the one chosen
    # (e.g. {beta: 0.3} for jsd, {skew: 0.1} for the skew KLs), checked against its declaration.
    divergence: str = "forward_kl"
    options: dict[str, float] = Field(default_factory=dict)
    temperature: PositiveFloat = 1.0
    scale_by_temperature_squared: bool = True
    tail: Literal["renorm", "bucket"] = "bucket"
    chunk_size: PositiveInt = DEFAULT_CHUNK_SIZE
    # A teacher whose vocabulary differs from the student's (distill.data.cross_rows): "auto"
    # maps rows where one teacher token and one student token cover the same characters and
    # uses ULD for the others; "map" the mapped rows only; "uld" ULD on every aligned row;
    # "off" refuses such a teacher.
    cross_tokenizer: Literal["auto", "map", "uld", "off"] = "auto"

    @field_validator("divergence")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in LOSSES:
            names = [repr(n) for n in LOSSES]
            raise ValueError(f"expected {', '.join(names[:-1])} or {names[-1]}")
        return name

    @model_validator(mode="after")
    def _options_belong_to_the_divergence(self) -> LossConfig:
        check_divergence_options(self.divergence, self.options)
        return self


# --------------------------------------------------------------------------------------- train
class OptimizerConfig(Strict):
    """AdamW. Two parameter groups (``distill.train.optim``): the audio path (Q-Former, fusion,
    projection, any unfrozen encoder) and the LLM (LoRA or its unfrozen weights).

    ``audio_lr``: the audio path's peak lr (null: ``lr``); its warm-up start and floor are scaled
    by ``audio_lr / lr``, so both groups follow one schedule shape. ``llm_start_step``: the LLM
    group is not updated before this step and its schedule (warm-up, then decay to ``min_lr`` at
    the last step) starts there: the projector warm-up of LLaVA's and SALMONN's first stage, so
    the randomly initialised audio path learns to speak to a fixed LLM before LoRA adapts it."""

    name: Literal["adamw"] = "adamw"
    lr: PositiveFloat = 3e-5
    min_lr: NonNegFloat = 1e-5
    warmup_start_lr: NonNegFloat = 1e-6
    audio_lr: PositiveFloat | None = None
    llm_start_step: NonNegInt = 0
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegFloat = 0.05


class ScheduleConfig(Strict):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: NonNegInt = 3000


class ClipConfig(Strict):
    """Dynamic gradient clipping: ZClip by default, AutoClip percentile, or a fixed max.

    ``max_norm``: fixed mode's threshold (1.0 when unset); for zclip/autoclip an explicit outer
    bound on the dynamic threshold, off when unset (a cap under the run's usual norm would make
    every step a fixed clip; the trainer warns when the cap clips most steps)."""

    mode: Literal["zclip", "autoclip", "fixed", "none"] = "zclip"
    max_norm: PositiveFloat | None = None
    zclip_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.97
    zclip_z_threshold: PositiveFloat = 2.5
    zclip_warmup_steps: NonNegInt = 25
    autoclip_percentile: Annotated[float, Field(gt=0, le=100)] = 10.0
    autoclip_history: PositiveInt = 1000


# The trainer's validation values by the name it logs them under -> whether higher is better.
VALIDATION_METRICS = {"token_accuracy": True, "valid_loss": False}


class CheckpointConfig(Strict):
    every_steps: PositiveInt = 1000
    keep_last: PositiveInt = 3
    best_metric: Literal[tuple(VALIDATION_METRICS)] = "token_accuracy"  # keeps runs/<name>/best


class TrainConfig(Strict):
    output_dir: str = "runs/student"
    seed: int = 42
    max_steps: PositiveInt | None = None
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 8
    grad_accumulation: PositiveInt = 1
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    # The batch's sequences go to the LLM as one row of real tokens (no padding computed; the
    # positions keep samples apart): the same loss, less work the more lengths differ.
    padding_free: bool = False
    # Megabytes of the frozen Whisper encoder's outputs kept in memory, keyed by each clip's
    # log-mel bytes (students/encoder_memo.py): a clip seen again skips the encoder. For small
    # CPU runs without augmentation (the demo: 0.1 s of a 1 s step after the first epoch);
    # 0 (default) keeps nothing. Training only: a saved student does not carry it.
    encoder_memo_mb: NonNegInt = 0
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    clip: ClipConfig = Field(default_factory=ClipConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    eval_every_steps: PositiveInt = 1000
    log_every_steps: PositiveInt = 10
    deepspeed_config: str | None = None
    init_from: str | None = None
    evaluate_when_done: bool = True
    # Run trackers, through accelerate's (W&B: set WANDB_MODE=offline to log without a network).
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"])

    @model_validator(mode="after")
    def _llm_starts_before_the_end(self) -> TrainConfig:
        start = self.optimizer.llm_start_step
        if self.max_steps is not None and start >= self.max_steps:
            raise ValueError(f"optimizer.llm_start_step ({start}) must be below max_steps "
                             f"({self.max_steps}), or the LLM would never train")
        return self


# ---------------------------------------------------------------------------------------- eval

class EvalSetConfig(Strict):
    name: str
    manifest: str
    task: str
    metrics: list[Literal["wer", "cer", "cider_d", "bleu_4", "rouge_l", "meteor", "spice", "spider"]]
    instruction: str | None = None


class EfficiencyConfig(Strict):
    """docs/reference.md §3: batch 1, a fixed 10 s clip, ASR prompt, 10 warm-ups, 100 timed runs."""

    enabled: bool = True
    clip_seconds: PositiveFloat = 10.0
    task: str = "asr"
    warmup_runs: NonNegInt = 10
    timed_runs: PositiveInt = 100


class EvalConfig(Strict):
    sets: list[EvalSetConfig] = Field(default_factory=list)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    efficiency: EfficiencyConfig = Field(default_factory=EfficiencyConfig)
    batch_size: PositiveInt = DEFAULT_EVAL_BATCH_SIZE
    output_dir: str = "runs/eval"
    submission_csv: bool = True


# -------------------------------------------------------------------------------------- recipe
class Recipe(Strict):
    """A whole run: what to build, which teacher, which data, which loss, how to train and score."""

    name: str
    description: str = ""
    stage: PositiveInt = 1
    model: ModelConfig = Field(default_factory=ModelConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _replaced_keys(cls, data: Any) -> Any:
        teacher = data.get("teacher") if isinstance(data, dict) else None
        if isinstance(teacher, dict) and "allow_tokenizer_mismatch" in teacher:
            raise ValueError(
                "teacher.allow_tokenizer_mismatch was replaced by loss.cross_tokenizer "
                "(auto, map, uld or off): remove it"
            )
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        if self.train.encoder_memo_mb and not self.model.whisper.freeze:
            raise ValueError("train.encoder_memo_mb needs model.whisper.freeze: true (a trained "
                             "encoder's outputs change every step)")
        if self.data.audio.sample_rate != ENCODER_SAMPLE_RATE:
            raise ValueError(
                f"data.audio.sample_rate: the student's encoders (Whisper, BEATs) take "
                f"{ENCODER_SAMPLE_RATE} Hz audio, got {self.data.audio.sample_rate}"
            )
        return self


# ----------------------------------------------------------------------------------- loading
class RecipeError(DistillError, ValueError):
    """A recipe that cannot be used; the message names file, line, key path and expectation."""


def load_recipe(path: str | Path) -> Recipe:
    """Read, merge (``base:``) and validate a recipe file."""
    path = Path(path)
    data, origins = _load_with_bases(path, chain=())
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_describe_validation_error(err, origins, path)) from None


# ``origins`` maps a key path (tuple of keys and list indices) to (file, line) where it was written.
Origins = dict[tuple[Any, ...], tuple[Path, int]]


def _load_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict, Origins]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError(f"{path}: recipe inheritance cycle: {cycle}")
    if not path.is_file():
        where = f" (base of {chain[-1]})" if chain else ""
        raise RecipeError(f"{path}: recipe file not found{where}")
    data, origins = _read_yaml_mapping(path)
    base = data.pop("base", None)
    origins.pop(("base",), None)
    if base is None:
        return data, origins
    if not isinstance(base, str):
        raise RecipeError(f"{path}: base: expected a path to another recipe file, got {base!r}")
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    base_data, base_origins = _load_with_bases(base_path, (*chain, resolved))
    merged = _deep_merge(base_data, data)
    base_origins.update(origins)
    return merged, base_origins


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml_mapping(path: Path) -> tuple[dict, Origins]:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}{line}: not valid YAML: {err}") from None
    if data is None:
        data, node = {}, None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}:1: a recipe must be a mapping of sections, got {type(data).__name__}")
    origins: Origins = {}
    if node is not None:
        _collect_origins(node, (), path, origins)
    return data, origins


def _collect_origins(node: yaml.Node, prefix: tuple, path: Path, out: Origins) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, key_node.value)
            out[key] = (path, key_node.start_mark.line + 1)
            _collect_origins(value_node, key, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = (*prefix, index)
            out[key] = (path, item.start_mark.line + 1)
            _collect_origins(item, key, path, out)


def _describe_validation_error(err: ValidationError, origins: Origins, path: Path) -> str:
    problems = []
    for item in err.errors():
        loc = tuple(part for part in item["loc"] if not _is_union_tag(part))
        file, line = _nearest_origin(loc, origins, path)
        key = ".".join(str(p) for p in loc) or "(top level)"
        problems.append((str(file), line, f"{key}: {_expectation(item, loc)}"))
    problems.sort(key=lambda p: (p[0], p[1]))
    count = len(problems)
    header = f"{path}: recipe is invalid ({count} problem{'s' if count > 1 else ''})"
    return header + "".join(f"\n  {file}:{line}: {text}" for file, line, text in problems)


def _is_union_tag(part: Any) -> bool:
    # pydantic inserts the union member's type name (e.g. 'int', 'constrained-int') into loc.
    return isinstance(part, str) and (part in {"int", "float", "str", "bool", "list", "dict", "tuple"}
                                      or part.startswith(("constrained-", "function-")))


def _nearest_origin(loc: tuple, origins: Origins, path: Path) -> tuple[Path, int]:
    for end in range(len(loc), 0, -1):
        if loc[:end] in origins:
            return origins[loc[:end]]
    return path, 1


def _expectation(item: dict, loc: tuple) -> str:
    kind, got = item["type"], item.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return f"unknown key{hint}"
    if kind == "missing":
        return "required key is missing"
    message = item["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
    return f"{message}, got {got!r}" if not isinstance(got, dict) else message


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys the schema accepts at ``loc`` (for 'did you mean' style messages)."""
    model: Any = Recipe
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what ``distill validate --show`` prints)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
