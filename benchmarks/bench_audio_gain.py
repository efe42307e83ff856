"""Does a saved student hear? ``audio_gain`` of checkpoints on a recipe's spoken test clips.

The trainer logs ``audio_gain`` at each validation (``distill.train.listening``); this scores it
afresh for any checkpoints, on the same clips and with the same swap, so that students of
different runs compare: each clip's audio tokens are swapped for those of the clip before it in
its batch, and the gain is the CE of the reference answers with the other clip's audio minus
the CE with its own, in nats per answer token (docs/training.md, "Is the student hearing?").

    python benchmarks/bench_audio_gain.py runs/demo/student/best
    python benchmarks/bench_audio_gain.py RUN_A/best RUN_B/best --recipe recipes/demo.yaml --batch 16
"""

from __future__ import annotations

import argparse

import torch

from distill.config import load_recipe
from distill.data.audio import load_audio
from distill.data.manifest import load_manifest
from distill.errors import DistillError
from distill.train.listening import AudioGain, other_clips_audio
from students.model import SalmonnStudent


def audio_gain(student: SalmonnStudent, records: list[dict], batch_size: int) -> AudioGain:
    """CE with own and with swapped audio over ``records`` (dicts with audio, text, task)."""
    gain = AudioGain()
    processor = student.processor
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        if len(chunk) < 2:  # a lone clip has no neighbour to swap with
            break
        batch = processor([load_audio(r["audio"]).waveform for r in chunk],
                          [processor.instruction_for(r) for r in chunk],
                          [r["text"] for r in chunk])
        with torch.no_grad():
            own = student(batch, return_logits=True)
            other = student(batch, return_logits=True,
                            audio_embeds=other_clips_audio(own.audio_embeds))
        rows = own.labels != -100
        gain.add(own.logits[rows], other.logits[rows], own.labels[rows])
    return gain


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="student checkpoint folders")
    parser.add_argument("--recipe", default="recipes/demo.yaml",
                        help="its first ASR eval set is scored (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="clips a batch (default: 16)")
    parser.add_argument("--clips", type=int, default=None, help="only the first N clips")
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error(f"--batch {args.batch}: the swap needs at least two clips a batch")
    try:
        recipe = load_recipe(args.recipe)
        speech = next((s for s in recipe.eval.sets if s.task == "asr"), None)
        if speech is None:
            raise DistillError(f"{args.recipe}: eval.sets has no set with task: asr to score")
        records = list(load_manifest(speech.manifest))[:args.clips]
    except (DistillError, OSError) as err:
        parser.error(str(err).splitlines()[0])
    print(f"{len(records)} clips of {speech.manifest}, batches of {args.batch}, torch threads "
          f"{torch.get_num_threads()}\n")
    print("| checkpoint | CE, own audio | CE, another clip's | audio_gain (nats a token) |")
    print("|---|---:|---:|---:|")
    for checkpoint in args.checkpoints:
        try:  # one at a time: a student holds its whole LLM
            student = SalmonnStudent.from_pretrained(checkpoint).eval()
        except (DistillError, OSError) as err:
            parser.error(str(err).splitlines()[0])
        gain = audio_gain(student, records, args.batch)
        print(f"| {checkpoint} | {gain.own / gain.tokens:.3f} | {gain.other / gain.tokens:.3f} "
              f"| {gain.gain:.3f} |")


if __name__ == "__main__":
    main()
