"""Where one training step's time goes: the recipe's own Trainer, timed section by section.

Runs ``--steps`` optimizer steps of ``distill train-student``'s code (``Trainer._optimizer_step``
on ``Trainer._micro_batches``; nothing saved, no validation) after ``--warmup`` untimed ones, and
reports per step the median seconds of: data (reading, augmenting, collating the next batch),
the Whisper encoder, fusion + Q-Former + projection, the LLM decoder forward, the loss (lm_head
chunks, CE + KD), backward, and the optimizer (norm, clip, AdamW, scheduler). Forward sections
are timed by module hooks, so they are exactly the modules the student calls.

``--set key=value`` overrides a recipe field (dotted path, YAML value), and ``--compare`` times
several configurations in one run: all are built first (each holds its model: memory adds up),
then timed a step of each in turn, so a machine whose speed drifts (this project's shared CPU
machines ran 1.7x slower in one afternoon than in the morning) weighs on each alike:

    python benchmarks/bench_train_step.py recipes/demo.yaml --steps 8 \\
        --compare model.qformer.audio_tokens=all model.qformer.audio_tokens=clip

``--replay N`` first encodes the audio of N batches, then times from the first batch again: the
clips have been seen, as in a later epoch (with ``train.encoder_memo_mb`` the encoder is
then skipped; the first epoch pays it in full).

accelerate fixes the mixed precision once per process, so configurations that differ in
``train.precision`` are refused: time each precision in a command of its own.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
import yaml

SECTIONS = ("data", "whisper", "qformer+proj", "llm_fwd", "loss", "backward", "optimizer")


def apply_overrides(recipe, assignments: list[str]):
    """A copy of ``recipe`` with ``a.b.c=value`` assignments applied and validated again.

    Raises ``ValueError`` (one line naming the assignment) for a key the recipe does not have or
    a value its schema refuses."""
    from pydantic import ValidationError

    from distill.config import Recipe

    data = recipe.model_dump()
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        node = data
        *path, last = key.split(".")
        for depth, part in enumerate(path, start=1):
            if not isinstance(node.get(part), dict):
                raise ValueError(f"{assignment}: the recipe has no section "
                                 f"{'.'.join(path[:depth])}")
            node = node[part]
        if not sep or last not in node:
            raise ValueError(f"{assignment}: expected KEY=VALUE with a recipe key, e.g. "
                             "train.batch_size=8")
        try:
            node[last] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"{assignment}: the value is not YAML ({err.problem})") from None
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{' '.join(assignments)}: {where}: {first['msg']}") from None


class Timer:
    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)

    @contextmanager
    def section(self, name: str):
        started = time.perf_counter()
        yield
        self.current[name] += time.perf_counter() - started

    def hook(self, module: torch.nn.Module, name: str) -> None:
        starts: list[float] = []
        module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))

        def done(*_):
            self.current[name] += time.perf_counter() - starts.pop()

        module.register_forward_hook(done)


class Timed:
    """One configuration's Trainer with timing hooks on its sections."""

    def __init__(self, recipe):
        from distill.train.loop import Trainer

        self.recipe = recipe
        self.trainer = trainer = Trainer(recipe)
        self.student = student = trainer.accelerator.unwrap_model(trainer.student)
        self.timer = timer = Timer()
        timer.hook(student.whisper, "whisper")
        for module in (student.fusion, student.qformer, student.projection):
            timer.hook(module, "qformer+proj")
        timer.hook(student.causal_lm.get_decoder(), "llm_fwd")
        forward_sections = ("whisper", "qformer+proj", "llm_fwd")
        step_loss, backward = trainer._step_loss, trainer.accelerator.backward
        optimizer_step = trainer.optimizer.step

        def timed_step_loss(batch, num_items):
            before = sum(timer.current[s] for s in forward_sections)
            started = time.perf_counter()
            out = step_loss(batch, num_items)
            forward = sum(timer.current[s] for s in forward_sections) - before
            timer.current["loss"] += time.perf_counter() - started - forward
            return out

        def timed_backward(loss, **kwargs):
            with timer.section("backward"):
                return backward(loss, **kwargs)

        def timed_optimizer_step(*args, **kwargs):
            with timer.section("optimizer"):
                return optimizer_step(*args, **kwargs)

        trainer._step_loss = timed_step_loss
        trainer.accelerator.backward = timed_backward
        trainer.optimizer.step = timed_optimizer_step
        trainer.student.train()
        self.per_step, self.totals = defaultdict(list), []
        self.tokens, self.padded = [], []
        self.batches = trainer._micro_batches()

    def replay(self, batches: int) -> None:
        """Encode the audio of the first ``batches`` batches (no training), then start again
        from the first: the timed steps see clips already seen, as in a later epoch (what
        ``train.encoder_memo_mb`` keeps)."""
        with torch.no_grad():
            for _ in range(batches):
                self.student.encode_audio(next(self.batches)[0].inputs)
        self.batches = self.trainer._micro_batches()

    def step(self, timed: bool) -> dict:
        self.timer.current = defaultdict(float)
        started = time.perf_counter()
        with self.timer.section("data"):
            micro = [next(self.batches)[0] for _ in range(self.recipe.train.grad_accumulation)]
        log = self.trainer._optimizer_step(micro)
        self.trainer.progress.step += 1
        total = time.perf_counter() - started
        if timed:
            self.totals.append(total)
            mask = micro[0].inputs["attention_mask"]
            self.tokens.append(mask.sum().item())
            self.padded.append(mask.numel())
            for name in SECTIONS:
                self.per_step[name].append(self.timer.current[name])
        return log

    def result(self, log: dict) -> dict:
        medians = {name: statistics.median(self.per_step[name]) for name in SECTIONS}
        medians["total"] = statistics.median(self.totals)
        medians["other"] = medians["total"] - sum(medians[name] for name in SECTIONS)
        return {"seconds": medians, "steps_per_s": 1 / medians["total"],
                "sequence_tokens": sum(self.tokens) / len(self.tokens),
                "padded_tokens": sum(self.padded) / len(self.padded), "loss": log["loss"]}


def time_steps(recipes: list, steps: int, warmup: int, replay: int = 0) -> list[dict]:
    """Every configuration built first, then their steps in turn (A, B, A, B, ...), so that a
    machine slowing down or speeding up mid-run weighs on each configuration alike."""
    configurations = [Timed(recipe) for recipe in recipes]
    for configuration in configurations:
        configuration.replay(replay)
    logs = [{} for _ in configurations]
    for index in range(warmup + steps):
        for n, configuration in enumerate(configurations):
            logs[n] = configuration.step(timed=index >= warmup)
    return [configuration.result(log) for configuration, log in zip(configurations, logs,
                                                                     strict=True)]


def render(results: list[tuple[str, dict]], command: str) -> str:
    names = [label for label, _ in results]
    lines = [f"`{command}` (torch threads {torch.get_num_threads()}, load average "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end)", "",
             "| section (median s per step) | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for name in (*SECTIONS, "other", "total"):
        cells = []
        for _, result in results:
            value, total = result["seconds"][name], result["seconds"]["total"]
            cells.append(f"{value:.3f} ({100 * value / total:.0f} %)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| steps/s | " + " | ".join(f"{r['steps_per_s']:.3f}" for _, r in results) + " |")
    lines.append("| LLM tokens per batch, mean (real / padded to the longest) | "
                 + " | ".join(f"{r['sequence_tokens']:.0f} / {r['padded_tokens']:.0f}"
                              for _, r in results) + " |")
    return "\n".join(lines)


def split_assignments(configuration: str) -> list[str]:
    """``a=1,b=[x, y]`` -> ``["a=1", "b=[x, y]"]``: commas inside brackets belong to a value."""
    parts, depth, current = [], 0, ""
    for char in configuration:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part for part in (*parts, current) if part]


def main(argv=None) -> None:
    import sys

    from distill.config import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--replay", type=int, default=0, metavar="BATCHES",
                        help="first encode the audio of this many batches, then time from the "
                             "first batch again (clips already seen, as in a later epoch)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for every configuration")
    parser.add_argument("--compare", nargs="+", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                        help="configurations to time one after the other (comma-separated "
                             "overrides each); default: the recipe as it is")
    args = parser.parse_args(argv)
    configurations = args.compare or [""]
    try:
        base = apply_overrides(load_recipe(args.recipe), args.set)
        recipes = [apply_overrides(copy.deepcopy(base), split_assignments(config))
                   for config in configurations]
    except ValueError as err:
        parser.error(str(err))
    precisions = sorted({recipe.train.precision for recipe in recipes})
    if len(precisions) > 1:
        parser.error(f"--compare: train.precision differs ({', '.join(precisions)}); accelerate "
                     "sets the mixed precision once per process: time each in its own command")
    print(f"timing {', '.join(c or 'the recipe' for c in configurations)} ...", file=sys.stderr,
          flush=True)
    timings = time_steps(recipes, args.steps, args.warmup, args.replay)
    results = [(config or "recipe", timing)
               for config, timing in zip(configurations, timings, strict=True)]
    print(render(results, "python benchmarks/bench_train_step.py " + " ".join(argv or sys.argv[1:])))


if __name__ == "__main__":
    main()
