"""Audio mode of benchmarks/bench_learning.py: does KD from the cached teacher help the real
student on the recipe's own audio, at equal steps?

Two students are trained by the toolkit's own trainer (``distill.train.loop.Trainer``) from one
recipe (by default ``recipes/demo.yaml``: its data, teacher cache, models, batch and schedule):
``kd`` with the recipe's loss (CE + KD; ``--kd-weight`` and ``--temperature`` override it) and
``ce`` with ``loss.kd_weight: 0`` (the KD term is still computed and logged, as a monitor, but
weighs nothing). Each arm runs in its own process, as two real runs would. Same seed, hence the
same initial weights (a sha256 of the trainable tensors proves it), and the same batches in the
same order: per step each arm records the sample ids of its micro-batches, a digest of the
collated input tensors (augmented audio features, prompt and target ids) and a digest of the
global RNG state before the step (the only random numbers a step draws are dropout's, in
LoRA and the Q-Former; the KD loss draws none and augmentation has per-sample generators, so
both arms draw the same masks); the run stops with an error if anything differs.

Training stops at each ``--eval-at`` step and writes a checkpoint (``Trainer.train`` with a
shorter horizon; the schedule keeps the run's full length and the data resumes where it was, as
a resume would). Every checkpoint is then scored by the evaluation's own code
(``distill.evaluate.runner.generate_for_set`` and ``score_set``: WER on the ASR sets, CIDEr-D on
the caption sets, with the recipe's decoding) and by a teacher-free held-out NLL: cross-entropy
in nats per answer token of the reference answers, on the same clips (``--eval-clips`` keeps the
first K of each set). Before training it prints, once, what the teacher's cached rows hold for
the training samples (``teacher_signal``): how often the reference token is in the top-k and is
the top-1, the teacher's NLL of it, its top-1 probability and the entropy of its normalised top-k,
per task and per answer position (first token, end token, the others), and the most frequent
tokens where the teacher's top-1 is not the reference. With forward KL at T = 1 it adds where
CE + KD pulls a student that could fit anything (per row (ce y + kd p) / (ce + kd)): the
reference's NLL there, which the KD arm's held-out NLL cannot go below while CE's can reach 0,
and how often greedy decoding would leave the reference there. A teacher that puts nearly all
its mass on the reference token gives KD little more than a second CE; one that prefers other
tokens (capitals, punctuation, not ending) pulls the student from the references it is scored on.

Outputs go to ``--out`` (default ``runs/bench_learning_audio``; a folder this benchmark did not
write is refused): ``<arm>/`` the trainer's output (checkpoints, train_log.jsonl), ``<arm>.json``
the batch record, ``eval/`` the hypotheses, ``results.md`` the table and ``results.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ARMS = {"kd": "CE + KD", "ce": "CE only"}
MARKER = ".bench_learning_audio"
HEADLINE = {"wer": ("WER %", False), "cider_d": ("CIDEr-D", True)}  # name, higher is better


class BenchError(RuntimeError):
    """The benchmark cannot run or its two arms are not comparable; the message says why."""


# ------------------------------------------------------------------------ teacher diagnostics
POSITIONS = ("first", "middle", "end")  # an answer's first row, its end-token row, the others


def teacher_signal(cache, records, temperature: float = 1.0, top: int = 5,
                   weights: tuple[float, float] | None = None) -> dict[str, dict]:
    """What the cached teacher rows tell the student, per task, over ``records``.

    ``cache``: an open ``teachers.cache.TeacherCache`` (its ``get`` and ``meta``); ``records``:
    (sample id, task) pairs (the training manifests' rows). Row t of a sample predicts its
    ``response_ids[t]``: the reference token in score mode, the teacher's own answer in
    generate mode (``target`` says which). Returned per task, means over rows (tokens):
    ``in_topk`` (share of rows whose target is among the k ids), ``top1_is_target``,
    ``nll`` (nats/token: -log p of the target; where the target is outside the top-k its
    probability is unknown and its upper bound min(k-th probability, rest mass) is used, so the
    mean is a lower bound unless ``in_topk`` is 1), ``top1_prob`` (the teacher's highest
    probability), ``entropy`` (nats, of the top-k renormalised to sum 1), ``entropy_at_t`` (the
    same after dividing the log-probs by ``temperature``, as the KD loss does), ``rest_mass``
    (mass outside the top-k; None for a version-1 cache without it); ``samples``, ``rows`` and
    ``missing`` (records not in the cache). ``positions``: rows, ``top1_is_target``, ``nll``
    and ``top1_prob`` of the answers' first rows, last rows (the end token) and the others;
    ``disagreements``: the ``top`` most frequent (position, target id, teacher's top-1 id,
    rows) where the two differ.

    ``weights`` = (ce_weight, kd_weight) of a forward-KL loss at T = 1 adds, per task and
    position, where CE + KD pulls a student that could fit anything: its optimum per row is
    q = (ce y + kd p) / (ce + kd) (y the one-hot target, p the teacher), so ``optimum_nll`` is
    the reference's NLL there (0 for CE alone; a lower bound where the target is outside the
    top-k) and ``optimum_flips`` the share of rows whose most likely token there is the
    teacher's top-1 instead of the target (kd p_top1 > ce + kd p_target), i.e. where greedy
    decoding would leave the reference.
    """
    sums: dict[str, dict] = {}
    for sample_id, task in records:
        acc = sums.get(task)
        if acc is None:
            acc = sums[task] = {"samples": 0, "missing": 0, "rows": 0, "rest_rows": 0,
                                "rest_mass": 0.0, "disagree": {},
                                **{k: 0.0 for k in ("in_topk", "top1_is_target", "nll",
                                                    "top1_prob", "entropy", "entropy_at_t")},
                                "positions": {p: {"rows": 0, "top1_is_target": 0.0, "nll": 0.0,
                                                  "top1_prob": 0.0, "optimum_nll": 0.0,
                                                  "optimum_flips": 0.0} for p in POSITIONS}}
        if sample_id not in cache:
            acc["missing"] += 1
            continue
        row = cache.get(sample_id)
        target = np.asarray(row.response_ids, dtype=np.int64)
        ids = np.asarray(row.topk_ids, dtype=np.int64)[: len(target)]
        lp = np.asarray(row.topk_logprobs, dtype=np.float64)[: len(target)]
        hit = ids == target[:, None]
        found = hit.any(1)
        bound = lp[:, -1]
        if row.rest_logprobs is not None:
            rest = np.asarray(row.rest_logprobs, dtype=np.float64)[: len(target)]
            bound = np.minimum(bound, rest)
            acc["rest_mass"] += float(np.exp(rest).sum())
            acc["rest_rows"] += len(target)
        nll = -np.where(found, np.where(hit, lp, -np.inf).max(1), bound)
        top1 = ids[:, 0] == target
        if weights is not None:  # the CE + KD optimum q = (ce y + kd p) / (ce + kd), per row
            ce_w, kd_w = weights
            p_target = np.exp(-nll)
            optimum_nll = -np.log((ce_w + kd_w * p_target) / (ce_w + kd_w))
            flips = ~top1 & (kd_w * np.exp(lp[:, 0]) > ce_w + kd_w * p_target)
        acc["samples"] += 1
        acc["rows"] += len(target)
        acc["in_topk"] += float(found.sum())
        acc["top1_is_target"] += float(top1.sum())
        acc["nll"] += float(nll.sum())
        acc["top1_prob"] += float(np.exp(lp[:, 0]).sum())
        acc["entropy"] += float(_entropy(lp).sum())
        acc["entropy_at_t"] += float(_entropy(lp / temperature).sum())
        for t in range(len(target)):
            where = "end" if t == len(target) - 1 else "first" if t == 0 else "middle"
            pos = acc["positions"][where]
            pos["rows"] += 1
            pos["top1_is_target"] += float(top1[t])
            pos["nll"] += float(nll[t])
            pos["top1_prob"] += float(np.exp(lp[t, 0]))
            if weights is not None:
                pos["optimum_nll"] += float(optimum_nll[t])
                pos["optimum_flips"] += float(flips[t])
            if not top1[t]:
                key = (where, int(target[t]), int(ids[t, 0]))
                acc["disagree"][key] = acc["disagree"].get(key, 0) + 1
    mode_for = getattr(cache.meta, "mode_for", None)
    out = {}
    for task, acc in sorted(sums.items()):
        rows = max(acc["rows"], 1)
        positions = {}
        for where, pos in acc["positions"].items():
            n = max(pos["rows"], 1)
            names = ("top1_is_target", "nll", "top1_prob") + (
                ("optimum_nll", "optimum_flips") if weights is not None else ())
            positions[where] = {"rows": pos["rows"], **{k: pos[k] / n for k in names}}
        disagreements = sorted(acc["disagree"].items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        out[task] = {
            "target": "reference" if mode_for is None or mode_for(task) == "score"
            else "teacher's answer",
            "samples": acc["samples"], "missing": acc["missing"], "rows": acc["rows"],
            **{k: acc[k] / rows for k in ("in_topk", "top1_is_target", "nll", "top1_prob",
                                          "entropy", "entropy_at_t")},
            "rest_mass": acc["rest_mass"] / acc["rest_rows"] if acc["rest_rows"] else None,
            "temperature": temperature, "positions": positions, "weights": weights,
            **({"optimum_nll": sum(positions[w]["optimum_nll"] * positions[w]["rows"]
                                   for w in POSITIONS) / rows} if weights is not None else {}),
            "disagreements": [[*key, count] for key, count in disagreements],
        }
    return out


def _entropy(logprobs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row of log-probabilities renormalised over its entries."""
    shifted = logprobs - logprobs.max(1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(1)


def signal_table(signal: dict[str, dict], k: int, decode=None) -> str:
    """The diagnostics as markdown: a table per task, one per answer position, and the most
    frequent disagreements (``decode``: token id -> text, else ids are shown)."""
    temperature = next(iter(signal.values()))["temperature"] if signal else 1.0
    lines = [f"| task (target) | samples | rows | target in top-{k} | target is top-1 | "
             "teacher NLL of target (nats/token) | top-1 prob | entropy of top-k (nats) | "
             f"entropy at T={temperature:g} | mass outside top-k |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task, s in signal.items():
        nll = f"{s['nll']:.4f}" if s["in_topk"] == 1 else f">= {s['nll']:.4f}"
        rest = "n/a" if s["rest_mass"] is None else f"{s['rest_mass']:.4f}"
        missing = f" ({s['missing']} not cached)" if s["missing"] else ""
        lines.append(f"| {task} ({s['target']}) | {s['samples']}{missing} | {s['rows']} | "
                     f"{s['in_topk']:.1%} | {s['top1_is_target']:.1%} | {nll} | "
                     f"{s['top1_prob']:.4f} | {s['entropy']:.4f} | {s['entropy_at_t']:.4f} | "
                     f"{rest} |")
    weights = next(iter(signal.values()))["weights"] if signal else None
    optimum = ("" if weights is None else
               f" NLL at the CE x {weights[0]:g} + KD x {weights[1]:g} optimum | greedy "
               "leaves the target there |")
    lines += ["", "| task | answer rows | rows | target is top-1 | teacher NLL (bound) | "
              "top-1 prob |" + optimum,
              "|---|---|---:|---:|---:|---:|" + ("" if weights is None else "---:|---:|")]
    for task, s in signal.items():
        for where, pos in s["positions"].items():
            label = {"end": "last (end token)"}.get(where, where)
            extra = ("" if weights is None else
                     f" {pos['optimum_nll']:.4f} | {pos['optimum_flips']:.1%} |")
            lines.append(f"| {task} | {label} | {pos['rows']} | {pos['top1_is_target']:.1%} | "
                         f"{pos['nll']:.4f} | {pos['top1_prob']:.4f} |" + extra)

    if weights is not None:
        lines.append(f"\nOptimum columns: a student that fits CE x {weights[0]:g} + forward KL x "
                     f"{weights[1]:g} (T = 1) exactly predicts (ce y + kd p) / (ce + kd) per row "
                     "(y the reference token, p the teacher): the reference's NLL there (CE "
                     "alone: 0) and the share of rows where its most likely token is the "
                     "teacher's top-1, not the reference.")

    def show(token: int) -> str:
        return repr(decode(token)) if decode is not None else str(token)

    for task, s in signal.items():
        if s["disagreements"]:
            lines.append(f"\n{task}: where the teacher's top-1 is not the target (position, "
                         "target -> teacher's top-1, rows): " + "; ".join(
                             f"{where} {show(target)} -> {show(top1)} x{count}"
                             for where, target, top1, count in s["disagreements"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------ digests
def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def rng_digest() -> str:
    """sha256 of the global RNG states a training step can draw from (CPU, and CUDA if any)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensor_digest(states)


def compare_arms(records: dict[str, dict]) -> str:
    """'' when every arm started from the same weights and saw the same batches with the same
    RNG state at every step; else a line naming the first difference."""
    (first, a), *others = records.items()
    for name, b in others:
        if a["init_digest"] != b["init_digest"]:
            return (f"initial trainable weights differ: {first} {a['init_digest'][:16]}, "
                    f"{name} {b['init_digest'][:16]}")
        if len(a["steps"]) != len(b["steps"]):
            return f"{first} recorded {len(a['steps'])} steps, {name} {len(b['steps'])}"
        for x, y in zip(a["steps"], b["steps"], strict=True):
            for key in ("step", "samples", "inputs", "rng"):
                if x[key] != y[key]:
                    return (f"step {x['step']}: {key} differ ({first}: {x[key]!r}, "
                            f"{name}: {y[key]!r})")
    return ""


# ------------------------------------------------------------------------ one arm (a process)
def _recording_trainer():
    from distill.train.loop import Trainer

    class RecordingTrainer(Trainer):
        """The toolkit's trainer, recording what each optimizer step is fed."""

        def _optimizer_step(self, batches):
            self.batch_record.append({
                "step": self.progress.step + 1,
                "samples": [list(b.sample_ids) for b in batches],
                "inputs": tensor_digest({f"{i}.{k}": v for i, b in enumerate(batches)
                                         for k, v in b.inputs.items()}),
                "rng": rng_digest(),
            })
            return super()._optimizer_step(batches)

    return RecordingTrainer


def train_arm(recipe_data: dict, arm: str, save_at: list[int], record_path: str) -> None:
    """Train one arm to each step of ``save_at`` in turn, a checkpoint at each; write the batch
    record to ``record_path`` (JSON). Runs in its own process."""
    from distill.config import Recipe

    recipe = Recipe.model_validate(recipe_data)
    trainer = _recording_trainer()(recipe)
    trainer.batch_record = []
    unwrapped = trainer.accelerator.unwrap_model(trainer.student)
    init = tensor_digest({n: p for n, p in unwrapped.named_parameters() if p.requires_grad})
    checkpoints, seconds = {}, 0.0
    for step in save_at:
        if step == 0:  # the initial weights, as the trainer saves them
            checkpoints[0] = str(trainer.save(None))
            continue
        trainer.total_steps = step  # the scheduler keeps the run's length (built in __init__)
        started = time.perf_counter()
        trainer.train()
        seconds += time.perf_counter() - started
        latest = trainer.checkpoints.latest()
        if latest is None or not latest.name.endswith(f"{step:08d}"):
            raise BenchError(f"{arm}: no checkpoint written at step {step} (latest: {latest})")
        checkpoints[step] = str(latest)
    record = {"arm": arm, "init_digest": init, "train_seconds": seconds,
              "steps_trained": trainer.progress.step, "checkpoints": checkpoints,
              "loss": recipe.loss.model_dump(mode="json"), "steps": trainer.batch_record}
    _write_json(Path(record_path), record)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_arm(recipe, arm: str, save_at: list[int], record: Path) -> dict:
    """``train_arm`` in a fresh process (spawned: no accelerate or RNG state carries over)."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=train_arm,
                              args=(recipe.model_dump(mode="json"), arm, save_at, str(record)))
    process.start()
    process.join()
    if process.exitcode != 0 or not record.is_file():
        raise BenchError(f"arm {arm!r} ({ARMS[arm]}) failed with exit code {process.exitcode} "
                         "(its error is printed above)")
    return json.loads(record.read_text())


# ------------------------------------------------------------------------ evaluation
def _records(eval_set, limit: int | None) -> list[dict]:
    from distill.data.manifest import load_manifest

    dataset = load_manifest(eval_set.manifest)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return [dict(zip(dataset.column_names, values, strict=True))
            for values in zip(*(dataset[c] for c in dataset.column_names), strict=True)]


@torch.no_grad()
def heldout_nll(student, recipe, eval_set, limit: int | None) -> tuple[float, int]:
    """(summed CE in nats, answer tokens) of the reference answers (``text``, the training
    target rule) of an eval set's first ``limit`` clips, prompted as evaluation prompts them,
    no augmentation and no teacher."""
    from distill.data.audio import AudioLoader

    loader = AudioLoader.from_config(recipe.data.audio)
    processor = student.processor
    records = _records(eval_set, limit)
    total, tokens = 0.0, 0
    for start in range(0, len(records), recipe.eval.batch_size):
        rows = records[start : start + recipe.eval.batch_size]
        clips = [(r, loader.load(r["audio"])) for r in rows]
        kept = [(r, c) for r, c in clips if c is not None]
        if not kept:
            continue
        instructions = [processor.instruction_for({**r, "task": eval_set.task},
                                                  override=eval_set.instruction) for r, _ in kept]
        inputs = processor([c.waveform for _, c in kept], instructions,
                           target_ids=processor.encode_targets([r["text"] for r, _ in kept],
                                                               None))
        out = student(inputs)
        rows_mask = out.labels != -100
        logits = torch.nn.functional.linear(out.hidden_states[rows_mask], student.lm_head_weight,
                                            student.lm_head_bias).float()
        total += float(torch.nn.functional.cross_entropy(logits, out.labels[rows_mask],
                                                         reduction="sum"))
        tokens += int(rows_mask.sum())
    return total, tokens


def evaluate_checkpoint(checkpoint: str, recipe, limit: int | None, hypotheses: Path,
                        device: str | None) -> dict:
    """Headline metric and NLL per eval set of one checkpoint; hypotheses written beside."""
    from distill.evaluate.runner import generate_for_set, score_set
    from students.model import SalmonnStudent

    student = SalmonnStudent.from_pretrained(checkpoint, device=device).eval()
    sets, nll_sum, nll_tokens = {}, 0.0, 0
    hypotheses.mkdir(parents=True, exist_ok=True)
    for eval_set in recipe.eval.sets:
        records, said = generate_for_set(student, recipe, eval_set, limit=limit)
        scored = score_set(eval_set, records, said)
        metric = next((m for m in HEADLINE if m in eval_set.metrics), eval_set.metrics[0])
        total, tokens = heldout_nll(student, recipe, eval_set, limit)
        nll_sum, nll_tokens = nll_sum + total, nll_tokens + tokens
        sets[eval_set.name] = {"task": eval_set.task, "clips": len(records), "metric": metric,
                               "value": scored.metrics.get(metric, {}).get("value"),
                               "nll": total / max(tokens, 1), "tokens": tokens,
                               "distinct_answers": len({s.strip().lower() for s in said})}
        _write_text(hypotheses / f"{eval_set.name}.jsonl", "".join(
            json.dumps({"id": r["id"], "reference": r["text"], "hypothesis": h}) + "\n"
            for r, h in zip(records, said, strict=True)))
    del student
    return {"sets": sets, "nll": nll_sum / max(nll_tokens, 1)}


# ------------------------------------------------------------------------ report
def _train_window(log_path: Path, low: int, high: int) -> dict[str, float]:
    """Mean of the logged ce and kd parts over steps (low, high] of a train_log.jsonl."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if low < r.get("step", -1) <= high]
    out = {}
    for key in ("ce", "kd"):
        values = [r[key] for r in rows if isinstance(r.get(key), float)]
        out[key] = sum(values) / len(values) if values else None
    return out


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_table(results: list[dict], set_names: list[str]) -> str:
    """One markdown table: a row per (step, arm)."""
    first = results[0]["sets"]
    head = ["step", "arm"]
    for name in set_names:
        label = HEADLINE.get(first[name]["metric"], (first[name]["metric"], True))[0]
        head.append(f"{label} ({name})")
    head += [f"NLL {name}" for name in set_names] + ["NLL all", "train CE", "train KD"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in results:
        cells = [str(r["step"]), r["label"]]
        cells += [_fmt(r["sets"][n]["value"], 2 if r["sets"][n]["metric"] == "wer" else 3)
                  for n in set_names]
        cells += [_fmt(r["sets"][n]["nll"]) for n in set_names]
        cells += [_fmt(r["nll"]), _fmt(r["train"].get("ce")), _fmt(r["train"].get("kd"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: list[dict], set_names: list[str]) -> list[str]:
    """Which arm wins each measure at the last evaluated step, in words."""
    last = max(r["step"] for r in results)
    by_arm = {r["arm"]: r for r in results if r["step"] == last}
    if not {"kd", "ce"} <= set(by_arm):
        return []
    kd, ce = by_arm["kd"], by_arm["ce"]
    measures = []
    for name in set_names:
        metric = kd["sets"][name]["metric"]
        label, higher = HEADLINE.get(metric, (metric, True))
        measures.append((f"{label} on {name}", kd["sets"][name]["value"],
                         ce["sets"][name]["value"], higher))
    measures.append(("held-out NLL (all sets)", kd["nll"], ce["nll"], False))
    lines = [f"at step {last}:"]
    for label, a, b, higher in measures:
        if a is None or b is None:
            lines.append(f"  {label}: n/a")
            continue
        who = "a tie" if a == b else "CE + KD wins" if (a > b) == higher else "CE only wins"
        lines.append(f"  {label}: CE + KD {a:.4g}, CE only {b:.4g} ({who}, by {abs(a - b):.3g})")
    return lines


# ------------------------------------------------------------------------ main
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_learning.py --audio",
        description="CE only vs CE + KD on the recipe's audio data, with the real trainer and "
                    "evaluation (see benchmarks/learning_audio.py).")
    parser.add_argument("--recipe", default="recipes/demo.yaml")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of each arm (default: the last --eval-at step, "
                             "else the recipe's train.max_steps)")
    parser.add_argument("--eval-at", default=None,
                        help="comma-separated steps to evaluate at, 0 = the initial weights "
                             "(default: a third, two thirds and all of --steps)")
    parser.add_argument("--kd-weight", type=float, default=None,
                        help="loss.kd_weight of the KD arm (default: the recipe's)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="loss.temperature (default: the recipe's)")
    parser.add_argument("--eval-clips", type=int, default=None,
                        help="score only the first K clips of each eval set (default: all)")
    parser.add_argument("--out", default="runs/bench_learning_audio",
                        help="scratch folder for both arms and the results (emptied first; "
                             "a non-empty folder this benchmark did not write is refused)")
    parser.add_argument("--device", default=None,
                        help="evaluation device (default: cuda when available, else the CPU)")
    return parser.parse_args(argv)


def _steps(args, recipe) -> tuple[int, list[int]]:
    try:
        eval_at = (sorted({int(s) for s in args.eval_at.split(",") if s.strip()})
                   if args.eval_at else None)
    except ValueError:
        raise BenchError(f"--eval-at {args.eval_at!r}: expected comma-separated step numbers, "
                         "e.g. 100,200,300") from None
    steps = args.steps or (max(eval_at) if eval_at else recipe.train.max_steps)
    if not steps or steps < 1:
        raise BenchError(f"{args.recipe}: train.max_steps is not set: give --steps")
    if eval_at is None:
        eval_at = sorted({max(1, steps // 3), max(1, 2 * steps // 3), steps})
    if eval_at[0] < 0 or eval_at[-1] > steps:
        raise BenchError(f"--eval-at {args.eval_at}: every step must be in 0..{steps} (--steps)")
    if eval_at[-1] != steps:
        eval_at.append(steps)  # the last step trained is always scored
    return steps, eval_at


def arm_recipe(recipe, arm: str, args, steps: int, out: Path):
    """The recipe one arm trains on: the benchmark's steps and folder, its loss."""
    from pydantic import ValidationError

    arm_recipe = recipe.model_copy(deep=True)
    train = arm_recipe.train
    try:
        train.max_steps = steps
    except ValidationError as err:
        raise BenchError(f"{args.recipe}: --steps {steps}: "
                         f"{err.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    train.output_dir = str(out / arm)
    train.checkpoint.every_steps = steps + 1  # checkpoints at the --eval-at steps only
    train.checkpoint.keep_last = steps + 2
    train.eval_every_steps = steps + 1
    train.report_to = []  # segments would start a tracker run each; train_log.jsonl stays
    arm_recipe.data.valid = []  # held-out NLL is measured on the eval sets instead
    loss = arm_recipe.loss
    if args.temperature is not None:
        loss.temperature = args.temperature
    if arm == "ce":
        loss.kd_weight_schedule, loss.kd_weight = None, 0.0
    elif args.kd_weight is not None:
        loss.kd_weight_schedule, loss.kd_weight = None, args.kd_weight
    return arm_recipe


def prepare_out(out: Path) -> None:
    """Make ``out`` ours and empty; refuse a non-empty folder this benchmark did not write."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise BenchError(f"--out {out}: not empty and not written by this benchmark (no "
                         f"{MARKER}); choose another folder")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by benchmarks/bench_learning.py --audio\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        return run(args, argv)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def run(args, argv: list[str]) -> int:
    from distill.config import RecipeError, load_recipe
    from distill.data.manifest import load_manifest
    from teachers.cache import open_cache

    try:
        recipe = load_recipe(args.recipe)
    except RecipeError as err:
        raise BenchError(str(err)) from None
    if recipe.data.soft_targets is None or not Path(recipe.data.soft_targets).is_dir():
        raise BenchError(f"{args.recipe}: data.soft_targets {recipe.data.soft_targets!r} is not a "
                         "teacher cache folder (run `distill demo` or `distill generate-teacher`)")
    if not recipe.eval.sets:
        raise BenchError(f"{args.recipe}: eval.sets is empty: nothing to score")
    if args.eval_clips is not None and args.eval_clips < 2:
        raise BenchError("--eval-clips must be at least 2 (CIDEr-D needs two clips)")
    steps, eval_at = _steps(args, recipe)
    out = Path(args.out)
    recipes = {arm: arm_recipe(recipe, arm, args, steps, out) for arm in ARMS}
    command = "python benchmarks/bench_learning.py --audio " + shlex.join(argv)
    temperature = recipes["kd"].loss.temperature
    print(f"{command}\nrecipe {args.recipe}: {steps} steps of batch {recipe.train.batch_size} x "
          f"{recipe.train.grad_accumulation} per arm, seed {recipe.train.seed}; evaluated at "
          f"{', '.join(map(str, eval_at))} on "
          f"{'all' if args.eval_clips is None else f'the first {args.eval_clips}'} clips of "
          f"{', '.join(s.name for s in recipe.eval.sets)}; KD arm: {recipes['kd'].loss.divergence}"
          f", kd_weight {recipes['kd'].loss.kd_weight:g}, T {temperature:g}", flush=True)

    started, load_at_start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.getloadavg()
    prepare_out(out)
    with open_cache(recipe.data.soft_targets) as cache:
        records = []
        for spec in recipe.data.train:
            manifest = load_manifest(spec.path, check_audio=False)
            records += list(zip(manifest["id"], manifest["task"], strict=True))
        kd_loss = recipes["kd"].loss
        exact = (kd_loss.divergence == "forward_kl" and temperature == 1.0  # q* in closed form
                 and kd_loss.kd_weight_schedule is None)
        signal = teacher_signal(cache, records, temperature,
                                weights=(kd_loss.ce_weight, kd_loss.kd_weight) if exact else None)
        k = cache.meta.k
        decode = None
        if not cache.meta.teacher_tokens:  # rows in the student's ids
            from students.llm import load_tokenizer

            tokenizer = load_tokenizer(recipe.model.llm)
            decode = lambda token: tokenizer.decode([token])  # noqa: E731
    signal_text = signal_table(signal, k, decode)
    print(f"\nteacher signal over the training samples ({recipe.data.soft_targets}):\n"
          f"{signal_text}\n", flush=True)

    arms = {}
    for arm in ARMS:  # sequential: both share the machine's cores
        save_at = eval_at if arm == "kd" else [s for s in eval_at if s > 0]
        print(f"==> training arm {arm!r} ({ARMS[arm]}) for {steps} steps", flush=True)
        arms[arm] = run_arm(recipes[arm], arm, save_at, out / f"{arm}.json")
        print(f"{arm}: {arms[arm]['train_seconds']:.0f} s of training "
              f"({arms[arm]['train_seconds'] / steps:.2f} s/step)", flush=True)
    problem = compare_arms(arms)
    if problem:
        raise BenchError(f"the arms are not comparable: {problem}")
    print(f"both arms: the same initial weights (sha256 {arms['kd']['init_digest'][:16]}) and, "
          f"at each of {steps} steps, the same samples, input tensors and RNG state", flush=True)

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    set_names = [s.name for s in recipe.eval.sets]
    summary = {"command": command, "recipe": args.recipe, "steps": steps, "eval_at": eval_at,
               "eval_clips": args.eval_clips, "batch_size": recipe.train.batch_size,
               "seed": recipe.train.seed, "started": started,
               "load_average": load_at_start, "teacher_signal": signal,
               "identical": {"init_digest": arms["kd"]["init_digest"], "steps": steps},
               "arms": {a: {"label": ARMS[a], "loss": arms[a]["loss"],
                            "train_seconds": arms[a]["train_seconds"]} for a in ARMS},
               "results": []}
    evaluated = []
    for step in eval_at:
        for arm in ARMS:
            if step == 0 and arm != "kd":
                continue  # one initial student for both arms (same digest)
            checkpoint = arms[arm]["checkpoints"][str(step)]
            started = time.perf_counter()
            scores = evaluate_checkpoint(checkpoint, recipe, args.eval_clips,
                                         out / "eval" / f"{arm}-step{step}", device)
            previous = max([s for s in eval_at if s < step], default=0)
            row = {"step": step, "arm": arm if step else "initial",
                   "label": ARMS[arm] if step else "initial (both)", **scores,
                   "train": _train_window(out / arm / "train_log.jsonl", previous, step)
                   if step else {}, "eval_seconds": time.perf_counter() - started}
            evaluated.append(row)
            summary["results"] = evaluated
            _write_json(out / "results.json", summary)
            print(f"step {step} {row['label']}: " + ", ".join(
                f"{n} {_fmt(s['value'], 3)} (NLL {s['nll']:.4f})"
                for n, s in scores["sets"].items())
                + f"; distinct answers {'/'.join(str(s['distinct_answers']) for s in scores['sets'].values())}"
                f" [{row['eval_seconds']:.0f} s]",
                flush=True)

    table = results_table(evaluated, set_names)
    words = verdict(evaluated, set_names)
    note = ("train CE / train KD: the trainer's logged loss parts, mean over the steps since "
            "the previous row (the CE-only arm computes KD without training on it). "
            "NLL: nats per reference answer token. Clips per set: "
            + ", ".join(f"{n} {evaluated[-1]['sets'][n]['clips']}" for n in set_names) + ".")
    load = os.getloadavg()
    when = (f"run {summary['started']} to {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on "
            f"{device or 'cpu'}; load average at the start {summary['load_average'][0]:.2f}, "
            f"at the end {load[0]:.2f} (1 min); training "
            + ", ".join(f"{a} {arms[a]['train_seconds'] / steps:.2f} s/step" for a in ARMS))
    summary["load_average_end"] = load
    markdown = (f"{command}\n\n{when}\n\n{signal_text}\n\n{table}\n\n{note}\n\n"
                + "\n".join(words) + "\n")
    _write_text(out / "results.md", markdown)
    summary["verdict"] = words
    _write_json(out / "results.json", summary)
    print(f"\n{when}\n\n{table}\n\n{note}\n" + "\n".join(words))
    print(f"\nresults: {out / 'results.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
