"""The KD loss against the libraries users already know, in one run, on the same work.

    python benchmarks/bench_kd_peers.py [--tokens 4096 --vocab 128256 --hidden 2048 --k 64
                                         --chunk-size 256 --repeats 1 --only NAME ...]

The work: student final hidden states [N, H] (bf16, needing a gradient) and a frozen bf16
lm_head [V, H]; one forward + backward of a distillation loss w.r.t. the hidden states. Each
library gets the teacher in the form it takes: distill a cached top-k (ids + logprobs) or dense
logits; torchtune's ForwardKLWithChunkedOutputLoss (8 output chunks, as its recipes use), TRL's
GKD generalized_jsd_loss (beta 0 = forward KL, beta 0.5) and Liger-Kernel's fused linear JSD
dense teacher logits [N, V] in bf16, Liger-Kernel's fused linear JSD (CUDA only) the teacher's
hidden states and lm_head (a live teacher; here it shares the student's head). The teacher's size is shown as its own column:
a dense teacher is itself a cost, one distill's cached top-k avoids.

Peers compute their student logits as their own training loops do: torchtune and TRL from
``hidden @ lm_head.T`` (torchtune per output chunk), Liger fused inside its kernel, in bf16 on
CUDA and on a CPU with AMX bf16 tiles. On a CPU without bf16 matrix units (bf16 GEMM runs at a few
GFLOPS there) the peers' matmul is done in fp32 with the weight upcast before the measurement, NOT
counted (as in bench_losses.py's naive variant: conservative for distill, which upcasts one vocab
block at a time inside the measurement). distill follows its own policy (distill.losses.lm_head),
which makes the same choice.

Each variant runs in its own fresh subprocess. Memory: on CUDA, peak allocated above the
allocation once inputs are built; on the CPU, VmHWM reset through /proc/self/clear_refs and
reported above VmRSS at that point. Time: one forward + backward, synchronised, min over
``--repeats`` runs (variants alternate, so background load hits all alike).

Peers are not toolkit dependencies: install the ``peers`` extra (pyproject.toml) for this
script alone. A peer that is not installed (or needs CUDA) is reported as such, not failed.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_losses import memory_kib  # noqa: E402  (the same VmHWM / VmRSS reading)

from distill.losses import HiddenStates, TopKTargets  # noqa: E402
from distill.losses import functional as LF  # noqa: E402
from distill.losses.lm_head import cpu_has_bf16_tiles  # noqa: E402
from distill.losses.reduction import DEFAULT_CHUNK_SIZE  # noqa: E402

VARIANTS = {
    # name: (library, loss, teacher form)
    "distill-topk-fkl": ("distill", "forward KL", "top-k"),
    "distill-dense-fkl": ("distill", "forward KL", "dense"),
    "distill-dense-jsd0.5": ("distill", "JSD beta 0.5", "dense"),
    "torchtune-fkl": ("torchtune", "forward KL", "dense"),
    "trl-jsd0": ("TRL GKD", "JSD beta 0 (forward KL)", "dense"),
    "trl-jsd0.5": ("TRL GKD", "JSD beta 0.5", "dense"),
    "liger-jsd0.5": ("Liger-Kernel", "fused linear JSD beta 0.5", "hidden"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                        help="distill's token chunk")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--only", action="append", choices=list(VARIANTS), default=None,
                        help="run only these variants (repeatable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


class Unavailable(Exception):
    """The variant cannot run here (peer not installed, or it needs CUDA)."""


def build_inputs(args, form: str):
    """bf16 hidden (needs grad), frozen bf16 lm_head, labels, and the teacher in ``form``."""
    g = torch.Generator().manual_seed(args.seed)
    n, v, h, k = args.tokens, args.vocab, args.hidden, args.k
    weight = (torch.randn(v, h, generator=g) * 0.02).bfloat16()
    hidden = torch.randn(n, h, generator=g).bfloat16()
    labels = torch.randint(0, v, (n,), generator=g)
    teacher_hidden = torch.randn(n, h, generator=g).bfloat16()
    if form == "hidden":  # a live teacher's final hidden states (its head: the same weight)
        teacher = teacher_hidden
    elif form == "dense":  # a teacher's logits as a model outputs them, in bf16
        teacher = torch.cat([(teacher_hidden[s:s + 256].float() @ weight.float().T).bfloat16()
                             for s in range(0, n, 256)])
    else:  # the cached form: the same teacher's top-k
        rows = []
        for s in range(0, n, 256):
            logp = torch.log_softmax(teacher_hidden[s:s + 256].float() @ weight.float().T, -1)
            rows.append(logp.topk(k, dim=-1))
        teacher = TopKTargets(torch.cat([r.indices for r in rows]),
                              torch.cat([r.values for r in rows]))
    device = torch.device(args.device)
    teacher = (TopKTargets(teacher.ids.to(device), teacher.logprobs.to(device))
               if isinstance(teacher, TopKTargets) else teacher.to(device))
    return (hidden.to(device).requires_grad_(), weight.to(device), labels.to(device), teacher)


def teacher_bytes(teacher) -> int:
    parts = teacher if isinstance(teacher, TopKTargets) else (teacher,)
    return sum(t.numel() * t.element_size() for t in parts if t is not None)


def make_step(name, args, hidden, weight, labels, teacher):
    """A closure computing the variant's loss on rows ``rows`` (a slice), ready for backward."""
    on_cuda = hidden.is_cuda
    if name.startswith("distill"):
        def step(rows):
            student = HiddenStates(hidden[rows], weight)
            target = (TopKTargets(teacher.ids[rows], teacher.logprobs[rows])
                      if isinstance(teacher, TopKTargets) else teacher[rows])
            if name.endswith("jsd0.5"):
                return LF.generalized_jsd(student, target, labels[rows], beta=0.5,
                                          chunk_size=args.chunk_size)
            return LF.forward_kl(student, target, labels[rows], chunk_size=args.chunk_size,
                                 tail="bucket")
        return step
    # Peers multiply in bf16 where bf16 GEMM is fast, else in fp32 (see the module docstring);
    # the upcast is input prep.
    native = on_cuda or cpu_has_bf16_tiles()
    w = weight if native else weight.float()
    if name == "torchtune-fkl":
        try:
            from torchtune.modules.loss import ForwardKLWithChunkedOutputLoss
        except ImportError as err:
            raise Unavailable(f"torchtune not installed ({err})") from err
        loss_fn = ForwardKLWithChunkedOutputLoss(num_output_chunks=8)

        def step(rows):
            h, t = hidden[rows], teacher[rows]
            student_chunks = [(c if native else c.float()) @ w.T for c in h[None].chunk(8, dim=1)]
            teacher_chunks = list(t[None].chunk(8, dim=1))
            return loss_fn(student_chunks, teacher_chunks, labels[rows][None])
        return step
    if name.startswith("trl"):
        try:
            from trl.experimental.gkd.gkd_trainer import GKDTrainer
        except ImportError as err:
            raise Unavailable(f"trl not installed ({err})") from err
        beta = 0.0 if name == "trl-jsd0" else 0.5

        def step(rows):
            h = hidden[rows] if native else hidden[rows].float()
            logits = (h @ w.T)[None]
            return GKDTrainer.generalized_jsd_loss(logits, teacher[rows][None].float(),
                                                   labels[rows][None], beta=beta)
        return step
    if name == "liger-jsd0.5":
        if not on_cuda:
            raise Unavailable("Liger-Kernel's fused linear JSD runs on CUDA (Triton) only")
        try:
            from liger_kernel.transformers import LigerFusedLinearJSD
        except ImportError as err:
            raise Unavailable(f"liger-kernel not installed ({err})") from err
        loss_fn = LigerFusedLinearJSD(jsd_beta=0.5)

        def step(rows):
            return loss_fn(hidden[rows], weight, teacher[rows], weight, labels[rows])
        return step
    raise ValueError(name)


def run_worker(args):
    torch.set_num_threads(args.threads)
    name = args.worker
    try:
        hidden, weight, labels, teacher = build_inputs(args, VARIANTS[name][2])
        step = make_step(name, args, hidden, weight, labels, teacher)
    except Unavailable as err:
        print(json.dumps({"variant": name, "unavailable": str(err)}))
        return
    cuda = hidden.is_cuda
    step(slice(0, 64)).backward()  # warm-up: kernels, thread pool, lazy imports
    hidden.grad = None
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        baseline = memory_kib()["VmRSS"] * 1024
    start = time.perf_counter()
    loss = step(slice(None))
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else memory_kib()["VmHWM"] * 1024
    print(json.dumps({
        "variant": name, "peak_mib": (peak - baseline) / 2**20, "seconds": seconds,
        "teacher_mib": teacher_bytes(teacher) / 2**20, "loss": loss.item(),
        "grad_norm": hidden.grad.float().norm().item(),
    }))


def run_variant(variant, argv):
    out = subprocess.run([sys.executable, __file__, *argv, "--worker", variant],
                         capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    if out.returncode < 0:  # SIGKILL here is the kernel's out-of-memory killer
        return {"variant": variant,
                "unavailable": f"killed by signal {-out.returncode} (out of memory at this size?)"}
    if out.returncode != 0 or not lines:
        errors = [line for line in out.stderr.strip().splitlines() if "Error" in line]
        tail = (errors or out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"variant": variant, "unavailable": f"failed: {tail}"}
    return json.loads(lines[-1])


def table(best: dict) -> list[str]:
    measured = [r for r in best.values() if "unavailable" not in r]
    least_mem = min((r["peak_mib"] for r in measured), default=0.0)
    fastest_peer = min((r["seconds"] for n, r in best.items()
                        if "unavailable" not in r and not n.startswith("distill")), default=None)
    rows = ["| variant | library | loss | teacher form | teacher MiB | peak MiB above inputs "
            "| wall s | x fastest peer | loss value | grad norm |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in best.items():
        library, loss, form = VARIANTS[name]
        if "unavailable" in r:
            rows.append(f"| {name} | {library} | {loss} | {form} | | n/a: {r['unavailable']} "
                        "| | | | |")
            continue
        ratio = f"{r['seconds'] / fastest_peer:.2f}" if fastest_peer else ""
        mark = " (least)" if r["peak_mib"] == least_mem else ""
        rows.append(f"| {name} | {library} | {loss} | {form} | {r['teacher_mib']:.0f} "
                    f"| {r['peak_mib']:.0f}{mark} | {r['seconds']:.2f} | {ratio} "
                    f"| {r['loss']:.6f} | {r['grad_norm']:.6g} |")
    return rows


def main():
    args = parse_args()
    if args.worker:
        return run_worker(args)
    argv = sys.argv[1:]
    names = args.only or list(VARIANTS)
    print(f"tokens={args.tokens} vocab={args.vocab} hidden={args.hidden} k={args.k} "
          f"chunk_size={args.chunk_size} threads={args.threads} repeats={args.repeats} "
          f"device={args.device} cpus={os.cpu_count()} torch={torch.__version__} "
          f"cpu_bf16_tiles={cpu_has_bf16_tiles()}", flush=True)
    runs = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            result = run_variant(name, argv)
            runs[name].append(result)
            print(f"  {name}: {json.dumps(result)}", flush=True)
    best = {}
    for name, results in runs.items():
        ok = [r for r in results if "unavailable" not in r]
        best[name] = results[0] if not ok else {
            "peak_mib": max(r["peak_mib"] for r in ok), "seconds": min(r["seconds"] for r in ok),
            "teacher_mib": ok[0]["teacher_mib"], "loss": ok[0]["loss"],
            "grad_norm": ok[0]["grad_norm"]}
    print()
    print("\n".join(table(best)))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "runs": runs, "best": best}, indent=1, default=str))


if __name__ == "__main__":
    main()
