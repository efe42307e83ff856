"""Naive float64 references, written from the formulas and never calling distill.losses.

Each works one row at a time on probabilities (not log-probs), the way the papers write it.
"""

import torch


def softmax(row, temperature=1.0):
    z = row / temperature
    e = torch.exp(z - z.max())
    return e / e.sum()


def temper(probs, temperature):
    """p^(1/T) renormalised."""
    powered = probs ** (1.0 / temperature)
    return powered / powered.sum()


def rest_of(full_probs, ids):
    """Mass of every id not in `ids`, summed one by one."""
    kept = set(ids.tolist())
    return sum(full_probs[j] for j in range(full_probs.numel()) if j not in kept)


def distributions(student_row, teacher, temperature, tail):
    """(p_teacher, q_student) over the same categories for one row.

    teacher: ("dense", logits_row) or ("topk", ids_row, logprobs_row).
    """
    if teacher[0] == "dense":
        return softmax(teacher[1], temperature), softmax(student_row, temperature)
    _, ids, logprobs = teacher
    q_full = softmax(student_row)
    p_kept = torch.exp(logprobs)
    q_kept = q_full[ids]
    if tail == "bucket" and ids.numel() < student_row.numel():
        p_kept = torch.cat([p_kept, (1 - p_kept.sum()).reshape(1)])
        q_kept = torch.cat([q_kept, torch.stack([rest_of(q_full, ids)])])
    return temper(p_kept, temperature), temper(q_kept, temperature)


def forward_kl(p, q):
    return sum(p[i] * torch.log(p[i] / q[i]) for i in range(p.numel()))


def reverse_kl(p, q):
    return forward_kl(q, p)


def jsd(p, q, beta):
    if beta == 0:
        return forward_kl(p, q)
    if beta == 1:
        return reverse_kl(p, q)
    m = beta * p + (1 - beta) * q
    return (beta * forward_kl(p, m) + (1 - beta) * forward_kl(q, m)) / (beta * (1 - beta))


def tvd(p, q):
    return 0.5 * sum(abs(p[i] - q[i]) for i in range(p.numel()))


def skew_forward_kl(p, q, skew):
    return forward_kl(p, skew * p + (1 - skew) * q)


def skew_reverse_kl(p, q, skew):
    return forward_kl(q, skew * q + (1 - skew) * p)


DIVERGENCES = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "generalized_jsd": lambda p, q: jsd(p, q, 0.3),
    "total_variation": tvd,
    "skew_forward_kl": lambda p, q: skew_forward_kl(p, q, 0.2),
    "skew_reverse_kl": lambda p, q: skew_reverse_kl(p, q, 0.2),
}
OPTIONS = {"generalized_jsd": {"beta": 0.3}, "skew_forward_kl": {"skew": 0.2},
           "skew_reverse_kl": {"skew": 0.2}}


def row_teacher(teacher, i):
    if isinstance(teacher, tuple):  # (ids, logprobs)
        return ("topk", teacher[0][i], teacher[1][i])
    return ("dense", teacher[i])


def kd_loss(name, student_logits, teacher, labels, temperature, tail, ignore_index=-100):
    """Mean over rows whose label is not ignore_index of T^2 * divergence."""
    total, count = 0.0, 0
    for i in range(student_logits.shape[0]):
        if labels[i] == ignore_index:
            continue
        p, q = distributions(student_logits[i], row_teacher(teacher, i), temperature, tail)
        total = total + temperature**2 * DIVERGENCES[name](p, q)
        count += 1
    return total / count


def sorted_desc(probs):
    return torch.sort(probs, descending=True).values


def uld_row(student_row, teacher, temperature, tail):
    if teacher[0] == "dense":
        q = sorted_desc(softmax(student_row, temperature))
        p = sorted_desc(softmax(teacher[1], temperature))
    else:
        _, ids, logprobs = teacher
        k = ids.numel()
        q_full = softmax(student_row)
        q_sorted = sorted_desc(q_full)
        p, q = sorted_desc(torch.exp(logprobs)), q_sorted[:k]
        if tail == "bucket":
            p = torch.cat([p, (1 - p.sum()).reshape(1)])
            q = torch.cat([q, q_sorted[k:].sum().reshape(1)])
        p, q = temper(p, temperature), temper(q, temperature)
    width = max(p.numel(), q.numel())
    p = torch.cat([p, p.new_zeros(width - p.numel())])
    q = torch.cat([q, q.new_zeros(width - q.numel())])
    return sum(abs(p[i] - q[i]) for i in range(width))


def uld_loss(student_logits, teacher, labels, temperature, tail, ignore_index=-100):
    total, count = 0.0, 0
    for i in range(student_logits.shape[0]):
        if labels[i] != ignore_index:
            total = total + temperature**2 * uld_row(
                student_logits[i], row_teacher(teacher, i), temperature, tail)
            count += 1
    return total / count


def cross_entropy(student_logits, labels, ignore_index=-100):
    total, count = 0.0, 0
    for i in range(student_logits.shape[0]):
        if labels[i] != ignore_index:
            total = total - torch.log(softmax(student_logits[i])[labels[i]])
            count += 1
    return total / count
