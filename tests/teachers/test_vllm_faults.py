"""A real vLLM server killed (SIGKILL, its whole process group) in the middle of
``generate-teacher``: the job ends with one clear error naming the endpoint, the samples stored so
far are intact, and a rerun against a fresh server completes with nothing lost or doubled.

The server here is this test's own (the session's shared one must survive the kill).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from distill.config import load_recipe
from teachers.cache import open_cache, verify_cache
from teachers.cache.reader import index_files
from teachers.server import VLLMServer

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def generate(recipe, endpoint: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli", "generate-teacher", str(recipe),
            "--endpoint", endpoint, "--no-progress"]


def start_server(teacher, log) -> VLLMServer:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = VLLMServer(teacher, port=0, log_path=log, env=env)
    server.start()
    server.wait_ready(timeout=900)
    return server


def test_vllm_server_killed_mid_generate_teacher(tmp_path, vllm_python, smollm2_dir, helpers):
    records = helpers.sample_records(30)
    manifest = helpers.write_manifest(tmp_path / "m.jsonl", records)
    cache = tmp_path / "cache"
    recipe = helpers.write_recipe(
        tmp_path / "r.yaml", smollm2_dir, manifest, cache, python=vllm_python, top_k=8,
        shard_size=2, max_in_flight=1, max_retries=2,
    )
    teacher = load_recipe(recipe).teacher

    server = start_server(teacher, tmp_path / "vllm-1.log")
    try:
        job = subprocess.Popen(generate(recipe, server.endpoint), cwd=helpers.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and len(index_files(cache)) < 2:
            assert job.poll() is None, f"finished before the kill: {job.stderr.read()}"
            time.sleep(0.05)
        os.killpg(server.process.pid, signal.SIGKILL)  # the server dies, not the job
        server.process.wait()
        err = job.communicate(timeout=300)[1]
    finally:
        server.stop()

    assert job.returncode == 1, err
    assert "teacher unreachable after 3 attempts" in err and server.endpoint in err
    assert "written before this are kept" in err
    partial = open_cache(cache).ids()
    assert 4 <= len(partial) < len(records)
    report = verify_cache(cache)
    assert report.ok and not report.warnings, report  # every stored sample intact

    server = start_server(teacher, tmp_path / "vllm-2.log")
    try:
        again = subprocess.run(generate(recipe, server.endpoint), cwd=helpers.root,
                               capture_output=True, text=True, timeout=900)
    finally:
        server.stop()
    assert again.returncode == 0, again.stderr
    assert f"{len(partial)} already cached, {len(records) - len(partial)} written" in again.stderr
    report = verify_cache(cache)
    assert report.ok and not report.warnings and report.samples == len(records), report
    assert open_cache(cache).ids() == {r["id"] for r in records}
