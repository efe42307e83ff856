"""The demo's anchor: Whisper tiny.en itself (its own encoder and decoder, greedy) on the same
spoken test clips as the student, so the student's WER is read beside a real ASR model's.

Why an anchor: published LibriSpeech figures are measured on other audio and other hardware;
tiny.en on the demo's eSpeak clips is the like-for-like comparison (eSpeak's voices are hard
for it). Same normaliser and corpus WER as the student's evaluation (``word_error_rate``).
"""

from __future__ import annotations

import json
from pathlib import Path

ANCHOR_FILE = "anchor_tiny_en.json"


def anchor_wer(whisper_folder: str | Path, manifest: str | Path, out_dir: str | Path, *,
               batch_size: int = 8) -> dict:
    """WER (percent) of the transformers Whisper at ``whisper_folder`` on ``manifest``'s clips.

    Writes ``out_dir/anchor_tiny_en.json`` (the WER, counts and every hypothesis) and reuses it
    when it already holds this manifest's result."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from distill.data.audio import load_audio
    from distill.data.manifest import resolve_audio_path
    from distill.evaluate.asr import word_error_rate

    out = Path(out_dir) / ANCHOR_FILE
    manifest = Path(manifest)
    records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    ids = [r["id"] for r in records]
    if out.is_file():
        previous = json.loads(out.read_text())
        if previous.get("ids") == ids and previous.get("model") == str(whisper_folder):
            return previous
    processor = WhisperProcessor.from_pretrained(whisper_folder)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_folder, dtype=torch.float32)
    model.eval()
    hypotheses: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        waves = [load_audio(resolve_audio_path(manifest, r["audio"])).waveform.numpy()
                 for r in chunk]
        features = processor.feature_extractor(waves, sampling_rate=16000,
                                               return_tensors="pt").input_features
        with torch.inference_mode():
            tokens = model.generate(features, num_beams=1, do_sample=False, max_new_tokens=64)
        hypotheses += [t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True)]
    rate = word_error_rate([r["text"] for r in records], hypotheses)
    result = {"model": str(whisper_folder), "manifest": str(manifest), "ids": ids,
              "wer": rate.rate, "utterances": rate.utterances,
              "hypotheses": [{"id": i, "reference": r["text"], "hypothesis": h}
                             for i, r, h in zip(ids, records, hypotheses, strict=True)]}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp")
    staging.write_text(json.dumps(result, indent=2) + "\n")
    staging.replace(out)
    return result
