"""The one interface every teacher backend implements: score and generate, top-k per position.

Why async: the vLLM server backend keeps hundreds of requests in flight over many endpoints;
in-process backends (transformers, vLLM offline) simply compute inside the coroutine. The job
(generate.py) drives every backend the same way through ``run``.

Semantics, shared by all backends:
  score     teacher-forced over ``prompt_ids + response_ids``; row t of the top-k is the
            teacher's distribution that predicts ``response_ids[t]``.
  generate  the teacher writes up to ``max_new_tokens`` after ``prompt_ids``; row t is the
            distribution the generated token t was drawn from (same forward pass).
Top-k rows are sorted best first; logprobs are raw (before temperature) unless the backend was
set to ``processed_logprobs``.
"""

from __future__ import annotations

import asyncio
import zlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import numpy as np

from distill.errors import DistillFailure


class TeacherUnavailable(DistillFailure, RuntimeError):
    """The teacher cannot be reached at all (after retries): the job must stop, not skip."""


@dataclass
class TeacherRequest:
    sample_id: str
    prompt_ids: list[int]
    response_ids: list[int] | None = None  # score mode: the student's target ids

    @property
    def seed(self) -> int:
        """A per-sample seed, so a rerun samples the same response."""
        return zlib.crc32(self.sample_id.encode("utf-8"))


@dataclass
class GenerationSettings:
    max_new_tokens: int = 512
    temperature: float = 1.0
    stop_ids: list[int] = field(default_factory=list)


@dataclass
class TeacherResult:
    sample_id: str
    response_ids: np.ndarray | None = None  # int64 [T]
    topk_ids: np.ndarray | None = None  # int64 [T, k], best first
    topk_logprobs: np.ndarray | None = None  # float32 [T, k]
    finish_reason: str | None = None  # generate: "stop" or "length"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, sample_id: str, reason: str) -> TeacherResult:
        return cls(sample_id=sample_id, error=reason)


def topk_arrays(rows: list[list[tuple[int, float]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (id, logprob) pairs -> [T, k] arrays sorted best first; short rows are an error."""
    ids = np.zeros((len(rows), k), dtype=np.int64)
    logprobs = np.zeros((len(rows), k), dtype=np.float32)
    for t, row in enumerate(rows):
        best = sorted(row, key=lambda pair: -pair[1])[:k]
        if len(best) < k:
            raise ValueError(f"position {t}: {len(best)} logprobs returned, expected top-{k}")
        ids[t] = [token for token, _ in best]
        logprobs[t] = [value for _, value in best]
    return ids, logprobs


class TeacherBackend(ABC):
    """Scores or generates with top-k logprobs; ``run`` streams results for many requests."""

    name = "backend"
    max_in_flight = 1

    async def start(self) -> None:
        """Connect or load; raise TeacherUnavailable when the teacher cannot be used."""
        return None

    async def aclose(self) -> None:
        """Release connections or memory."""
        return None

    @property
    def max_model_len(self) -> int | None:
        return None

    @abstractmethod
    async def score(self, request: TeacherRequest, k: int) -> TeacherResult: ...

    @abstractmethod
    async def generate(
        self, request: TeacherRequest, k: int, settings: GenerationSettings
    ) -> TeacherResult: ...

    async def handle(
        self, request: TeacherRequest, k: int, settings: GenerationSettings | None
    ) -> TeacherResult:
        """One request; errors specific to the sample become a failed result with the reason."""
        try:
            if settings is None or request.response_ids is not None:  # a response: scored
                return await self.score(request, k)
            return await self.generate(request, k, settings)
        except TeacherUnavailable:
            raise
        except Exception as err:  # noqa: BLE001 - a bad sample must not stop a million others
            return TeacherResult.failed(request.sample_id, f"{type(err).__name__}: {err}")

    async def run(
        self,
        requests: Iterable[TeacherRequest],
        k: int,
        settings: GenerationSettings | None = None,
    ) -> AsyncIterator[TeacherResult]:
        """Results in completion order, at most ``max_in_flight`` requests at a time.

        ``settings=None`` scores, otherwise generates the requests without a response (one run
        may mix both: per-task teacher modes). TeacherUnavailable propagates (after the
        other requests in flight are cancelled): results already yielded stay valid.
        """
        pending: set[asyncio.Task] = set()
        requests = iter(requests)
        exhausted = False
        try:
            while pending or not exhausted:
                while not exhausted and len(pending) < self.max_in_flight:
                    request = next(requests, None)
                    if request is None:
                        exhausted = True
                    else:
                        pending.add(asyncio.create_task(self.handle(request, k, settings)))
                if not pending:
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                errors = [task.exception() for task in done if task.exception() is not None]
                for task in done:
                    if task.exception() is None:
                        yield task.result()
                if errors:
                    raise errors[0]
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
