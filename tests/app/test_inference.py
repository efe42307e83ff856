"""One app request without a browser: the streamed answer equals a direct generate call, the
timings are measured, and every bad input gets a message for the page."""

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.app.inference import InputProblem, Request, Responder

SR = 16000


@pytest.fixture(scope="module")
def responder(student):
    return Responder(student, "a tiny test student")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "noise.wav"
    generator = torch.Generator().manual_seed(5)
    sf.write(path, (0.1 * torch.randn(2 * SR, generator=generator)).numpy(), SR)
    return path


def reference_answer(student, path, instruction, **decoding) -> tuple[str, int]:
    """Independent of the app: decode the file ourselves and call generate directly."""
    wave, _ = sf.read(path, dtype="float32")
    batch = student.processor([wave[: 30 * SR]], [instruction])
    ids = student.generate(batch, **decoding)[0].tolist()
    ends = [n for n, i in enumerate(ids) if i in student.end_ids]
    steps = ends[0] + 1 if ends else len(ids)  # decoding steps run, the end token's included
    return student.processor.decode([ids])[0], steps


def run(responder, request):
    return list(responder.answer(request))


def test_greedy_answer_streams_and_equals_a_direct_generate(responder, student, clip):
    updates = run(responder, Request(str(clip), "Describe it.", max_new_tokens=12))
    expected, steps = reference_answer(student, clip, "Describe it.", num_beams=1,
                                       max_new_tokens=12, repetition_penalty=1.0)
    *partial, final = updates
    assert final.done and final.text == expected
    assert all(expected.startswith(update.text) for update in partial)
    # Streamed token by token: one update per generated token that adds text, in order.
    texts = [update.text for update in partial]
    assert len(set(texts)) >= min(steps - 1, 3) and texts == sorted(texts, key=len)
    timing = final.timings
    assert timing.tokens == steps
    assert timing.ttft_s > 0 and timing.peak_memory_gb > 0
    assert (timing.tpot_s is None) == (steps < 2)


def test_beam_search_answers_once_like_a_direct_generate(responder, student, clip):
    updates = run(responder, Request(str(clip), "Describe it.", num_beams=2, max_new_tokens=6,
                                     repetition_penalty=1.3))
    expected, _ = reference_answer(student, clip, "Describe it.", num_beams=2,
                                   max_new_tokens=6, repetition_penalty=1.3)
    assert updates[-1].text == expected and updates[-1].timings.ttft_s > 0


def test_a_long_clip_is_cut_and_the_page_is_told(responder, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(35 * SR, dtype=np.float32) + 0.01, SR)
    final = run(responder, Request(str(path), "Transcribe.", max_new_tokens=2))[-1]
    assert final.done
    assert any("35.0 s long: only its first 30 s" in note for note in final.notes)


@pytest.mark.parametrize(
    ("audio", "instruction", "message"),
    [
        (None, "Transcribe.", "No audio"),
        ("CLIP", "   ", "The instruction is empty"),
        ("BROKEN", "Transcribe.", "Could not use the audio file 'broken.wav': it is not audio"),
        ("EMPTY", "Transcribe.", "Could not use the audio file 'empty.wav': it holds no sound"),
    ],
)
def test_bad_input_is_a_message_for_the_page(responder, clip, tmp_path, audio, instruction,
                                             message):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"this is not a wave file at all")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SR)
    path = {"CLIP": str(clip), "BROKEN": str(broken), "EMPTY": str(empty)}.get(audio, audio)
    with pytest.raises(InputProblem, match=message):
        run(responder, Request(path, instruction))


def test_presets_use_the_students_own_instructions(responder, student):
    assert responder.instruction_for("Transcribe") == student.processor.instruction("asr")
    assert responder.instruction_for("Ask a question").endswith("Answer briefly.")

