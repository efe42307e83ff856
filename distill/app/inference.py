"""One request of the web app: check the input, stream the answer, measure TTFT, TPOT, memory.

Kept apart from the page (``page.py``) so it is tested without a browser, and so the page only
shows what this module says. Every problem with a request is an ``InputProblem`` whose message
is written for the person at the page; nothing here raises a traceback at them.

Timing follows docs/reference.md §3 for one live request: TTFT runs from the moment the audio is
handed over (decoding, features, encoders, prompt assembly, prefill) to the first token's
logits; TPOT is the mean time of each later decode step. Both are read by a logits processor
that notes the time of every decoding step, so they are the same for greedy and beam search.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.errors import DistillError
from students.config import DEFAULT_INSTRUCTIONS

MAX_SECONDS = 30.0
# Preset -> (task, the instruction when the student configures none for that task): the
# reference instructions (students.config.DEFAULT_INSTRUCTIONS), and an example question for QA,
# whose instruction is the question itself.
PRESETS = {
    "Transcribe": ("asr", DEFAULT_INSTRUCTIONS["asr"][0]),
    "Describe the sound": ("audiocaption_v2", DEFAULT_INSTRUCTIONS["audiocaption_v2"][0]),
    "Ask a question": ("qa", "What can you hear in this clip? Answer briefly."),
}


AUDIO_PROBLEMS = {  # AudioError.reason -> what the person at the page is told
    "undecodable": "it is not audio in a format that can be decoded",
    "empty": "it holds no sound at all",
    "truncated": "the file is cut short",
    "non_finite": "it holds invalid (NaN or infinite) samples",
    "not_found": "the upload did not arrive",
}


class InputProblem(DistillError, ValueError):
    """A request the app cannot answer; the message is shown on the page as it is."""


@dataclass(frozen=True)
class Request:
    audio: str | None  # a file path (Gradio hands uploads and recordings over as files)
    instruction: str
    num_beams: int = 1
    max_new_tokens: int = 64
    repetition_penalty: float = 1.0


@dataclass
class Timings:
    ttft_s: float | None = None
    tpot_s: float | None = None  # None until a second token exists
    tokens: int = 0
    peak_memory_gb: float | None = None
    memory_kind: str = ""


@dataclass
class Update:
    """What the page shows after each step: the answer so far, notes, and (at the end) timings."""

    text: str
    notes: list[str] = field(default_factory=list)
    timings: Timings | None = None
    done: bool = False


class _StepClock:
    """A logits processor that changes nothing and notes when each decoding step's logits
    exist: the first is the end of prefill, the rest one decode step each."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        if scores.is_cuda:
            torch.cuda.synchronize(scores.device)
        self.times.append(time.perf_counter())
        return scores


class Responder:
    """A loaded student and what the page says about it; ``answer`` serves one request."""

    def __init__(self, student, description: str):
        self.student = student.eval()
        self.description = description
        self._lock = threading.Lock()  # one generation at a time, whatever the web server does

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, *, device: str | None = None) -> Responder:
        from distill.evaluate.runner import check_checkpoint
        from students.model import SalmonnStudent

        path = check_checkpoint(checkpoint)
        student = SalmonnStudent.from_pretrained(path, device=device)
        return cls(student, f"Trained student from `{path}`.")

    @classmethod
    def from_recipe(cls, recipe_path: str | Path, *, device: str | None = None) -> Responder:
        from distill.config import load_recipe
        from students.model import SalmonnStudent

        recipe = load_recipe(recipe_path)
        student = SalmonnStudent.from_config(recipe.model, device=device)
        return cls(student, f"**Untrained** student built from recipe `{recipe_path}`: its "
                            "Q-Former, projection and LoRA weights are random, so its answers "
                            "mean nothing. Pass `--checkpoint` to talk to a trained one.")

    def instruction_for(self, preset: str) -> str:
        """The preset's instruction as this student was trained to see it, if configured."""
        task, fallback = PRESETS[preset]
        try:
            return self.student.processor.instruction_for({"task": task})
        except KeyError:
            return fallback

    # ------------------------------------------------------------------ checking the input
    def load(self, request: Request) -> tuple[torch.Tensor, list[str]]:
        """The 16 kHz waveform and notes about it, or an InputProblem saying what is wrong."""
        from distill.data.audio import AudioError, load_audio

        if not request.audio:
            raise InputProblem("No audio: upload a clip or record one, then press Submit.")
        if not request.instruction or not request.instruction.strip():
            raise InputProblem("The instruction is empty: type what the model should do, or "
                               "pick a preset.")
        if request.num_beams < 1 or request.max_new_tokens < 1:
            raise InputProblem("Beams and max new tokens must be at least 1.")
        try:
            clip = load_audio(request.audio, max_seconds=MAX_SECONDS)
        except AudioError as err:
            why = AUDIO_PROBLEMS.get(err.reason, "it could not be decoded")
            raise InputProblem(f"Could not use the audio file {Path(request.audio).name!r}: "
                               f"{why}. Upload a WAV, FLAC or Ogg file.") from None
        notes = []
        if clip.was_cut:
            notes.append(f"The clip is {clip.source_seconds:.1f} s long: only its first "
                         f"{MAX_SECONDS:.0f} s were used (the model hears at most 30 s).")
        if clip.was_padded:
            notes.append(f"The clip is {clip.source_seconds:.2f} s long: padded with silence "
                         "to 1 s.")
        return clip.waveform, notes

    # ------------------------------------------------------------------ answering
    def answer(self, request: Request) -> Iterator[Update]:
        """Updates as tokens arrive (greedy streams; beam search answers once, at the end)."""
        from distill.evaluate.efficiency import peak_memory_gb, reset_peak_memory

        device = self.student.device
        with self._lock:
            started = time.perf_counter()
            memory_kind = reset_peak_memory(device)
            waveform, notes = self.load(request)
            clock = _StepClock()
            texts = self._generate(waveform, request, clock)
            text = ""
            for text in texts:
                yield Update(text, notes)
            steps = clock.times
            timings = Timings(tokens=len(steps), memory_kind=memory_kind,
                              peak_memory_gb=peak_memory_gb(device))
            if steps:
                timings.ttft_s = steps[0] - started
            if len(steps) > 1:
                timings.tpot_s = (steps[-1] - steps[0]) / (len(steps) - 1)
            yield Update(text, notes, timings, done=True)

    def _generate(self, waveform: torch.Tensor, request: Request, clock: _StepClock
                  ) -> Iterator[str]:
        student = self.student
        batch = {k: v.to(student.device) for k, v in
                 student.processor([waveform], [request.instruction.strip()]).items()}
        overrides = dict(num_beams=request.num_beams, max_new_tokens=request.max_new_tokens,
                         repetition_penalty=request.repetition_penalty, logits_processor=[clock])
        if request.num_beams > 1:  # transformers cannot stream beam search
            ids = student.generate(batch, **overrides)
            yield student.processor.decode(ids)[0]
            return
        yield from self._stream(batch, overrides)

    def _stream(self, batch: dict, overrides: dict) -> Iterator[str]:
        student = self.student
        streamer = _TokenStreamer(student.tokenizer)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                student.generate(batch, streamer=streamer, **overrides)
            except BaseException as err:  # re-raised in the caller's thread below
                failure.append(err)
            finally:
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        text = ""
        for text in streamer:
            yield text
        worker.join()
        if failure:
            raise failure[0]
        yield text


class _TokenStreamer:
    """transformers' streamer protocol (``put``/``end``), one update per generated token.

    transformers' TextIteratorStreamer waits for whole words; a page that shows decoding should
    show every token. The text is re-decoded from all ids so far (a token may finish a
    character another one began), and held back while it ends in a half character.
    """

    def __init__(self, tokenizer, timeout_s: float = 600):
        import queue

        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.updates: queue.Queue[str | None] = queue.Queue()
        self.timeout_s = timeout_s
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt (empty here)
            self._prompt_seen = True
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self.updates.put(text)

    def end(self) -> None:
        self.updates.put(None)

    def __iter__(self) -> Iterator[str]:
        while (text := self.updates.get(timeout=self.timeout_s)) is not None:
            yield text
