"""Teacher throughput and cache size: the vLLM server against the transformers backend, one run.

Measures, on one vLLM server (started here, or ``--endpoint``) and score mode, for two workloads:
  bench  64 ASR-style samples of 12-40 words (about 26 target tokens, 64-token teacher prompt);
  demo   the demo's teacher workload: its 192 speech sentences and 64 sound captions (about
         7 target tokens, 46-token teacher prompt), top-8 as recipes/demo.yaml asks;
then, per workload:
  1. generate-teacher (teachers.generate.Job) through the vLLM server backend, cache included;
  2. generate-teacher with the transformers backend on the same model, in this process, on an
     evenly spaced ``--hf-samples`` of the samples, with the faster of 1 thread and torch's
     default (probed just before: on a busy machine 2 threads can be several times slower);
and once, on the bench workload:
  3. a raw client: plain threads posting upstream /v1/completions score requests (http.client,
     keep-alive, no prefix-cache reading): what any client gets from a stock vLLM server;
  4. cache bytes per top-k entry at k=20 and k=64, and the mean absolute logprob error the
     logprob quantisation adds (real top-k rows from the server).
Server start-up (process start to /health) is reported on its own.

Goals (issue 17, item 3): (1) >= 1.5 x (2) on the CPU for both workloads, >= 5 x on a GPU.

usage (toolkit venv; starts a vLLM server from the vLLM venv unless --endpoint is given):
  python benchmarks/bench_teacher.py [--samples 64] [--in-flight 16] [--workload both|bench|demo]
                                     [--endpoint URL]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
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


def demo_records() -> list[dict]:
    """The demo's teacher workload: what ``distill demo`` scores (standard size), without audio.

    Same texts and tasks as distill/demo/dataset.py builds: 128 training and 64 held-out
    sentences of its grammar (ASR) and 64 sound captions (one per synthetic clip).
    """
    from distill.demo.dataset import TEST_SENTENCES, sentences
    from distill.demo.sounds import make_sound

    pool = list(itertools.islice(sentences(), TEST_SENTENCES + 128))
    speech = pool[TEST_SENTENCES:] + pool[:64]
    out = [{"id": f"d{i:05d}", "audio": f"d{i}.wav", "task": "asr", "text": text}
           for i, text in enumerate(speech)]
    out += [{"id": f"c{i:05d}", "audio": f"c{i}.wav", "task": "audiocaption",
             "text": make_sound(i).captions[0]} for i in range(64)]
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
    parser.add_argument("--samples", type=int, default=64, help="samples of the bench workload")
    parser.add_argument("--hf-samples", type=int, default=64,
                        help="samples of each workload for the transformers run (evenly spaced)")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--workload", choices=("both", "bench", "demo"), default="both")
    parser.add_argument("--no-cache-size", action="store_true",
                        help="skip the cache size and quantisation measurement")
    parser.add_argument("--endpoint", default=None,
                        help="a running vLLM server with SmolLM2 (started by serve-teacher, "
                             "which reads the prefix cache, with --max-logprobs 64)")
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
    startup_s = None
    if endpoint is None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        # top_k=64: the server's --max-logprobs must allow the k=64 size measurement. The demo
        # recipe's server arguments: a 0.1 share of RAM, no torch.compile at start-up.
        serve_recipe = make_recipe(fresh(tmp, "serve"), model, records(1), 64, 1, python)
        serve_recipe.teacher.server.extra_args = ["--gpu-memory-utilization", "0.1",
                                                  "--enforce-eager"]
        server = VLLMServer(serve_recipe.teacher, port=0)
        began = time.perf_counter()
        server.__enter__()
        startup_s = time.perf_counter() - began
        endpoint = server.endpoint
    try:
        results = measure(args, tmp, model, endpoint, python)
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    results.update(server_startup_s=startup_s, load_average=os.getloadavg(),
                   cpu_count=os.cpu_count(), python=sys.version.split()[0])
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def fresh(tmp: Path, name: str) -> Path:
    (tmp / name).mkdir()
    return tmp / name


def best_threads(hf_backend, length: int = 53, repeats: int = 3) -> int:
    """Set torch's threads for the transformers run to the faster of 1 and torch's default.

    On a shared machine whose cores are busy, two OpenMP threads can be several times slower
    than one (each waits for the other at every barrier); the baseline gets its better setting.
    """
    import torch

    ids = torch.randint(0, 1000, (1, length))
    timings = {}
    for threads in sorted({1, torch.get_num_threads()}, reverse=True):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            hf_backend.model(input_ids=ids)
            began = time.perf_counter()
            for _ in range(repeats):
                hf_backend.model(input_ids=ids)
        timings[threads] = time.perf_counter() - began
    best = min(timings, key=timings.get)
    torch.set_num_threads(best)
    return best


def compare(tmp: Path, name: str, model: Path, data: list[dict], k: int, in_flight: int,
            endpoint: str, python: str, hf_backend, hf_samples: int) -> dict:
    """The vLLM server job on ``data``, then the transformers job on an evenly spaced
    ``hf_samples`` of it (rates in target tokens/s, so the two compare)."""
    load = os.getloadavg()[0]
    vllm = run_job(make_recipe(fresh(tmp, f"{name}-vllm"), model, data, k, in_flight, python),
                   endpoint)
    hf_data = data[:: max(1, len(data) // hf_samples)][:hf_samples]
    threads = best_threads(hf_backend)
    hf = run_job(make_recipe(fresh(tmp, f"{name}-hf"), model, hf_data, k, 1, python,
                             backend="transformers"), None, backend=hf_backend)
    vllm_rate, hf_rate = vllm.tokens / vllm.seconds, hf.tokens / hf.seconds
    print(f"{name}: vLLM {vllm.seconds:.1f} s ({vllm_rate:.1f} tokens/s), transformers "
          f"{hf.seconds:.1f} s ({hf_rate:.1f} tokens/s, {threads} threads): "
          f"{vllm_rate / hf_rate:.2f}x",
          file=sys.stderr)
    return {
        "samples": len(data), "target_tokens": vllm.tokens, "top_k": k, "in_flight": in_flight,
        "vllm_seconds": vllm.seconds, "vllm_tokens_per_s": vllm_rate,
        "transformers_samples": len(hf_data), "transformers_target_tokens": hf.tokens,
        "transformers_threads": threads,
        "transformers_seconds": hf.seconds, "transformers_tokens_per_s": hf_rate,
        "vllm_vs_transformers": vllm_rate / hf_rate,
        "load_average_before": load, "load_average_after": os.getloadavg()[0],
    }


def measure(args, tmp: Path, model: Path, endpoint: str, python: str) -> dict:
    from distill.data.targets import encode_target
    from teachers.backends.transformers_backend import TransformersBackend
    from teachers.generate import student_tokenizer, teacher_tokenizer
    from teachers.prompts import prompt_ids

    workloads = {"bench": (records(args.samples), 20), "demo": (demo_records(), 8)}
    if args.workload != "both":
        workloads = {args.workload: workloads[args.workload]}
    hf_backend = TransformersBackend.load(str(model), dtype="float32", device="cpu")
    # Warm-up, not timed: the server's first requests and torch's first forward pass.
    warm = records(8, seed=2)
    run_job(make_recipe(fresh(tmp, "warm"), model, warm, 8, args.in_flight, python), endpoint)
    run_job(make_recipe(fresh(tmp, "warm-hf"), model, warm[:2], 8, 1, python,
                        backend="transformers"), None, backend=hf_backend)
    results: dict = {"workloads": {
        name: compare(tmp, name, model, data, k, args.in_flight, endpoint, python, hf_backend,
                      args.hf_samples)
        for name, (data, k) in workloads.items()
    }}

    if "bench" in workloads:
        data = workloads["bench"][0]
        recipe = make_recipe(fresh(tmp, "raw"), model, data, 20, args.in_flight, python)
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
        raw_s = raw_client(endpoint, payloads, args.in_flight)
        job_rate = results["workloads"]["bench"]["vllm_tokens_per_s"]
        results.update(raw_client_tokens_per_s=tokens / raw_s,
                       job_vs_raw=job_rate / (tokens / raw_s))
    if not args.no_cache_size:
        results["cache"] = [
            quantisation(endpoint, make_recipe(fresh(tmp, f"q{k}"), model, records(16, seed=1), k,
                                               args.in_flight, python), k, 16)
            for k in (20, 64)
        ]
    return results


if __name__ == "__main__":
    sys.exit(main())
