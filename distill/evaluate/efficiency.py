"""Efficiency by the protocol of docs/reference.md §3, synchronised (upstream did not synchronise).

Batch 1, one fixed clip, the ASR prompt, ``warmup_runs`` untimed then ``timed_runs`` timed:
  TTFT    = features + audio encoding + prompt assembly + one prefill forward (to the first
            token's logits)
  TPOT    = one decode step with the KV cache
  latency = TTFT + TPOT (per run; median and p90 reported)
  memory  = peak GPU memory allocated (reset before the runs) on CUDA; on CPU the process's
            peak resident set, reset through /proc/self/clear_refs where Linux allows it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from distill.evaluate.report import EfficiencyResult, Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2  # kB -> GB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak-memory window; return what will be measured (for the report)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "GPU max allocated"
    return "CPU peak RSS" if _reset_cpu_peak() else "CPU peak RSS since start"


def peak_memory_gb(device: torch.device) -> float:
    """The peak since ``reset_peak_memory``, in GB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return _cpu_peak_gb()


@torch.no_grad()
def _one_run(student, waveform: torch.Tensor, instruction: str) -> tuple[float, float]:
    from students.prompting import assemble_inputs

    device = student.device
    _sync(device)
    start = time.perf_counter()
    batch = student.processor([waveform], [instruction])
    audio = student.encode_audio(batch)
    inputs = assemble_inputs(student.embed_tokens, audio, batch, padding_side="left",
                             with_targets=False)
    out = student.causal_lm(inputs_embeds=inputs.inputs_embeds,
                            attention_mask=inputs.attention_mask, use_cache=True)
    next_id = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    prefill_done = time.perf_counter()
    mask = torch.cat([inputs.attention_mask, inputs.attention_mask.new_ones(1, 1)], dim=1)
    student.causal_lm(input_ids=next_id, attention_mask=mask, past_key_values=out.past_key_values,
                      use_cache=True)
    _sync(device)
    return prefill_done - start, time.perf_counter() - prefill_done


def measure_efficiency(student, waveform: torch.Tensor, instruction: str, *, warmup_runs: int,
                       timed_runs: int) -> EfficiencyResult:
    device = student.device
    student.eval()
    for _ in range(warmup_runs):
        _one_run(student, waveform, instruction)
    memory_kind = reset_peak_memory(device)
    runs = [_one_run(student, waveform, instruction) for _ in range(timed_runs)]
    peak = peak_memory_gb(device)
    ttft = [r[0] for r in runs]
    tpot = [r[1] for r in runs]
    latency = [a + b for a, b in runs]

    def timing(values: list[float]) -> Timing:
        return Timing(statistics.median(values), _p90(values))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return EfficiencyResult(name, warmup_runs, timed_runs, timing(ttft), timing(tpot),
                            timing(latency), peak, memory_kind)
