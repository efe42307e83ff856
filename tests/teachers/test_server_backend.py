"""The vLLM server client's transport: retries, back-off, endpoints, failures that stop the job.

A small stdlib HTTP server on 127.0.0.1 stands in for vLLM here, answering in vLLM's JSON
shape, so that failures (503s, refused connections, 400s, chunked bodies) can be produced on
demand; the real server is exercised in test_vllm_integration.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from teachers.backends.base import GenerationSettings, TeacherRequest, TeacherUnavailable
from teachers.backends.http import AsyncHTTPClient, HTTPStatusError
from teachers.backends.vllm_server import VLLMServerBackend, normalise_endpoint
from teachers.server import free_port


class FakeVLLM(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fail_first: int = 0, status: int = 503, chunked: bool = False,
                 cached: int = 0):
        super().__init__(("127.0.0.1", 0), Handler)
        self.fail_first, self.status, self.chunked = fail_first, status, chunked
        self.cached = cached  # prompt tokens a cache-reading score request finds cached
        self.calls: list[dict] = []
        self.headers_seen: list[dict] = []
        self.connections: set[int] = set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._send(200, {"data": [{"id": "fake-model", "max_model_len": 64}]})

    def do_POST(self):
        server: FakeVLLM = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.calls.append(body)
            server.headers_seen.append(dict(self.headers))
            server.connections.add(id(self.connection))
            failing = len(server.calls) <= server.fail_first
        if failing:
            self._send(server.status, {"error": {"message": "busy, try later"}})
        elif "prompt_logprobs" in body:
            k = body["prompt_logprobs"]
            rows = [None] + [
                {str(r): {"logprob": -0.1 * r - 0.01 * t, "rank": r + 1} for r in range(k)}
                | {str(tok): {"logprob": -20.0, "rank": 999}}
                for t, tok in enumerate(body["prompt"][1:])
            ]
            # As teachers/vllm_serve.py answers: positions whose hidden state came from the
            # prefix cache get a zeroed row (one entry, id 0), and usage says how many.
            cached = server.cached if (body.get("vllm_xargs") or {}).get("read_prefix_cache") else 0
            rows = [None] + [{"0": {"logprob": 0.0, "rank": 0}} if t < cached else row
                             for t, row in enumerate(rows[1:])]
            usage = {"prompt_tokens_details": {"cached_tokens": cached}}
            self._send(200, {"choices": [{"prompt_logprobs": rows, "text": ""}], "usage": usage})
        else:
            k = body["logprobs"]
            tokens = [5, 6, 2]
            top = [{f"token_id:{tok}": -0.5} | {f"token_id:{100 + r}": -1.0 - r for r in range(k)}
                   for tok in tokens]
            self._send(200, {"choices": [{"token_ids": tokens, "finish_reason": "stop",
                                          "logprobs": {"tokens": [], "top_logprobs": top}}]})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if self.server.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(data), 100):
                piece = data[start : start + 100]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


@pytest.fixture
def fake():
    servers = []

    def start(**kwargs) -> FakeVLLM:
        server = FakeVLLM(**kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def backend(urls, **kwargs) -> VLLMServerBackend:
    kwargs.setdefault("max_retries", 3)
    return VLLMServerBackend(urls, backoff_base_s=0.01, backoff_max_s=0.05, **kwargs)


async def score_all(b: VLLMServerBackend, count: int, k: int = 3):
    await b.start()
    requests = [TeacherRequest(f"r{i}", [1, 2, 3], [7, 8]) for i in range(count)]
    try:
        return [r async for r in b.run(requests, k)]
    finally:
        await b.aclose()


@pytest.mark.parametrize("cached, posts", [(0, 1), (2, 1), (3, 2), (4, 2)])
def test_score_reads_the_prefix_cache_only_up_to_the_last_prompt_token(fake, cached, posts):
    """Prompt [1, 2, 3], response [7, 8]: the row for 7 comes from the hidden state at prompt
    position 2, so a cache hit of up to 2 tokens keeps every response row; a longer one (a
    sample scored before) is asked again without the cache, and the rows are the same."""
    server = fake(cached=cached)
    result = asyncio.run(score_all(backend([server.url]), 1))[0]
    assert result.ok, result.error
    np.testing.assert_array_equal(result.topk_ids, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_allclose(result.topk_logprobs[0], [-0.02, -0.12, -0.22], atol=1e-6)
    assert len(server.calls) == posts
    assert server.calls[0]["vllm_xargs"] == {"read_prefix_cache": 1}
    if posts == 2:
        assert "vllm_xargs" not in server.calls[1]


def test_endpoint_forms_are_normalised():
    assert normalise_endpoint("127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert normalise_endpoint("http://h:1/v1/") == "http://h:1"


def test_score_keeps_top_k_by_rank_at_response_positions_only(fake):
    server = fake()
    results = asyncio.run(score_all(backend([server.url]), 1))
    result = results[0]
    assert result.ok, result.error
    np.testing.assert_array_equal(result.response_ids, [7, 8])
    # Rows for prompt positions 3 and 4 (tokens 7 and 8): the fake's ids are 0..k-1 there.
    np.testing.assert_array_equal(result.topk_ids, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_allclose(result.topk_logprobs[1], [-0.03, -0.13, -0.23], atol=1e-6)
    call = server.calls[0]
    assert (call["prompt"], call["max_tokens"], call["prompt_logprobs"]) == ([1, 2, 3, 7, 8], 1, 3)
    assert call["model"] == "fake-model"


def test_generate_reads_token_ids_and_sorted_top_k(fake):
    server = fake(chunked=True)

    async def go():
        b = backend([server.url])
        await b.start()
        out = await b.generate(TeacherRequest("g", [1, 2]), 2, GenerationSettings(10, 0.0, [2]))
        await b.aclose()
        return out

    result = asyncio.run(go())
    np.testing.assert_array_equal(result.response_ids, [5, 6, 2])
    np.testing.assert_array_equal(result.topk_ids[0], [5, 100])
    assert result.finish_reason == "stop"
    call = server.calls[0]
    assert call["return_tokens_as_token_ids"] and call["logprobs"] == 2
    assert call["stop_token_ids"] == [2] and isinstance(call["seed"], int)


def test_busy_server_is_retried_until_it_answers(fake):
    server = fake(fail_first=2, status=503)
    results = asyncio.run(score_all(backend([server.url]), 1))
    assert results[0].ok and len(server.calls) == 3


def test_a_4xx_answer_fails_only_that_sample(fake):
    server = fake(fail_first=1, status=400)
    results = asyncio.run(score_all(backend([server.url], max_in_flight=1), 3))
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1 and "HTTP 400" in failed[0].error and "busy, try later" in failed[0].error
    assert len(server.calls) == 3  # not retried


def test_nothing_listening_retries_then_raises_teacher_unavailable():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TeacherUnavailable, match=r"did not answer after 4 attempts.*cannot connect"):
        asyncio.run(score_all(backend([url]), 1))


def test_requests_spread_over_endpoints_with_bounded_concurrency(fake):
    servers = [fake(), fake()]
    b = backend([s.url for s in servers], max_in_flight=2)
    assert b.max_in_flight == 4
    results = asyncio.run(score_all(b, 12))
    assert sorted(r.sample_id for r in results) == sorted(f"r{i}" for i in range(12))
    counts = [len(s.calls) for s in servers]
    assert sum(counts) == 12 and min(counts) >= 3


def test_a_dead_endpoint_in_the_list_is_retried_on_the_live_one(fake):
    live = fake()
    b = backend([live.url, f"http://127.0.0.1:{free_port()}"])
    for endpoint in b.endpoints:  # skip start(): its check would refuse the dead endpoint
        endpoint.model = "fake-model"

    async def go():
        requests = [TeacherRequest(f"r{i}", [1, 2], [3]) for i in range(6)]
        out = [r async for r in b.run(requests, 2)]
        await b.aclose()
        return out

    results = asyncio.run(go())
    assert all(r.ok for r in results) and len(live.calls) == 6


def test_connections_are_reused_and_the_api_key_is_sent(fake):
    server = fake()
    b = backend([server.url], max_in_flight=1, api_key="sekrit")
    asyncio.run(score_all(b, 5))
    assert len(server.connections) == 1
    assert server.headers_seen[0]["Authorization"] == "Bearer sekrit"


def test_http_status_error_carries_the_servers_message(fake):
    server = fake(fail_first=1, status=400)

    async def go():
        client = AsyncHTTPClient()
        try:
            await client.post_json(server.url + "/v1/completions", {"prompt_logprobs": 1,
                                                                     "prompt": [1]}, 5)
        finally:
            await client.aclose()

    with pytest.raises(HTTPStatusError, match="HTTP 400: busy, try later"):
        asyncio.run(go())


def test_an_endpoint_serving_another_model_than_the_recipe_is_refused(fake):
    from distill.config import TeacherConfig

    server = fake()
    teacher = TeacherConfig(model="deepseek-ai/DeepSeek-R1-Distill-Llama-8B", max_retries=0)
    other = VLLMServerBackend.from_config(teacher, [server.url])
    with pytest.raises(TeacherUnavailable, match="serves fake-model, not the recipe's teacher"):
        asyncio.run(other.start())
    same = VLLMServerBackend.from_config(teacher.model_copy(update={"model": "fake-model"}),
                                         [server.url])
    asyncio.run(same.start())
    asyncio.run(same.aclose())
