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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Dtype = Literal["bfloat16", "float16", "float32"]

TASK_NAMES = ("asr", "audiocaption", "audiocaption_v2", "qa", "gender", "phone", "music")


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _ordered_range(value: tuple[float, float], name: str) -> tuple[float, float]:
    low, high = value
    if low > high:
        raise ValueError(f"{name} range must be [low, high] with low <= high, got [{low}, {high}]")
    return value


# --------------------------------------------------------------------------------------- model
class WhisperEncoderConfig(Strict):
    """Speech encoder: the encoder half of a Whisper checkpoint (REFERENCE.md §1)."""

    name_or_path: str = "openai/whisper-large-v3-turbo"
    num_mel_bins: Literal[80, 128] = 128
    # Upstream keeps Whisper in fp32 under autocast; we keep it in the compute dtype by default.
    dtype: Literal["compute", "float32"] = "compute"
    freeze: bool = True


class BeatsEncoderConfig(Strict):
    """Audio-event encoder (our BEATs implementation, loading the official pickled checkpoint)."""

    enabled: bool = True
    checkpoint: str | None = "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
    freeze: bool = True
    fbank_mean: float = 15.41663
    fbank_std: float = 6.55582

    @model_validator(mode="after")
    def _needs_checkpoint(self) -> BeatsEncoderConfig:
        if self.enabled and not self.checkpoint:
            raise ValueError("beats.enabled is true but beats.checkpoint is empty")
        return self


class QFormerConfig(Strict):
    """Window-level Q-Former: one query per 17-frame window gives 88 tokens for 30 s."""

    window_frames: PositiveInt = 17
    window_stride: PositiveInt = 17
    queries_per_window: PositiveInt = 1
    num_layers: PositiveInt = 2
    hidden_size: PositiveInt = 768
    num_attention_heads: PositiveInt = 12
    intermediate_size: PositiveInt = 3072
    cross_attention_frequency: PositiveInt = 1
    dropout: Probability = 0.1

    @model_validator(mode="after")
    def _heads_divide(self) -> QFormerConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        return self


class QuantizationConfig(Strict):
    """bitsandbytes 4-bit loading of the LLM (QLoRA)."""

    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Dtype = "bfloat16"


ALL_LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Strict):
    """peft LoRA on the LLM; the reference student adapts all seven projections."""

    enabled: bool = True
    r: PositiveInt = 8
    alpha: PositiveFloat = 32
    dropout: Probability = 0.1
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LLAMA_PROJECTIONS), min_length=1)


class LLMConfig(Strict):
    """The student's language model: any causal LM by hub name or local path."""

    name_or_path: str = "meta-llama/Llama-3.2-1B-Instruct"
    revision: str | None = None
    gguf_file: str | None = None
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    gradient_checkpointing: bool = False


class MoEConfig(Strict):
    """LLaMA-MoE: the dense FFNs split into experts by intermediate neurons."""

    enabled: bool = False
    num_experts: PositiveInt = 8
    top_k: PositiveInt = 2
    split: Literal["random", "clustered"] = "random"
    gate_noise: bool = True
    balance_weight: NonNegFloat = 0.01
    split_seed: int = 0
    # Expert outputs are multiplied by this; None means E/k as in LLaMA-MoE. (With k = E and
    # equal gates a scale of E reproduces the dense FFN exactly; E/k = 1 gives dense / E.)
    score_scale: PositiveFloat | None = None

    @model_validator(mode="after")
    def _top_k_fits(self) -> MoEConfig:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        return self


DEFAULT_INSTRUCTIONS = {
    "asr": ["Recognize the speech and give me the transcription."],
    "audiocaption": ["Please describe the audio."],
    "audiocaption_v2": ["Please write down what your hear in the audio."],
}


class PromptConfig(Strict):
    """The student's prompt; ``<SpeechHere>`` is where the audio embeddings are spliced."""

    template: str = "USER: <Speech><SpeechHere></Speech> {instruction}\nASSISTANT:"
    max_text_length: PositiveInt = 300
    instructions: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_INSTRUCTIONS))

    @model_validator(mode="after")
    def _has_placeholders(self) -> PromptConfig:
        for needed in ("<SpeechHere>", "{instruction}"):
            if needed not in self.template:
                raise ValueError(f"prompt template must contain {needed!r}")
        return self


class ModelConfig(Strict):
    whisper: WhisperEncoderConfig = Field(default_factory=WhisperEncoderConfig)
    beats: BeatsEncoderConfig = Field(default_factory=BeatsEncoderConfig)
    qformer: QFormerConfig = Field(default_factory=QFormerConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    moe: MoEConfig = Field(default_factory=MoEConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    compute_dtype: Dtype = "bfloat16"


# ------------------------------------------------------------------------------------- teacher
class TeacherServerConfig(Strict):
    """How ``serve-teacher`` starts vLLM (it lives in its own venv: ``python`` is that interpreter;
    ``auto`` = the venv scripts/ensure-vllm-venv.sh builds once and caches)."""

    python: str = "auto"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: PositiveInt | None = None
    tensor_parallel_size: PositiveInt = 1
    extra_args: list[str] = Field(default_factory=list)
    startup_timeout_s: PositiveFloat = 900


class TeacherPromptConfig(Strict):
    """What the teacher sees for one task: privileged text fills the ``{...}`` fields."""

    system: str | None = None
    user: str


DEFAULT_TEACHER_PROMPTS = {
    "asr": {"user": "Repeat this transcript exactly.\nTranscript: {text}"},
    "audiocaption": {"user": "Describe the sound in one sentence. What is heard: {text}"},
    "audiocaption_v2": {"user": "Describe the sound in one sentence. What is heard: {text}"},
    "qa": {
        "user": (
            "You are listening to an audio clip. What is known about it: {context}\n"
            "Question: {question}\nThink step by step, then answer briefly."
        )
    },
}


class TeacherConfig(Strict):
    """Text-only teacher that sees each sample's privileged text and caches top-k soft targets."""

    model: str = "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    revision: str | None = None
    tokenizer: str | None = None
    gguf_file: str | None = None
    backend: Literal["vllm_server", "vllm_offline", "transformers"] = "vllm_server"
    endpoints: list[str] = Field(default_factory=list)
    api_key_env: str | None = "DISTILL_TEACHER_API_KEY"
    server: TeacherServerConfig = Field(default_factory=TeacherServerConfig)
    mode: Literal["score", "generate"] = "score"
    top_k: PositiveInt = 20
    logprob_mode: Literal["raw_logprobs", "processed_logprobs"] = "raw_logprobs"
    temperature: NonNegFloat = 1.0
    max_new_tokens: PositiveInt = 512
    rationale_as_target: bool = False
    prompts: dict[str, TeacherPromptConfig] = Field(
        default_factory=lambda: {k: TeacherPromptConfig(**v) for k, v in DEFAULT_TEACHER_PROMPTS.items()}
    )
    cache_dir: str = "runs/teacher_cache"
    shard_size: PositiveInt = 4096
    max_in_flight: PositiveInt = 32  # requests in flight per endpoint
    request_timeout_s: PositiveFloat = 300
    max_retries: NonNegInt = 5
    allow_tokenizer_mismatch: bool = False


# ---------------------------------------------------------------------------------------- data
class ManifestSpec(Strict):
    """One JSONL manifest (DESIGN.md contract 1) and how often to draw from it."""

    path: str
    weight: PositiveFloat = 1.0
    tasks: list[str] | None = None


class NoiseAugmentConfig(Strict):
    """Additive noise: a Gaussian amplitude range (upstream) or an SNR range (optionally real noise)."""

    p: Probability = 0.3
    mode: Literal["amplitude", "snr"] = "amplitude"
    amplitude: tuple[NonNegFloat, NonNegFloat] = (0.001, 0.015)
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_dir: str | None = None

    @model_validator(mode="after")
    def _ranges(self) -> NoiseAugmentConfig:
        _ordered_range(self.amplitude, "amplitude")
        _ordered_range(self.snr_db, "snr_db")
        if self.noise_dir is not None and self.mode != "snr":
            raise ValueError("noise_dir (real noise clips) needs mode: snr")
        return self


class GainAugmentConfig(Strict):
    p: Probability = 0.3
    db: tuple[float, float] = (-12.0, 12.0)

    @model_validator(mode="after")
    def _range(self) -> GainAugmentConfig:
        _ordered_range(self.db, "db")
        return self


class AugmentConfig(Strict):
    """Training-time audio augmentation, reproducible per (seed, sample id, epoch)."""

    enabled: bool = True
    seed: int = 0
    noise: NoiseAugmentConfig = Field(default_factory=NoiseAugmentConfig)
    gain: GainAugmentConfig = Field(default_factory=GainAugmentConfig)


class AudioConfig(Strict):
    """Decoding rules shared by training, evaluation and the app (REFERENCE.md §1)."""

    sample_rate: PositiveInt = 16000
    min_seconds: NonNegFloat = 1.0
    max_seconds: PositiveFloat = 30.0
    on_error: Literal["raise", "skip"] = "raise"

    @model_validator(mode="after")
    def _lengths(self) -> AudioConfig:
        if self.min_seconds > self.max_seconds:
            raise ValueError(f"min_seconds ({self.min_seconds}) must be <= max_seconds ({self.max_seconds})")
        return self


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
    """CE on the reference plus KD to the cached teacher (DESIGN.md contract 4)."""

    ce_weight: NonNegFloat = 1.0
    kd_weight: NonNegFloat = 1.0
    kd_weight_schedule: WeightScheduleConfig | None = None
    divergence: Literal[
        "forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl", "uld"
    ] = "forward_kl"
    jsd_beta: Probability = 0.5
    skew_lambda: Probability = 0.1
    temperature: PositiveFloat = 1.0
    scale_by_temperature_squared: bool = True
    tail: Literal["renorm", "bucket"] = "bucket"
    chunk_size: PositiveInt = 1024


# --------------------------------------------------------------------------------------- train
class OptimizerConfig(Strict):
    name: Literal["adamw"] = "adamw"
    lr: PositiveFloat = 3e-5
    min_lr: NonNegFloat = 1e-5
    warmup_start_lr: NonNegFloat = 1e-6
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegFloat = 0.05


class ScheduleConfig(Strict):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: NonNegInt = 3000


class ClipConfig(Strict):
    """Dynamic gradient clipping: ZClip by default, AutoClip percentile, or a fixed max."""

    mode: Literal["zclip", "autoclip", "fixed", "none"] = "zclip"
    max_norm: PositiveFloat = 1.0
    zclip_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.97
    zclip_z_threshold: PositiveFloat = 2.5
    zclip_warmup_steps: NonNegInt = 25
    autoclip_percentile: Annotated[float, Field(gt=0, le=100)] = 10.0
    autoclip_history: PositiveInt = 1000


class CheckpointConfig(Strict):
    every_steps: PositiveInt = 1000
    keep_last: PositiveInt = 3
    best_metric: Literal["token_accuracy", "loss"] = "token_accuracy"


class TrainConfig(Strict):
    output_dir: str = "runs/student"
    seed: int = 42
    max_steps: PositiveInt | None = None
    epochs: PositiveInt = 1
    batch_size: PositiveInt = 8
    grad_accumulation: PositiveInt = 1
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
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


# ---------------------------------------------------------------------------------------- eval
METRIC_NAMES = ("wer", "cer", "cider_d", "bleu_4", "rouge_l", "meteor", "spice", "spider")


class EvalSetConfig(Strict):
    name: str
    manifest: str
    task: str
    metrics: list[Literal["wer", "cer", "cider_d", "bleu_4", "rouge_l", "meteor", "spice", "spider"]]
    instruction: str | None = None


class DecodingConfig(Strict):
    """Generation settings of the reference evaluation (REFERENCE.md §1)."""

    num_beams: PositiveInt = 4
    max_new_tokens: PositiveInt = 200
    repetition_penalty: PositiveFloat = 1.5
    length_penalty: float = 1.0
    do_sample: bool = False
    temperature: PositiveFloat = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0


class EfficiencyConfig(Strict):
    """REFERENCE.md §3: batch 1, a fixed 10 s clip, ASR prompt, 10 warm-ups, 100 timed runs."""

    enabled: bool = True
    clip_seconds: PositiveFloat = 10.0
    task: str = "asr"
    warmup_runs: NonNegInt = 10
    timed_runs: PositiveInt = 100


class EvalConfig(Strict):
    sets: list[EvalSetConfig] = Field(default_factory=list)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    efficiency: EfficiencyConfig = Field(default_factory=EfficiencyConfig)
    batch_size: PositiveInt = 8
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

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        if self.teacher.allow_tokenizer_mismatch:
            raise ValueError(
                "teacher.allow_tokenizer_mismatch is not supported yet: generate-teacher and "
                "train-student align teacher and student by token id. (distill.losses.ULD works "
                "across tokenizers from your own loop, once you align the positions.)"
            )
        return self


# ----------------------------------------------------------------------------------- loading
class RecipeError(ValueError):
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
