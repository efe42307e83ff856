"""Make the helper modules next to these tests importable under any pytest import mode."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from losses_inputs import make_inputs  # noqa: E402


@pytest.fixture
def inputs():
    return make_inputs()
