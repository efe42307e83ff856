"""Teacher over HTTP: vLLM's OpenAI-compatible ``/v1/completions`` with token-id prompts.

Why token ids on the wire: the response must be exactly the student's target ids, and a text
prompt would be re-tokenised by the server. Scoring sends prompt + response with
``prompt_logprobs=k`` and ``max_tokens=1`` and keeps the response positions (reading the prefix
cache for the prompt when the server was started by teachers/vllm_serve.py); generation sends
``logprobs=k`` with ``return_tokens_as_token_ids`` (tokens that decode to the same string stay
apart) and ``return_token_ids``.

Scale-out: a list of endpoints, each request going to the least-loaded one that is not backing
off; ``max_in_flight`` is per endpoint. Connection failures and 5xx/429 answers are retried with
exponential back-off (jittered) on any endpoint; when retries run out the teacher is declared
unavailable and the job stops (nothing half-written). A 4xx answer (e.g. a prompt too long)
fails only that sample.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass

import numpy as np

from distill.errors import DistillError
from teachers.backends.base import (
    GenerationSettings,
    TeacherBackend,
    TeacherRequest,
    TeacherResult,
    TeacherUnavailable,
    topk_arrays,
)
from teachers.backends.http import AsyncHTTPClient, HTTPConnectionError, HTTPStatusError

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
# Asks a server started by teachers/vllm_serve.py to read the prefix cache for a score request
# (upstream vLLM skips it with prompt logprobs; another server ignores the key). Rows of cached
# positions are then zeros, so a result is kept only when the answer's cached-token count
# stops before the last prompt token, whose hidden state predicts the first response token.
READ_PREFIX_CACHE = {"read_prefix_cache": 1}


class RequestRejected(DistillError, ValueError):
    """The server refused this request (4xx): a problem of the sample, not of the server."""


def normalise_endpoint(url: str) -> str:
    """``host:port``, ``http://host:port/`` or ``.../v1`` -> ``http://host:port``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url.removesuffix("/v1")


@dataclass
class Endpoint:
    url: str
    model: str = ""
    max_model_len: int | None = None
    in_flight: int = 0
    backoff_until: float = 0.0
    failures: int = 0  # consecutive; a dead endpoint is left alone longer and longer


class VLLMServerBackend(TeacherBackend):
    name = "vllm_server"

    def __init__(
        self,
        endpoints: list[str],
        max_in_flight: int = 32,
        request_timeout_s: float = 300.0,
        max_retries: int = 5,
        api_key: str | None = None,
        model: str | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ):
        if not endpoints:
            raise ValueError("the vLLM server backend needs at least one endpoint")
        self.endpoints = [Endpoint(normalise_endpoint(url)) for url in endpoints]
        self.per_endpoint = max_in_flight
        self.timeout = request_timeout_s
        self.max_retries = max_retries
        self.model = model
        self.backoff_base = backoff_base_s
        self.backoff_max = backoff_max_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = AsyncHTTPClient(headers=headers)
        self._turn = 0

    @classmethod
    def from_config(cls, teacher, endpoints: list[str]) -> VLLMServerBackend:
        """Every endpoint must serve the recipe's teacher (vLLM names a model by its --model
        argument): a cache must never mix targets from two models."""
        from teachers.server import model_argument

        key = os.environ.get(teacher.api_key_env) if teacher.api_key_env else None
        return cls(
            endpoints,
            model=model_argument(teacher),
            max_in_flight=teacher.max_in_flight,
            request_timeout_s=teacher.request_timeout_s,
            max_retries=teacher.max_retries,
            api_key=key or None,
        )

    @property
    def max_in_flight(self) -> int:  # type: ignore[override]
        return self.per_endpoint * len(self.endpoints)

    @property
    def max_model_len(self) -> int | None:
        lengths = [e.max_model_len for e in self.endpoints if e.max_model_len]
        return min(lengths) if lengths else None

    # ------------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Ask every endpoint which model it serves (with retries); drop none silently."""
        for endpoint in self.endpoints:
            models = await self._call(endpoint, "GET", "/v1/models", None)
            data = models.get("data") or []
            if not data:
                raise TeacherUnavailable(f"{endpoint.url} serves no model")
            card = data[0]
            if self.model and all(m.get("id") != self.model for m in data):
                served = ", ".join(str(m.get("id")) for m in data)
                raise TeacherUnavailable(
                    f"{endpoint.url} serves {served}, not the recipe's teacher {self.model} "
                    "(start it with --model set to teacher.model, or fix teacher.model)"
                )
            endpoint.model = self.model or card["id"]
            endpoint.max_model_len = card.get("max_model_len")

    async def aclose(self) -> None:
        await self.client.aclose()

    # -------------------------------------------------------------------------- requests
    async def score(self, request: TeacherRequest, k: int) -> TeacherResult:
        response = list(request.response_ids or [])
        if not response:
            raise ValueError("score mode needs response ids (the student's target)")
        ids = [*request.prompt_ids, *response]
        payload = {"prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": k}
        answer = await self._post("/v1/completions", {**payload, "vllm_xargs": READ_PREFIX_CACHE})
        if cached_tokens(answer) > len(request.prompt_ids) - 1:
            # The cache reached into the response: its first rows were never computed.
            answer = await self._post("/v1/completions", payload)
        positions = answer["choices"][0].get("prompt_logprobs")
        if not positions or len(positions) != len(ids):
            got = len(positions) if positions else 0
            raise ValueError(f"server returned {got} prompt logprob rows for {len(ids)} tokens")
        start = len(request.prompt_ids)
        rows = [_ranked_row(positions[t], k) for t in range(start, len(ids))]
        topk_ids, topk_logprobs = topk_arrays(rows, k)
        return TeacherResult(
            request.sample_id, np.asarray(response, dtype=np.int64), topk_ids, topk_logprobs
        )

    async def generate(
        self, request: TeacherRequest, k: int, settings: GenerationSettings
    ) -> TeacherResult:
        payload = {
            "prompt": list(request.prompt_ids),
            "max_tokens": settings.max_new_tokens,
            "temperature": settings.temperature,
            "logprobs": k,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "seed": request.seed,
            "skip_special_tokens": False,
        }
        if settings.stop_ids:
            payload["stop_token_ids"] = list(settings.stop_ids)
        choice = (await self._post("/v1/completions", payload))["choices"][0]
        logprobs = choice.get("logprobs") or {}
        tokens = choice.get("token_ids")
        if tokens is None:
            tokens = [_token_id(t) for t in logprobs.get("tokens") or []]
        top = logprobs.get("top_logprobs") or []
        if len(top) != len(tokens):
            raise ValueError(f"server returned {len(top)} logprob rows for {len(tokens)} tokens")
        rows = [[(_token_id(key), value) for key, value in row.items()] for row in top]
        topk_ids, topk_logprobs = topk_arrays(rows, k)
        return TeacherResult(
            request.sample_id,
            np.asarray(tokens, dtype=np.int64),
            topk_ids,
            topk_logprobs,
            finish_reason=choice.get("finish_reason"),
        )

    # ------------------------------------------------------------------------- transport
    def _pick(self, avoid: Endpoint | None = None) -> Endpoint:
        """Least loaded among endpoints not backing off, never ``avoid`` (the one that just
        failed) when there is another; round-robin among equals."""
        now = time.monotonic()
        self._turn += 1
        count = len(self.endpoints)
        order = [self.endpoints[(self._turn + i) % count] for i in range(count)]
        if avoid is not None and count > 1:
            order.remove(avoid)
        return min(order, key=lambda e: (e.backoff_until > now, e.in_flight))

    async def _post(self, path: str, payload: dict) -> dict:
        last_error: Exception | None = None
        timeouts_only = True
        endpoint = None
        for attempt in range(self.max_retries + 1):
            endpoint = self._pick(avoid=endpoint)
            try:
                answer = await self._once(endpoint, "POST", path, {**payload, "model": endpoint.model})
                endpoint.failures = 0
                return answer
            except HTTPStatusError as err:
                if err.status not in RETRY_STATUS:
                    raise RequestRejected(str(err)) from None
                last_error, timeouts_only = err, False
            except HTTPConnectionError as err:
                last_error, timeouts_only = err, False
            except TimeoutError:
                last_error = TimeoutError(f"{endpoint.url}: no answer within {self.timeout:g} s")
            endpoint.failures += 1
            endpoint.backoff_until = time.monotonic() + self._delay(endpoint.failures - 1)
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt))
        attempts = self.max_retries + 1
        if timeouts_only:  # the server is alive but this request is too slow: a sample failure
            raise TimeoutError(f"{last_error} ({attempts} attempts)")
        raise TeacherUnavailable(f"teacher unreachable after {attempts} attempts: {last_error}")

    async def _call(self, endpoint: Endpoint, method: str, path: str, payload) -> dict:
        """Retried request to one given endpoint (start-up checks)."""
        last_error: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                return await self._once(endpoint, method, path, payload)
            except HTTPStatusError as err:
                if err.status not in RETRY_STATUS:
                    raise TeacherUnavailable(str(err)) from None
                last_error = err
            except (HTTPConnectionError, TimeoutError) as err:
                last_error = err if str(err) else TimeoutError(f"{endpoint.url}: timed out")
            if attempt < self.max_retries:
                await asyncio.sleep(self._delay(attempt))
        raise TeacherUnavailable(
            f"teacher endpoint {endpoint.url} did not answer after {self.max_retries + 1} "
            f"attempts: {last_error}"
        )

    async def _once(self, endpoint: Endpoint, method: str, path: str, payload) -> dict:
        endpoint.in_flight += 1
        try:
            if method == "GET":
                return await self.client.get_json(endpoint.url + path, self.timeout)
            return await self.client.post_json(endpoint.url + path, payload, self.timeout)
        finally:
            endpoint.in_flight -= 1

    def _delay(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + random.random() / 2)


def cached_tokens(answer: dict) -> int:
    """Prompt tokens the server took from its prefix cache (0 when it does not say)."""
    details = (answer.get("usage") or {}).get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def _ranked_row(entries: dict | None, k: int) -> list[tuple[int, float]]:
    """vLLM's prompt-logprob entries at one position: top-k by rank (plus the actual token,
    which is dropped unless it is itself in the top-k)."""
    if not entries:
        raise ValueError("a response position has no prompt logprobs")
    ranked = sorted(entries.items(), key=lambda item: item[1].get("rank") or 1 << 30)
    return [(int(token), float(entry["logprob"])) for token, entry in ranked[:k]]


def _token_id(token: str | int) -> int:
    if isinstance(token, int):
        return token
    return int(str(token).removeprefix("token_id:"))
