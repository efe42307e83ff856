"""The teacher's subcommands for ``distill``: serve-teacher, generate-teacher, cache verify|stats.

Here, not in ``teachers/``: a command reads the whole recipe (``distill.config``, a layer above
the teacher service), while ``teachers`` itself takes only its own ``teacher`` section.

``add_parsers(subparsers)`` registers them; handlers return 0 (ok), 1 (failure) or 2 (bad
input) and print errors as ``error: ...`` on stderr. Heavy libraries are imported inside the
handlers so ``distill --help`` stays instant.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from distill.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

SERVE_HELP = """\
Start a vLLM server for the recipe's teacher and keep it running.

vLLM runs in its own environment: teacher.server.python names that interpreter (build one with
scripts/ensure-vllm-venv.sh, which prints its folder). The server is started as
vLLM's OpenAI server (through teachers/vllm_serve.py, which lets score requests read the prefix
cache) with the recipe's model, dtype, max_model_len, tensor-parallel size and extra_args,
--max-logprobs large enough for teacher.top_k, and prefix caching in 32-token blocks.
When /health answers, the endpoint URL is printed on stdout: pass it to generate-teacher
--endpoint (or list it in teacher.endpoints). Ctrl-C or SIGTERM stops the server cleanly."""

GENERATE_HELP = """\
Run every manifest sample through the teacher and store its top-k soft targets in the cache.

The teacher sees privileged text (the transcript, the caption, what is known about a clip) in its
own chat template. score mode: the response is the student's target token ids and the teacher's
top-k is kept at every target position (teacher forcing). generate mode: the teacher writes a
rationale and an answer, and the top-k of each generated token is kept from the same pass.

Safe to interrupt: finished shards are kept and a rerun skips the ids already stored. The cache
refuses a run whose settings (teacher, tokenizer, k, mode, prompts, ...) differ from its meta.
Without --endpoint (and no teacher.endpoints) a vLLM server is started for the run."""

CACHE_HELP = """\
Inspect a soft-target cache.

verify  reads every record: checksums, index consistency, decodable records, duplicate ids;
        exits 1 if anything cannot be trusted (leftover temp files are only warnings).
stats   samples, tokens, bytes per token and per top-k entry (from the indexes; fast)."""


def _load_recipe(path: Path):
    from distill.config import RecipeError, load_recipe

    try:
        return load_recipe(path)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------- handlers
def cmd_serve(args: argparse.Namespace) -> int:
    from teachers.server import ServerStartError, serve

    recipe = _load_recipe(args.recipe)
    if recipe is None:
        return EXIT_BAD_INPUT
    try:
        return serve(recipe.teacher, host=args.host, port=args.port, log_path=args.log)
    except ServerStartError as err:
        return _error(str(err), EXIT_FAILED)


def cmd_generate(args: argparse.Namespace) -> int:
    from distill.data.manifest import ManifestError
    from teachers.backends.base import TeacherUnavailable
    from teachers.cache.format import CacheFormatError
    from teachers.cache.writer import CacheMetaMismatch, CacheWriteError
    from teachers.fingerprint import TokenizerMismatch
    from teachers.generate import Job, TeacherModelError
    from teachers.prompts import PromptError
    from teachers.server import ServerStartError

    recipe = _load_recipe(args.recipe)
    if recipe is None:
        return EXIT_BAD_INPUT
    if args.limit is not None and args.limit < 1:
        return _error("--limit must be a positive number of samples", EXIT_BAD_INPUT)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    job = None
    try:
        job = Job(
            recipe, endpoints=args.endpoint, limit=args.limit, cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
        summary = job.run()
    except (TokenizerMismatch, CacheMetaMismatch, PromptError, ManifestError,
            CacheFormatError, TeacherModelError) as err:
        return _error(str(err), EXIT_BAD_INPUT)
    except (TeacherUnavailable, ServerStartError, CacheWriteError) as err:
        written = job.summary.written if job is not None else 0
        kept = (f"{written} sample(s) written before this are kept in {job.cache_dir}; rerun to "
                "do the rest" if written else "nothing was written for the samples still to do")
        return _error(f"{err}\n{kept}", EXIT_FAILED)
    except OSError as err:  # a missing file, or a tokenizer/model path that does not load
        return _error(str(err), EXIT_BAD_INPUT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    for line in summary.lines():
        print(line, file=sys.stderr)
    if summary.failures:
        print(f"error: {len(summary.failures)} sample(s) failed (listed above)", file=sys.stderr)
    return EXIT_OK if summary.ok else EXIT_FAILED


def cmd_cache(args: argparse.Namespace) -> int:
    from teachers.cache.format import CacheFormatError
    from teachers.cache.verify import cache_stats, verify_cache

    if not args.directory.is_dir():
        return _error(f"{args.directory}: no such cache directory", EXIT_BAD_INPUT)
    if args.action == "stats":
        try:
            stats = cache_stats(args.directory)
        except (FileNotFoundError, CacheFormatError, ValueError) as err:
            return _error(str(err), EXIT_BAD_INPUT)
        print("\n".join(stats.lines()))
        return EXIT_OK
    report = verify_cache(args.directory)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    verdict = "ok" if report.ok else f"FAILED ({len(report.problems)} problem(s))"
    print(f"{verdict}: {report.samples} samples, {report.tokens} tokens in {report.shards} shard(s)")
    return EXIT_OK if report.ok else EXIT_FAILED


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# -------------------------------------------------------------------------------- parsers
def _parser(sub, name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=summary, description=description, epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register serve-teacher, generate-teacher and cache on a ``distill`` subparsers object."""
    serve = _parser(
        subparsers, "serve-teacher",
        "Start a vLLM server for the recipe's teacher and wait until it is healthy.",
        SERVE_HELP, "distill serve-teacher recipes/salmonn_1b.yaml --port 8000",
    )
    serve.add_argument("recipe", type=Path, help="YAML recipe file")
    serve.add_argument("--host", default=None, help="bind address (default: teacher.server.host)")
    serve.add_argument("--port", type=int, default=None, help="port (default: teacher.server.port)")
    serve.add_argument("--log", type=Path, default=None, help="server log file (default: a temp file)")
    serve.set_defaults(func=cmd_serve)

    generate = _parser(
        subparsers, "generate-teacher",
        "Write the teacher's top-k soft targets (and rationales) for every sample to the cache.",
        GENERATE_HELP,
        "distill generate-teacher recipes/salmonn_1b.yaml --endpoint http://10.0.0.5:8000 "
        "--endpoint http://10.0.0.6:8000",
    )
    generate.add_argument("recipe", type=Path, help="YAML recipe file")
    generate.add_argument(
        "--endpoint", action="append", default=None, metavar="URL",
        help="a running vLLM server, e.g. http://host:8000 (repeatable; default: teacher.endpoints)",
    )
    generate.add_argument(
        "--limit", type=int, default=None, metavar="N",
        help="only the first N manifest records (a rerun with the same N completes the same set)",
    )
    generate.add_argument(
        "--cache-dir", type=Path, default=None, help="cache folder (default: teacher.cache_dir)"
    )
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")
    generate.set_defaults(func=cmd_generate)

    cache = _parser(
        subparsers, "cache",
        "Inspect a soft-target cache: verify checksums and counts, or print statistics.",
        CACHE_HELP, "distill cache verify runs/salmonn_1b/teacher_cache",
    )
    cache.add_argument("action", choices=["verify", "stats"], help="what to do")
    cache.add_argument("directory", type=Path, help="the cache directory")
    cache.set_defaults(func=cmd_cache)

