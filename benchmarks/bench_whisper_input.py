"""Whisper's encoder on the 30 s padded input against each clip at its own length.

For each clip of a manifest (default: the demo's spoken and sound test clips, after `distill
demo`), the frozen encoder of ``model.whisper`` (the recipe's) runs twice through the student's
own code: padded to 30 s (``model.whisper.pad_to_30s: true``) and cut after the clip's last
Q-Former window (``false``). Reported per kind of clip: encoder time per clip (one at a time,
median), and how far the short-input features are from the padded ones over the clip's own
frames (cosine per frame, relative error of the whole block).

    python benchmarks/bench_whisper_input.py                   # recipes/demo.yaml, 16 + 16 clips
    python benchmarks/bench_whisper_input.py --clips 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import soundfile as sf
import torch

from distill.config import load_recipe
from distill.data.manifest import load_manifest
from students.llm import load_tokenizer
from students.processor import SalmonnProcessor
from students.whisper_encoder import load_whisper_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/demo.yaml")
    parser.add_argument("--clips", type=int, default=16, help="clips of each manifest")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    model = recipe.model
    encoder = load_whisper_encoder(model.whisper, torch.float32)
    short_model = model.model_copy(update={
        "whisper": model.whisper.model_copy(update={"pad_to_30s": False}),
        "qformer": model.qformer.model_copy(update={"audio_tokens": "clip"}),
    })
    padded_model = model.model_copy(update={
        "whisper": model.whisper.model_copy(update={"pad_to_30s": True})})
    tokenizer = load_tokenizer(model.llm)
    short = SalmonnProcessor.from_config(short_model, tokenizer)
    padded = SalmonnProcessor.from_config(padded_model, tokenizer)
    print(f"torch threads {torch.get_num_threads()}; encoder {model.whisper.name_or_path}")
    print("| clips | n | padded ms/clip | short ms/clip | speed-up | cosine mean (min) | rel. error |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for eval_set in recipe.eval.sets:
        manifest = load_manifest(eval_set.manifest)
        records = manifest.select(range(min(args.clips, len(manifest))))
        times_full, times_short, cosines, errors, worst = [], [], [], [], 1.0
        for record in records:
            wave, _ = sf.read(record["audio"], dtype="float32")  # absolute, 16 kHz mono
            with torch.no_grad():
                full_batch = padded([wave], ["a"])
                short_batch = short([wave], ["a"])
                start = time.perf_counter()
                full = encoder(full_batch["whisper_features"]).last_hidden_state
                times_full.append(time.perf_counter() - start)
                start = time.perf_counter()
                cut = encoder(short_batch["whisper_features"]).last_hidden_state
                times_short.append(time.perf_counter() - start)
            frames = -(-len(wave) // 320)  # the clip's own 20 ms encoder frames
            a, b = full[0, :frames], cut[0, :frames]
            cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
            cosines.append(float(cos.mean()))
            worst = min(worst, float(cos.min()))
            errors.append(float((a - b).norm() / a.norm()))
        full_ms, short_ms = 1e3 * statistics.median(times_full), 1e3 * statistics.median(times_short)
        print(f"| {eval_set.name} | {len(records)} | {full_ms:.0f} | {short_ms:.0f} | "
              f"{full_ms / short_ms:.1f}x | {statistics.mean(cosines):.3f} ({worst:.3f}) | "
              f"{statistics.mean(errors):.3f} |")


if __name__ == "__main__":
    main()
