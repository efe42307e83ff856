"""``distill prepare-data``: turn a corpus on disk into a JSONL manifest (docs/architecture.md).

One sub-command per layout (``prepare-data librispeech ROOT -o OUT.jsonl``), so each format has
its own options and its own ``--help``. Only the standard library is imported at module level:
building the parser must stay instant for ``distill --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path

from distill.data.importers import IMPORTERS
from distill.data.importers.audiocaps import DEFAULT_NAME_PATTERNS
from distill.data.manifest import ManifestError, ManifestSummary, validate_manifest, write_manifest
from distill.errors import EXIT_BAD_INPUT, EXIT_OK

DESCRIPTION = """\
Turn a corpus, in the layout it is distributed in, into a manifest: a JSONL file with one
record per line, {"id", "audio", "task", "text", "question"?, "source"?, "duration"?,
"references"?}, which every later stage (teacher, training, evaluation) reads.

The importer checks the layout as it goes: a missing audio file, column or key stops it
with the corpus file and line (or JSON entry) to look at. The manifest is written to a
temporary file and renamed at the end, so an interrupted run never leaves a partial one.
Audio paths are written absolute unless --relative-paths is given; durations are read
from the audio headers unless --no-duration is given.

Formats (see `distill prepare-data FORMAT --help` for each one's options):
  librispeech  ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt + .flac
  clotho       ROOT/clotho_captions_<split>.csv + ROOT/<split>/<file_name>   (Clotho v2)
  audiocaps    ROOT/<split>.csv (audiocap_id,youtube_id,start_time,caption) + audio folder
  wavcaps      one WavCaps JSON file ({"data": [{"id", "caption", ...}]}) + audio folder
  salmonn      upstream SALMONN annotation JSON ({"annotation": [{"path", "text", "task",
               "Q"?}]}) or a test list ([{"testset_id", "path", "task", "text"?}])
  hf           a Hugging Face `datasets` folder (save_to_disk, or Parquet/Arrow shards) with an
               Audio column and a text column; audio bytes are written to --audio-dir
"""

EXAMPLES = {
    "librispeech": "distill prepare-data librispeech data/LibriSpeech --subset train-clean-100 "
    "--subset train-clean-360 -o manifests/librispeech_train.jsonl",
    "clotho": "distill prepare-data clotho data/clotho --split development -o "
    "manifests/clotho_train.jsonl",
    "audiocaps": "distill prepare-data audiocaps data/audiocaps --split test --mode all "
    "--task audiocaption_v2 -o manifests/audiocaps_test.jsonl",
    "wavcaps": "distill prepare-data wavcaps data/WavCaps/json_files/FreeSound/fsd_final.json "
    "--audio-dir data/WavCaps/FreeSound_flac -o manifests/wavcaps_freesound.jsonl",
    "salmonn": "distill prepare-data salmonn data/salmonn/stage1_train.json --audio-root "
    "data/salmonn -o manifests/salmonn_stage1.jsonl",
    "hf": "distill prepare-data hf data/my_corpus --split train --audio-column audio "
    "--text-column text -o manifests/my_corpus_train.jsonl",
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``prepare-data`` and its per-format sub-commands on the ``distill`` parser."""
    parser = subparsers.add_parser(
        "prepare-data",
        help="Corpora on disk (LibriSpeech, Clotho, AudioCaps, WavCaps, SALMONN JSON, HF "
        "datasets) -> JSONL manifests.",
        description=DESCRIPTION,
        epilog="examples:\n" + "\n".join(f"  {example}" for example in EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for name, (summary, add_options, _) in _FORMATS.items():
        format_parser = formats.add_parser(
            name,
            help=summary,
            description=_layout_help(name),
            epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_options(format_parser)
        _add_common_options(format_parser)
    parser.set_defaults(func=run_prepare_data)
    return parser


def run_prepare_data(args: argparse.Namespace) -> int:
    """Import, write the manifest, print a summary; errors go to stderr with exit code 2."""
    importer = IMPORTERS[args.format]
    _, _, options_of = _FORMATS[args.format]
    try:
        records = importer(args.source, with_duration=not args.no_duration, **options_of(args))
        first = next(records, None)
        if first is None:
            raise ManifestError(args.source, None, f"no {args.format} records found")
        records = chain([first], records)
        if args.relative_paths:
            records = _relative_audio_paths(records, args.output)
        write_manifest(records, args.output)
        summary = validate_manifest(args.output, check_audio=False)
    except (ManifestError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(_describe(summary))
    return EXIT_OK


def _layout_help(name: str) -> str:
    """The importer module's docstring: the one description of the layout, kept with the code."""
    module = sys.modules[IMPORTERS[name].__module__]
    return (module.__doc__ or "").replace("``", "").strip()


def _describe(summary: ManifestSummary) -> str:
    lines = [f"wrote {summary.records:,} records to {summary.path}"]
    lines += [f"  task {task}: {count:,}" for task, count in summary.tasks.items()]
    lines += [f"  source {source}: {count:,}" for source, count in summary.sources.items()]
    if summary.total_hours is not None:
        lines.append(
            f"  audio: {summary.total_hours:.2f} h ({summary.records_with_duration:,} records "
            "with a duration)"
        )
    return "\n".join(lines)


def _relative_audio_paths(records: Iterator[dict], output: Path) -> Iterator[dict]:
    """Audio paths relative to the manifest's folder, so the two can move together."""
    folder = Path(output).absolute().parent
    for record in records:
        yield {**record, "audio": os.path.relpath(record["audio"], folder)}


# ---------------------------------------------------------------------------- the options
def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="the manifest to write (JSONL)"
    )
    parser.add_argument(
        "--relative-paths",
        action="store_true",
        help="write audio paths relative to the manifest's folder instead of absolute",
    )
    parser.add_argument(
        "--no-duration",
        action="store_true",
        help="do not open every audio file to read its duration (faster on slow disks)",
    )


def _add_librispeech(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="ROOT", help="the LibriSpeech folder (holds the subsets)")
    parser.add_argument(
        "--subset",
        action="append",
        dest="subsets",
        metavar="NAME",
        help="subset folder to import, e.g. train-clean-100; repeat for more (default: all)",
    )
    parser.add_argument("--lowercase", action="store_true", help="lower-case the transcripts")


def _librispeech_options(args: argparse.Namespace) -> dict:
    return {"subsets": args.subsets, "lowercase": args.lowercase}


def _add_caption_options(parser: argparse.ArgumentParser, splits: tuple[str, ...], default: str):
    parser.add_argument(
        "--split",
        action="append",
        dest="splits",
        choices=splits,
        help=f"split to import; repeat for more (default: {default})",
    )
    parser.add_argument(
        "--mode",
        choices=("each", "all"),
        default="each",
        help="each (default): one record per caption, for training; all: one per clip, with "
        "every caption in 'references', for evaluation",
    )
    parser.add_argument(
        "--task",
        default="audiocaption",
        help="task name of the records (default: audiocaption; the reference AudioCaps test "
        "set uses audiocaption_v2)",
    )


def _add_clotho(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="ROOT", help="folder with clotho_captions_<split>.csv")
    _add_caption_options(parser, ("development", "validation", "evaluation"), "development")


def _clotho_options(args: argparse.Namespace) -> dict:
    return {"splits": args.splits or ["development"], "mode": args.mode, "task": args.task}


def _add_audiocaps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="ROOT", help="folder with <split>.csv")
    _add_caption_options(parser, ("train", "val", "test"), "train")
    parser.add_argument(
        "--audio-dir", type=Path, help="folder holding the clips (default: ROOT/<split>)"
    )
    parser.add_argument(
        "--name-pattern",
        action="append",
        dest="name_patterns",
        metavar="PATTERN",
        help="audio file name from a CSV row, e.g. '{youtube_id}_{start_time}'; repeat to try "
        f"several; .wav/.flac/.ogg are tried when it has no extension (default: "
        f"{' '.join(DEFAULT_NAME_PATTERNS)})",
    )
    _add_skip_missing_audio(parser)


def _audiocaps_options(args: argparse.Namespace) -> dict:
    return {
        "splits": args.splits or ["train"],
        "mode": args.mode,
        "task": args.task,
        "audio_dir": args.audio_dir,
        "name_patterns": args.name_patterns or DEFAULT_NAME_PATTERNS,
        "skip_missing_audio": args.skip_missing_audio,
    }


def _add_wavcaps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="JSON_FILE", help="one WavCaps JSON, e.g. fsd_final.json")
    parser.add_argument(
        "--audio-dir", type=Path, required=True, help="folder with that subset's audio files"
    )
    parser.add_argument(
        "--subset", help="subset name for ids and source (default: the JSON file's folder name)"
    )
    parser.add_argument(
        "--task", default="audiocaption", help="task name of the records (default: audiocaption)"
    )
    _add_skip_missing_audio(parser)


def _wavcaps_options(args: argparse.Namespace) -> dict:
    return {
        "audio_dir": args.audio_dir,
        "subset": args.subset,
        "task": args.task,
        "skip_missing_audio": args.skip_missing_audio,
    }


def _add_salmonn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="ANNOTATION_JSON", help="SALMONN annotation or test file")
    parser.add_argument(
        "--audio-root",
        type=Path,
        help="folder the entries' paths are relative to (default: the JSON file's folder)",
    )
    parser.add_argument(
        "--source",
        dest="source_name",
        default="salmonn",
        help="corpus name for the records' 'source' field (default: salmonn)",
    )


def _salmonn_options(args: argparse.Namespace) -> dict:
    return {"audio_root": args.audio_root, "source": args.source_name}


def _add_hf(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="PATH",
                        help="a save_to_disk folder, or a folder of Parquet/Arrow shards")
    parser.add_argument("--split", help="split to import (needed when there are several)")
    parser.add_argument("--audio-column", default="audio", help="the Audio column (default: audio)")
    parser.add_argument("--text-column", default="text",
                        help="transcript or caption column (default: text)")
    parser.add_argument("--id-column",
                        help="column of unique ids (default: id if present, else row numbers)")
    parser.add_argument("--task", default="asr", help="task name of the records (default: asr)")
    parser.add_argument("--audio-dir", type=Path,
                        help="where audio held as bytes is written (default: <output>_audio/ "
                        "beside the manifest)")


def _hf_options(args: argparse.Namespace) -> dict:
    output = Path(args.output)
    return {
        "split": args.split,
        "audio_column": args.audio_column,
        "text_column": args.text_column,
        "id_column": args.id_column,
        "task": args.task,
        "audio_dir": args.audio_dir or output.with_name(f"{output.stem}_audio"),
    }


def _add_skip_missing_audio(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-missing-audio",
        action="store_true",
        help="skip entries whose audio file is missing (with a warning) instead of failing",
    )


# name -> (one-line summary, add its arguments, parsed arguments -> importer keywords)
_FORMATS: dict[
    str,
    tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], dict]],
] = {
    "librispeech": ("LibriSpeech -> asr records.", _add_librispeech, _librispeech_options),
    "clotho": ("Clotho v2 -> audio-captioning records.", _add_clotho, _clotho_options),
    "audiocaps": ("AudioCaps -> audio-captioning records.", _add_audiocaps, _audiocaps_options),
    "wavcaps": ("One WavCaps subset -> audio-captioning records.", _add_wavcaps, _wavcaps_options),
    "salmonn": ("SALMONN annotation / test JSON -> records.", _add_salmonn, _salmonn_options),
    "hf": ("Hugging Face datasets folder (Audio column) -> records.", _add_hf, _hf_options),
}
