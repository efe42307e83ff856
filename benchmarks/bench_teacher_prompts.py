"""Does the teacher, under a prompt, put its top-1 on the reference answer's tokens?

In score mode the teacher reads the privileged text in its prompt and scores the reference
answer; KD then pulls the student toward the teacher's rows. Where the teacher's top-1 is not the
reference token (a capital where the reference has none, a ':' where the answer ends), KD pulls
away from the reference the student is scored on. This scores the first ``--samples`` training
records of each task of a recipe with the teacher model (transformers, in-process: the same
prompt ids and target ids as ``distill generate-teacher``) under the recipe's prompts and under
the variants below, and prints per task and prompt: how often the teacher's top-1 is the
reference token at the answer's first row, its middle rows and its end-token row, and the
teacher's NLL of the reference (nats per token).

    python benchmarks/bench_teacher_prompts.py                 # recipes/demo.yaml, 60 per task
"""

from __future__ import annotations

import argparse

import torch

from distill.config import load_recipe
from distill.data.manifest import load_manifest
from distill.data.targets import encode_target
from teachers.prompts import prompt_ids

REPEAT = ("Repeat this {what} exactly as written, in lower case, with no punctuation, and "
          "nothing else.\n{label}: {{text}}")
VARIANTS = {
    "exact, lower case": {
        "asr": {"user": REPEAT.format(what="transcript", label="Transcript")},
        "audiocaption": {"user": REPEAT.format(what="sound caption", label="Caption")},
    },
    "system: repeat as given": {
        task: {"system": "You repeat text exactly as given: same words, same case, no "
                         "punctuation added, nothing else.", "user": "{text}"}
        for task in ("asr", "audiocaption")
    },
}


def agreement(model, tokenizer, records, prompts) -> dict[str, float]:
    first = middle = end = middle_rows = 0
    nll = 0.0
    for record in records:
        prompt = prompt_ids(tokenizer, record, prompts)
        target = encode_target(tokenizer, record["text"])
        with torch.no_grad():
            logits = model(torch.tensor([prompt + target])).logits[0, len(prompt) - 1 : -1]
        logp = logits.float().log_softmax(-1)
        top = logp.argmax(-1).tolist()
        first += top[0] == target[0]
        end += top[-1] == target[-1]
        middle += sum(top[i] == target[i] for i in range(1, len(target) - 1))
        middle_rows += len(target) - 2
        nll += float(-logp[torch.arange(len(target)), torch.tensor(target)].mean())
    n = len(records)
    return {"first": first / n, "middle": middle / max(middle_rows, 1), "end": end / n,
            "nll": nll / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="recipes/demo.yaml")
    parser.add_argument("--samples", type=int, default=60, help="training records per task")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = load_recipe(args.recipe)
    teacher = recipe.teacher
    tokenizer = AutoTokenizer.from_pretrained(teacher.tokenizer or teacher.model)
    model = AutoModelForCausalLM.from_pretrained(teacher.model, dtype=torch.float32).eval()
    by_task: dict[str, list[dict]] = {}
    for spec in recipe.data.train:
        for record in load_manifest(spec.path, check_audio=False):
            rows = by_task.setdefault(record["task"], [])
            if len(rows) < args.samples:
                rows.append(record)
    prompts = {"the recipe's": teacher.prompts, **VARIANTS}
    print(f"teacher {teacher.model}; {args.samples} training records per task; share of rows "
          "where the teacher's top-1 is the reference token")
    print("| prompt | task | first row | middle rows | end-token row | NLL (nats/token) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, variant in prompts.items():
        for task, records in by_task.items():
            if task not in variant:
                continue
            a = agreement(model, tokenizer, records, variant)
            print(f"| {name} | {task} | {a['first']:.2f} | {a['middle']:.2f} | {a['end']:.2f} | "
                  f"{a['nll']:.3f} |")


if __name__ == "__main__":
    main()
