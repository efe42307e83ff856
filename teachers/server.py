"""``serve-teacher``: run vLLM's OpenAI server for the recipe's teacher as a child process.

Why a child process: vLLM lives in its own venv (``teacher.server.python``) with its own torch
and transformers, and the toolkit only talks HTTP to it. Start-up takes a minute or more, so we
poll ``/health``; a server that dies on the way is reported with the tail of its log (the usual
causes, a missing model or an unsupported head size, are only visible there). Stopping
terminates the child's whole process group (vLLM forks engine workers), waits, then kills.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from distill.errors import DistillFailure

# vLLM's OpenAI server behind a small launcher that lets score requests read the prefix cache
# (teachers/vllm_serve.py says why and how); it runs in the vLLM venv, so it goes by its path.
LAUNCHER = Path(__file__).resolve().with_name("vllm_serve.py")
# KV block size on the CPU build (its default is 128): the prefix cache reuses whole blocks
# only, and the teacher prompt that a task's samples share is about 35 tokens for SmolLM2's
# chat template, so 128-token blocks would never be reused. Multiples of 32 are what the CPU
# attention kernels prefer (vLLM warns otherwise).
BLOCK_SIZE = 32


class ServerStartError(DistillFailure, RuntimeError):
    """The vLLM server did not come up (it exited, or never answered /health in time)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def model_argument(teacher) -> str:
    if teacher.gguf_file:
        return str(Path(teacher.model) / teacher.gguf_file)
    return teacher.model


VLLM_VENV_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ensure-vllm-venv.sh"


def installed_vllm_python(python: str) -> str | None:
    """The vLLM interpreter ``python`` names if it is there now, else None; never builds.

    ``auto`` asks scripts/ensure-vllm-venv.sh --check; an explicit path must exist.
    """
    if python != "auto":
        return python if Path(python).is_file() else None
    if not VLLM_VENV_SCRIPT.is_file():
        return None
    result = subprocess.run(["bash", str(VLLM_VENV_SCRIPT), "--check"], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return str(Path(result.stdout.strip().splitlines()[-1]) / "bin" / "python")


def resolve_python(python: str) -> str:
    """``auto``: the vLLM venv that scripts/ensure-vllm-venv.sh builds once and caches."""
    if python != "auto":
        return python
    if not VLLM_VENV_SCRIPT.is_file():
        raise ServerStartError(
            "teacher.server.python is 'auto', which needs scripts/ensure-vllm-venv.sh from the "
            "distill repository; set it to the python of a venv where vllm imports"
        )
    print("distill: locating the vLLM venv (built once, then cached) ...", file=sys.stderr)
    result = subprocess.run(["bash", str(VLLM_VENV_SCRIPT)], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise ServerStartError(f"{VLLM_VENV_SCRIPT} failed:\n{result.stderr[-2000:]}")
    return str(Path(result.stdout.strip().splitlines()[-1]) / "bin" / "python")


def server_command(teacher, host: str, port: int) -> list[str]:
    """The vLLM command line for a TeacherConfig (``--max-logprobs`` covers top_k).

    Prefix caching is on with small blocks and the cached-token count in every answer's usage
    (``--enable-prompt-tokens-details``), which the scorer checks; ``extra_args`` come last and
    may set ``--block-size`` or ``--no-enable-prefix-caching`` instead.
    """
    server = teacher.server
    command = [
        resolve_python(server.python), str(LAUNCHER),
        "--model", model_argument(teacher),
        "--host", host,
        "--port", str(port),
        "--max-logprobs", str(max(teacher.top_k, 20)),
        "--logprobs-mode", teacher.logprob_mode,
        "--dtype", server.dtype,
        "--tensor-parallel-size", str(server.tensor_parallel_size),
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
    ]
    if not any(arg.split("=")[0] == "--block-size" for arg in server.extra_args):
        command += ["--block-size", str(BLOCK_SIZE)]
    if teacher.revision:
        command += ["--revision", teacher.revision]
    if teacher.tokenizer:
        command += ["--tokenizer", teacher.tokenizer]
    if server.max_model_len:
        command += ["--max-model-len", str(server.max_model_len)]
    return command + list(server.extra_args)


def server_env(teacher, environ: Mapping[str, str]) -> dict[str, str]:
    """The server process's environment: ``environ`` plus the recipe's ``teacher.server.env``
    (where ``environ`` does not already set a variable), ``HF_HUB_OFFLINE=1`` for a local model,
    and ``VLLM_API_KEY`` from ``teacher.api_key_env`` so that the server asks for that key."""
    env = dict(environ)
    for name, value in teacher.server.env.items():
        env.setdefault(name, value)
    if Path(teacher.model).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local model needs no hub
    key_env = teacher.api_key_env
    if key_env and env.get(key_env):
        env["VLLM_API_KEY"] = env[key_env]  # the server then requires the same key
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class VLLMServer:
    """A vLLM server child process; a context manager that always stops what it started."""

    def __init__(
        self,
        teacher,
        host: str | None = None,
        port: int | None = None,
        log_path: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
    ):
        self.teacher = teacher
        self.host = host or teacher.server.host
        self.port = port if port is not None else teacher.server.port
        if self.port == 0:
            self.port = free_port(self.host)
        default_log = Path(tempfile.gettempdir()) / f"distill-vllm-{os.getpid()}-{self.port}.log"
        self.log_path = Path(log_path) if log_path else default_log
        self.env = env
        self.process: subprocess.Popen | None = None
        self._command: list[str] | None = None

    @property
    def endpoint(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def command(self) -> list[str]:
        """Built once: ``python: auto`` runs the venv script, which should not run again."""
        if self._command is None:
            self._command = server_command(self.teacher, self.host, self.port)
        return self._command

    def start(self) -> None:
        env = server_env(self.teacher, os.environ if self.env is None else self.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, start_new_session=True,
                )
            except OSError as err:
                raise ServerStartError(
                    f"cannot run {self.command[0]!r} ({err.strerror}); set "
                    "teacher.server.python to the vLLM venv's python "
                    "(scripts/ensure-vllm-venv.sh prints its folder)"
                ) from None

    def wait_ready(self, timeout: float | None = None) -> str:
        """Block until ``/health`` answers 200; return the endpoint URL."""
        timeout = timeout or self.teacher.server.startup_timeout_s
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll() if self.process else None
            if code is not None:
                raise ServerStartError(
                    f"the vLLM server exited with code {code} during start-up "
                    f"(command: {' '.join(self.command)}); last lines of {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            if self.healthy():
                return self.endpoint
            time.sleep(1.0)
        self.stop()
        raise ServerStartError(
            f"the vLLM server did not answer {self.endpoint}/health within {timeout:g} s "
            f"(teacher.server.startup_timeout_s); last lines of {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 30.0) -> int | None:
        """SIGTERM the server's process group, wait ``grace_s``, then SIGKILL it."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                process.wait()
        # Engine workers left behind by a crashed parent would hold memory: reap the group.
        self._signal_group(signal.SIGKILL)
        return process.returncode

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)  # the group we created with start_new_session

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(teacher, host: str | None = None, port: int | None = None, log_path=None) -> int:
    """Run until Ctrl-C or SIGTERM; returns an exit code (1 if the server died on its own)."""
    server = VLLMServer(teacher, host=host, port=port, log_path=log_path)
    print(f"starting vLLM for {teacher.model}: {' '.join(server.command)}", file=sys.stderr)
    print(f"log: {server.log_path}", file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        server.start()
        endpoint = server.wait_ready()
        print(endpoint, flush=True)
        print("serving; Ctrl-C or SIGTERM stops the server", file=sys.stderr)
        code = server.process.wait()
        print(
            f"error: the vLLM server exited with code {code}; last lines of {server.log_path}:\n"
            f"{log_tail(server.log_path)}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("stopping the vLLM server", file=sys.stderr)
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
