"""Chunked sparse top-k KL (distill.losses, hidden-state path) against the naive version.

    python benchmarks/bench_losses.py [--tokens 4096 --vocab 128256 --hidden 2048 --k 64
                                       --chunk-size 256 --threads N --repeats 1 --device cpu]

Both variants compute the same loss, forward KL with a cached top-k teacher in "bucket"
mode (k kept ids + one rest category), and its gradient w.r.t. bf16 hidden states with the
lm_head frozen. Each variant runs in its own fresh subprocess: inputs are built, a small
warm-up runs, VmHWM is reset through /proc/self/clear_refs ("5"), and peak memory is reported
as VmHWM minus VmRSS at that point (peak RSS above the inputs). Time is wall-clock for one
forward + backward.

On CPUs without bf16 units PyTorch's bf16 GEMM is unusably slow (0.3-8 GFLOPS here, so the
naive backward alone would take over an hour), so the naive variant multiplies in fp32:
its fp32 copy of the weight is built before the baseline and is NOT counted in its peak,
which makes the memory ratio conservative. The chunked variant upcasts one vocab block at
a time inside the measurement.

With ``--device cuda`` the inputs live on the GPU, time is synchronised, and peak memory is
``torch.cuda.max_memory_allocated`` above the allocation once inputs are built.
"""

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.losses import HiddenStates, TopKTargets  # noqa: E402
from distill.losses import functional as LF  # noqa: E402
from distill.losses.reduction import DEFAULT_CHUNK_SIZE  # noqa: E402

MEMORY_GOAL, TIME_GOAL = 0.10, 1.2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=1,
                        help="fresh subprocesses per variant, alternating; min time is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--worker", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_inputs(args):
    """bf16 hidden (needs grad), frozen bf16 lm_head, a cached top-k teacher, labels."""
    g = torch.Generator().manual_seed(args.seed)
    n, v, h, k = args.tokens, args.vocab, args.hidden, args.k
    weight = (torch.randn(v, h, generator=g) * 0.02).bfloat16()
    hidden = torch.randn(n, h, generator=g).bfloat16().requires_grad_()
    ids = torch.cat([torch.rand(min(256, n - s), v, generator=g).topk(k).indices
                     for s in range(0, n, 256)])
    # Log-probs of k ids plus an unseen rest, so exp(logprobs) sums to less than 1.
    logprobs = torch.log_softmax(2 * torch.randn(n, k + 1, generator=g), -1)[:, :k].contiguous()
    labels = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, TopKTargets(ids, logprobs), labels


def naive_loss(hidden, weight_fp32, teacher, labels):
    """The plain PyTorch version: full fp32 logits, log_softmax, gather, KL."""
    logits = hidden.float() @ weight_fp32.T
    logp = torch.log_softmax(logits, dim=-1)
    student_kept = logp.gather(-1, teacher.ids)
    student_rest = torch.log(torch.clamp(-torch.expm1(torch.logsumexp(student_kept, -1)), min=1e-8))
    teacher_rest = torch.log(torch.clamp(-torch.expm1(torch.logsumexp(teacher.logprobs, -1)),
                                         min=1e-8))
    student = torch.cat([student_kept, student_rest[:, None]], dim=-1)
    teacher_logp = torch.cat([teacher.logprobs, teacher_rest[:, None]], dim=-1)
    return (teacher_logp.exp() * (teacher_logp - student)).sum(-1).mean()


def chunked_loss(hidden, weight, teacher, labels, chunk_size):
    return LF.forward_kl(HiddenStates(hidden, weight), teacher, labels, tail="bucket",
                         chunk_size=chunk_size)


def memory_kib():
    status = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}


def run_worker(args):
    torch.set_num_threads(args.threads)
    hidden, weight, teacher, labels = build_inputs(args)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        hidden = hidden.detach().to(device).requires_grad_()
        weight, labels = weight.to(device), labels.to(device)
        teacher = TopKTargets(teacher.ids.to(device), teacher.logprobs.to(device))
    if args.worker == "naive":
        weight_fp32 = weight.float()  # input prep, outside the measurement (see docstring)

        def step(rows):
            return naive_loss(hidden[rows], weight_fp32, take(teacher, rows), labels[rows])
    else:
        def step(rows):
            return chunked_loss(hidden[rows], weight, take(teacher, rows), labels[rows],
                                args.chunk_size)

    step(slice(0, 64)).backward()  # warm-up: kernels, thread pool
    hidden.grad = None
    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device) / 1024
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        baseline = memory_kib()["VmRSS"]
    start, start_cpu = time.perf_counter(), time.process_time()
    loss = step(slice(None))
    loss.backward()
    if cuda:
        torch.cuda.synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = torch.cuda.max_memory_allocated(device) / 1024 if cuda else memory_kib()["VmHWM"]
    print(json.dumps({
        "variant": args.worker, "peak_mib": (peak - baseline) / 1024, "seconds": seconds,
        "cpu_seconds": cpu_seconds, "loss": loss.item(),
        "grad_norm": hidden.grad.float().norm().item(),
    }))


def take(teacher, rows):
    return TopKTargets(teacher.ids[rows], teacher.logprobs[rows])


def run_variant(variant, argv):
    out = subprocess.run([sys.executable, __file__, *argv, "--worker", variant],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    args = parse_args()
    if args.worker:
        return run_worker(args)
    argv = sys.argv[1:]
    print(f"tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} k={args.k} "
          f"chunk_size={args.chunk_size} threads={args.threads} repeats={args.repeats} "
          f"dtype=bf16 device={args.device} cpus={os.cpu_count()} torch={torch.__version__}")
    runs = {"naive": [], "chunked": []}
    for _ in range(args.repeats):  # alternate, so background load hits both alike
        for variant in runs:
            runs[variant].append(run_variant(variant, argv))
    best = {variant: {"peak_mib": max(r["peak_mib"] for r in rs),
                      "seconds": min(r["seconds"] for r in rs),
                      "cpu_seconds": min(r["cpu_seconds"] for r in rs),
                      "loss": rs[0]["loss"], "grad_norm": rs[0]["grad_norm"]}
            for variant, rs in runs.items()}
    naive = best["naive"]
    if args.device.startswith("cuda"):
        print("\nPeak memory: max allocated GPU memory above the inputs, each run in a fresh")
        print("subprocess (max over runs). Time (synchronised): one forward +")
    else:
        print("\nPeak memory: VmHWM - VmRSS once inputs are built, each run in a fresh subprocess")
        print("with VmHWM reset via /proc/self/clear_refs (max over runs). Time: one forward +")
    print("backward w.r.t. hidden (lm_head frozen), wall and process CPU (min over runs).\n")
    print("| variant | peak MiB | x naive | wall s | x naive | CPU s | x naive | loss | grad norm |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant, r in best.items():
        print(f"| {variant} | {r['peak_mib']:.0f} | {r['peak_mib'] / naive['peak_mib']:.3f} "
              f"| {r['seconds']:.1f} | {r['seconds'] / naive['seconds']:.2f} "
              f"| {r['cpu_seconds']:.1f} | {r['cpu_seconds'] / naive['cpu_seconds']:.2f} "
              f"| {r['loss']:.6f} | {r['grad_norm']:.6g} |")
    memory_ratio = best["chunked"]["peak_mib"] / naive["peak_mib"]
    time_ratio = best["chunked"]["seconds"] / naive["seconds"]
    print(f"\nmemory goal <= {MEMORY_GOAL:.2f}x naive: "
          f"{'met' if memory_ratio <= MEMORY_GOAL else 'MISSED'} ({memory_ratio:.3f}x)")
    print(f"time goal   <= {TIME_GOAL:.2f}x naive (wall): "
          f"{'met' if time_ratio <= TIME_GOAL else 'MISSED'} ({time_ratio:.2f}x)")
    print("all runs:", json.dumps(runs))


if __name__ == "__main__":
    main()
