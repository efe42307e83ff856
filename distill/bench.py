"""``distill bench``: what a student costs at its recipe's shapes, by the reference protocol.

Why a separate command: efficiency in ``distill evaluate`` needs a trained checkpoint and eval
sets; the costs (memory, latency, step time) do not depend on the weights' values, so with
``model.random_init`` (``--random-weights``) any recipe is measured at its real shapes on any
machine, model hub or not. For each recipe, in one process:

- parameters and bytes per component (frozen, trainable, 4-bit quantised);
- inference by ``distill.evaluate.efficiency`` (batch 1, a fixed clip, the ASR prompt, warm-up
  then timed runs, synchronised): TTFT, TPOT, latency, peak memory;
- a greedy ``generate`` of a few tokens (the real decoding path);
- training steps at the recipe's batch (random targets and teacher top-k of the recipe's k):
  step time, target tokens/s, peak memory, and what the recipe's clipper decided.

Several recipes: the first is the baseline and the others' memory and latency are given as its
multiples. On a CPU the protocol runs with fewer repetitions (and says so); bf16 on a CPU without
bf16 matrix units runs float32 instead (and says so), see ``students.model.warn_slow_cpu_dtype``.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from distill.config import Recipe
from distill.evaluate.efficiency import _sync, measure_efficiency, peak_memory_gb, reset_peak_memory
from distill.evaluate.report import EfficiencyResult

COMPONENTS = ("whisper", "beats", "fusion", "qformer", "projection", "llm")
CPU_WARMUP, CPU_TIMED = 1, 3  # the reference's 10 + 100 runs take hours at real size on a CPU
TARGET_TOKENS = 32  # per training sample: about a LibriSpeech utterance's transcript


@dataclass
class BenchOptions:
    """How to run; ``None`` means the recipe's value (or the CPU default)."""

    device: str = "cpu"
    random_weights: bool = False
    dtype: str = "auto"  # auto: the recipe's, float32 for bf16 on a CPU without bf16 units
    encoder_dtype: str | None = None  # "compute" or "float32" (model.whisper.dtype)
    attn: str | None = None  # model.llm.attn_implementation
    static_cache: bool = False
    compile_decode: bool = False
    warmup_runs: int | None = None
    timed_runs: int | None = None
    train_steps: int = 1
    batch_size: int | None = None
    generate_tokens: int = 8


@dataclass
class ComponentSize:
    name: str
    frozen: int = 0  # parameters
    trainable: int = 0
    quantised: int = 0  # 4-bit parameters (two per stored byte)
    bytes: int = 0  # as stored (4-bit: packed bytes plus quantisation constants)


@dataclass
class TrainResult:
    batch_size: int
    sequence_tokens: int  # per sample: audio + prompt + target
    target_tokens: int  # per step
    step_s: list[float]
    peak_memory_gb: float
    memory_kind: str
    losses: list[float]
    grad_norms: list[float]
    clip_thresholds: list[float | None]
    clip_mode: str

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def tokens_per_s(self) -> float:
        return self.target_tokens / self.median_step_s


@dataclass
class BenchResult:
    recipe: str
    device: str
    dtype: str
    notes: list[str]
    build_s: float
    build_peak_gb: float
    components: list[ComponentSize]
    efficiency: EfficiencyResult
    generate_s: float
    generated_tokens: int
    train: TrainResult | None
    levers: dict = field(default_factory=dict)


def is_quantised(param: torch.Tensor) -> bool:
    return type(param).__name__ == "Params4bit"


def _quant_state_bytes(param) -> int:
    state = getattr(param, "quant_state", None)
    if state is None:
        return 0
    total = state.absmax.numel() * state.absmax.element_size()
    if getattr(state, "nested", False) and state.state2 is not None:
        total += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return total


def component_sizes(student) -> list[ComponentSize]:
    """Parameters and bytes of each part (tied weights counted once, as ``parameters()``)."""
    sizes = []
    for name in COMPONENTS:
        module = getattr(student, name, None)
        if module is None:
            continue
        size = ComponentSize(name)
        for param in module.parameters():
            stored = param.numel() * param.element_size()
            if is_quantised(param):
                size.quantised += 2 * param.numel()
                stored += _quant_state_bytes(param)
            elif param.requires_grad:
                size.trainable += param.numel()
            else:
                size.frozen += param.numel()
            size.bytes += stored
        sizes.append(size)
    return sizes


def resolve_dtype(recipe: Recipe, options: BenchOptions, notes: list[str]) -> str:
    """The compute dtype to run, and why when it is not the recipe's."""
    from students.llm import cpu_has_bf16_matrix_units

    wanted = recipe.model.compute_dtype
    if options.dtype != "auto":
        return options.dtype
    if (torch.device(options.device).type == "cpu" and wanted == "bfloat16"
            and not cpu_has_bf16_matrix_units()):
        notes.append("bfloat16 asked, float32 run: this CPU has no bf16 matrix units (AMX), "
                     "where bf16 matrix products run about 5x slower than float32")
        return "float32"
    return wanted


def prepare_recipe(recipe: Recipe, options: BenchOptions, notes: list[str]) -> Recipe:
    """A copy of the recipe with the run's dtype, random weights and levers applied."""
    recipe = recipe.model_copy(deep=True)
    model = recipe.model
    dtype = resolve_dtype(recipe, options, notes)
    model.compute_dtype = dtype
    model.llm.quantization.compute_dtype = dtype
    if dtype == "float32" and recipe.train.precision == "bf16":
        recipe.train.precision = "fp32"
    if options.random_weights:
        model.random_init = True
    if options.encoder_dtype is not None:
        model.whisper.dtype = options.encoder_dtype
    if options.attn is not None:
        model.llm.attn_implementation = options.attn
    if model.moe.enabled and model.random_init and model.moe.split == "clustered":
        model.moe.split = "random"
        notes.append("MoE split random instead of clustered: k-means over random weights costs "
                     "minutes and changes no shape or cost")
    return recipe


def _move(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def train_steps(student, recipe: Recipe, clip: torch.Tensor, *, batch_size: int,
                steps: int) -> TrainResult:
    """``steps`` optimizer steps at ``batch_size`` on random targets and teacher top-k, by the
    trainer's loss, optimizer and clipper (``distill.train``)."""
    from distill.losses import HiddenStates, TopKTargets
    from distill.train.clipping import build_clipper
    from distill.train.loop import build_mixed_loss
    from distill.train.optim import build_optimizer

    device = student.device
    generator = torch.Generator().manual_seed(0)
    vocab = len(student.tokenizer)
    targets = [torch.randint(0, vocab, (TARGET_TOKENS,), generator=generator).tolist()
               for _ in range(batch_size)]
    instruction = student.processor.instruction("asr")
    batch = _move(student.processor([clip] * batch_size, [instruction] * batch_size,
                                    target_ids=targets), device)
    rows = batch_size * TARGET_TOKENS
    k = recipe.teacher.top_k
    teacher = TopKTargets(
        torch.stack([torch.randperm(vocab, generator=generator)[:k] for _ in range(rows)]).to(device),
        torch.log_softmax(torch.randn(rows, k + 1, generator=generator), -1)[:, :k].to(device),
    )
    loss_fn = build_mixed_loss(recipe)
    optimizer = build_optimizer(student, recipe.train.optimizer)
    clipper = build_clipper(recipe.train.clip)
    params = [p for p in student.parameters() if p.requires_grad]
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.train.precision)
    student.train()
    result = TrainResult(batch_size, int(batch["attention_mask"].shape[1]), rows, [], 0.0, "",
                         [], [], [], recipe.train.clip.mode)
    memory_kind = reset_peak_memory(device)
    for step in range(steps):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            out = student(batch)
            mask = out.labels != -100
            extra = {"moe_balance": (out.balance_loss, 1.0)} if out.balance_loss is not None else None
            loss = loss_fn(HiddenStates(out.hidden_states[mask], student.lm_head_weight,
                                        student.lm_head_bias),
                           teacher, out.labels[mask], step=step, num_items=rows, extra=extra).total
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf")))
        decision = clipper.decide(norm)
        if decision.clipped:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(decision.scale)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        result.step_s.append(time.perf_counter() - start)
        result.losses.append(float(loss.detach()))
        result.grad_norms.append(norm)
        result.clip_thresholds.append(decision.threshold)
    result.peak_memory_gb, result.memory_kind = peak_memory_gb(device), memory_kind
    student.eval()
    del optimizer
    return result


def fixed_clip(seconds: float = 10.0, rate: int = 16000) -> torch.Tensor:
    """The protocol's fixed clip (no eval set needed): seeded noise, as ``efficiency_clip``
    uses when a recipe has no ASR set; costs do not depend on what the clip says."""
    generator = torch.Generator().manual_seed(0)
    return 0.05 * torch.randn(int(seconds * rate), generator=generator)


def bench_recipe(recipe: Recipe, options: BenchOptions, *, log=print) -> BenchResult:
    from students.model import SalmonnStudent

    notes: list[str] = []
    device = torch.device(options.device)
    on_cpu = device.type == "cpu"
    recipe = prepare_recipe(recipe, options, notes)
    eff = recipe.eval.efficiency
    warmup = options.warmup_runs if options.warmup_runs is not None else (
        CPU_WARMUP if on_cpu else eff.warmup_runs)
    timed = options.timed_runs if options.timed_runs is not None else (
        CPU_TIMED if on_cpu else eff.timed_runs)
    if on_cpu and (warmup, timed) != (eff.warmup_runs, eff.timed_runs):
        notes.append(f"CPU: {warmup} warm-up + {timed} timed runs (the protocol: "
                     f"{eff.warmup_runs} + {eff.timed_runs})")
    log(f"[{recipe.name}] building the student ({recipe.model.compute_dtype}, "
        f"{'random weights' if recipe.model.random_init else 'pretrained weights'}) on {device}")
    reset_peak_memory(device)
    start = time.perf_counter()
    torch.manual_seed(0)
    student = SalmonnStudent.from_config(recipe.model, device=device).eval()
    build_s = time.perf_counter() - start
    build_peak = peak_memory_gb(device)
    clip = fixed_clip(eff.clip_seconds, recipe.data.audio.sample_rate)
    instruction = student.processor.instruction(eff.task)
    log(f"[{recipe.name}] built in {build_s:.1f} s; efficiency: {warmup} warm-up + {timed} timed")
    efficiency = measure_efficiency(student, clip, instruction, warmup_runs=warmup,
                                    timed_runs=timed, static_cache=options.static_cache,
                                    compile_decode=options.compile_decode)
    log(f"[{recipe.name}] generating {options.generate_tokens} tokens")
    batch = _move(student.processor([clip], [instruction]), device)
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        ids = student.generate(batch, num_beams=1, do_sample=False,
                               max_new_tokens=options.generate_tokens, min_new_tokens=options.generate_tokens,
                               repetition_penalty=1.0)
    _sync(device)
    generate_s = time.perf_counter() - start
    train = None
    if options.train_steps > 0:
        size = options.batch_size or recipe.train.batch_size
        log(f"[{recipe.name}] {options.train_steps} training step(s) at batch {size}")
        train = train_steps(student, recipe, clip, batch_size=size, steps=options.train_steps)
    result = BenchResult(recipe.name, efficiency.device, recipe.model.compute_dtype, notes,
                         build_s, build_peak, component_sizes(student), efficiency, generate_s,
                         int(ids.shape[1]), train,
                         levers={"whisper_dtype": recipe.model.whisper.dtype,
                                 "attn": recipe.model.llm.attn_implementation,
                                 "static_cache": options.static_cache,
                                 "compile_decode": options.compile_decode})
    del student
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ------------------------------------------------------------------------------ tables
def _m(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def _gb(n: int) -> str:
    return f"{n / 1024**3:.2f}"


def component_table(result: BenchResult) -> list[str]:
    lines = ["| component | frozen | trainable | 4-bit | GB stored |", "|---|---|---|---|---|"]
    total = ComponentSize("total")
    for c in result.components:
        lines.append(f"| {c.name} | {_m(c.frozen)} | {_m(c.trainable)} | {_m(c.quantised)} | "
                     f"{_gb(c.bytes)} |")
        total.frozen += c.frozen
        total.trainable += c.trainable
        total.quantised += c.quantised
        total.bytes += c.bytes
    lines.append(f"| **total** | {_m(total.frozen)} | {_m(total.trainable)} | "
                 f"{_m(total.quantised)} | {_gb(total.bytes)} |")
    return lines


def summary_table(results: list[BenchResult]) -> list[str]:
    """One row per recipe; memory and latency also as multiples of the first (the baseline)."""
    base = results[0].efficiency
    lines = ["| recipe | dtype | TTFT s | TPOT s | latency s (p90) | peak GB | memory x | "
             "latency x | train step s | target tok/s | train peak GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        e, t = r.efficiency, r.train
        train = (f"{t.median_step_s:.2f} (batch {t.batch_size}) | {t.tokens_per_s:.1f} | "
                 f"{t.peak_memory_gb:.2f}") if t else "- | - | -"
        lines.append(
            f"| {r.recipe} | {r.dtype} | {e.ttft_s.median:.4f} | {e.tpot_s.median:.4f} | "
            f"{e.latency_s.median:.4f} ({e.latency_s.p90:.4f}) | {e.peak_memory_gb:.2f} | "
            f"{e.peak_memory_gb / base.peak_memory_gb:.2f} | "
            f"{e.latency_s.median / base.latency_s.median:.2f} | {train} |")
    return lines


def clip_table(result: BenchResult) -> list[str]:
    t = result.train
    if t is None:
        return []
    lines = [f"| step | loss | grad norm | {t.clip_mode} threshold |", "|---|---|---|---|"]
    for i, (loss, norm, thr) in enumerate(zip(t.losses, t.grad_norms, t.clip_thresholds,
                                              strict=True)):
        lines.append(f"| {i + 1} | {loss:.3f} | {norm:.3g} | "
                     f"{'none (no limit)' if thr is None else f'{thr:.3g}'} |")
    return lines


def render(results: list[BenchResult], command: str) -> str:
    first = results[0]
    memory = first.efficiency.memory_kind
    out = [f"Command: `{command}`", f"Device: {first.device}; memory: {memory}.", ""]
    out += summary_table(results)
    for r in results:
        out += ["", f"### {r.recipe}",
                f"built in {r.build_s:.1f} s (peak {r.build_peak_gb:.2f} GB); greedy generate "
                f"of {r.generated_tokens} tokens: {r.generate_s:.2f} s; levers: "
                + ", ".join(f"{k}={v}" for k, v in r.levers.items())]
        out += [f"- {note}" for note in r.notes]
        out += [""] + component_table(r)
        if r.train is not None:
            out += ["", f"Training: {r.train.sequence_tokens} tokens per sample, "
                    f"{r.train.memory_kind}; what the clipper decided:", ""] + clip_table(r)
    return "\n".join(out) + "\n"


def write_results(results: list[BenchResult], command: str, output_dir: Path) -> tuple[Path, Path]:
    """bench.md and bench.json, each written to a temp file then renamed."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in (("bench.md", render(results, command)),
                       ("bench.json", json.dumps([asdict(r) for r in results], indent=1))):
        path = output_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        paths.append(path)
    return paths[0], paths[1]
