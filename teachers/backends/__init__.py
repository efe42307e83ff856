"""Teacher backends behind one interface (base.TeacherBackend): score and generate with top-k.

``vllm_server`` talks HTTP to running vLLM servers, ``vllm_offline`` drives ``vllm.LLM`` in
process (vLLM venv only), ``transformers`` runs any causal LM in process. Heavy imports happen
inside each backend's loader, so importing this package is cheap.
"""

from __future__ import annotations

from teachers.backends.base import (
    GenerationSettings,
    TeacherBackend,
    TeacherRequest,
    TeacherResult,
    TeacherUnavailable,
)

__all__ = [
    "GenerationSettings",
    "TeacherBackend",
    "TeacherRequest",
    "TeacherResult",
    "TeacherUnavailable",
    "make_backend",
]


def make_backend(teacher, endpoints: list[str] | None = None) -> TeacherBackend:
    """The backend ``teacher.backend`` names (server endpoints must be given for vllm_server)."""
    if teacher.backend == "vllm_server":
        from teachers.backends.vllm_server import VLLMServerBackend

        return VLLMServerBackend.from_config(teacher, list(endpoints or teacher.endpoints))
    if teacher.backend == "vllm_offline":
        from teachers.backends.vllm_offline import VLLMOfflineBackend

        return VLLMOfflineBackend.from_config(teacher)
    if teacher.backend == "transformers":
        from teachers.backends.transformers_backend import TransformersBackend

        return TransformersBackend.from_config(teacher)
    raise ValueError(f"unknown teacher backend {teacher.backend!r}")
