"""Schema of the recipe's ``teacher`` section: which model, how it is served, what it sees.

Owned by ``teachers`` (``distill.config`` composes it into a recipe), so the teacher service can
be configured and run without the student's or the trainer's schema.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from distill.schema import NonNegFloat, NonNegInt, PositiveFloat, PositiveInt, Strict


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
    # Environment variables for the server process alone (vLLM reads many settings only from
    # there, e.g. VLLM_CPU_NUM_OF_RESERVED_CPU); a variable already set in the environment wins.
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: PositiveFloat = 900

    @field_validator("env", mode="before")
    @classmethod
    def _numbers_as_text(cls, env):
        """``VLLM_CPU_KVCACHE_SPACE: 4`` in YAML is a number; the environment holds text."""
        if isinstance(env, dict):
            return {name: str(value) if isinstance(value, int | float) and not isinstance(value, bool)
                    else value for name, value in env.items()}
        return env


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
    # Per-task override of ``mode`` in the same run and cache, e.g. {qa: generate}: score mode
    # for ASR and captions (the reference is the target), generate mode for QA.
    task_modes: dict[str, Literal["score", "generate"]] = Field(default_factory=dict)
    # Score mode with a reasoning (R1-style) teacher: "closed" puts the scored answer after a
    # closed, empty <think></think> block, where the teacher writes answers; "auto" does so
    # when the chat template's generation prompt opens a think block; "none" never.
    reasoning: Literal["auto", "closed", "none"] = "auto"
    # Generate mode: the text the student's CE trains on. "teacher_answer": the teacher's answer
    # (CE + KD on it); "reference": the manifest's text (CE on it, KD on the teacher's answer
    # as a second sequence); "both": CE on both sequences, KD on the teacher's answer.
    generate_ce_target: Literal["teacher_answer", "reference", "both"] = "teacher_answer"
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
