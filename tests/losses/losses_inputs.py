"""Small seeded inputs: every test here is tiny so the suite stays fast on 2 CPU cores."""

import torch

N, V, H, K = 7, 11, 5, 4


def make_inputs(seed=0, dtype=torch.float64, n=N, vocab=V, hidden=H, k=K, teacher_vocab=None):
    g = torch.Generator().manual_seed(seed)
    teacher_vocab = teacher_vocab or vocab
    teacher_logits = 2 * torch.randn(n, teacher_vocab, generator=g, dtype=dtype)
    teacher_logprobs = torch.log(torch.softmax(teacher_logits, -1))
    top = teacher_logprobs.topk(k, dim=-1)
    shuffle = torch.argsort(torch.rand(n, k, generator=g), dim=-1)  # order must not matter
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[1] = -100
    if n > 4:
        labels[4] = -100
    return {
        "student_logits": 2 * torch.randn(n, vocab, generator=g, dtype=dtype),
        "teacher_logits": teacher_logits,
        "ids": top.indices.gather(-1, shuffle),
        "logprobs": top.values.gather(-1, shuffle),
        "hidden": torch.randn(n, hidden, generator=g, dtype=dtype),
        "weight": torch.randn(vocab, hidden, generator=g, dtype=dtype),
        "bias": torch.randn(vocab, generator=g, dtype=dtype),
        "labels": labels,
    }
