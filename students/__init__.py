"""SALMONN-style students: Whisper + BEATs encoders, window Q-Former, projection, QLoRA or MoE LLM.

Public API: ``SalmonnStudent`` (``from_config`` / ``forward`` / ``generate`` / ``save_pretrained``
/ ``from_pretrained``), ``SalmonnProcessor`` (raw inputs -> batch) and ``StudentOutput``.
"""

from students.model import SalmonnStudent, StudentOutput
from students.processor import SalmonnProcessor

__all__ = ["SalmonnProcessor", "SalmonnStudent", "StudentOutput"]
