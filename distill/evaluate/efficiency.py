"""Efficiency by the protocol of docs/reference.md §3, synchronised (upstream did not synchronise).

Batch 1, one fixed clip, the ASR prompt, ``warmup_runs`` untimed then ``timed_runs`` timed:
  TTFT    = features + audio encoding + prompt assembly + one prefill forward (to the first
            token's logits)
  TPOT    = one decode step with the KV cache
  latency = TTFT + TPOT (per run; median and p90 reported)
  memory  = peak GPU memory allocated (reset before the runs) on CUDA; on CPU the process's
            peak resident set, reset through /proc/self/clear_refs where Linux allows it.

Decoding levers (``distill bench``): ``static_cache`` preallocates the KV cache (transformers'
``StaticCache``, reset per run) instead of growing it; ``compile_decode`` runs the decode step
through ``torch.compile`` (on a static cache, so shapes never change between runs).
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


class _Decoder:
    """Prefill and one decode step, with the cache and decode function the levers choose."""

    def __init__(self, student, *, static_cache: bool, compile_decode: bool):
        self.student, self.static_cache = student, static_cache
        self.cache = None
        lm = student.causal_lm
        self.decode = torch.compile(lm.forward, dynamic=False) if compile_decode else lm.forward

    def prefill(self, inputs):
        cache = None
        if self.static_cache:
            length = inputs.inputs_embeds.shape[1] + 1
            if self.cache is None or self.cache.max_cache_len != length:
                from transformers import StaticCache

                self.cache = StaticCache(config=self.student.causal_lm.config, max_cache_len=length)
            self.cache.reset()
            cache = self.cache
        return self.student.causal_lm(inputs_embeds=inputs.inputs_embeds,
                                      attention_mask=inputs.attention_mask,
                                      past_key_values=cache, use_cache=True)

    def step(self, next_id, mask, cache):
        position = torch.tensor([mask.shape[1] - 1], device=next_id.device)
        return self.decode(input_ids=next_id, attention_mask=mask, past_key_values=cache,
                           cache_position=position, use_cache=True)


@torch.no_grad()
def _one_run(student, waveform: torch.Tensor, instruction: str,
             decoder: _Decoder | None = None) -> tuple[float, float]:
    from students.prompting import assemble_inputs

    decoder = decoder or _Decoder(student, static_cache=False, compile_decode=False)
    device = student.device
    _sync(device)
    start = time.perf_counter()
    batch = student.processor([waveform], [instruction])
    audio = student.encode_audio(batch)
    inputs = assemble_inputs(student.embed_tokens, audio, batch, padding_side="left",
                             with_targets=False)
    out = decoder.prefill(inputs)
    next_id = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(device)
    prefill_done = time.perf_counter()
    mask = torch.cat([inputs.attention_mask, inputs.attention_mask.new_ones(1, 1)], dim=1)
    decoder.step(next_id, mask, out.past_key_values)
    _sync(device)
    return prefill_done - start, time.perf_counter() - prefill_done


def measure_efficiency(student, waveform: torch.Tensor, instruction: str, *, warmup_runs: int,
                       timed_runs: int, static_cache: bool = False,
                       compile_decode: bool = False) -> EfficiencyResult:
    device = student.device
    student.eval()
    decoder = _Decoder(student, static_cache=static_cache, compile_decode=compile_decode)
    for _ in range(warmup_runs):
        _one_run(student, waveform, instruction, decoder)
    memory_kind = reset_peak_memory(device)
    runs = [_one_run(student, waveform, instruction, decoder) for _ in range(timed_runs)]
    peak = peak_memory_gb(device)
    ttft = [r[0] for r in runs]
    tpot = [r[1] for r in runs]
    latency = [a + b for a, b in runs]

    def timing(values: list[float]) -> Timing:
        return Timing(statistics.median(values), _p90(values))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return EfficiencyResult(name, warmup_runs, timed_runs, timing(ttft), timing(tpot),
                            timing(latency), peak, memory_kind)
