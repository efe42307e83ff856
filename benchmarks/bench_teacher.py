"""Teacher throughput and cache size: is our client as fast as raw calls, and how compact is it?

Measures, on one vLLM server and the same samples (score mode, the default):
  1. raw client: plain threads posting the same /v1/completions payloads (http.client,
     keep-alive), no parsing beyond JSON: the ceiling for any client;
  2. generate-teacher (teachers.generate.Job) through the vLLM server backend, cache included;
  3. generate-teacher with the transformers backend on the same model;
  4. cache bytes per top-k entry at k=20 and k=64, and the mean absolute logprob error the
     12-bit quantisation adds (real top-k rows from the server).

Goals (issue C): (2) >= 0.9 x (1); (2) >= 5 x (3); <= 1.5 B per logprob at <= 0.01 nats.

usage (toolkit venv; starts a vLLM server from the vLLM venv unless --endpoint is given):
  python benchmarks/bench_teacher.py [--samples 64] [--in-flight 8] [--endpoint URL]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "the", "a", "cat", "dog", "sat", "ran", "over", "under", "quickly", "slowly", "river",
    "mountain", "city", "music", "voice", "rain", "wind", "engine", "bird", "child", "speaks",
    "laughs", "plays", "sings", "drives", "loud", "quiet", "morning", "evening", "old", "new",
    "green", "small", "large", "station", "train", "door", "bell", "whistle", "crowd", "guitar",
]


def records(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        text = " ".join(rng.choice(WORDS, int(rng.integers(12, 40))))
        out.append({"id": f"b{i:05d}", "audio": f"b{i}.wav", "task": "asr", "text": text})
    return out


def make_recipe(tmp: Path, model: Path, data: list[dict], k: int, in_flight: int, python: str,
                backend: str = "vllm_server"):
    from distill.config import load_recipe

    manifest = tmp / "bench.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in data))
    recipe = {
        "name": "bench-teacher",
        "model": {"llm": {"name_or_path": str(model)}},
        "teacher": {"model": str(model), "backend": backend, "top_k": k, "shard_size": 1024,
                    "max_in_flight": in_flight, "cache_dir": str(tmp / f"cache-{backend}-{k}"),
                    "server": {"python": python, "dtype": "float32", "max_model_len": 1024}},
        "data": {"train": [{"path": str(manifest)}]},
    }
    path = tmp / f"{backend}-{k}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(path)


def raw_client(endpoint: str, payloads: list[dict], in_flight: int) -> float:
    """Seconds for plain threads to post every payload (one keep-alive connection each)."""
    parts = urlsplit(endpoint)

    def worker(chunk: list[dict]) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
        for payload in chunk:
            conn.request("POST", "/v1/completions", json.dumps(payload),
                         {"Content-Type": "application/json"})
            answer = conn.getresponse()
            body = answer.read()
            assert answer.status == 200, body[:300]
            json.loads(body)
        conn.close()

    chunks = [payloads[i::in_flight] for i in range(in_flight)]
    start = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(worker, chunks))
    return time.perf_counter() - start


def run_job(recipe, endpoint: str | None, backend=None):
    from teachers.generate import Job

    job = Job(recipe, endpoints=[endpoint] if endpoint else None, progress=False, backend=backend)
    summary = job.run()
    assert summary.ok, summary.lines()
    return summary


def quantisation(endpoint: str, recipe, k: int, count: int) -> dict:
    """Bytes per entry of a real cache at top-k, and the error against the unquantised rows."""
    from distill.data.targets import encode_target
    from teachers.backends.base import TeacherRequest
    from teachers.backends.vllm_server import VLLMServerBackend
    from teachers.cache import open_cache
    from teachers.cache.verify import cache_stats
    from teachers.generate import student_tokenizer
    from teachers.prompts import prompt_ids

    tok = student_tokenizer(recipe)
    data = records(count, seed=1)

    async def score():
        backend = VLLMServerBackend([endpoint], max_in_flight=8)
        await backend.start()
        try:
            return [await backend.score(TeacherRequest(r["id"], prompt_ids(tok, r, recipe.teacher.prompts),
                                                       encode_target(tok, r["text"])), k) for r in data]
        finally:
            await backend.aclose()

    raw = {r.sample_id: r for r in asyncio.run(score())}
    cache_dir = Path(recipe.teacher.cache_dir)
    run_job(recipe, endpoint)
    cache = open_cache(cache_dir)
    errors = np.concatenate([
        np.abs(cache.get(i).topk_logprobs - raw[i].topk_logprobs).ravel() for i in raw if i in cache
    ])
    stats = cache_stats(cache_dir)
    return {
        "k": k, "samples": stats.samples, "tokens": stats.tokens,
        "bytes_per_token": stats.bytes_per_token, "bytes_per_entry": stats.bytes_per_entry,
        "format_version": stats.version,  # payload: fixed width in versions 1-2, None in 3
        "payload_bytes_per_entry": stats.payload_bytes_per_entry,
        "mean_abs_error": float(errors.mean()), "max_abs_error": float(errors.max()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--hf-samples", type=int, default=16, help="samples for the transformers run")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--endpoint", default=None,
                        help="a running vLLM server with SmolLM2 (started with --max-logprobs 64)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from teachers.server import VLLMServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-teacher-"))
    from distill.local_models import smollm2_instruct

    model = Path(smollm2_instruct())
    python = "python"
    if args.endpoint is None:
        venv = subprocess.run(["bash", str(ROOT / "scripts/ensure-vllm-venv.sh")], check=True,
                              capture_output=True, text=True).stdout.strip()
        python = f"{venv}/bin/python"
    server = None
    endpoint = args.endpoint
    if endpoint is None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        # top_k=64: the server's --max-logprobs must allow the k=64 size measurement.
        serve_recipe = make_recipe(fresh(tmp, "serve"), model, records(1), 64, 1, python)
        server = VLLMServer(serve_recipe.teacher, port=0)
        server.__enter__()
        endpoint = server.endpoint
    try:
        results = measure(args, tmp, model, endpoint, python)
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def fresh(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


def measure(args, tmp: Path, model: Path, endpoint: str, python: str) -> dict:
    from distill.data.targets import encode_target
    from teachers.backends.transformers_backend import TransformersBackend
    from teachers.generate import student_tokenizer, teacher_tokenizer
    from teachers.prompts import prompt_ids

    data = records(args.samples)
    recipe = make_recipe(fresh(tmp, "job0"), model, data, 20, args.in_flight, python)
    teacher_tok, student_tok = teacher_tokenizer(recipe.teacher), student_tokenizer(recipe)
    with urllib.request.urlopen(f"{endpoint}/v1/models") as answer:
        served = json.loads(answer.read())["data"][0]["id"]
    payloads, tokens = [], 0
    for r in data:
        target = encode_target(student_tok, r["text"])
        tokens += len(target)
        prompt = prompt_ids(teacher_tok, r, recipe.teacher.prompts)
        payloads.append({"model": served, "prompt": prompt + target, "max_tokens": 1,
                         "temperature": 0.0, "prompt_logprobs": 20})

    raw_client(endpoint, payloads[:8], args.in_flight)  # warm-up
    raw_s = min(raw_client(endpoint, payloads, args.in_flight) for _ in range(2))
    job = min(
        (run_job(make_recipe(fresh(tmp, f"job{i + 1}"), model, data, 20, args.in_flight, python),
                 endpoint) for i in range(2)),
        key=lambda summary: summary.seconds,
    )

    hf_recipe = make_recipe(fresh(tmp, "hf"), model, data[: args.hf_samples], 20, 1, python,
                            backend="transformers")
    hf_backend = TransformersBackend.load(str(model), dtype="float32", device="cpu")
    hf = run_job(hf_recipe, None, backend=hf_backend)

    sizes = [
        quantisation(endpoint, make_recipe(fresh(tmp, f"q{k}"), model, records(16, seed=1), k,
                                           args.in_flight, python), k, 16)
        for k in (20, 64)
    ]
    raw_rate, job_rate, hf_rate = tokens / raw_s, job.tokens / job.seconds, hf.tokens / hf.seconds
    return {
        "samples": len(data), "target_tokens": tokens, "in_flight": args.in_flight,
        "raw_client_tokens_per_s": raw_rate, "generate_teacher_tokens_per_s": job_rate,
        "transformers_tokens_per_s": hf_rate,
        "job_vs_raw": job_rate / raw_rate, "vllm_vs_transformers": job_rate / hf_rate,
        "cache": sizes, "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    sys.exit(main())
