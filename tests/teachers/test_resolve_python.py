"""teacher.server.python: 'auto' finds the cached vLLM venv; anything else is used as given."""

import subprocess
from pathlib import Path

import pytest

from teachers.server import resolve_python


def test_explicit_interpreter_is_used_as_given():
    assert resolve_python("/opt/vllm/bin/python") == "/opt/vllm/bin/python"


@pytest.mark.slow
@pytest.mark.vllm
def test_auto_is_the_vllm_venv_where_vllm_imports():
    python = resolve_python("auto")
    assert Path(python).is_file()
    result = subprocess.run([python, "-c", "import vllm, sys; print(vllm.__version__)"],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
