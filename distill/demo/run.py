"""``distill demo``: every stage of the pipeline, for real, on tiny models and synthetic data.

Five stages run in order, each through the same code the full recipes use:
  1. data      speech (eSpeak NG) and sound events, manifests with train and test splits
  2. models    Whisper tiny.en (PyPI, converted from CTranslate2), SmolLM2-135M-Instruct
  3. teacher   SmolLM2 fills the soft-target cache: a vLLM server when the vLLM venv is built,
               else the transformers backend in this process (the demo says which)
  4. student   the trainer fits the SALMONN student (SmolLM2 + LoRA) from the recipe
  5. evaluate  WER, caption metrics, efficiency: report.md / .json / .png; and the anchor,
               Whisper tiny.en's own WER on the same spoken test clips

Every stage resumes: finished data and models are reused, the teacher cache skips stored ids,
and training continues from its last checkpoint unless the recipe's model, data, loss or train
section changed (then the student starts over, said so). ``--size smoke`` shrinks everything for CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.config import Recipe
from distill.demo.dataset import DemoSizes
from distill.errors import DistillFailure

SIZES = {
    # 1024 spoken sentences: with 128 the student learned them by heart and answered new ones
    # with the nearest it knew (BENCHMARKS.md, "Demo: the student hears the words").
    "standard": DemoSizes(speech_train=1024, speech_test=64, sounds_train=256, sounds_test=64),
    "smoke": DemoSizes(speech_train=6, speech_test=3, sounds_train=6, sounds_test=3),
}
DEMO_MANIFESTS = ("speech_train.jsonl", "speech_test.jsonl", "sounds_train.jsonl",
                  "sounds_test.jsonl")
STATE_FILE = "demo_state.json"
NEXT_STEPS = """\
next, the real recipes (see README.md, "The pipeline, command by command"):
  distill prepare-data librispeech /data/LibriSpeech --subset train-clean-100 -o data/manifests/librispeech_train.jsonl
  distill validate recipes/salmonn_1b.yaml --plan --check-files
  distill generate-teacher recipes/salmonn_1b.yaml
  distill train-student recipes/salmonn_1b.yaml
  distill evaluate recipes/salmonn_1b.yaml --checkpoint runs/salmonn_1b/student/best"""


class DemoError(DistillFailure, RuntimeError):
    """A demo stage could not run; the message names the stage and what to do."""


@dataclass
class DemoResult:
    layout: DemoLayout
    teacher_backend: str
    checkpoint: Path
    report: dict[str, Path]
    headline: dict[str, float | None]
    seconds: dict[str, float] = field(default_factory=dict)
    anchor: dict | None = None  # Whisper tiny.en's own WER on the spoken test clips


def shrink_for_smoke(recipe: Recipe) -> None:
    """The smallest run that still passes through every stage (the CI test's size)."""
    train = recipe.train
    train.optimizer.llm_start_step = min(train.optimizer.llm_start_step, 1)  # before max_steps
    train.max_steps, train.batch_size = 4, 2
    train.eval_every_steps, train.checkpoint.every_steps = 2, 2
    train.schedule.warmup_steps = 1
    recipe.eval.decoding.max_new_tokens = 6
    recipe.eval.batch_size = 3
    efficiency = recipe.eval.efficiency
    efficiency.clip_seconds, efficiency.warmup_runs, efficiency.timed_runs = 2.0, 1, 2


@dataclass(frozen=True)
class DemoLayout:
    """Where a demo recipe keeps everything, read from the recipe itself."""

    root: Path
    data: Path
    teacher_cache: Path
    student: Path
    eval: Path

    @classmethod
    def from_recipe(cls, recipe: Recipe, recipe_path: Path) -> DemoLayout:
        manifests = [Path(m.path) for m in [*recipe.data.train, *recipe.data.valid]]
        manifests += [Path(s.manifest) for s in recipe.eval.sets]
        folders = {m.parent for m in manifests}
        unknown = sorted(m.name for m in manifests if m.name not in DEMO_MANIFESTS)
        if len(folders) != 1 or unknown:
            raise DemoError(
                f"{recipe_path}: distill demo builds its own data: every manifest the recipe "
                f"names must be one of {', '.join(DEMO_MANIFESTS)} in one folder "
                f"(found {', '.join(sorted(str(m) for m in manifests))})"
            )
        data = folders.pop()
        outputs = [data, Path(recipe.teacher.cache_dir), Path(recipe.train.output_dir),
                   Path(recipe.eval.output_dir)]
        root = Path(os.path.commonpath([p.absolute() for p in outputs]))
        if root in (Path.cwd(), Path(root.anchor)):
            raise DemoError(
                f"{recipe_path}: the demo's data, teacher cache, training and evaluation folders "
                "must share one folder of their own (recipes/demo.yaml uses runs/demo), since a "
                "size change starts that folder over"
            )
        return cls(root, data, *outputs[1:])


def _stage(number: int, name: str, what: str) -> float:
    print(f"\n==> [{number}/5] {name}: {what}", file=sys.stderr, flush=True)
    return time.monotonic()


# The sections that shape the student's weights: a change in any of them makes its checkpoints
# another run's (eval and teacher are not here: evaluation reruns every time, and the teacher cache
# checks its own fingerprint).
STUDENT_SECTIONS = ("model", "data", "loss", "train")


def student_fingerprint(recipe: Recipe) -> dict[str, str]:
    """Section name -> a short hash of its resolved values (``STUDENT_SECTIONS``)."""
    return {
        name: hashlib.sha256(json.dumps(getattr(recipe, name).model_dump(mode="json"),
                                        sort_keys=True).encode()).hexdigest()[:16]
        for name in STUDENT_SECTIONS
    }


def _start_over_if_changed(layout: DemoLayout, size: str, recipe: Recipe, fresh: bool) -> None:
    """Training and evaluation from another size or another student recipe (or everything,
    with --fresh) are removed, so that the student stage never resumes another run's checkpoint.

    The data folder rebuilds itself at a new size, and the teacher cache stays valid: a clip id
    names the same sentence or sound at every size, so its soft targets are still right.
    """
    state_path = layout.root / STATE_FILE
    previous: dict = {}
    if state_path.is_file():
        try:
            previous = json.loads(state_path.read_text())
        except ValueError:
            previous = {"size": "unreadable"}
    sections = student_fingerprint(recipe)
    doomed = ((layout.data, layout.teacher_cache, layout.student, layout.eval) if fresh
              else (layout.student, layout.eval))
    stale = [p for p in doomed if p.exists()]
    changed = [name for name in STUDENT_SECTIONS
               if previous.get("recipe", {}).get(name) != sections[name]]
    if fresh:
        why = "--fresh"
    elif "size" not in previous:
        why = f"outputs of an earlier demo with no size record; this one is {size!r}"
    elif previous["size"] != size:
        why = f"the last demo here was size {previous['size']!r}, this one is {size!r}"
    elif "recipe" not in previous:
        why = "no record of the recipe the student here was trained with"
    elif changed:
        why = f"the recipe's {', '.join(changed)} changed since the student here was trained"
    else:
        why = None
    if stale and why:
        print(f"starting over ({why}): removing {', '.join(map(str, stale))}", file=sys.stderr)
        for path in stale:
            shutil.rmtree(path)
    layout.root.mkdir(parents=True, exist_ok=True)
    staging = state_path.with_name(f".{STATE_FILE}.tmp")
    staging.write_text(json.dumps({"size": size, "recipe": sections}) + "\n")
    staging.replace(state_path)


def choose_teacher(recipe: Recipe, teacher: str) -> str:
    """Set recipe.teacher.backend for ``--teacher auto|vllm|transformers``; return a line
    saying which backend runs and why."""
    from teachers.server import installed_vllm_python

    if teacher == "auto":
        python = installed_vllm_python(recipe.teacher.server.python)
        teacher = "vllm" if python else "transformers"
        reason = (f"the vLLM venv is built ({python})" if python else
                  "the vLLM venv is not built; `bash scripts/ensure-vllm-venv.sh` builds it "
                  "(about 2 min, 3.5 GB) and the next demo will use it")
    else:
        reason = f"--teacher {teacher}"
    if teacher == "vllm":
        recipe.teacher.backend = "vllm_server"
        return f"teacher: a vLLM server, started for this run ({reason})"
    recipe.teacher.backend = "transformers"
    return f"teacher: the transformers backend, in this process ({reason})"


def run_demo(recipe_path: str | Path = "recipes/demo.yaml", *, size: str = "standard",
             teacher: str = "auto", fresh: bool = False) -> DemoResult:
    """Run the five stages; raise DemoError (or RecipeError) with a message for a person."""
    from distill.config import load_recipe

    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    if size == "smoke":
        shrink_for_smoke(recipe)
    layout = DemoLayout.from_recipe(recipe, recipe_path)
    _start_over_if_changed(layout, size, recipe, fresh)
    seconds: dict[str, float] = {}

    started = _stage(1, "data", f"synthesising speech and sounds into {layout.data}")
    _build_data(layout.data, SIZES[size])
    seconds["data"] = time.monotonic() - started

    started = _stage(2, "models", "Whisper tiny.en (frozen encoder), SmolLM2-135M-Instruct; "
                                  + ("a random tiny BEATs" if recipe.model.beats.enabled else
                                     "BEATs off (no weights offline; random features teach "
                                     "nothing)"))
    _build_models(recipe)
    seconds["models"] = time.monotonic() - started

    started = _stage(3, "teacher", f"SmolLM2 top-{recipe.teacher.top_k} soft targets into "
                                   f"{layout.teacher_cache}")
    backend_line = choose_teacher(recipe, teacher)
    print(backend_line, file=sys.stderr)
    _fill_teacher_cache(recipe)
    seconds["teacher"] = time.monotonic() - started

    started = _stage(4, "student", f"{recipe.train.max_steps} steps of CE + KD into "
                                   f"{layout.student}")
    checkpoint = _train(recipe)
    seconds["student"] = time.monotonic() - started

    started = _stage(5, "evaluate", f"WER, caption metrics, efficiency into {layout.eval}")
    from distill.evaluate.runner import EvaluationError, evaluate

    try:
        report, paths = evaluate(recipe, checkpoint)
    except EvaluationError as err:
        raise DemoError(f"evaluation failed: {err}") from err
    seconds["evaluate"] = time.monotonic() - started
    started = time.monotonic()
    anchor = _anchor(recipe, layout)
    seconds["anchor"] = time.monotonic() - started
    if anchor:  # the report compares the student with tiny.en on the same clips
        from distill.evaluate.report import write_report

        report.anchors = [{"label": "Whisper tiny.en (same clips, greedy)",
                           "asr_wer": anchor["wer"]}]
        paths = write_report(report, layout.eval)
    result = DemoResult(layout, recipe.teacher.backend, checkpoint, paths, report.headline(),
                        seconds, anchor)
    (layout.root / "demo_summary.json").write_text(json.dumps(
        {**asdict(result), "size": size}, default=str, indent=2) + "\n")
    return result


# ------------------------------------------------------------------------------- the stages
def _build_data(folder: Path, sizes: DemoSizes) -> None:
    from tqdm import tqdm

    from distill.demo.dataset import build_demo_data, is_built
    from distill.demo.speech import SpeechError

    if is_built(folder, sizes):
        print(f"reusing {folder} (already built at this size)", file=sys.stderr)
        return
    total = sizes.speech_train + sizes.speech_test + sizes.sounds_train + sizes.sounds_test
    with tqdm(total=total, desc="clips", unit="clip") as bar:
        try:
            build_demo_data(folder, sizes, progress=bar.update)
        except SpeechError as err:
            raise DemoError(f"speech synthesis failed: {err}") from err


def _build_models(recipe: Recipe) -> None:
    from distill.demo.models import build_demo_models
    from students.ct2_whisper import CT2ConversionError

    model = recipe.model
    if Path(recipe.teacher.model) != Path(model.llm.name_or_path):
        raise DemoError("the demo recipe's teacher.model must be its model.llm.name_or_path "
                        "(SmolLM2 is both, so they share one tokenizer)")
    try:
        made = build_demo_models(model.whisper.name_or_path,
                                 model.beats.checkpoint if model.beats.enabled else None,
                                 model.llm.name_or_path)
    except (FileNotFoundError, CT2ConversionError) as err:  # a model package not installed
        raise DemoError(str(err)) from err
    for path in made:
        print(f"made {path}", file=sys.stderr)
    if not made:
        print("reusing the models already there", file=sys.stderr)


def _fill_teacher_cache(recipe: Recipe) -> None:
    from teachers.backends.base import TeacherUnavailable
    from teachers.generate import Job
    from teachers.server import ServerStartError

    try:
        summary = Job(recipe).run()
    except (TeacherUnavailable, ServerStartError) as err:
        raise DemoError(f"the teacher did not start: {err}\n(--teacher transformers runs it "
                        "in this process instead)") from err
    for line in summary.lines():
        print(line, file=sys.stderr)
    if summary.interrupted:
        raise KeyboardInterrupt
    if not summary.ok:
        raise DemoError(f"the teacher failed on {len(summary.failures)} sample(s) (listed above)")


def _train(recipe: Recipe) -> Path:
    from distill.train.checkpoint import CheckpointManager
    from distill.train.loop import train_student

    resume = CheckpointManager(Path(recipe.train.output_dir)).latest() is not None
    return train_student(recipe, resume=resume, run_eval=False)


def _anchor(recipe: Recipe, layout: DemoLayout) -> dict | None:
    """Whisper tiny.en's own greedy WER on the spoken test set (None for another encoder)."""
    from distill.demo.anchor import anchor_wer

    whisper = Path(recipe.model.whisper.name_or_path)
    if not (whisper / "ct2_source.json").is_file():  # not the demo's tiny.en conversion
        return None
    speech = next(s for s in recipe.eval.sets if s.task == "asr")
    print("anchor: Whisper tiny.en (its own encoder-decoder, greedy) on "
          f"{speech.manifest}", file=sys.stderr)
    result = anchor_wer(whisper, speech.manifest, layout.eval)
    return {"wer": result["wer"], "utterances": result["utterances"]}


def _distinct_captions(hypotheses: Path, manifest: Path) -> tuple[int, int, int]:
    """(different captions the student gave, clips, sound kinds among them)."""
    said = [json.loads(line)["hypothesis"] for line in hypotheses.read_text().splitlines()]
    kinds = {json.loads(line)["source"] for line in manifest.read_text().splitlines()}
    return len({h.strip().lower() for h in said}), len(said), len(kinds)


# ---------------------------------------------------------------------------- the summary
def last_audio_gain(student_dir: Path) -> float | None:
    """The last validation's ``audio_gain`` in the run's train_log.jsonl (None if none)."""
    from distill.train.loop import LOG_FILE

    path = student_dir / LOG_FILE
    if not path.is_file():
        return None
    gains = [row["audio_gain"] for row in map(json.loads, path.read_text().splitlines())
             if "audio_gain" in row]
    return gains[-1] if gains else None


def _examples(path: Path, count: int = 3) -> list[str]:
    lines = []
    for row in [json.loads(line) for line in path.read_text().splitlines()][:count]:
        lines.append(f"    heard {row['hypothesis']!r}  (reference {row['reference']!r})")
    return lines


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def summary_lines(result: DemoResult, recipe_path: Path) -> list[str]:
    """What a person reads at the end: where everything is, the numbers, what they mean."""
    layout = result.layout
    total = sum(result.seconds.values())
    best_link = layout.student / "best"
    student = best_link if best_link.exists() else result.checkpoint
    backend = {"vllm_server": "a vLLM server", "transformers": "the transformers backend"}
    head = result.headline
    report_dir = result.report["markdown"].parent

    def fmt(key: str, unit: str = "") -> str:
        value = head.get(key)
        return "n/a" if value is None else f"{value:.3g}{unit}"

    lines = [
        "", f"distill demo: done in {_minutes(total)} ("
        + ", ".join(f"{k} {_minutes(v)}" for k, v in result.seconds.items()) + ")",
        f"  data        {layout.data}   manifests *.jsonl, clips in speech/ and sounds/",
        f"  teacher     {layout.teacher_cache}   (by {backend[result.teacher_backend]}; check it: "
        f"distill cache verify {layout.teacher_cache})",
        f"  student     {student}   (best by validation token accuracy: "
        f"{result.checkpoint.name})",
        f"  TensorBoard tensorboard --logdir {layout.student / 'tensorboard'}",
        f"  try it      distill app --checkpoint {student}   (a web page, see README.md)",
        f"  report      {result.report['markdown']}  (+ report.json, report.png, hypotheses/, "
        "submissions/)",
        "",
        f"results: WER {fmt('asr_wer', ' %')}, caption score (CIDEr-D x 100) {fmt('aac_score')}, "
        f"latency {fmt('latency_s', ' s')}, peak memory {fmt('memory_gb', ' GB')}",
    ]
    if result.anchor:
        lines.append(f"anchor: Whisper tiny.en itself (greedy) on the same "
                     f"{result.anchor['utterances']} spoken test clips: WER "
                     f"{result.anchor['wer']:.3g} %  (student: {fmt('asr_wer', ' %')})")
    gain = last_audio_gain(layout.student)
    if gain is not None:
        lines.append(f"hearing: another clip's audio raises the student's validation loss by "
                     f"{gain:.2f} nats a token  (near 0: it answers from the prompt alone; "
                     f"docs/training.md)")
    captions = report_dir / "hypotheses" / "demo_sounds_test.jsonl"
    if captions.is_file():
        said, clips, kinds = _distinct_captions(captions, layout.data / "sounds_test.jsonl")
        lines.append(f"captions: {said} different captions for {clips} sound test clips of "
                     f"{kinds} kinds")
    for name in sorted((report_dir / "hypotheses").glob("*.jsonl")):
        lines += [f"  {name.stem}:", *_examples(name)]
    lines += [
        "",
        "What the numbers mean: the student hears through the real Whisper tiny.en encoder "
        "(frozen); its\nQ-Former, projection and LoRA learn for a few CPU minutes on eSpeak "
        "sentences and synthetic\nsounds. A WER below the anchor's means it learned to listen "
        "to these voices; one sentence for\nevery clip (a WER of 60-70 %) means it learned only "
        "the form of the answers. The WER is one\ndraw: the seed and the thread count change it "
        "(the default recipe gave 0.0-11.7 % over six\nseeds, median 0.8 %; "
        "BENCHMARKS.md lists them). BEATs is off: no BEATs weights are\nreachable offline and "
        "random ones add only noise and CPU time. Published LibriSpeech / AudioCaps\nfigures "
        "come from other audio and other devices, so the report leaves them out here.",
        f"Rerun `distill demo --recipe {recipe_path}` to reuse everything; --fresh starts over.",
        "",
        NEXT_STEPS,
    ]
    return lines
