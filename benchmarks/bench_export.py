"""Merged vs adapter student: TTFT, TPOT and memory of ``distill export`` outputs, in one run.

Exports CHECKPOINT twice or more (the adapter form, and the LoRA merged into a dense LLM in each
``--merged-dtype``), loads each export and times it with the evaluation's protocol
(``distill.evaluate.efficiency.measure_efficiency``: batch 1, one fixed clip, the ASR prompt,
warm-up then timed runs, median and p90). The machine's load average is printed beside the
figures: on a shared machine only the ratios within one run mean much.

    python benchmarks/bench_export.py runs/demo/student/best --runs 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--merged-dtype", action="append", choices=["bf16", "fp16", "fp32"],
                        help="dtype of a merged export; repeat for more (default: bf16 and fp32)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the fixed clip")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    from distill.evaluate.efficiency import measure_efficiency
    from distill.evaluate.runner import check_checkpoint
    from students import SalmonnStudent
    from students.export import export_student

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    checkpoint = check_checkpoint(args.checkpoint)
    clip = 0.05 * torch.randn(int(args.seconds * 16000), generator=torch.Generator().manual_seed(0))
    variants = [("adapter (as trained)", {})] + [
        (f"merged {d}", {"merge_lora": True, "dtype": d}) for d in args.merged_dtype or ["bf16", "fp32"]]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, (name, options) in enumerate(variants):
            result = export_student(checkpoint, Path(scratch) / str(index), **options)
            student = SalmonnStudent.from_pretrained(result.path, device=args.device).eval()
            instruction = student.processor.instruction("asr")
            eff = measure_efficiency(student, clip, instruction, warmup_runs=args.warmup,
                                     timed_runs=args.runs)
            rows.append((name, result.dtype, eff, result.probe))
            del student
    load = os.getloadavg()
    print(f"checkpoint {checkpoint}; {args.runs} timed runs after {args.warmup} warm-ups, "
          f"{args.seconds:g} s clip; device {rows[0][2].device}; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("| student | dtype | TTFT median s | TPOT median s | TPOT p90 s | TPOT vs adapter | "
          "peak memory GB | max abs logit diff vs checkpoint |")
    print("|---|---|---|---|---|---|---|---|")
    base = rows[0][2].tpot_s.median
    for name, dtype, eff, probe in rows:
        print(f"| {name} | {dtype} | {eff.ttft_s.median:.4f} | {eff.tpot_s.median:.4f} | "
              f"{eff.tpot_s.p90:.4f} | {eff.tpot_s.median / base:.2f}x | {eff.peak_memory_gb:.3f} "
              f"({eff.memory_kind}) | {probe.max_abs_logit_diff:.3g} |")


if __name__ == "__main__":
    main()
