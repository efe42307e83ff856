"""Teacher in-process with vLLM's offline engine (``vllm.LLM``), when ``vllm`` imports.

Why: on a GPU node a job that owns the whole machine skips HTTP and lets vLLM batch a large
chunk of requests at once. vLLM lives in its own venv (scripts/ensure-vllm-venv.sh), so this
backend runs where that venv's Python runs the job; the toolkit venv cannot import it.
Semantics match the server backend: ``prompt_logprobs=k`` over prompt + response for score,
``logprobs=k`` for generate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from itertools import islice
from typing import Any

import numpy as np

from teachers.backends.base import (
    GenerationSettings,
    TeacherBackend,
    TeacherRequest,
    TeacherResult,
    topk_arrays,
)


class VLLMOfflineBackend(TeacherBackend):
    name = "vllm_offline"

    def __init__(self, llm: Any, chunk_size: int = 256):
        self.llm = llm
        self.chunk_size = chunk_size

    @classmethod
    def load(
        cls,
        model: str,
        top_k: int,
        revision: str | None = None,
        tokenizer: str | None = None,
        dtype: str = "auto",
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        logprob_mode: str = "raw_logprobs",
        **engine_args: Any,
    ) -> VLLMOfflineBackend:
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError(
                "teacher.backend vllm_offline needs vllm in this Python (it is not in the toolkit "
                "venv): run the job with the vLLM venv's python, or use backend vllm_server"
            ) from err
        llm = LLM(
            model=model,
            revision=revision,
            tokenizer=tokenizer,
            dtype=dtype,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            max_logprobs=max(top_k, 20),
            logprobs_mode=logprob_mode,
            **engine_args,
        )
        return cls(llm)

    @classmethod
    def from_config(cls, teacher) -> VLLMOfflineBackend:
        model = teacher.model
        if teacher.gguf_file:
            model = f"{model.rstrip('/')}/{teacher.gguf_file}"
        return cls.load(
            model,
            teacher.top_k,
            revision=teacher.revision,
            tokenizer=teacher.tokenizer,
            dtype=teacher.server.dtype,
            max_model_len=teacher.server.max_model_len,
            tensor_parallel_size=teacher.server.tensor_parallel_size,
            logprob_mode=teacher.logprob_mode,
        )

    @property
    def max_model_len(self) -> int | None:
        return self.llm.llm_engine.model_config.max_model_len

    async def score(self, request: TeacherRequest, k: int) -> TeacherResult:
        return self._batch([request], k, None)[0]

    async def generate(
        self, request: TeacherRequest, k: int, settings: GenerationSettings
    ) -> TeacherResult:
        return self._batch([request], k, settings)[0]

    async def run(
        self,
        requests: Iterable[TeacherRequest],
        k: int,
        settings: GenerationSettings | None = None,
    ) -> AsyncIterator[TeacherResult]:
        """Chunks of ``chunk_size`` requests per engine call: vLLM batches them itself."""
        requests = iter(requests)
        while chunk := list(islice(requests, self.chunk_size)):
            for result in self._batch(chunk, k, settings):
                yield result

    def _batch(
        self, requests: list[TeacherRequest], k: int, settings: GenerationSettings | None
    ) -> list[TeacherResult]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for request in requests:
            if settings is None or request.response_ids is not None:  # scored (per-task modes)
                ids = [*request.prompt_ids, *(request.response_ids or [])]
                params.append(SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k))
            else:
                ids = list(request.prompt_ids)
                params.append(
                    SamplingParams(
                        max_tokens=settings.max_new_tokens,
                        temperature=settings.temperature,
                        logprobs=k,
                        seed=request.seed,
                        stop_token_ids=list(settings.stop_ids) or None,
                        skip_special_tokens=False,
                    )
                )
            prompts.append(TokensPrompt(prompt_token_ids=ids))
        try:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as err:  # noqa: BLE001 - one bad prompt fails the chunk: retry singly
            if len(requests) == 1:
                return [TeacherResult.failed(requests[0].sample_id, f"{type(err).__name__}: {err}")]
            return [r for req in requests for r in self._batch([req], k, settings)]
        return [
            self._result(request, output, k, settings is None or request.response_ids is not None)
            for request, output in zip(requests, outputs, strict=True)
        ]

    @staticmethod
    def _result(request: TeacherRequest, output: Any, k: int, scoring: bool) -> TeacherResult:
        try:
            if scoring:
                response = list(request.response_ids or [])
                start = len(request.prompt_ids)
                positions = output.prompt_logprobs[start : start + len(response)]
                rows = [_ranked(entry, k) for entry in positions]
                ids, logprobs = topk_arrays(rows, k)
                return TeacherResult(request.sample_id, np.asarray(response, np.int64), ids, logprobs)
            completion = output.outputs[0]
            rows = [[(int(t), float(lp.logprob)) for t, lp in step.items()] for step in completion.logprobs]
            ids, logprobs = topk_arrays(rows, k)
            return TeacherResult(
                request.sample_id,
                np.asarray(list(completion.token_ids), np.int64),
                ids,
                logprobs,
                finish_reason=completion.finish_reason,
            )
        except Exception as err:  # noqa: BLE001
            return TeacherResult.failed(request.sample_id, f"{type(err).__name__}: {err}")


def _ranked(entry: dict | None, k: int) -> list[tuple[int, float]]:
    if not entry:
        raise ValueError("a response position has no prompt logprobs")
    ranked = sorted(entry.items(), key=lambda item: item[1].rank or 1 << 30)
    return [(int(token), float(lp.logprob)) for token, lp in ranked[:k]]
