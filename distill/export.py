"""``distill export``: a trained student as a self-contained folder for inference.

Only the standard library at module level (``distill --help`` stays instant); the work is in
``students.export``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 2

HELP = """\
Writes one folder that SalmonnStudent.from_pretrained(DIR) loads anywhere, with no recipe and
no other files: the Whisper encoder, the BEATs checkpoint, the base LLM and tokenizer, the
trained weights and a model card (README.md). The export is checked against the checkpoint on a
fixed probe clip (logit difference, greedy tokens) and the result is printed.

--merge-lora folds the adapters into a dense copy of the LLM (merged in float32, saved in
--dtype, bf16 by default): no adapter matmuls and no bitsandbytes at inference. A student
trained on a 4-bit base learnt its adapters against NF4-rounded weights, so the merged model
differs from it by that rounding; the printed check shows how much. Merging into 4-bit weights
is not offered (it would round to NF4 a second time)."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="Write a trained student as a self-contained folder (optionally LoRA merged).",
        description="Write a trained student as a self-contained folder for inference.\n\n" + HELP,
        epilog="example:\n  distill export runs/demo/student/best -o exports/demo --merge-lora",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path,
                        help="a student checkpoint (trainer checkpoint or save_pretrained folder)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the folder to write")
    parser.add_argument("--merge-lora", action="store_true",
                        help="fold the LoRA adapters into a dense copy of the LLM")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                        help="dtype of the export (default: bf16 with --merge-lora, else the "
                        "checkpoint's compute dtype)")
    parser.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> int:
    from distill.evaluate.runner import EvaluationError, check_checkpoint
    from students.checkpoint import CheckpointMismatchError
    from students.export import ExportError, describe, export_student

    try:
        result = export_student(check_checkpoint(args.checkpoint), args.output,
                                merge_lora=args.merge_lora, dtype=args.dtype)
    except (EvaluationError, ExportError, CheckpointMismatchError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(describe(result))
    return EXIT_OK
