"""The vLLM command line serve-teacher builds: the launcher, prefix caching and its block size."""

import ast

import pytest
from pydantic import ValidationError

from teachers.backends.vllm_server import READ_PREFIX_CACHE
from teachers.config import TeacherConfig, TeacherServerConfig
from teachers.server import LAUNCHER, server_command, server_env


def teacher(**server) -> TeacherConfig:
    return TeacherConfig(model="/models/smol", top_k=8,
                         server=TeacherServerConfig(python="/opt/vllm/bin/python", **server))


def value_after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_server_runs_through_the_launcher_with_prefix_caching_in_32_token_blocks():
    command = server_command(teacher(), "127.0.0.1", 8123)
    assert command[:2] == ["/opt/vllm/bin/python", str(LAUNCHER)] and LAUNCHER.is_file()
    assert "--enable-prefix-caching" in command and "--enable-prompt-tokens-details" in command
    assert value_after(command, "--block-size") == "32"
    assert value_after(command, "--max-logprobs") == "20"  # at least vLLM's default for k = 8


def test_extra_args_set_their_own_block_size():
    for extra in (["--block-size", "128"], ["--block-size=128"]):
        command = server_command(teacher(extra_args=extra), "127.0.0.1", 8123)
        assert command.count("--block-size") + sum(a.startswith("--block-size=") for a in command) == 1
        assert command[-len(extra):] == extra


def test_the_launcher_and_the_client_name_the_same_request_key():
    """The launcher runs in vLLM's venv and cannot import the toolkit: compare its source."""
    tree = ast.parse(LAUNCHER.read_text(encoding="utf-8"))
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
    }
    assert set(READ_PREFIX_CACHE) == {constants["READ_PREFIX_CACHE"]}


def test_the_recipes_env_reaches_the_server_and_the_callers_environment_wins(tmp_path):
    config = TeacherConfig(model=str(tmp_path), api_key_env="MY_KEY", server=TeacherServerConfig(
        env={"VLLM_CPU_NUM_OF_RESERVED_CPU": 0, "VLLM_CPU_KVCACHE_SPACE": "4"}))  # 0: YAML's int
    env = server_env(config, {"VLLM_CPU_KVCACHE_SPACE": "1", "MY_KEY": "s3cret", "PATH": "/bin"})
    assert env == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
                   "MY_KEY": "s3cret", "VLLM_API_KEY": "s3cret", "PATH": "/bin",
                   "HF_HUB_OFFLINE": "1"}  # tmp_path exists: a local model needs no hub
    hub = server_env(TeacherConfig(model="org/not-a-folder", api_key_env=None), {})
    assert hub == {}


def test_an_env_value_that_is_not_text_or_a_number_is_refused():
    with pytest.raises(ValidationError, match="env.FLAG"):
        TeacherServerConfig(env={"FLAG": True})
