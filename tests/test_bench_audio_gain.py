"""benchmarks/bench_audio_gain.py against a hand computation of the swap and the CE."""

import pytest
import soundfile as sf
import torch
import torch.nn.functional as F


def test_gain_is_ce_with_the_previous_clips_audio_minus_ce_with_its_own(
        benchmark_module, student, noise, tmp_path):
    bench = benchmark_module("bench_audio_gain")
    records = []
    for i, (seconds, text) in enumerate([(1.2, "one two"), (2.0, "three"), (1.6, "four five six"),
                                         (1.0, "seven"), (1.4, "eight")]):
        sf.write(tmp_path / f"{i}.wav", noise(seconds, seed=i).numpy(), 16000)
        records.append({"audio": str(tmp_path / f"{i}.wav"), "text": text, "task": "asr"})
    gain = bench.audio_gain(student, records, batch_size=2)  # the lone fifth clip is left out

    own = other = 0.0
    tokens = 0
    processor = student.processor
    for pair in (records[0:2], records[2:4]):
        waves = [torch.from_numpy(sf.read(r["audio"], dtype="float32")[0]) for r in pair]
        batch = processor(waves, [processor.instruction("asr")] * 2, [r["text"] for r in pair])
        with torch.no_grad():
            out = student(batch, return_logits=True)
            swapped = student(batch, return_logits=True,
                              audio_embeds=out.audio_embeds.flip(0))  # two clips: a swap
        rows = out.labels != -100
        own += float(F.cross_entropy(out.logits[rows], out.labels[rows], reduction="sum"))
        other += float(F.cross_entropy(swapped.logits[rows], out.labels[rows], reduction="sum"))
        tokens += int(rows.sum())
    assert gain.tokens == tokens
    assert other != own  # the random student's answers do move with its audio (a little)
    assert gain.gain == pytest.approx((other - own) / tokens, rel=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["ckpt", "--batch", "1"], "--batch 1: the swap needs at least two clips a batch"),
    (["ckpt", "--recipe", "nope.yaml"], "nope.yaml: recipe file not found"),
])
def test_bad_arguments_are_one_line_before_any_work(benchmark_module, capsys, tmp_path,
                                                    monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        benchmark_module("bench_audio_gain").main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f" error: {message}")
