"""Shared fixtures for the teacher tests: SmolLM2 as teacher and student, one vLLM server.

The vLLM server is expensive on CPU (a minute or two to start), so the whole session shares one,
started the way a user starts it: ``serve-teacher`` in a subprocess, stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVER_TOP_K = 64  # the shared server allows up to this many logprobs (parity and benchmark)


# ---------------------------------------------------------------------------------- models
@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain transformers folder (vLLM loads it too)."""
    from distill.local_models import smollm2_instruct

    return Path(smollm2_instruct())


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def other_tokenizer_dir(smollm2_dir, tmp_path_factory) -> Path:
    """SmolLM2's tokenizer with two ordinary tokens' ids swapped: looks the same, is not."""
    target = tmp_path_factory.mktemp("models") / "smollm2-swapped-tokenizer"
    target.mkdir()
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        if (smollm2_dir / name).exists():
            (target / name).write_bytes((smollm2_dir / name).read_bytes())
    spec = json.loads((smollm2_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    by_id = {i: tok for tok, i in vocab.items()}
    a, b = by_id[1000], by_id[1001]
    vocab[a], vocab[b] = 1001, 1000
    (target / "tokenizer.json").write_text(json.dumps(spec))
    return target


# R1-Distill-Llama vs LLaMA-3.2-Instruct in miniature: SmolLM2's ordinary vocabulary, other specials.
R1_SPECIALS = {2: "<|reserved_special_token_2|>", 3: "<｜end▁of▁sentence｜>", 4: "<think>",
               5: "</think>"}
R1_ADDED = ["<｜Assistant｜>", "<｜User｜>"]  # ids 49152, 49153: beyond the student's vocab
R1_TEMPLATE = (  # R1's shape: the generation prompt opens a think block
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


@pytest.fixture(scope="session")
def r1_like_tokenizer_dir(smollm2_dir, tmp_path_factory) -> Path:
    """A teacher tokenizer that shares SmolLM2's ordinary vocabulary but not its specials, as
    R1-Distill-Llama shares Llama-3's: SmolLM2's end ``<|im_end|>`` (id 2) is a reserved token
    here, the teacher ends with ``<｜end▁of▁sentence｜>`` (id 3), ``<think>``/``</think>`` take
    ids 4/5, and ``<｜Assistant｜>``/``<｜User｜>`` lie beyond the student's vocabulary. Its chat
    template reproduces R1's: the generation prompt ends inside ``<think>\n``."""
    target = tmp_path_factory.mktemp("models") / "r1-like-tokenizer"
    target.mkdir()
    spec = json.loads((smollm2_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    for token in spec["added_tokens"]:
        if token["id"] in R1_SPECIALS:
            vocab.pop(token["content"], None)
            token["content"] = R1_SPECIALS[token["id"]]
            vocab[token["content"]] = token["id"]
    template = dict(spec["added_tokens"][0])
    for offset, content in enumerate(R1_ADDED):
        spec["added_tokens"].append({**template, "id": 49152 + offset, "content": content})
    (target / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    config.update(eos_token=R1_SPECIALS[3], pad_token=R1_SPECIALS[3])
    (target / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (target / "chat_template.jinja").write_text(R1_TEMPLATE, encoding="utf-8")
    return target


# --------------------------------------------------------------------------------- recipes
def write_manifest(path: Path, records: list[dict]) -> Path:
    lines = [json.dumps({"audio": f"{r['id']}.wav", **r}) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def sample_records(count: int) -> list[dict]:
    """Short ASR/caption/QA records with varied text (targets of 5-20 tokens)."""
    words = [
        "the", "cat", "sat", "on", "the", "mat", "while", "the", "dog", "barked", "at", "a",
        "passing", "car", "near", "the", "old", "river", "bank", "and", "birds", "sang",
    ]
    records = []
    for i in range(count):
        text = " ".join(words[(i * 3) % 10 : (i * 3) % 10 + 4 + i % 7])
        task = ("asr", "audiocaption", "qa")[i % 3]
        record = {"id": f"s{i:03d}", "task": task, "text": text}
        if task == "qa":
            record["question"] = "What animal is mentioned first?"
        records.append(record)
    return records


def write_recipe(
    path: Path, model: Path, manifest: Path, cache_dir: Path, *, student: Path | None = None,
    python: str = "python", **teacher,
) -> Path:
    recipe = {
        "name": "teacher-test",
        "model": {"llm": {"name_or_path": str(student or model)}},
        "teacher": {
            "model": str(model),
            "cache_dir": str(cache_dir),
            "server": {"python": python, "dtype": "float32", "max_model_len": 1024,
                       "startup_timeout_s": 600},
            **teacher,
        },
        "data": {"train": [{"path": str(manifest)}]},
    }
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def cli(*argv: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m distill.cli`` as a user would (a fresh process)."""
    return subprocess.run(
        [sys.executable, "-m", "distill.cli", *argv], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


# ------------------------------------------------------------------------------------ vLLM
@pytest.fixture(scope="session")
def vllm_python() -> str:
    """The vLLM venv's python (built once by scripts/ensure-vllm-venv.sh, then cached)."""
    started = time.monotonic()
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-vllm-venv.sh")], capture_output=True, text=True,
        timeout=3600,
    )
    if out.returncode:
        pytest.fail(f"ensure-vllm-venv.sh failed:\n{out.stderr[-3000:]}")
    print(f"vLLM venv ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return str(Path(out.stdout.strip()) / "bin" / "python")


@pytest.fixture(scope="session")
def vllm_server(vllm_python, smollm2_dir, tmp_path_factory):
    """``serve-teacher`` for SmolLM2 on a free port; yields the endpoint URL.

    DISTILL_TEST_VLLM_ENDPOINT points the tests at a server already running the same model
    (started with ``--max-logprobs 64``) instead: quicker while developing.
    """
    from teachers.server import free_port

    if os.environ.get("DISTILL_TEST_VLLM_ENDPOINT"):
        yield os.environ["DISTILL_TEST_VLLM_ENDPOINT"]
        return

    folder = tmp_path_factory.mktemp("server")
    manifest = write_manifest(folder / "m.jsonl", sample_records(1))
    recipe = write_recipe(
        folder / "serve.yaml", smollm2_dir, manifest, folder / "cache", python=vllm_python,
        top_k=SERVER_TOP_K,
    )
    port = free_port()
    log = folder / "vllm.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "serve-teacher", str(recipe), "--port", str(port),
         "--log", str(log)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    endpoint = _read_endpoint(process, timeout=900)
    if endpoint is None:
        process.kill()
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        pytest.fail(f"serve-teacher did not print an endpoint:\n{process.stderr.read()}\n{tail}")
    yield endpoint
    process.send_signal(signal.SIGTERM)
    code = process.wait(120)
    assert code == 0, f"serve-teacher exited {code} on SIGTERM: {process.stderr.read()[-2000:]}"


def _read_endpoint(process: subprocess.Popen, timeout: float) -> str | None:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=1.0):
            line = process.stdout.readline()
            if line.startswith("http"):
                return line.strip()
            if not line and process.poll() is not None:
                return None
        elif process.poll() is not None:
            return None
    return None


@pytest.fixture(scope="session")
def helpers():
    """The module-level helpers above, for test modules (importlib mode cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        write_manifest=write_manifest, sample_records=sample_records, write_recipe=write_recipe,
        cli=cli, root=ROOT,
    )
